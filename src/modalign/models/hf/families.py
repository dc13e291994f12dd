"""What differs between the Hugging Face families with a fast path, as data; the generic family for the rest.

Any model that loads with `AutoModelForImageTextToText` (or `AutoModelForCausalLM`) and
`AutoProcessor` runs on the generic path (`generic_family`): the model's own forward and
generate on every processor output. A registered family (`register_family`) is a fast path on
top: media encoded once and scattered into the placeholders, the shared prompt cache, and
shared-prefix packing. Everything in a fast path is shared by the adapter; a new one is one
more `Family`, not a branch in the adapter (see docs/models.md).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

from modalign.models.hf.encoders import encode_images, encode_qwen2_audio


@dataclass(frozen=True)
class Family:
    """One Hugging Face model family behind modalign's policy interface.

    model_class: the transformers class that loads a checkpoint of the family
    modality: "image" or "audio", the one media kind the model reads ("image+audio" for a generic
        family whose processor takes both)
    layout: how its media tensors are packed (see `modalign.models.hf.packing`); "generic" keeps
        every processor output per row (`modalign.models.hf.media`) for the model's own forward
    encoder_modules: attribute paths (under the loaded model) of the media encoder and
        projector, frozen during RL so that cached features stay valid
    positions: "mrope" when text positions depend on the image grids (Qwen2-VL), else "text"
    image_token_types: Gemma 3 reads `token_type_ids` (1 on image tokens) for bidirectional
        attention inside each image
    video_processor: the family's processor also holds a video processor (torchvision-only)
    end_of_turn: the token that ends an assistant turn in the family's chat format
    structure_tokens: media framing tokens, never sampled (with the placeholder itself)
    encode: `fn(model, unpacked media inputs) -> (N_tok, D)` placeholder features
    generate_from: how `generate` gets the cached features: "inputs_embeds" (media already in
        place), or "mm_encoder_outputs" (transformers' own precomputed-features input) for models
        whose generation takes no `inputs_embeds` (Gemma 3)
    """

    name: str
    model_class: str
    modality: str
    layout: str
    encoder_modules: tuple[str, ...]
    positions: str = "text"
    image_token_types: bool = False
    video_processor: bool = False
    end_of_turn: str | None = None
    structure_tokens: tuple[str, ...] = ()
    encode: Callable = encode_images
    generate_from: str = "inputs_embeds"

    @property
    def generic(self) -> bool:
        """No fast path: the model's own forward and generate on every processor output."""
        return self.layout == "generic"

    @property
    def media_slot(self) -> str:
        """The modalign batch key that carries this family's media."""
        return "input_values" if self.modality == "audio" else "pixel_values"

    def reads(self, kind: str) -> bool:
        """Whether the family reads media of `kind` ("image" or "audio")."""
        return kind in self.modality.split("+")

    def placeholder_id(self, config) -> int | None:
        """The token id whose positions receive the media features (None: a generic model that names none)."""
        kind = "image" if self.reads("image") else "audio"
        value = media_token_ids(config).get(kind)
        if value is None and not self.generic:
            raise ModelSupportError(f"{self.name} config has no {kind}_token_id: cannot place {kind} features")
        return value


class ModelSupportError(ValueError):
    """A model that cannot run in modalign, in one line naming its model type and what is missing."""


def media_token_ids(config) -> dict[str, int]:
    """{"image": id, "audio": id} of the placeholder tokens a config names (either spelling transformers uses)."""
    found = {}
    for kind in ("image", "audio"):
        for name in (f"{kind}_token_id", f"{kind}_token_index"):
            value = getattr(config, name, None)
            if isinstance(value, int):
                found[kind] = value
                break
    return found


_QWEN_VL = dict(modality="image", layout="patches", encoder_modules=("model.visual",), positions="mrope",
                video_processor=True, end_of_turn="<|im_end|>",
                structure_tokens=("<|vision_start|>", "<|vision_end|>", "<|video_pad|>"))

FAMILIES: dict[str, Family] = {
    "qwen2_vl": Family("qwen2_vl", "Qwen2VLForConditionalGeneration", **_QWEN_VL),
    "qwen2_5_vl": Family("qwen2_5_vl", "Qwen2_5_VLForConditionalGeneration", **_QWEN_VL),
    "llava": Family("llava", "LlavaForConditionalGeneration", "image", "images",
                    ("model.vision_tower", "model.multi_modal_projector"), end_of_turn="</s>"),
    "idefics3": Family("idefics3", "Idefics3ForConditionalGeneration", "image", "tiles",
                       ("model.vision_model", "model.connector"), end_of_turn="<end_of_utterance>",
                       structure_tokens=("<fake_token_around_image>", "<global-img>")),
    "gemma3": Family("gemma3", "Gemma3ForConditionalGeneration", "image", "images",
                     ("model.vision_tower", "model.multi_modal_projector"), image_token_types=True,
                     end_of_turn="<end_of_turn>", structure_tokens=("<start_of_image>", "<end_of_image>"),
                     generate_from="mm_encoder_outputs"),
    "qwen2_audio": Family("qwen2_audio", "Qwen2AudioForConditionalGeneration", "audio", "mel",
                          ("model.audio_tower", "model.multi_modal_projector"), end_of_turn="<|im_end|>",
                          structure_tokens=("<|audio_bos|>", "<|audio_eos|>"), encode=encode_qwen2_audio),
}


# Where the media encoders of most transformers VLMs sit; a generic model freezes those it has during RL.
ENCODER_MODULES = ("model.vision_tower", "model.visual", "model.vision_model", "model.vision_encoder",
                   "model.multi_modal_projector", "model.connector", "model.audio_tower", "model.mm_projector")


# Prefix-LMs: their token_type_ids mark the answer as a causal suffix after a bidirectional prompt, which
# depends on where each row's prompt ends, not on token ids (`ProcessorMedia.token_type_inputs`).
PREFIX_LM_TYPES = ("paligemma",)


def register_family(family: Family, model_type: str | None = None, replace: bool = False) -> Family:
    """Register a fast path for `model_type` (default: `family.name`); unregistered types run the generic path.

    The family's fast path is checked against the model's own forward on the first batch of
    a run (`modalign.models.hf.self_check`), so a wrong entry costs speed, not correctness.
    """
    key = model_type or family.name
    if family.generic:
        raise ValueError(f"register_family({key!r}): a generic family needs no registration")
    if key in FAMILIES and not replace and FAMILIES[key] != family:
        raise ValueError(f"model_type {key!r} already has a fast path; pass replace=True to change it")
    FAMILIES[key] = family
    return family


def generic_family(config, modalities: tuple[str, ...] | None = None) -> Family:
    """The family of a model with no fast path: its model type, the media it reads, no packing.

    modalities: what its processor takes ("image", "audio"); by default what its config names a
    placeholder token for.
    """
    model_type = getattr(config, "model_type", "unknown")
    if model_type in PREFIX_LM_TYPES:
        raise ModelSupportError(f"model_type {model_type!r} is a prefix-LM (token_type_ids mark each answer as a "
                                f"causal suffix); modalign's generic path cannot mark answers for it yet")
    kinds = tuple(modalities) if modalities else tuple(media_token_ids(config)) or ("image",)
    return Family(model_type, "AutoModelForImageTextToText", "+".join(kinds), "generic", ENCODER_MODULES)


FAST_PATHS_ENV = "MODALIGN_FAST_PATHS"


def fast_paths_enabled() -> bool:
    """False when `MODALIGN_FAST_PATHS=0`: every Hugging Face model then runs the generic path."""
    return os.environ.get(FAST_PATHS_ENV, "1") not in ("0", "")


def family_of(config, where: str = "") -> Family:
    """The registered fast path of a config's model type, else (or with fast paths off) the generic family."""
    model_type = getattr(config, "model_type", None)
    if model_type in FAMILIES and fast_paths_enabled():
        return FAMILIES[model_type]
    return generic_family(config)
