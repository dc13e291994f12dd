"""Tiny random-weight builds of any architecture of transformers' `AutoModelForImageTextToText` mapping.

`build_tiny(model_type, folder)` takes the architecture's own config class with its defaults and
shrinks every sub-config (2 layers, width 32, 2 heads), trains a small byte-level BPE with the
special tokens the processor's source names, builds the PIL image processor at a small image
size, gives the processor a chat template that renders `{"type": "image"}` parts, and
`save_pretrained`s model and processor into `folder`, which then loads with
`AutoModelForImageTextToText` and `AutoProcessor` like a user's checkpoint.

What cannot be generic is data: `OVERRIDES` (per-architecture tweaks) and `SKIP` (the error each
architecture that cannot be built here gave, observed on this machine: transformers 5.24 and 5.25,
no torchvision).
"""

from __future__ import annotations

import inspect
import re
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from modalign.models.hf import without_video

WIDTH, FFN, LAYERS, HEADS, HEAD_DIM = 32, 64, 2, 2, 16
IMAGE, PATCH = 32, 8  # a 32 x 32 image in 8 x 8 patches: 16 patch tokens before any pooling
TURN_START, TURN_END = "<|im_start|>", "<|im_end|>"
BASE_SPECIALS = ["<|endoftext|>", "<s>", "</s>", "<pad>", "<unk>", TURN_START, TURN_END]

# ---- config shrinking rules: attribute name pattern -> small value (ints only, applied to every sub-config)
SHRINK: list[tuple[str, int]] = [  # first match wins
    (r"head_dim$", HEAD_DIM),  # head_dim, v_head_dim, qk_rope_head_dim, linear_key_head_dim ...
    (r"^(kv_lora_rank|q_lora_rank)$", WIDTH),
    (r"^mm_tokens_per_image$", 4),  # Gemma 3 pools the 4 x 4 patches to 2 x 2
    (r"(^|_)(num_hidden_layers|num_layers|depth|encoder_layers|decoder_layers|n_layers?|num_encoder_layers|"
     r"num_decoder_layers|num_text_layers|num_vision_layers)$", LAYERS),
    (r"(^|_)(hidden_size|embed_dim|d_model|n_embd|hidden_dim|projection_dim|out_hidden_size|dim|width)$", WIDTH),
    (r"(intermediate_size|ffn_dim|mlp_dim|n_inner|ffn_hidden_size)$", FFN),
    (r"(^|_)(num_attention_heads|num_heads|attention_heads|n_heads?)$", HEADS),
    (r"num_key_value_heads$", HEADS),
    (r"^(num_experts|n_routed_experts|num_local_experts|moe_num_experts)$", 4),
    (r"^(num_experts_per_tok|moe_k|top_k)$", 2),
    (r"^(base_channels|latent_channels)$", 32),  # VQ image tokenizers (Janus, Chameleon, Emu3); GroupNorm(32)
    (r"^num_embeddings$", 64),  # a VQ codebook
    (r"^num_res_blocks$", 1),
    (r"^image_size$", IMAGE),
    (r"^patch_size$", PATCH),
]


@dataclass
class BuiltModel:
    """A saved tiny build: its folder, model type and the processor's media marker / image token."""

    model_type: str
    folder: Path
    marker: str  # what the chat template writes for one image
    image_token: str  # the token whose positions carry image features
    parameters: int


# ---- per-architecture tweaks, as data ------------------------------------------------------------
# keys: config (top-level kwargs), sub (sub-config name -> kwargs), images (image processor kwargs),
# processor (processor kwargs), specials (extra tokens), tokenizer (extra_special_tokens),
# marker (what an image part renders as, default: processor.image_token), ids (config key -> token),
# processor_class / image_processor_class / tokenizer_class (transformers class names), source_tokens
# (False: the tokenizer gets none of the `<name>_token` attributes the processor's source reads), fill
# (parameter name pattern -> value: gates that start closed).
# An architecture still in SKIP may keep the tweaks that got it past its earlier errors.
IDEFICS3 = dict(images=dict(size={"longest_edge": 2 * IMAGE}, max_image_size={"longest_edge": IMAGE},
                             do_image_splitting=True),
                processor=dict(image_seq_len=4), config=dict(scale_factor=2),
                specials=[f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)])
OVERRIDES: dict[str, dict[str, Any]] = {
    "llava": dict(processor=dict(num_additional_image_tokens=1)),  # CLIP's CLS token, dropped by "default"
    "gemma3": dict(tokenizer=dict(boi_token="<start_of_image>", eoi_token="<end_of_image>",
                                  image_token="<image_soft_token>"),
                   marker="<start_of_image>", processor=dict(image_seq_length=4)),
    "shieldgemma2": dict(tokenizer=dict(boi_token="<start_of_image>", eoi_token="<end_of_image>",
                                        image_token="<image_soft_token>"), marker="<start_of_image>",
                         processor=dict(image_seq_length=4)),
    "t5gemma2": dict(tokenizer=dict(boi_token="<start_of_image>", eoi_token="<end_of_image>",
                                    image_token="<image_soft_token>"), marker="<start_of_image>",
                     processor=dict(image_seq_length=4)),
    # Idefics3-like: 64 x 64 images -> 2 x 2 tiles of 32 + the whole at 32, 4 tokens each (scale factor 2)
    "idefics3": dict(IDEFICS3),
    # tiles of size height x width (not Idefics3's longest edge)
    "granite_docling": dict(IDEFICS3, images=dict(size={"height": IMAGE, "width": IMAGE})),
    # the processor puts the image tokens in front of the text itself
    "florence2": dict(marker=""),
    "fuyu": dict(specials=["|SPEAKER|", "|NEWLINE|"], marker=""),
    "llava_next": dict(images=dict(image_grid_pinpoints=[[32, 32], [32, 64], [64, 32]]),
                       processor=dict(num_additional_image_tokens=1),  # CLIP's CLS token, as for llava
                       config=dict(image_grid_pinpoints=[[32, 32], [32, 64], [64, 32]])),
    # the Aria processor resizes to 980 whatever its image processor says (its own default): 980 x 980 images
    # in 70 x 70 patches, 14 x 14 patches -> 4 queries
    "aria": dict(images=dict(max_image_size=980), processor=dict(size_conversion={980: 4}),
                 config=dict(projector_patch_to_query_dict={196: 4}),
                 sub=dict(vision_config=dict(image_size=980, patch_size=70))),
    "internvl": dict(processor=dict(image_seq_length=4), images=dict(crop_to_patches=False),
                     sub=dict(vision_config=dict(image_size=[IMAGE, IMAGE], patch_size=[PATCH, PATCH]))),
    "qianfan_ocr": dict(processor=dict(image_seq_length=4), images=dict(crop_to_patches=False), marker="<image>",
                        sub=dict(vision_config=dict(image_size=[IMAGE, IMAGE], patch_size=[PATCH, PATCH]))),
    "janus": dict(processor=dict(num_image_tokens=16), sub=dict(vq_config=dict(channel_multiplier=[1, 1, 1, 1, 1]))),
    "emu3": dict(sub=dict(vq_config=dict(channel_multiplier=[1, 1, 1, 1]))),
    "deepseek_vl": dict(processor=dict(num_image_tokens=16)),
    "llava_onevision": dict(processor=dict(num_image_tokens=16),
                            images=dict(image_grid_pinpoints=[[32, 32], [32, 64], [64, 32]]),
                            config=dict(image_grid_pinpoints=[[32, 32], [32, 64], [64, 32]])),
    "paligemma": dict(tokenizer_class="GemmaTokenizer", images=dict(image_seq_length=16), source_tokens=False),
    "aya_vision": dict(processor=dict(img_size=IMAGE), images=dict(crop_to_patches=False)),
    # its vision tower embeds 2-D patches (no temporal patch, unlike Qwen2-VL whose PIL image processor it uses)
    "llava_onevision1_5": dict(images=dict(temporal_patch_size=1)),
    "hunyuan_vl": dict(marker="<|image_start|><|image|><|image_end|>"),  # the processor checks this framing
    # no processor / image processor class in the Auto mappings for these types: the family's own
    "fast_vlm": dict(processor_class="LlavaProcessor", image_processor_class="LlavaImageProcessorPil"),
    "glm4v_moe": dict(image_processor_class="Glm4vImageProcessorPil"),
    "glm_ocr": dict(processor_class="Glm4vProcessor", image_processor_class="Glm4vImageProcessorPil"),
    "glmga": dict(processor_class="Glm46VProcessor"),
    "qwen3_vl_moe": dict(image_processor_class="Qwen2VLImageProcessorPil"),
    "kosmos-2": dict(processor_class="Kosmos2Processor", image_processor_class="CLIPImageProcessorPil"),
    "kosmos-2.5": dict(processor_class="Kosmos2_5Processor"),
    # the processor writes 256 image tokens whatever it is given: 128 x 128 images in 2 x 2 patches, two
    # stride-2 convolutions: 16 x 16 tokens
    "got_ocr2": dict(images=dict(size={"height": 128, "width": 128}),
                     sub=dict(vision_config=dict(image_size=128, patch_size=2, output_channels=WIDTH, window_size=8,
                                                 initializer_range=0.02))),
    # Ovis 2 expands <image> into <IMG_ATOM> runs, which are the model's image tokens
    "ovis2": dict(ids=dict(image_token_id="<IMG_ATOM>"), processor=dict(image_seq_length=16)),
    # Ovis 2.5: its image processor's size is a pixel budget (min / max pixels, not edges); its visual tokenizer
    # has a vocabulary of its own (65536 visual words by default: 10 M parameters)
    "ovis2_5": dict(images=dict(size={"shortest_edge": IMAGE * IMAGE, "longest_edge": IMAGE * IMAGE}),
                    sub=dict(vision_config=dict(vocab_size=64))),
    # PP-Chart2Table's processor inserts nothing: its chat template writes GOT's image span (1 token here)
    "pp_chart2table": dict(specials=["<img>", "<imgpad>", "</img>"], marker="<img><imgpad></img>",
                           ids=dict(image_token_index="<imgpad>"),
                           sub=dict(vision_config=dict(initializer_range=0.02))),  # 1e-10: images unheard
    # BLIP-2's processor calls `.content` on the tokenizer's image_token (a str in 5.24): without one it
    # adds its own <image> AddedToken; it puts the query tokens in front of the text itself
    "blip-2": dict(source_tokens=False, ids=dict(image_token_index="<image>"), marker="",
                  sub=dict(vision_config=dict(initializer_range=0.02))),
    "instructblip": dict(source_tokens=False, ids=dict(image_token_index="<image>"), marker="",
                        sub=dict(vision_config=dict(initializer_range=0.02))),
    "blip": dict(sub=dict(vision_config=dict(initializer_range=0.02))),  # 1e-10: images unheard
    "idefics": dict(config=dict(alpha_initializer="ones")),  # "zeros": the cross-attention gates start closed
    # layer lists of the 32-layer default: tapped vision layers, global layers, the text's cross-attention layers
    "mllama": dict(sub=dict(vision_config=dict(intermediate_layers_indices=[0, 1], num_global_layers=LAYERS,
                                               vision_output_dim=WIDTH * 3),
                            text_config=dict(cross_attention_layers=[1])),
                   fill={r"cross_attn_(attn|mlp)_gate$|gate_(attn|ffn)$": 1.0}),
    "vipllava": dict(config=dict(vision_feature_layers=[-2, -1])),  # default reads layers 6 to 11 deep
}

# ---- architectures that cannot be built here: model_type -> the error observed ---------------------
# Observed with transformers 5.24 (5.25 for the types it added) and no torchvision (tests/test_hf_any.py
# phase A). "needs X": a package the machine lacks; "no processor class": nothing to build the inputs
# with; "builder gap": the generic build does not fit this architecture yet (a tweak in OVERRIDES would)
# - the error it gave.
SKIP: dict[str, str] = {
    "apertus1p5":
        "needs torchvision: Apertus1p5ImageProcessor raises ImportError (no PIL image processor for this "
        "type)",
    "chameleon":
        "builder gap: AttributeError: 'NoneType' object has no attribute 'get' "
        "(models/chameleon/modeling_chameleon.py)",
    "cohere2_vision":
        "needs torchvision: Cohere2VisionImageProcessor raises ImportError (no PIL image processor for "
        "this type)",
    "cohere_compass":
        "builder gap: StrictDataclassFieldValidationError: Validation error for field 'rope_parameters': "
        "TypeError: Field 'rope_parameters' wi (huggingface_hub/dataclasses.py)",
    "cosmos3_edge":
        "builder gap: ValueError: Multimodal data was passed (via `image_grid_thw` or `video_grid_thw`) "
        "but `mm_token_type_ids` is missing. Pl (models/cosmos3_edge/modeling_cosmos3_edge.py)",
    "cosmos3_omni": "no processor class: AutoProcessor's mapping has none for this type (LookupError)",
    "deepseek_ocr2":
        "builder gap: TypeError: 'NoneType' object is not subscriptable "
        "(models/deepseek_ocr2/modeling_deepseek_ocr2.py)",
    "deepseek_vl_hybrid":
        "builder gap: ValueError: Input image size (1024*1024) doesn't match model (32*32). "
        "(models/sam/modeling_sam.py)",
    "diffusion_gemma":
        "builder gap: LookupError: no image processor class for diffusion_gemma ({}) (tests/hf_any.py)",
    "dots3_note": "builder gap: TypeError: Unexpected keyword argument video_processor. (processing_utils.py)",
    "emu3": "builder gap: AttributeError: 'NoneType' object has no attribute 'get' (models/emu3/modeling_emu3.py)",
    "ernie4_5_vl_moe":
        "builder gap: AttributeError: 'Ernie4_5_VLMoeProcessorImagesOnly' object has no attribute "
        "'video_processor' (models/ernie4_5_vl_moe/processing_ernie4_5_vl_moe.py)",
    "evolla": "not loadable: AutoModelForImageTextToText rejects EvollaConfig (a protein-text model)",
    "fast_vlm": "needs timm: TimmWrapperModel raises ImportError",
    "florence2":
        "builder gap: TypeError: can't multiply sequence by non-int of type 'NoneType' "
        "(models/florence2/processing_florence2.py)",
    "fuyu":
        "builder gap: TypeError: transpose() takes 2 positional arguments but 5 were given "
        "(models/fuyu/image_processing_pil_fuyu.py)",
    "gemma3n":
        "builder gap: TypeError: Received a NoneType for argument feature_extractor, but a "
        "FeatureExtractionMixin was expected. (processing_utils.py)",
    "gemma4": "builder gap: TypeError: Unexpected keyword argument feature_extractor. (processing_utils.py)",
    "gemma4_unified":
        "needs torchvision: Gemma4UnifiedImageProcessor raises ImportError (no PIL image processor for "
        "this type)",
    "granite4_vision":
        "builder gap: TypeError: object of type 'NoneType' has no len() "
        "(models/granite4_vision/modeling_granite4_vision.py)",
    "granite_docling":
        "builder gap: ValueError: Image features and image tokens do not match: tokens: 208, features 52 "
        "(torch/__init__.py; its page tiling makes 26 tiles of 32 x 32 per photograph)",
    "idefics":
        "builder gap: builds and runs, but swapping the two photographs leaves the logits unchanged (with the "
        "cross-attention gates open: IdeficsProcessor gives constant pixel_values, std 0, for these images)",
    "inkling2": "needs torchvision: Inkling2ImageProcessor raises ImportError (no PIL image processor for this type)",
    "inkling2_loop":
        "needs torchvision: Inkling2ImageProcessor raises ImportError (no PIL image processor for this "
        "type)",
    "inkling_mm_model":
        "needs torchvision: InklingImageProcessor raises ImportError (no PIL image processor for this "
        "type)",
    "instructblipvideo":
        "builder gap: TypeError: Received a NoneType for argument image_processor, but a "
        "ImageProcessingMixin was expected. (processing_utils.py)",
    "kimi_k25": "needs torchvision: Kimi_K25ImageProcessor raises ImportError (no PIL image processor for this type)",
    "kosmos-2.5":
        "builder gap: RuntimeError: mat1 and mat2 shapes cannot be multiplied (8192x192 and 32x32) "
        "(torch/nn/modules/linear.py)",
    "lfm2_vl": "needs torchvision: Lfm2VlImageProcessor raises ImportError (no PIL image processor for this type)",
    "llama4": "needs torchvision: Llama4ImageProcessor raises ImportError (no PIL image processor for this type)",
    "llava_next_video":
        "builder gap: TypeError: Received a NoneType for argument image_processor, but a "
        "ImageProcessingMixin was expected. (processing_utils.py)",
    "minicpm_ocr":
        "needs torchvision: MiniCPMOcrImageProcessor raises ImportError (no PIL image processor for this "
        "type)",
    "minicpmv4_6":
        "builder gap: TypeError: Received a NoneType for argument tokenizer, but a "
        "('PreTrainedTokenizerBase', 'MistralCommonBackend') was exp (processing_utils.py)",
    "minicpmv4_7":
        "builder gap: TypeError: Received a NoneType for argument tokenizer, but a "
        "('PreTrainedTokenizerBase', 'MistralCommonBackend') was exp (processing_utils.py)",
    "minimax_m3_vl":
        "needs torchvision: MiniMaxM3VLImageProcessor raises ImportError (no PIL image processor for "
        "this type)",
    "mistral3": "needs torchvision: PixtralProcessor raises ImportError (no PIL image processor for this type)",
    "mistral4": "no processor class: AutoProcessor's mapping has none for this type (LookupError)",
    "mistral_large4": "needs torchvision: PixtralProcessor raises ImportError (no PIL image processor for this type)",
    "molmo2": "needs torchvision: Molmo2ImageProcessor raises ImportError (no PIL image processor for this type)",
    "muse_glimmer":
        "needs torchvision: MuseGlimmerImageProcessor raises ImportError (no PIL image processor for "
        "this type)",
    "muse_spark":
        "needs torchvision: MuseGlimmerImageProcessor raises ImportError (no PIL image processor for "
        "this type)",
    "nemotron_h_omni":
        "needs torchvision: NemotronH_Omni_Reasoning_V3ImageProcessor raises ImportError (no PIL image "
        "processor for this type)",
    "perception_lm":
        "needs torchvision: PerceptionLMImageProcessor raises ImportError (no PIL image processor for "
        "this type)",
    "pi0": "needs torchvision: PI0ImageProcessor raises ImportError (no PIL image processor for this type)",
    "pi05": "needs torchvision: PI0ImageProcessor raises ImportError (no PIL image processor for this type)",
    "pix2struct":
        "builder gap: RuntimeError: mat1 and mat2 shapes cannot be multiplied (4096x192 and 32x32) "
        "(torch/nn/modules/linear.py)",
    "pp_formulanet":
        "needs torchvision: PPFormulaNetImageProcessor raises ImportError (no PIL image processor for "
        "this type)",
    "qwen2_5_omni_thinker": "no processor class: AutoProcessor's mapping has none for this type (LookupError)",
    "qwen3_omni_moe_thinker": "no processor class: AutoProcessor's mapping has none for this type (LookupError)",
    "qwen4_exp":
        "builder gap: TypeError: unsupported operand type(s) for //: 'NoneType' and 'NoneType' "
        "(models/qwen4_exp/modeling_qwen4_exp.py)",
    "smolvlm": "needs num2words: the SmolVLM processor raises ImportError",
    "step3p7": "needs torchvision: Step3p7ImageProcessor raises ImportError (no PIL image processor for this type)",
    "t5gemma2":
        "builder gap: ValueError: You must specify exactly one of input_ids or inputs_embeds "
        "(models/t5gemma2/modeling_t5gemma2.py)",
    "udop": "needs pytesseract: LayoutLMv3ImageProcessorPil raises ImportError",
    "unlimited_ocr":
        "needs torchvision: UnlimitedOcrImageProcessor raises ImportError (no PIL image processor for "
        "this type)",
    "video_llava":
        "builder gap: TypeError: Received a NoneType for argument tokenizer, but a "
        "('PreTrainedTokenizerBase', 'MistralCommonBackend') was exp (processing_utils.py)",
    "vision-encoder-decoder": "no processor class: AutoProcessor's mapping has none for this type (LookupError)",
}


def corpus() -> list[str]:
    """A few hundred strings for the tiny BPE: ShapesWorld-like captions and every printable character."""
    colours = "red green blue yellow purple orange black white".split()
    shapes = "circle square triangle star cross".split()
    lines = [f"a {c} {s} on the left of a {d} {t}." for c in colours for s in shapes for d, t in
             zip(colours[::-1], shapes)]
    return lines + ["What is in the image? Describe the picture. How many shapes are there?",
                    "system user assistant model You are a helpful assistant.", string.printable]


# ---- tokenizer -------------------------------------------------------------------------------------

_TOKEN_LITERAL = re.compile(r"""["'](<\|?/?[A-Za-z][\w\-\.:]*\|?>|<\|[\w\-\.:]+\|>|\[/?[A-Z][A-Z_]+\])["']""")


def special_tokens_in_source(*objects) -> list[str]:
    """Every token-looking string literal ("<image>", "<|image_pad|>", "[IMG]") in the modules of `objects`."""
    found: list[str] = []
    for obj in objects:
        try:
            source = inspect.getsource(inspect.getmodule(obj))
        except (TypeError, OSError):
            continue
        found += [t for t in _TOKEN_LITERAL.findall(source) if t not in found]
    return found


_TOKENIZER_ATTRIBUTE = re.compile(r"tokenizer\.(\w+_token)(?:_id)?\b|\"(\w+_token)(?:_id)?\"")
_STANDARD = {"bos_token", "eos_token", "pad_token", "unk_token", "sep_token", "cls_token", "mask_token"}


def tokenizer_attributes_in_source(processor_cls) -> dict[str, str]:
    """The non-standard tokens the processor reads off its tokenizer (`tokenizer.image_token`,
    `tokenizer.boi_token_id` ...), each given an invented token `<|name|>` (a tiny vocabulary is ours to name)."""
    try:
        source = inspect.getsource(inspect.getmodule(processor_cls))
    except (TypeError, OSError):
        return {}
    names = {a or b for a, b in _TOKENIZER_ATTRIBUTE.findall(source)} - _STANDARD
    return {name: f"<|{name.removesuffix('_token')}|>" for name in sorted(names) if name != "audio_tokenizer"}


def train_tokenizer(specials: list[str], named: dict[str, str], class_name: str = "PreTrainedTokenizerFast"):
    """A byte-level BPE of ~400 tokens with `specials`, in `class_name` (default: the plain `TokenizersBackend`,
    what AutoTokenizer loads; a family's class when its processor sets that class's attributes)."""
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE(unk_token=None))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator(corpus(), trainer)
    standard = {k: v for k, v in named.items() if k in ("bos_token", "eos_token", "pad_token", "unk_token")}
    extra = {k: v for k, v in named.items() if k not in standard}
    cls = getattr(transformers, class_name) if class_name != "PreTrainedTokenizerFast" else PreTrainedTokenizerFast
    return cls(tokenizer_object=bpe, extra_special_tokens=extra, **standard)


# ---- image processor ---------------------------------------------------------------------------------


def image_processor_class(model_type: str):
    """The architecture's image processor class that runs without torchvision (PIL first)."""
    import transformers
    from transformers.models.auto.image_processing_auto import IMAGE_PROCESSOR_MAPPING_NAMES

    names = IMAGE_PROCESSOR_MAPPING_NAMES.get(model_type) or {}
    if isinstance(names, str):
        names = {"torchvision": names}
    candidates = [names.get("pil")] + [f"{n}Pil" for n in names.values() if n] + list(names.values())
    for name in candidates:
        if name and hasattr(transformers, name):
            return getattr(transformers, name)
    raise LookupError(f"no image processor class for {model_type} ({names})")


def small_image_processor(cls, tweaks: dict):
    """`cls` at IMAGE x IMAGE pixels, in whichever size convention its defaults use."""
    default = cls()
    kwargs: dict[str, Any] = {}
    for name in ("size", "crop_size", "max_image_size"):
        value = _set_fields(getattr(default, name, None))
        if value:
            kwargs[name] = {k: (IMAGE * IMAGE if "pixels" in k else IMAGE) for k in value}
    for key in ("min_pixels", "max_pixels"):
        if getattr(default, key, None) is not None:
            kwargs[key] = IMAGE * IMAGE
    patch = getattr(default, "patch_size", None)
    if isinstance(patch, int):
        kwargs["patch_size"] = PATCH
    elif _set_fields(patch):  # Fuyu: {"height": 30, "width": 30}
        kwargs["patch_size"] = {k: PATCH for k in _set_fields(patch)}
    return cls(**{**kwargs, **tweaks})


def _set_fields(size) -> list[str]:
    """The keys of a size dict (or transformers' SizeDict) that hold a value."""
    if size is None or isinstance(size, (int, float, list, tuple)):
        return []
    items = size.items() if isinstance(size, dict) else vars(size).items()
    return [k for k, v in items if v is not None]


# ---- config --------------------------------------------------------------------------------------------


def shrunk(config, vocab: int, text: bool, remap=lambda key, value: None) -> dict[str, Any]:
    """kwargs that shrink `config` (a default instance): SHRINK rules on its ints, recursively into
    sub-configs; `remap(key, value)` gives token-id fields their id in the tiny vocabulary (or None)."""
    from transformers.configuration_utils import PreTrainedConfig

    out: dict[str, Any] = {}
    specs = getattr(type(config), "sub_configs_defaults", {}) or {}
    for name, value in vars(config).items():
        if isinstance(value, PreTrainedConfig):
            base = dict(getattr(specs.get(name), "init_kwargs", {}) or {})
            out[name] = {**base, "model_type": value.model_type,
                         **shrunk(value, vocab, any(k in name for k in ("text", "language", "decoder", "llm")), remap)}
        elif name == "head_dim" and value is None:  # some models read it without a fallback (HunYuan-VL)
            out[name] = HEAD_DIM
        elif isinstance(value, bool) or not isinstance(value, int):
            continue
        elif remap(name, value) is not None:
            out[name] = remap(name, value)
        elif name == "vocab_size" and text:
            out[name] = vocab
        else:
            for pattern, small in SHRINK:
                if re.search(pattern, name) and value > small:
                    out[name] = small
                    break
    for name, value in vars(config).items():
        if name.endswith("layer_types") and isinstance(value, list) and value and isinstance(value[0], str):
            kinds = list(dict.fromkeys(value))[:LAYERS]  # hybrids keep one layer of each kind (linear + full)
            out[name] = kinds + kinds[-1:] * (LAYERS - len(kinds))
    rope = getattr(config, "rope_parameters", None)
    mrope = "mrope_section" in getattr(type(config), "ignore_keys_at_rope_validation", ()) or uses_mrope(config)
    if isinstance(rope, dict) and (mrope or rope.get("mrope_section")):
        # models default the section to Qwen's [16, 24, 24] when the config has none
        factor = rope.get("partial_rotary_factor", getattr(config, "partial_rotary_factor", 1.0)) or 1.0
        section = _mrope(rope.get("mrope_section") or [16, 24, 24], int(HEAD_DIM * float(factor)))
        out["rope_parameters"] = {**rope, "mrope_section": section}
    return out


def uses_mrope(config) -> bool:
    """The modeling module of `config`'s model type reads `mrope_section` (and defaults it when absent)."""
    import importlib

    package = type(config).__module__.rsplit(".", 1)[0]
    name = package.rsplit(".", 1)[-1]
    try:
        return "mrope_section" in inspect.getsource(importlib.import_module(f"{package}.modeling_{name}"))
    except (ImportError, OSError):
        return False


def _mrope(section: list[int], rotary: int = HEAD_DIM) -> list[int]:
    """mrope sections scaled to sum to half the rotary part of a head (all of it but for partial rotary)."""
    total, half = sum(section), rotary // 2
    scaled = [max(1, round(s * half / total)) for s in section]
    scaled[0] += half - sum(scaled)
    return scaled


def token_remap(processor, tokenizer, tweaks: dict[str, str]):
    """`remap(key, value)` for `shrunk`: config token-id fields (`<name>_token_id`, `<name>_token_index`,
    `<name>_id`) -> the id of the processor's or tokenizer's `<name>_token` (image, video, boi, eoi,
    vision_start ...), the tokenizer's own BOS/EOS/PAD, or <unk> for an id outside the tiny vocabulary."""
    vocab = tokenizer.get_vocab()

    def remap(key: str, value: int) -> int | None:
        match = re.fullmatch(r"(\w+?)_(token_id|token_index|id)", key)
        if not match:
            return None
        stem = match.group(1)
        # Gemma 3: the processor's image_token is the marker, the tokenizer's the soft token
        for holder in (tokenizer, processor):
            known = getattr(holder, f"{stem}_token_id", None)
            if isinstance(known, int) and not isinstance(known, bool) and known < len(tokenizer) and key not in tweaks:
                return known
        token = (tweaks.get(key) or getattr(processor, f"{stem}_token", None)
                 or getattr(tokenizer, f"{stem}_token", None))
        if isinstance(token, str) and token in vocab:
            return vocab[token]
        if stem in ("pad", "bos", "eos") and getattr(tokenizer, f"{stem}_token_id", None) is not None:
            return getattr(tokenizer, f"{stem}_token_id")
        return vocab["<unk>"] if value >= len(tokenizer) else None

    return remap


# ---- the whole build ---------------------------------------------------------------------------------------


def chat_template(marker: str) -> str:
    """Role-tagged turns ending in TURN_END; image parts render as `marker`."""
    return (
        "{% for message in messages %}" + TURN_START + "{{ message['role'] }}\n"
        "{% if message['content'] is string %}{{ message['content'] }}"
        "{% else %}{% for part in message['content'] %}"
        "{% if part['type'] == 'image' %}" + marker + "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
        "{% endfor %}{% endif %}" + TURN_END + "\n{% endfor %}"
        "{% if add_generation_prompt %}" + TURN_START + "assistant\n{% endif %}"
    )


def classes(model_type: str, tweaks: dict):
    """(config class, model class, processor class) of an architecture of the mapping; the processor
    class from OVERRIDES when AutoProcessor's mapping has none for the type (a saved folder names its
    processor class, so AutoProcessor loads it all the same)."""
    import transformers
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING_NAMES

    processor_name = tweaks.get("processor_class") or PROCESSOR_MAPPING_NAMES.get(model_type)
    if processor_name is None:
        raise LookupError(f"{model_type} has no processor class in AutoProcessor's mapping")
    return (CONFIG_MAPPING[model_type], getattr(transformers, MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES[model_type]),
            getattr(transformers, processor_name))


def build_processor(model_type: str, processor_cls, tweaks: dict, config: dict[str, Any]):
    """Tokenizer + PIL image processor + processor class, with the chat template."""
    specials = BASE_SPECIALS + [t for t in special_tokens_in_source(processor_cls) + tweaks.get("specials", [])
                                if t not in BASE_SPECIALS]
    named = {"bos_token": "<s>", "eos_token": TURN_END, "pad_token": "<pad>", "unk_token": "<unk>",
             **({} if tweaks.get("source_tokens") is False else tokenizer_attributes_in_source(processor_cls)),
             **tweaks.get("tokenizer", {})}
    specials += [v for v in named.values() if v not in specials]
    tokenizer = train_tokenizer(specials, named, tweaks.get("tokenizer_class", "PreTrainedTokenizerFast"))
    attributes = processor_cls.get_attributes()
    parts: dict[str, Any] = {name: tokenizer for name in attributes if "tokenizer" in name}
    if "image_processor" in attributes:
        import transformers

        named = tweaks.get("image_processor_class")
        images_cls = getattr(transformers, named) if named else image_processor_class(model_type)
        parts["image_processor"] = small_image_processor(images_cls, tweaks.get("images", {}))
    if "video_processor" in attributes:
        # transformers builds video processors on torchvision only
        processor_cls = without_video(processor_cls.__name__)
    for other in attributes:
        if other not in parts and other != "video_processor":
            parts[other] = None  # feature extractor (audio): not built
    processor = processor_cls(**parts, **{**processor_defaults(processor_cls, config), **tweaks.get("processor", {})})
    # no image token: the processor puts the image outside the text (BLIP, GIT, Pix2Struct ...)
    marker = str(tweaks.get("marker", getattr(processor, "image_token", None) or ""))
    # some processors (GIT, Kosmos-2) keep only the tokenizer's
    processor.chat_template = tokenizer.chat_template = chat_template(marker)
    return processor, marker


def processor_defaults(processor_cls, config: dict[str, Any]) -> dict[str, Any]:
    """Processor arguments that must agree with the shrunk model: the patch size, and every argument
    the (shrunk) config also holds (vision_feature_select_strategy, image_seq_length ...)."""
    accepted = inspect.signature(processor_cls.__init__).parameters
    found = {"patch_size": PATCH} if "patch_size" in accepted else {}
    found.update({k: v for k, v in config.items() if k in accepted and k not in ("chat_template",)
                  and not isinstance(v, dict)})
    return found


def load_processor(folder: str | Path):
    """`AutoProcessor.from_pretrained(folder)`; for a processor class with a video half, without it
    (transformers builds video processors on torchvision only, and AutoProcessor then raises)."""
    from transformers import AutoProcessor

    try:
        return AutoProcessor.from_pretrained(str(folder))
    except (ImportError, AttributeError, OSError, ValueError):
        import json

        import transformers

        name = json.loads((Path(folder) / "processor_config.json").read_text()).get("processor_class")
        if name is None or "video_processor" not in getattr(transformers, name).get_attributes():
            raise
        return without_video(name).from_pretrained(str(folder))


def build_tiny(model_type: str, folder: str | Path, seed: int = 0) -> BuiltModel:
    """Build, shrink and save a tiny `model_type` with its processor into `folder` (see the module doc)."""
    if model_type in SKIP:
        raise RuntimeError(f"{model_type}: {SKIP[model_type]}")
    tweaks = OVERRIDES.get(model_type, {})
    config_cls, model_cls, processor_cls = classes(model_type, tweaks)
    default = config_cls()
    settings = {**vars(default), **shrunk(default, 0, text=False), **tweaks.get("config", {})}
    processor, marker = build_processor(model_type, processor_cls, tweaks, settings)
    tokenizer = processor.tokenizer
    kwargs = shrunk(default, len(tokenizer), True, token_remap(processor, tokenizer, tweaks.get("ids", {})))
    for name, extra in tweaks.get("sub", {}).items():
        kwargs[name] = {**kwargs.get(name, {}), **extra}
    kwargs.update(tweaks.get("config", {}))
    for key, token in tweaks.get("ids", {}).items():  # id fields the default config leaves None (BLIP-2)
        kwargs.setdefault(key, tokenizer.convert_tokens_to_ids(token))
    config = config_cls(**kwargs)
    torch.manual_seed(seed)
    model = model_cls(config).eval()
    with torch.no_grad():  # transformers starts some projections at zero (Gemma 3): images must be heard
        for weight in model.parameters():
            if weight.dim() >= 2 and not weight.any():
                weight.normal_(std=0.05)
        for name, weight in model.named_parameters():  # gates that start closed (tanh(0)): OVERRIDES' fill
            for pattern, value in tweaks.get("fill", {}).items():
                if re.search(pattern, name):
                    weight.fill_(value)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    folder = Path(folder)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    template = folder / "chat_template.jinja"
    if not template.exists():  # processors without a chat_template argument (GIT, Kosmos-2) save none
        template.write_text(processor.chat_template)
    parameters = sum(p.numel() for p in model.parameters())
    return BuiltModel(model_type, folder, marker, str(getattr(processor, "image_token", "")), parameters)


def unbuilt_checkpoint(model_type: str, folder: str | Path) -> Path:
    """A folder as a hub checkpoint of `model_type` ships it, but for the weights: its default config, a
    tokenizer, and `preprocessor_config.json` naming the processor and (torchvision) image processor classes
    of transformers' Auto mappings; for the load errors of a type whose processor cannot be built here."""
    import json

    from transformers.models.auto.configuration_auto import CONFIG_MAPPING
    from transformers.models.auto.image_processing_auto import IMAGE_PROCESSOR_MAPPING_NAMES
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING_NAMES

    folder = Path(folder)
    CONFIG_MAPPING[model_type]().save_pretrained(folder)
    train_tokenizer(BASE_SPECIALS, {"eos_token": TURN_END, "pad_token": "<pad>"}).save_pretrained(folder)
    names = IMAGE_PROCESSOR_MAPPING_NAMES.get(model_type) or {}
    image_processor = names if isinstance(names, str) else names.get("torchvision")
    (folder / "preprocessor_config.json").write_text(json.dumps(
        {"image_processor_type": image_processor, "processor_class": PROCESSOR_MAPPING_NAMES.get(model_type)}))
    return folder


def architectures() -> list[str]:
    """Every model type of the installed transformers' `AutoModelForImageTextToText` mapping."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    return list(MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES)


# ---- native use through the Auto classes (phase A of tests/test_hf_any.py) -------------------------------


def sample_images() -> list:
    """Two different real photographs: crops of matplotlib's sample `grace_hopper.jpg`."""
    from matplotlib.cbook import get_sample_data
    from PIL import Image

    with get_sample_data("grace_hopper.jpg") as file:
        photo = Image.open(file).convert("RGB")
    return [photo.crop((100, 50, 400, 350)), photo.crop((0, 250, 300, 550))]


def prompts(processor, marker: str) -> list[str]:
    """Two chat prompts with one image each, rendered by the saved chat template."""
    questions = ["What is in the image?", "Describe the picture."]
    holder = processor if getattr(processor, "chat_template", None) else processor.tokenizer
    return [holder.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]}],
                                          add_generation_prompt=True, tokenize=False) for q in questions]


def native_inputs(processor, marker: str, images: list, texts: list[str] | None = None) -> dict:
    """The processor's own batch for the two prompts (or `texts`), one image each, left padded (images
    grouped per text, or flat for the processors that take no nesting)."""
    call = dict(text=texts or prompts(processor, marker), padding=True, padding_side="left", return_tensors="pt")
    try:
        return dict(processor(images=[[image] for image in images], **call))
    except (ValueError, TypeError):
        return dict(processor(images=images, **call))


def pixels_of(inputs: dict) -> torch.Tensor:
    """The batch's image tensor (`pixel_values`, or the one floating tensor whose name says pixels / images)."""
    if "pixel_values" in inputs:
        return inputs["pixel_values"]
    named = [v for k, v in inputs.items() if any(w in k for w in ("pixel", "image", "patches"))
             and torch.is_tensor(v) and v.is_floating_point()]
    if not named:
        raise KeyError(f"no pixel tensor among the processor outputs {sorted(inputs)}")
    return named[0]


class MediaSeen:
    """Records the modules with weights whose forward received the image tensor, as it is or reshaped
    (same storage, or the same number of values: patch rows, tiles); outermost first."""

    def __init__(self, pixels: torch.Tensor) -> None:
        self.pixels, self.modules, self.classes = pixels, [], []

    def __enter__(self) -> "MediaSeen":
        self.handle = torch.nn.modules.module.register_module_forward_pre_hook(self.record)
        return self

    def __exit__(self, *exc) -> None:
        self.handle.remove()

    def record(self, module, args) -> None:
        if not any(True for _ in module.parameters(recurse=False)) and not list(module.children()):
            return
        for value in args:
            if isinstance(value, torch.Tensor) and value.is_floating_point() and value.numel() and (
                    value.untyped_storage().data_ptr() == self.pixels.untyped_storage().data_ptr()
                    or value.numel() == self.pixels.numel()):
                self.modules.append(type(module).__name__)
                self.classes.append(type(module))
