"""Processor of the built-in VLM: PIL images and waveforms in, model tensors out.

No torchvision or torchaudio: images are resized with PIL, audio is padded here and
turned into log-mel features inside the model (`torch.stft`).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image
from transformers import BaseImageProcessor, BatchFeature, FeatureExtractionMixin, ProcessorMixin

from modalign.models.tinyvlm.tokenizer import AUDIO, IMAGE


class TinyVLMImageProcessor(BaseImageProcessor):
    """Resize to `image_size` (bicubic), scale to [0, 1], normalise with mean/std."""

    model_input_names = ["pixel_values"]

    def __init__(self, image_size: int = 48, image_mean: float = 0.5, image_std: float = 0.5, **kwargs) -> None:
        super().__init__(**kwargs)
        self.image_size, self.image_mean, self.image_std = image_size, image_mean, image_std

    def __call__(self, images: Sequence[Image.Image], return_tensors: str = "pt", **kwargs) -> BatchFeature:
        arrays = [self._to_array(image) for image in images]
        stacked = np.stack(arrays) if arrays else np.zeros((0, 3, self.image_size, self.image_size), np.float32)
        return BatchFeature({"pixel_values": torch.from_numpy(stacked)})

    def _to_array(self, image: Image.Image) -> np.ndarray:
        if not isinstance(image, Image.Image):
            raise TypeError(f"TinyVLMImageProcessor expects PIL images, got {type(image).__name__}")
        image = image.convert("RGB")
        if image.size != (self.image_size, self.image_size):
            image = image.resize((self.image_size, self.image_size), Image.Resampling.BICUBIC)
        array = np.asarray(image, dtype=np.float32) / 255.0  # (H, W, 3)
        return ((array - self.image_mean) / self.image_std).transpose(2, 0, 1)  # (3, H, W)


class TinyVLMFeatureExtractor(FeatureExtractionMixin):
    """Mono waveforms at `sampling_rate`, right-padded with silence to the model's window.

    A longer clip is an error, or with `truncate` cut to the window (its end is dropped).
    """

    model_input_names = ["input_values"]

    def __init__(self, sampling_rate: int = 16000, num_samples: int = 16000, truncate: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        self.sampling_rate, self.num_samples, self.truncate = sampling_rate, num_samples, truncate

    @property
    def max_seconds(self) -> float | None:
        """The longest clip accepted, for an up-front check (`validate.check_audio_window`); None: any (cut)."""
        return None if self.truncate else self.num_samples / self.sampling_rate

    def __call__(self, audios: Sequence[np.ndarray], return_tensors: str = "pt", **kwargs) -> BatchFeature:
        batch = np.zeros((len(audios), self.num_samples), dtype=np.float32)
        for index, wave in enumerate(audios):
            wave = np.asarray(wave, dtype=np.float32)
            if wave.ndim != 1:
                raise ValueError(f"audio clip {index}: expected a mono waveform (1-D), got shape {wave.shape}")
            if wave.shape[0] > self.num_samples and self.truncate:
                wave = wave[: self.num_samples]
            if wave.shape[0] > self.num_samples:
                raise ValueError(
                    f"audio clip {index} lasts {wave.shape[0] / self.sampling_rate:.2f} s, longer than the model's "
                    f"{self.num_samples / self.sampling_rate:.2f} s window (the built-in model's audio_seconds; "
                    f"or audio_overflow=truncate)"
                )
            batch[index, : wave.shape[0]] = wave
        return BatchFeature({"input_values": torch.from_numpy(batch)})


class TinyVLMProcessor(ProcessorMixin):
    """Tokenizer + image processor + audio feature extractor of the built-in VLM.

    Text holds one `<image>` / `<audio>` marker per media item (the chat template writes
    them); `__call__` expands each marker to the model's number of media tokens.
    """

    def __init__(
        self,
        image_processor: TinyVLMImageProcessor,
        feature_extractor: TinyVLMFeatureExtractor,
        tokenizer,
        chat_template: str | None = None,
        image_seq_length: int = 9,
        audio_seq_length: int = 13,
        **kwargs,
    ) -> None:
        self.image_seq_length, self.audio_seq_length = image_seq_length, audio_seq_length
        super().__init__(image_processor, feature_extractor, tokenizer, chat_template=chat_template, **kwargs)

    def __call__(
        self,
        text: str | Sequence[str],
        images: Sequence[Image.Image] | None = None,
        audio: Sequence[np.ndarray] | None = None,
        padding_side: str = "left",
        return_tensors: str = "pt",
        **kwargs: Any,
    ) -> BatchFeature:
        texts = [text] if isinstance(text, str) else list(text)
        images, audio = list(images or []), list(audio or [])
        _check_marker_count(texts, IMAGE, len(images), "image")
        _check_marker_count(texts, AUDIO, len(audio), "audio")
        expanded = [t.replace(IMAGE, IMAGE * self.image_seq_length).replace(AUDIO, AUDIO * self.audio_seq_length) for t in texts]
        self.tokenizer.padding_side = padding_side
        encoded = self.tokenizer(expanded, add_special_tokens=False, padding=True, return_tensors="pt")
        data: dict[str, Any] = {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}
        if images:
            data.update(self.image_processor(images))
        if audio:
            data.update(self.feature_extractor(audio))
        return BatchFeature(data)

    @property
    def model_input_names(self) -> list[str]:
        return ["input_ids", "attention_mask", "pixel_values", "input_values"]


def _check_marker_count(texts: list[str], marker: str, n_given: int, kind: str) -> None:
    n_markers = sum(t.count(marker) for t in texts)
    if n_markers != n_given:
        raise ValueError(f"{n_markers} {marker} marker(s) in the text but {n_given} {kind}(s) given")
