"""What differs between the supported Hugging Face families, as data.

Everything else (encode once, scatter into placeholders, forward, generate) is shared by the
adapter. A new family is one more `Family` entry, not a branch in the adapter.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from modalign.models.hf.encoders import encode_images, encode_qwen2_audio


@dataclass(frozen=True)
class Family:
    """One Hugging Face model family behind modalign's policy interface.

    model_class: the transformers class that loads a checkpoint of the family
    modality: "image" or "audio", the one media kind the model reads
    layout: how its media tensors are packed (see `modalign.models.hf.packing`)
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
    def media_slot(self) -> str:
        """The modalign batch key that carries this family's media."""
        return "pixel_values" if self.modality == "image" else "input_values"

    def placeholder_id(self, config) -> int:
        """The token id whose positions receive the media features."""
        name = "image_token_id" if self.modality == "image" else "audio_token_id"
        value = getattr(config, name, None)
        if value is None:
            raise ValueError(f"{self.name} config has no {name}: cannot place {self.modality} features")
        return int(value)


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


def family_of(config, where: str = "") -> Family:
    """The family of a loaded config; a clear error for model types modalign does not adapt."""
    model_type = getattr(config, "model_type", None)
    if model_type not in FAMILIES:
        place = f"{where}: " if where else ""
        raise ValueError(f"{place}model_type {model_type!r} has no modalign adapter "
                         f"(supported: tinyvlm, {', '.join(sorted(FAMILIES))})")
    return FAMILIES[model_type]
