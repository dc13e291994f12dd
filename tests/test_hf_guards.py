"""Guards of the Hugging Face adapter: media are never lost, misplaced or cut without a clear error.

Each test fails without its guard: placeholder counts (processor and model), truncation,
raw processor inputs, packed layouts, mixed text-only + media batches, and debug mode.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from hf_tiny import FAMILIES, shapes, tiny  # noqa: F401  (module fixtures)
from modalign.data.dataset import read_examples
from modalign.models.inputs import MediaStore, encode_sft_example, render_prompt
from modalign.models.policy import load_policy

RNG = np.random.default_rng(0)
IMAGES = [Image.fromarray(RNG.integers(0, 255, (48, 48, 3), dtype=np.uint8)) for _ in range(3)]
CLIPS = [RNG.standard_normal(n).astype(np.float32) * 0.1 for n in (16000, 8000, 12000)]


def prompts(processor, counts: list[int]) -> list[str]:
    """Chat prompts with `counts[i]` media items in prompt i (0: a text-only prompt)."""
    kind = processor.family.modality
    return [processor.apply_chat_template(
        [{"role": "user", "content": [{"type": kind}] * n + [{"type": "text", "text": "How many shapes?"}]}],
        add_generation_prompt=True, tokenize=False) for n in counts]


def media_kwargs(processor, count: int, start: int = 0) -> dict:
    if processor.family.modality == "image":
        return {"images": IMAGES[start : start + count]}
    return {"audio": CLIPS[start : start + count]}


def policy_of(tiny, family: str):
    policy = load_policy(tiny(family)[0])
    policy.model.eval()
    return policy


# ---- placeholder counts ---------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["qwen2_vl", "gemma3", "qwen2_audio"])
def test_processor_refuses_more_markers_than_media(tiny, family):
    processor = policy_of(tiny, family).processor
    with pytest.raises(ValueError, match=r"2 .* marker\(s\) in the text but 1"):
        processor(text=prompts(processor, [2]), **media_kwargs(processor, 1))


def test_processor_refuses_the_other_modality(tiny):
    processor = policy_of(tiny, "qwen2_audio").processor
    with pytest.raises(ValueError, match=r"reads audio only, but the data hold 1 image item\(s\): drop the image parts "
                                         r"of the examples with `--set modalities=audio`"):
        processor(text=prompts(processor, [1]), audio=CLIPS[:1], images=IMAGES[:1])


@pytest.mark.parametrize("family", FAMILIES)
def test_features_of_another_batch_are_refused(tiny, family):
    """Cached features must cover exactly the placeholders of each row (masked_scatter would use any prefix)."""
    policy = policy_of(tiny, family)
    model, processor = policy.model, policy.processor
    batch = processor(text=prompts(processor, [2, 1]), **media_kwargs(processor, 3))
    media = model.encode_media(batch["input_ids"], batch.get("pixel_values"), batch.get("input_values"))
    swapped = media.select_rows(torch.tensor([1, 0]))  # row 0 now carries one item's features, row 1 two
    with pytest.raises(ValueError, match="do not match"):
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], media=swapped)


# ---- truncation -----------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["qwen2_vl", "idefics3", "qwen2_audio"])
def test_truncation_inside_the_media_tokens_fails_clearly(tiny, family):
    """A prompt cut inside its media tokens cannot pass for a shorter image: encode and forward both refuse it."""
    policy = policy_of(tiny, family)
    model, processor = policy.model, policy.processor
    batch = processor(text=prompts(processor, [1]), **media_kwargs(processor, 1), padding_side="right")
    slots = (batch["input_ids"][0] == model.placeholder_id).nonzero().flatten()
    cut = int(slots[len(slots) // 2])  # keep only half the media tokens
    ids, mask = batch["input_ids"][:, :cut], batch["attention_mask"][:, :cut]
    media_key = processor.family.media_slot
    with pytest.raises(ValueError, match="do not match"):
        model.encode_media(ids, **{media_key: batch[media_key]})
    media = model.encode_media(batch["input_ids"], **{media_key: batch[media_key]})
    with pytest.raises(ValueError, match="was a prompt truncated"):
        model(input_ids=ids, attention_mask=mask, media=media)


@pytest.mark.parametrize("family", ["gemma3", "qwen2_audio"])
def test_sft_truncation_cuts_answers_never_media(tiny, family):
    policy = policy_of(tiny, family)
    model_dir, data = tiny(family)
    example = read_examples(data, "train")[0]
    store, processor = MediaStore(data), policy.processor
    full = encode_sft_example(processor, store, example, max_length=1024)
    cut = encode_sft_example(processor, store, example, max_length=full.prompt_length + 1)
    assert cut.input_ids.shape[0] == full.prompt_length + 1
    placeholders = (cut.input_ids == policy.model.placeholder_id).sum()
    assert placeholders == (full.input_ids == policy.model.placeholder_id).sum() > 0
    with pytest.raises(ValueError, match=f"record {example.id!r}: the prompt alone takes"):
        encode_sft_example(processor, store, example, max_length=full.prompt_length - 1)


@pytest.mark.parametrize("family", FAMILIES)
def test_sft_labels_start_exactly_at_the_answer(tiny, family):
    """The answer's tokens are counted in context (a Llama tokenizer marks a standalone first word differently)."""
    policy = policy_of(tiny, family)
    _, data = tiny(family)
    tokenizer = policy.processor.tokenizer
    for example in read_examples(data, "train")[:3]:
        encoded = encode_sft_example(policy.processor, MediaStore(data), example, max_length=1024)
        answer = encoded.input_ids[encoded.prompt_length :]
        assert tokenizer.decode(answer[:-1]).strip() == example.answer and answer[-1] == tokenizer.eos_token_id


def test_builtin_answer_count_is_the_standalone_count(shapes):
    """For the built-in tokenizer (prompt ends in a special token) the in-context count is the old one."""
    from modalign.models.inputs import answer_token_count, eos_text
    from modalign.models.policy import create_tinyvlm

    processor = create_tinyvlm(shapes["corpus"], vocab_size=300, hidden_size=32, num_hidden_layers=1,
                               num_attention_heads=2, intermediate_size=64).processor
    for example in read_examples(shapes["image"], "train"):
        target = example.answer + eos_text(processor)
        standalone = len(processor.tokenizer(target, add_special_tokens=False)["input_ids"])
        assert answer_token_count(processor.tokenizer, render_prompt(processor, example), target) == standalone


# ---- raw or mis-packed inputs ---------------------------------------------------------------------


@pytest.mark.parametrize("family", ["qwen2_vl", "idefics3", "gemma3", "qwen2_audio"])
def test_raw_processor_inputs_are_refused_not_ignored(tiny, family):
    """The family's own processor output would be dropped next to inputs_embeds: a clear error instead."""
    policy = policy_of(tiny, family)
    processor = policy.processor
    call = dict(text=prompts(processor, [1]), padding=True, return_tensors="pt", add_special_tokens=False)
    if processor.family.modality == "image":
        call["images"] = [IMAGES[:1]]
    else:
        call.update(audio=CLIPS[:1], sampling_rate=16000)
    raw = dict(processor.processor(**call))
    raw.pop("pixel_values", None)  # what is left are the inputs only the family's own forward reads
    with pytest.raises(ValueError, match="processor's own inputs"):
        policy.model(**raw)


@pytest.mark.parametrize("family,slot", [("qwen2_vl", "pixel_values"), ("qwen2_audio", "input_values")])
def test_unpacked_media_tensors_are_refused(tiny, family, slot):
    policy = policy_of(tiny, family)
    processor = policy.processor
    batch = processor(text=prompts(processor, [1]), **media_kwargs(processor, 1))
    raw = torch.randn(batch[slot].shape[0], *batch[slot].shape[1:])  # same shape, no header rows / frame mask
    with pytest.raises(ValueError, match="packed layout"):
        policy.model.encode_media(batch["input_ids"], **{slot: raw})


# ---- mixed batches ---------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_mixed_text_only_and_media_rows_match_each_row_alone(tiny, family):
    """Rows without media next to rows with one or two items: every row's logits are its own."""
    policy = policy_of(tiny, family)
    model, processor = policy.model, policy.processor
    counts = [0, 1, 0, 2]
    texts = prompts(processor, counts)
    batch = processor(text=texts, **media_kwargs(processor, 3))
    with torch.no_grad():
        together = model(**batch).logits
        start = 0
        for row, count in enumerate(counts):
            alone = model(**processor(text=[texts[row]], **media_kwargs(processor, count, start))).logits[0]
            assert torch.allclose(together[row, -alone.shape[0] :], alone, atol=1e-5), row
            start += count


# ---- debug mode -------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_debug_mode_catches_media_that_never_reach_the_decoder(tiny, family, monkeypatch):
    policy = policy_of(tiny, family)
    model, processor = policy.model, policy.processor
    batch = processor(text=prompts(processor, [1, 0]), **media_kwargs(processor, 1))
    model.debug_media = True
    with torch.no_grad():
        model(**batch)  # the media arrive: no complaint
        model.generate(**batch, max_new_tokens=2, do_sample=False)
        lost = lambda input_ids, media: model.hf.get_input_embeddings()(input_ids.clamp(max=10))  # noqa: E731
        monkeypatch.setattr(model, "embed", lost)  # a bug that drops the media on the way
        with pytest.raises(AssertionError, match="media were lost"):
            model(**batch)


def test_debug_mode_follows_the_environment(tiny, monkeypatch):
    monkeypatch.setenv("MODALIGN_DEBUG_MEDIA", "1")
    assert policy_of(tiny, "llava").model.debug_media
    monkeypatch.setenv("MODALIGN_DEBUG_MEDIA", "0")
    assert not policy_of(tiny, "llava").model.debug_media


def test_rendered_prompt_keeps_one_marker_per_item(tiny):
    """The chat template writes one marker per media part, which the processor then expands."""
    policy = policy_of(tiny, "idefics3")
    model_dir, data = tiny("idefics3")
    example = read_examples(data, "train")[0]
    assert render_prompt(policy.processor, example).count(policy.processor.marker) == len(example.media)
