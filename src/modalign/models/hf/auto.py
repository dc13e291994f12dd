"""A fast path tried for an unregistered model type, kept only when it gives the model's own outputs.

Most transformers 5.x VLMs build their inputs the same way: `get_image_features(pixel_values)`,
then the features replace the image placeholder tokens (`get_placeholder_mask`). When an
unregistered model has both, and its processor gives nothing for an image but `pixel_values`
(and token types), the `images` fast path of LLaVA fits it: features encoded once and cached,
the shared prompt cache. `try_fast_path` builds that family and runs the self-check on a probe
(a blank image and a short chat); the policy keeps the fast path only when the log-probs and
greedy answers equal the model's own, and stays on the generic path otherwise.

`MODALIGN_FAST_PATHS=0` keeps every Hugging Face model on the generic path (registered ones too).
"""

from __future__ import annotations

from dataclasses import replace

from modalign.models.hf.families import ENCODER_MODULES, Family
from modalign.models.hf.self_check import TOLERANCE, check_paths

# Per-token processor outputs the `images` fast path rebuilds from the ids (`extras`).
_TOKEN_TYPES = {"token_type_ids", "mm_token_type_ids"}


def try_fast_path(policy, tolerance: float = TOLERANCE) -> dict | None:
    """Give a generic image model the `images` fast path if it passes the self-check on a probe; the check's
    record, or None when the model does not have what the fast path needs."""
    from modalign.models.hf import template_end_of_turn

    model, processor = policy.model, policy.processor
    hf = model.hf
    if processor.family.modality != "image" or model.placeholder_id is None:
        return None
    placing = any(hasattr(part, "get_placeholder_mask") for part in (hf, getattr(hf, "model", None)))
    if not (hasattr(hf, "get_image_features") and placing):
        return None
    prompts, answers, images = _probe(processor)
    try:
        media = processor(text=prompts, images=images)[processor.family.media_slot]
    except Exception:  # noqa: BLE001  (a processor the probe does not suit: stay generic)
        return None
    outputs = {name for row in media.rows for name in row}
    if outputs != {"pixel_values"} or not set(media.token_types) <= _TOKEN_TYPES:
        return None
    generic = processor.family
    family = Family(generic.name, type(hf).__name__, "image", "images",
                    tuple(path for path in ENCODER_MODULES if _has(hf, path)),
                    image_token_types="token_type_ids" in media.token_types,
                    end_of_turn=template_end_of_turn(processor))
    record = None
    for generate_from in ("inputs_embeds", "mm_encoder_outputs"):
        candidate = replace(family, generate_from=generate_from)
        model.family = candidate
        processor.__init__(processor.processor, candidate)
        record = check_paths(policy, prompts, answers, images, [], tolerance, warn=False)
        if record["self_check"]["path"] == "fast":
            break
    return record


def _probe(processor) -> tuple[list[str], list[str], list]:
    """One chat turn about one blank image, with a short answer."""
    from PIL import Image

    turn = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is in the picture?"}]}]
    prompt = processor.apply_chat_template(turn, add_generation_prompt=True, tokenize=False)
    return [prompt], ["A small square." + processor.tokenizer.eos_token], [Image.new("RGB", (64, 64), (90, 120, 200))]


def _has(model, path: str) -> bool:
    try:
        model.get_submodule(path)
    except AttributeError:
        return False
    return True
