"""A family's own Hugging Face processor behind modalign's processor interface.

modalign calls `processor(text=[...], images=[...flat...], audio=[...flat...], padding_side=...)`
with one marker per media item in the rendered chat text, and gets back `input_ids`,
`attention_mask` and the media in `pixel_values` (images) or `input_values` (audio), packed
one row per item (`modalign.models.hf.packing`). This wrapper groups the items per text as
the family's processor wants them, checks marker and item counts, and packs the output.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from transformers import BatchFeature

from modalign.models.hf.families import Family
from modalign.models.hf.packing import pack


class HFProcessor:
    """The family's processor (tokenizer, image processor or feature extractor, chat template)."""

    def __init__(self, processor, family: Family) -> None:
        self.processor, self.family = processor, family
        self.marker = processor.image_token if family.modality == "image" else processor.audio_token

    @property
    def tokenizer(self):
        return self.processor.tokenizer

    @property
    def image_processor(self):
        return getattr(self.processor, "image_processor", None)

    @property
    def feature_extractor(self):
        return getattr(self.processor, "feature_extractor", None)

    @property
    def chat_template(self) -> str | None:
        return self.processor.chat_template

    def apply_chat_template(self, conversation, **kwargs):
        return self.processor.apply_chat_template(conversation, **kwargs)

    def save_pretrained(self, path: str | Path, **kwargs):
        return self.processor.save_pretrained(path, **kwargs)

    def __call__(
        self, text: str | Sequence[str], images: Sequence[Any] | None = None, audio: Sequence[np.ndarray] | None = None,
        padding_side: str = "left", return_tensors: str = "pt", **kwargs: Any,
    ) -> BatchFeature:
        """Tokenized texts (markers expanded by the family's processor) and their packed media."""
        texts = [text] if isinstance(text, str) else list(text)
        images, audio = list(images or []), list(audio or [])
        items, other = (images, audio) if self.family.modality == "image" else (audio, images)
        if other:
            kind = "audio clip" if self.family.modality == "image" else "image"
            raise ValueError(f"{self.family.name} reads {self.family.modality} only, but {len(other)} {kind}(s) were "
                             f"given: keep only the {self.family.modality} parts of the examples")
        per_text = [t.count(self.marker) for t in texts]
        if sum(per_text) != len(items):
            raise ValueError(f"{sum(per_text)} {self.marker} marker(s) in the text but {len(items)} "
                             f"{self.family.modality} item(s) given")
        call: dict[str, Any] = dict(text=texts, padding=True, padding_side=padding_side, return_tensors="pt",
                                    add_special_tokens=False)  # the chat template already wrote them
        if items and self.family.modality == "image":
            call["images"] = _per_text(items, per_text)
        elif items:
            call["audio"] = items
            call["sampling_rate"] = self.feature_extractor.sampling_rate
        output = self.processor(**call, **kwargs)
        data = {"input_ids": output["input_ids"], "attention_mask": output["attention_mask"]}
        if items:
            data[self.family.media_slot] = pack(self.family.layout, output)
        return BatchFeature(data)

    def batch_decode(self, *args, **kwargs):
        return self.tokenizer.batch_decode(*args, **kwargs)

    def decode(self, *args, **kwargs):
        return self.tokenizer.decode(*args, **kwargs)


def _per_text(items: list, counts: list[int]) -> list[list]:
    """Flat items -> one list per text (the nested form every image processor accepts)."""
    grouped, start = [], 0
    for count in counts:
        grouped.append(items[start : start + count])
        start += count
    return grouped


def load_processor(location: str | Path, family: Family, model_type: str) -> HFProcessor:
    """The family's processor from a folder; without torchvision, the Qwen-VL processors lose their video half."""
    from transformers import AutoProcessor
    from transformers.utils import is_torchvision_available

    if family.video_processor and not is_torchvision_available():
        from transformers.models.auto.processing_auto import PROCESSOR_MAPPING_NAMES

        processor = without_video(PROCESSOR_MAPPING_NAMES[model_type]).from_pretrained(str(location))
    else:
        processor = AutoProcessor.from_pretrained(str(location))
    return HFProcessor(processor, family)


@lru_cache(maxsize=None)
def without_video(class_name: str):
    """The family's processor class without its video processor (transformers builds that on torchvision only).

    It saves under the family's own class name, so a saved folder loads with `AutoProcessor`
    wherever torchvision is installed.
    """
    import transformers

    base = getattr(transformers, class_name)

    class ImagesOnly(base):
        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs) -> None:
            super().__init__(image_processor=image_processor, tokenizer=tokenizer, video_processor=None,
                             chat_template=chat_template, **kwargs)

        def to_dict(self) -> dict:
            return {**super().to_dict(), "processor_class": class_name}

    ImagesOnly.__name__ = ImagesOnly.__qualname__ = f"{class_name}ImagesOnly"
    return ImagesOnly
