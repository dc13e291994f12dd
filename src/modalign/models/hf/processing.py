"""A family's own Hugging Face processor behind modalign's processor interface.

modalign calls `processor(text=[...], images=[...flat...], audio=[...flat...], padding_side=...)`
with one marker per media item in the rendered chat text, and gets back `input_ids`,
`attention_mask` and the media in `pixel_values` (images) or `input_values` (audio), packed
one row per item (`modalign.models.hf.packing`). This wrapper groups the items per text as
the family's processor wants them, checks marker and item counts, and packs the output.
"""

from __future__ import annotations

import inspect
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from transformers import BatchFeature

from modalign.errors import first_line
from modalign.models.hf.families import Family, ModelSupportError, generic_family
from modalign.models.hf.media import ProcessorMedia
from modalign.models.hf.packing import pack


class HFProcessor:
    """The family's processor (tokenizer, image processor or feature extractor, chat template)."""

    def __init__(self, processor, family: Family) -> None:
        self.processor, self.family = processor, family
        # what the chat template writes per item: the processor's `image_token`, or the placeholder it expands
        # when that differs from the token it expands it into (Qianfan-OCR: <image> -> <|context_image|> runs)
        markers = {kind: getattr(processor, f"{kind}_placeholder_token", None)
                   or getattr(processor, f"{kind}_token", None) for kind in ("image", "audio") if family.reads(kind)}
        self.markers = {kind: None if m is None else str(m) for kind, m in markers.items()}  # BLIP-2: an AddedToken
        self.marker = next(iter(self.markers.values()))

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
        """The processor's own save; its chat template also as `chat_template.jinja` when the processor class
        saves none (GIT, Kosmos-2 take no template argument), so the saved folder loads with the same one."""
        saved = self.processor.save_pretrained(path, **kwargs)
        template = Path(path) / "chat_template.jinja"
        if self.chat_template and not template.exists() and not (Path(path) / "chat_template.json").exists():
            template.write_text(self.chat_template)
        return saved

    def __call__(
        self, text: str | Sequence[str], images: Sequence[Any] | None = None, audio: Sequence[np.ndarray] | None = None,
        padding_side: str = "left", return_tensors: str = "pt", **kwargs: Any,
    ) -> BatchFeature:
        """Tokenized texts (markers expanded by the family's processor) and their media: packed one row per
        item for a fast-path family, every processor output per text (`ProcessorMedia`) for the generic path."""
        texts = [text] if isinstance(text, str) else list(text)
        given = {"image": list(images or []), "audio": list(audio or [])}
        self._check_modalities(given)
        per_text = {kind: self._count_markers(kind, texts, len(items)) for kind, items in given.items() if items}
        if self.family.generic:
            return self._generic_call(texts, given, per_text, padding_side, **kwargs)
        call: dict[str, Any] = dict(text=texts, padding=True, padding_side=padding_side, return_tensors="pt",
                                    add_special_tokens=False)  # the chat template already wrote them
        items = given[self.family.modality]
        if items and self.family.modality == "image":
            call["images"] = _per_text(items, per_text["image"])
        elif items:
            call["audio"] = items
            call["sampling_rate"] = self.feature_extractor.sampling_rate
        output = self.processor(**call, **kwargs)
        data = {"input_ids": output["input_ids"], "attention_mask": output["attention_mask"]}
        if items:
            data[self.family.media_slot] = pack(self.family.layout, output)
        return BatchFeature(data)

    def _check_modalities(self, given: dict[str, list]) -> None:
        """Media of a kind the model does not read: the error names the option that drops them."""
        for kind, items in given.items():
            if items and not self.family.reads(kind):
                read = self.family.modality
                raise ModelSupportError(
                    f"model_type {self.family.name!r} reads {read} only, but the data hold {len(items)} {kind} "
                    f"item(s): "
                    f"drop the {kind} parts of the examples with `--set modalities={read}`")

    def _count_markers(self, kind: str, texts: list[str], given: int) -> list[int]:
        marker = self.markers.get(kind)
        unmarked = marker is None or not any(marker in text for text in texts)
        if unmarked and self.family.generic and kind == "image" and given == len(texts):
            # the processor places the image itself (GIT, Kosmos-2, BLIP-2: no image token in the chat text):
            # one per text, and the processor checks it
            return [1] * len(texts)
        if marker is None:
            raise ModelSupportError(f"model_type {self.family.name!r}: its processor names no {kind}_token, so "
                                    f"{kind} items cannot be placed in the text ({given} for {len(texts)} text(s); "
                                    f"without markers the processor takes one image per text)")
        per_text = [t.count(marker) for t in texts]
        if sum(per_text) != given:
            raise ValueError(f"{sum(per_text)} {marker} marker(s) in the text but {given} {kind} item(s) given")
        return per_text

    def _generic_call(self, texts: list[str], given: dict[str, list], per_text: dict[str, list[int]],
                      padding_side: str, **kwargs: Any) -> BatchFeature:
        """One processor call per text, its outputs kept for that row (`ProcessorMedia`), the ids padded here."""
        rows, tables, ids, positional = [], {}, [], set()
        starts = dict.fromkeys(per_text, 0)
        for index, text in enumerate(texts):
            call: dict[str, Any] = dict(text=[text], return_tensors="pt", add_special_tokens=False)
            for kind, counts in per_text.items():
                items = given[kind][starts[kind] : starts[kind] + counts[index]]
                starts[kind] += counts[index]
                if items and kind == "image":
                    call["images"] = [items]
                elif items:
                    call.update(audio=items, sampling_rate=self.feature_extractor.sampling_rate)
            output = self._call_one(call, **kwargs)
            row_ids = output["input_ids"]  # (1, L_i)
            if row_ids.shape[0] != 1:
                raise ModelSupportError(f"model_type {self.family.name!r}: its processor makes {row_ids.shape[0]} rows "
                                        f"of one text; modalign needs one row per text")
            media = {}
            for name, value in output.items():
                if name in ("input_ids", "attention_mask") or not isinstance(value, (torch.Tensor, list)):
                    continue
                if isinstance(value, list):  # one entry per text (Fuyu's image patches): rows chain them
                    media[name] = value
                elif name.endswith("_ids") and value.shape == row_ids.shape:  # per-token (token types)
                    table = tables.setdefault(name, {})
                    for token, kind in zip(row_ids[0].tolist(), value[0].tolist()):
                        if kind:
                            table[token] = kind
                elif value.dim() >= 2 and value.shape[:2] == row_ids.shape:  # per position (a cross-attention mask)
                    media[name] = value
                    positional.add(name)
                else:
                    media[name] = value
            rows.append(media)
            ids.append(row_ids[0])
        input_ids, attention_mask = _pad(ids, self.tokenizer.pad_token_id, padding_side)
        return BatchFeature({"input_ids": input_ids, "attention_mask": attention_mask,
                             self.family.media_slot: ProcessorMedia(rows, tables, frozenset(positional))})

    def _call_one(self, call: dict[str, Any], **kwargs: Any):
        """The processor on one text: its images nested (one list for the text), or flat for the processors
        that refuse nesting (GOT-OCR 2); the nested call's error when neither works."""
        try:
            return self.processor(**call, **kwargs)
        except (TypeError, ValueError) as error:
            if "images" not in call:
                raise
            try:
                return self.processor(**{**call, "images": call["images"][0]}, **kwargs)
            except (TypeError, ValueError):
                raise error from None

    def batch_decode(self, *args, **kwargs):
        return self.tokenizer.batch_decode(*args, **kwargs)

    def decode(self, *args, **kwargs):
        return self.tokenizer.decode(*args, **kwargs)


def _pad(rows: list[torch.Tensor], pad_id: int | None, side: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(L_i,) id rows -> (B, L) ids and attention mask, padded on `side`."""
    longest = max(row.shape[0] for row in rows)
    input_ids = torch.full((len(rows), longest), 0 if pad_id is None else pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), longest), dtype=torch.long)
    for r, row in enumerate(rows):
        columns = slice(longest - row.shape[0], longest) if side == "left" else slice(0, row.shape[0])
        input_ids[r, columns], mask[r, columns] = row, 1
    return input_ids, mask


def _per_text(items: list, counts: list[int]) -> list[list]:
    """Flat items -> one list per text (the nested form every image processor accepts)."""
    grouped, start = [], 0
    for count in counts:
        grouped.append(items[start : start + count])
        start += count
    return grouped


def load_processor(location: str | Path, family: Family, model_type: str,
                   chat_template: str | None = None) -> HFProcessor:
    """The family's processor from a folder; without torchvision, processors with a video half lose it.

    A generic family reads the media kinds its processor takes. `chat_template` (Jinja) replaces the
    folder's (see `use_chat_template`). A processor that cannot work (no chat template, no media
    processor) is one `ModelSupportError` line.
    """
    from transformers import AutoProcessor
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING_NAMES
    from transformers.utils import is_torchvision_available

    if family.video_processor and not is_torchvision_available():
        processor = without_video(PROCESSOR_MAPPING_NAMES[model_type]).from_pretrained(str(location))
    else:
        try:
            processor = AutoProcessor.from_pretrained(str(location))
        except (ImportError, OSError, ValueError) as error:
            processor = _images_only(location, model_type, error)
    if family.generic:
        kinds = tuple(kind for kind, part in (("image", "image_processor"), ("audio", "feature_extractor"))
                      if getattr(processor, part, None) is not None)
        if not kinds:
            raise ModelSupportError(f"model_type {model_type!r}: the processor in {location} has no image processor "
                                    f"or audio feature extractor (AutoProcessor gave {type(processor).__name__})")
        family = generic_family_of(model_type, kinds)
    use_chat_template(processor, chat_template, location, model_type)
    return HFProcessor(processor, family)


def use_chat_template(processor, given: str | None, location: str | Path, model_type: str) -> None:
    """The processor's chat template: `given` (a Jinja string) first, then the processor's own (its folder's
    `chat_template.jinja`), then the tokenizer's (GIT and Kosmos-2 processors load none; their tokenizer does).

    The template is set on the tokenizer too, so a saved copy of the policy carries it.
    """
    template = given or getattr(processor, "chat_template", None) or getattr(processor.tokenizer, "chat_template", None)
    if not template:
        raise ModelSupportError(f"model_type {model_type!r}: the processor in {location} has no chat template "
                                f"(add chat_template.jinja to the folder, or pass load_policy(..., chat_template=...))")
    processor.chat_template = template
    if not getattr(processor.tokenizer, "chat_template", None) or given:
        processor.tokenizer.chat_template = template


def _images_only(location: str | Path, model_type: str, error: Exception):
    """The processor without its video half (transformers builds video processors on torchvision only)."""
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING_NAMES

    import transformers

    name = _saved_processor_class(location) or PROCESSOR_MAPPING_NAMES.get(model_type)
    try:
        cls = getattr(transformers, name, None) if name else None
        has_video = cls is not None and "video_processor" in cls.get_attributes()
    except ImportError as missing:  # the processor class itself needs a library the machine lacks (Pixtral's)
        raise ModelSupportError(f"model_type {model_type!r}: no processor loads from {location} "
                                f"({_reason(missing)})") from error
    if has_video:
        try:
            return without_video(name).from_pretrained(str(location))
        except (ImportError, OSError, TypeError, ValueError):
            pass
    raise ModelSupportError(f"model_type {model_type!r}: no processor loads from {location} ({_reason(error)})") \
        from error


def _reason(error: Exception) -> str:
    """A library error's first line, without the broken-off sentence after its last full stop (transformers'
    missing-backend errors start with a newline and wrap mid-sentence: "X requires the Torchvision library
    but it was not found in your environment. Check out the instructions on the")."""
    line = first_line(error)
    cut = line.rfind(". ")
    return line[: cut + 1] if not line.endswith((".", ")")) and cut > 0 else line


def _saved_processor_class(location: str | Path) -> str | None:
    """The processor class a folder's `processor_config.json` names (None without one)."""
    import json

    path = Path(location) / "processor_config.json"
    return json.loads(path.read_text()).get("processor_class") if path.is_file() else None


def generic_family_of(model_type: str, kinds: tuple[str, ...]) -> Family:
    """The generic family of a model type whose processor takes `kinds` of media."""
    from types import SimpleNamespace

    return generic_family(SimpleNamespace(model_type=model_type), kinds)


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

    # transformers saves and loads the processor arguments that `__init__` names: the family's own
    # (image_seq_length ...) too, not only those of this __init__ (`to_dict` reads the signature,
    # `from_args_and_dict` the arguments `validate_init_kwargs` accepts)
    signature = inspect.signature(base.__init__)
    own = [p for name, p in signature.parameters.items() if name != "video_processor"]
    ImagesOnly.__init__.__signature__ = signature.replace(parameters=own)
    names = tuple(p.name for p in own if p.kind is p.POSITIONAL_OR_KEYWORD or p.kind is p.KEYWORD_ONLY)
    ImagesOnly.validate_init_kwargs = staticmethod(
        lambda processor_config, valid_kwargs: base.validate_init_kwargs(
            processor_config, tuple(dict.fromkeys((*valid_kwargs, *names)))))
    ImagesOnly.__name__ = ImagesOnly.__qualname__ = f"{class_name}ImagesOnly"
    return ImagesOnly
