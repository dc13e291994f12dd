"""Hugging Face VLMs and audio-LMs behind modalign's one policy interface.

`load_hf_policy(folder)` loads any checkpoint that loads with `AutoModelForImageTextToText` (or
`AutoModelForCausalLM` with a multimodal processor) and `AutoProcessor`; recipes then use it
exactly like the built-in model (policy, critic backbone, reward-model backbone). Registered
families (Qwen2-VL, Qwen2.5-VL, LLaVA, Idefics3, Gemma 3, Qwen2-Audio, and any added with
`register_family`) run a fast path, every other model type the generic path; `self_check`
compares the two on a run's first batch. See `modeling.HFPolicyModel` for the model calls,
`processing.HFProcessor` for the processor calls and docs/models.md.
"""

from __future__ import annotations

from pathlib import Path

import torch

from modalign.models.hf.families import (FAMILIES, Family, ModelSupportError, family_of, fast_paths_enabled,
                                         register_family)
from modalign.models.hf.features import PlaceholderFeatures
from modalign.models.hf.media import ProcessorMedia, concat_media
from modalign.models.hf.modeling import HFPolicyModel
from modalign.models.hf.processing import HFProcessor, load_processor, without_video


def load_hf_policy(location: str | Path, dtype: torch.dtype | None = None, chat_template: str | None = None):
    """A `Policy` of a Hugging Face checkpoint folder (or hub id), through its own `from_pretrained`.

    `chat_template` (a Jinja string) replaces the folder's chat template (for a checkpoint that has none).

    A LoRA folder (`adapter_config.json`, see `lora.init_lora`) loads its base checkpoint and
    then the adapter; its processor is the one saved next to the adapter.
    """
    from modalign.models.hf.lora import is_adapter_folder, load_lora
    from modalign.models.policy import Policy

    processor = load_hf_processor(location, chat_template)  # first: a model that cannot work fails early
    lora = is_adapter_folder(location)
    model = load_lora(location, dtype) if lora else HFPolicyModel.from_pretrained(location, dtype)
    align_turn_tokens(model, processor)
    policy = Policy(model=model, processor=processor, name=str(location))
    if model.family.generic and fast_paths_enabled():
        from modalign.models.hf.auto import try_fast_path

        # the `images` fast path, kept only if it gives the model's own outputs. This probe (one blank image)
        # runs here on the CPU, as loaded: a loader knows no run device. The run's own self-check
        # (`validate.check_fast_path`) runs again on the run's data and device, and falls back there.
        model.load_check = try_fast_path(policy)
    return policy


def load_hf_processor(location: str | Path, chat_template: str | None = None) -> HFProcessor:
    """The adapter's processor of a checkpoint or LoRA folder, without loading the weights (`chat_template`:
    see `load_hf_policy`)."""
    from transformers import AutoConfig

    from modalign.models.hf.lora import base_of

    config = AutoConfig.from_pretrained(str(base_of(location)))
    processor = load_processor(location, family_of(config, str(location)), config.model_type, chat_template)
    end_turns_with_eos(processor)
    return processor


def end_turns_with_eos(processor: HFProcessor) -> None:
    """Recipes end answers with `tokenizer.eos_token` (SFT targets, rollout stops, answer masks); chat
    checkpoints often keep a document-end token there (Gemma 3: `<eos>`, not `<end_of_turn>`), so it
    becomes the family's end-of-turn token when the vocabulary has it."""
    tokenizer, end_of_turn = processor.tokenizer, processor.family.end_of_turn
    if end_of_turn is None and processor.family.generic:
        end_of_turn = template_end_of_turn(processor)
    if end_of_turn in tokenizer.get_vocab() and tokenizer.eos_token != end_of_turn:
        tokenizer.eos_token = end_of_turn


def template_end_of_turn(processor: HFProcessor) -> str | None:
    """The special token the chat template writes right after an assistant message (None: it writes none)."""
    tokenizer, answer = processor.tokenizer, "modalign answer"
    for content in ([{"type": "text", "text": answer}], answer):
        turns = [{"role": "user", "content": [{"type": "text", "text": "hi"}] if isinstance(content, list) else "hi"},
                 {"role": "assistant", "content": content}]
        try:
            text = processor.apply_chat_template(turns, tokenize=False)
        except Exception:  # noqa: BLE001  (templates reject content forms they do not know)
            continue
        if answer not in text:
            continue
        special = set(tokenizer.all_special_ids)
        tail = tokenizer(text.rsplit(answer, 1)[1], add_special_tokens=False)["input_ids"]
        return next((tokenizer.convert_ids_to_tokens(t) for t in tail if t in special), None)
    return None


def align_turn_tokens(model: HFPolicyModel, processor: HFProcessor) -> None:
    """Make answers end where the family's chat format ends a turn (`end_turns_with_eos`, and the
    generation config stops there), and never sample media tokens: a sampled placeholder would have
    no features behind it."""
    end_turns_with_eos(processor)
    tokenizer, vocab = processor.tokenizer, processor.tokenizer.get_vocab()
    generation = model.generation_config
    eos = generation.eos_token_id
    eos = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
    if tokenizer.eos_token_id not in eos:
        generation.eos_token_id = eos + [tokenizer.eos_token_id]
    if generation.pad_token_id is None:
        generation.pad_token_id = tokenizer.pad_token_id
    media = model.media_token_ids + [vocab[t] for t in model.family.structure_tokens if t in vocab]
    generation.suppress_tokens = sorted(set(generation.suppress_tokens or []) | set(media))


__all__ = ["FAMILIES", "Family", "HFPolicyModel", "HFProcessor", "ModelSupportError", "PlaceholderFeatures",
           "ProcessorMedia", "align_turn_tokens", "concat_media", "end_turns_with_eos", "family_of", "load_hf_policy",
           "load_hf_processor", "load_processor", "register_family", "without_video"]
