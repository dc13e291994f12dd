"""Tiny random-weight Hugging Face VLMs and audio-LMs, built locally (never from a model hub).

Each builder makes the family's own config, model class, tokenizer class (a BPE trained with
`tokenizers` on a ShapesWorld corpus) and processor class (PIL image processors, numpy audio
features), then `save_pretrained`s them into one folder that `load_policy` reads like any
checkpoint. Widths are 32, two decoder layers, two encoder layers.
"""

from __future__ import annotations

import shutil
import string
from pathlib import Path
from typing import Callable, Iterable

import pytest
import torch

from modalign.data.dataset import read_examples, write_examples
from modalign.data.records import Example, message_text
from modalign.models.hf import without_video  # transformers builds the Qwen-VL video processors on torchvision only

FAMILIES = ("qwen2_vl", "qwen2_5_vl", "llava", "idefics3", "gemma3", "qwen2_audio")
AUDIO_FAMILIES = ("qwen2_audio",)
WIDTH, LAYERS, HEADS = 32, 2, 2

# Words of the chat templates, so that the tiny BPE has tokens for them too.
TEMPLATE_WORDS = ("system user assistant model User: Assistant: USER: ASSISTANT: "
                  "You are a helpful assistant. Audio 1: 2:")


def shapes_corpus(data_root: str | Path) -> list[str]:
    """Every message text of the train split, the template words, and every printable character."""
    texts = [message_text(m) for e in read_examples(data_root, "train") for m in e.messages]
    return texts + [TEMPLATE_WORDS, string.printable]


def media_only_dataset(source: str | Path, target: str | Path, kind: str) -> Path:
    """A copy of a ShapesWorld dataset whose examples keep only the `kind` media ("image" or "audio")."""
    source, target = Path(source), Path(target)
    target.mkdir(parents=True, exist_ok=True)
    shutil.copytree(source / "media", target / "media")  # a link would escape the root (MediaStore refuses it)
    for split in ("train", "test"):
        write_examples(target, split, [_keep_media(e, kind) for e in read_examples(source, split)])
    return target


def _keep_media(example: Example, kind: str) -> Example:
    def strip(message):
        content = message["content"]
        if isinstance(content, str):
            return message
        return {**message, "content": [p for p in content if p["type"] in (kind, "text")]}

    return Example(example.id, tuple(strip(m) for m in example.messages),
                   tuple(r for r in example.media if r.kind == kind), example.meta)


def train_tokenizer(cls, corpus: Iterable[str], specials: list[str], vocab_size: int = 400, **named):
    """The family's tokenizer class around a BPE trained on `corpus` with the family's pipeline."""
    trained = cls().train_new_from_iterator(list(corpus), vocab_size=vocab_size, new_special_tokens=specials)
    return cls(tokenizer_object=trained.backend_tokenizer, **named)


def _text_config(tokenizer, **extra) -> dict:
    return dict(vocab_size=len(tokenizer), hidden_size=WIDTH, intermediate_size=2 * WIDTH, num_hidden_layers=LAYERS,
                num_attention_heads=HEADS, num_key_value_heads=1, max_position_embeddings=512,
                pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id, **extra)


QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _qwen_vl_parts(corpus):
    from transformers import Qwen2Tokenizer, Qwen2VLImageProcessorPil

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                "<|image_pad|>", "<|video_pad|>"]
    tokenizer = train_tokenizer(Qwen2Tokenizer, corpus, specials, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    # 48 x 48 ShapesWorld images -> 32 x 32 (max 1024 pixels) -> 8 x 8 patches of 4 -> 16 tokens after 2 x 2 merge
    images = Qwen2VLImageProcessorPil(patch_size=4, merge_size=2, temporal_patch_size=2,
                                      size={"shortest_edge": 16 * 16, "longest_edge": 32 * 32})
    ids = {name: tokenizer.convert_tokens_to_ids(token) for name, token in (
        ("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
        ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>"))}
    return tokenizer, images, ids


def build_qwen2_vl(corpus):
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    tokenizer, images, ids = _qwen_vl_parts(corpus)
    rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]}  # sums to head_dim / 2
    config = Qwen2VLConfig(
        text_config=_text_config(tokenizer, rope_parameters=rope),
        vision_config=dict(depth=LAYERS, embed_dim=WIDTH, hidden_size=WIDTH, num_heads=HEADS, mlp_ratio=2,
                           patch_size=4, spatial_merge_size=2, temporal_patch_size=2),
        **ids)
    processor = without_video("Qwen2VLProcessor")(image_processor=images, tokenizer=tokenizer,
                                                  chat_template=QWEN_CHAT_TEMPLATE)
    return Qwen2VLForConditionalGeneration(config), processor


def build_qwen2_5_vl(corpus):
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    tokenizer, images, ids = _qwen_vl_parts(corpus)
    rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]}
    config = Qwen2_5_VLConfig(
        text_config=_text_config(tokenizer, rope_parameters=rope),
        vision_config=dict(depth=LAYERS, hidden_size=WIDTH, out_hidden_size=WIDTH, intermediate_size=2 * WIDTH,
                           num_heads=HEADS, patch_size=4, spatial_merge_size=2, temporal_patch_size=2,
                           window_size=16, fullatt_block_indexes=[1]),
        **ids)
    processor = without_video("Qwen2_5_VLProcessor")(image_processor=images, tokenizer=tokenizer,
                                                     chat_template=QWEN_CHAT_TEMPLATE)
    return Qwen2_5_VLForConditionalGeneration(config), processor


LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}USER: {% elif message['role'] == 'assistant' %}ASSISTANT: {% endif %}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image>\n{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{% if message['role'] == 'assistant' %}</s>{% else %}{{ '\\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:\n{% endif %}"
)


def build_llava(corpus):
    from transformers import (LlamaTokenizer, LlavaConfig, LlavaForConditionalGeneration, LlavaImageProcessorPil,
                              LlavaProcessor)

    tokenizer = train_tokenizer(LlamaTokenizer, corpus, ["<unk>", "<s>", "</s>", "<pad>", "<image>"], pad_token="<pad>")
    config = LlavaConfig(
        vision_config=dict(model_type="clip_vision_model", hidden_size=WIDTH, intermediate_size=2 * WIDTH,
                           num_hidden_layers=LAYERS, num_attention_heads=HEADS, image_size=32, patch_size=8),
        text_config=dict(model_type="llama", **_text_config(tokenizer)),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"), vision_feature_layer=-1,
        vision_feature_select_strategy="default", projector_hidden_act="gelu")
    images = LlavaImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    processor = LlavaProcessor(image_processor=images, tokenizer=tokenizer, patch_size=8,
                               vision_feature_select_strategy="default", num_additional_image_tokens=1,
                               chat_template=LLAVA_CHAT_TEMPLATE)  # 16 patch tokens + CLS, CLS dropped
    return LlavaForConditionalGeneration(config), processor


IDEFICS3_CHAT_TEMPLATE = (
    "<|im_start|>{% for message in messages %}"
    "{{ message['role'] | capitalize }}{% if message['content'] is string %}: {{ message['content'] }}"
    "{% else %}{% if message['content'][0]['type'] == 'image' %}:{% else %}: {% endif %}"
    "{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image>{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<end_of_utterance>\n{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)


def build_idefics3(corpus):
    from transformers import (GPT2Tokenizer, Idefics3Config, Idefics3ForConditionalGeneration,
                              Idefics3ImageProcessorPil, Idefics3Processor)

    tiles = [f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)]
    specials = ["<|endoftext|>", "<|im_start|>", "<end_of_utterance>", "<fake_token_around_image>", "<image>",
                "<global-img>", *tiles]
    tokenizer = train_tokenizer(GPT2Tokenizer, corpus, specials, eos_token="<end_of_utterance>",
                                pad_token="<|endoftext|>", bos_token="<|im_start|>")
    config = Idefics3Config(
        vision_config=dict(hidden_size=WIDTH, intermediate_size=2 * WIDTH, num_hidden_layers=LAYERS,
                           num_attention_heads=HEADS, image_size=32, patch_size=8),
        text_config=dict(model_type="llama", **_text_config(tokenizer)),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"), scale_factor=2)
    # 48 x 48 images -> 64 x 64 -> 2 x 2 tiles of 32 + a global 32 x 32 image, 4 tokens each (scale factor 2)
    images = Idefics3ImageProcessorPil(size={"longest_edge": 64}, max_image_size={"longest_edge": 32},
                                       do_image_splitting=True)
    processor = Idefics3Processor(image_processor=images, tokenizer=tokenizer, image_seq_len=4,
                                  chat_template=IDEFICS3_CHAT_TEMPLATE)
    return Idefics3ForConditionalGeneration(config), processor


GEMMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "<start_of_turn>{{ 'model' if message['role'] == 'assistant' else message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<start_of_image>{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


def build_gemma3(corpus):
    from transformers import (Gemma3Config, Gemma3ForConditionalGeneration, Gemma3ImageProcessorPil, Gemma3Processor,
                              GemmaTokenizer)

    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>", "<start_of_image>",
                "<end_of_image>", "<image_soft_token>"]
    tokenizer = train_tokenizer(GemmaTokenizer, corpus, specials, eos_token="<end_of_turn>", extra_special_tokens={
        "boi_token": "<start_of_image>", "eoi_token": "<end_of_image>", "image_token": "<image_soft_token>"})
    config = Gemma3Config(
        text_config=dict(_text_config(tokenizer), head_dim=WIDTH // HEADS, sliding_window=64,
                         layer_types=["sliding_attention", "full_attention"]),
        vision_config=dict(hidden_size=WIDTH, intermediate_size=2 * WIDTH, num_hidden_layers=LAYERS,
                           num_attention_heads=HEADS, image_size=32, patch_size=8),
        mm_tokens_per_image=4,  # 4 x 4 patches pooled to 2 x 2
        boi_token_index=tokenizer.boi_token_id, eoi_token_index=tokenizer.eoi_token_id,
        image_token_index=tokenizer.image_token_id)
    images = Gemma3ImageProcessorPil(size={"height": 32, "width": 32})
    processor = Gemma3Processor(image_processor=images, tokenizer=tokenizer, image_seq_length=4,
                                chat_template=GEMMA3_CHAT_TEMPLATE)
    model = Gemma3ForConditionalGeneration(config)
    # transformers starts the image projection at zero (images silent until trained); tests need them heard
    torch.nn.init.normal_(model.model.multi_modal_projector.mm_input_projection_weight, std=0.05)
    return model, processor


def build_qwen2_audio(corpus):
    from transformers import (Qwen2AudioConfig, Qwen2AudioForConditionalGeneration, Qwen2AudioProcessor,
                              Qwen2Tokenizer, WhisperFeatureExtractor)

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|audio_bos|>", "<|audio_eos|>", "<|AUDIO|>"]
    tokenizer = train_tokenizer(Qwen2Tokenizer, corpus, specials, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    # 1 s windows: 100 mel frames of 16 bins -> 50 encoder positions -> 25 audio tokens per second
    features = WhisperFeatureExtractor(feature_size=16, sampling_rate=16000, hop_length=160, chunk_length=1, n_fft=400)
    config = Qwen2AudioConfig(
        audio_config=dict(num_mel_bins=16, d_model=WIDTH, encoder_layers=LAYERS, encoder_attention_heads=HEADS,
                          encoder_ffn_dim=2 * WIDTH, max_source_positions=50),
        text_config=dict(model_type="qwen2", **_text_config(tokenizer)),
        audio_token_id=tokenizer.convert_tokens_to_ids("<|AUDIO|>"))
    processor = Qwen2AudioProcessor(feature_extractor=features, tokenizer=tokenizer)
    return Qwen2AudioForConditionalGeneration(config), processor


BUILDERS: dict[str, Callable] = {
    "qwen2_vl": build_qwen2_vl, "qwen2_5_vl": build_qwen2_5_vl, "llava": build_llava,
    "idefics3": build_idefics3, "gemma3": build_gemma3, "qwen2_audio": build_qwen2_audio,
}


def build_family(family: str, folder: str | Path, corpus: list[str], seed: int = 0) -> Path:
    """Build a tiny `family` model with its processor and save both into `folder`."""
    torch.manual_seed(seed)
    model, processor = BUILDERS[family](corpus)
    model.generation_config.pad_token_id = processor.tokenizer.pad_token_id
    model.generation_config.eos_token_id = processor.tokenizer.eos_token_id
    folder = Path(folder)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


# ---- module fixtures (import them into a test module to use them) ----------------------------------------


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """A tiny ShapesWorld with an images-only and an audio-only copy, and its text corpus."""
    from modalign.data.shapes import build_shapes_dataset

    root = tmp_path_factory.mktemp("hf_shapes")
    data = build_shapes_dataset(root / "both", n_train=4, n_test=2, seed=0, caption_noise=0.3)
    return {"image": media_only_dataset(data, root / "image", "image"),
            "audio": media_only_dataset(data, root / "audio", "audio"),
            "corpus": shapes_corpus(data)}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, shapes):
    """family -> (saved model folder, dataset folder with the family's media kind); built once per family."""
    built: dict[str, tuple[Path, Path]] = {}

    def get(family: str) -> tuple[Path, Path]:
        if family not in built:
            folder = build_family(family, tmp_path_factory.mktemp(family) / "model", shapes["corpus"])
            built[family] = (folder, shapes["audio" if family in AUDIO_FAMILIES else "image"])
        return built[family]

    return get


def caption_store(policy, data: Path, folder: Path) -> Path:
    """`folder/feedback.db`: simulated rankings of 3 answers of `policy` to each of 3 train captions of `data`."""
    from modalign.models.inputs import MediaStore
    from modalign.recipes.demo import collect_feedback

    path = folder / "feedback.db"
    captions = [e for e in read_examples(data, "train") if e.meta["task"] == "caption"][:3]
    collect_feedback(policy, MediaStore(data), captions, data, path, seed=0, samples_per_prompt=3)
    return path


@pytest.fixture(scope="module")
def stores(tmp_path_factory, tiny):
    """family -> a feedback store of simulated rankings of the tiny model's own answers."""
    from modalign.models.policy import load_policy

    made: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in made:
            model, data = tiny(family)
            made[family] = caption_store(load_policy(model), data, tmp_path_factory.mktemp(f"{family}_store"))
        return made[family]

    return get
