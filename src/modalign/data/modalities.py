"""Keeping only some media kinds of a dataset (the recipes' `modalities` field).

`modalities=image` trains, rewards and evaluates an image-only model on a dataset that
also has audio: every example loses its audio placeholders and audio files as it is read,
so the prompt the model sees matches the media it is given.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable, Sequence

from modalign.config import ConfigError
from modalign.data.records import MEDIA_KINDS, Example

MODALITIES_HELP = ("Media kinds kept from every example as it is read: '' (all), image, audio or image,audio; the "
                   "other kind's placeholders and files are dropped, and examples left with no media and no text "
                   "are skipped (counted in the log).")


def parse_modalities(value: str) -> tuple[str, ...]:
    """'' -> every kind; 'image' / 'audio' / 'image,audio' -> those kinds; else a ConfigError naming the key."""
    kinds = tuple(dict.fromkeys(part.strip() for part in value.split(",") if part.strip()))
    unknown = [k for k in kinds if k not in MEDIA_KINDS]
    if unknown:
        raise ConfigError(f"modalities={value!r}: {unknown[0]!r} is not a media kind; write '' (all), image, audio "
                          f"or image,audio")
    return kinds or MEDIA_KINDS


def keep_modalities(example: Example, kinds: Sequence[str]) -> Example:
    """`example` with only the media of `kinds`: other kinds' placeholder parts and `MediaRef`s are removed.

    Text parts and the answer are kept; the i-th kept placeholder of a kind still refers to the
    i-th kept file of that kind, because both keep their order. When something was removed,
    `meta.modalities` lists the kinds kept (ShapesWorld's gold scorers read it: facts of a
    removed kind are no longer true facts of the example).
    """
    if all(ref.kind in kinds for ref in example.media) and not _has_dropped_parts(example, kinds):
        return example
    messages = tuple(_without_parts(message, kinds) for message in example.messages)
    media = tuple(ref for ref in example.media if ref.kind in kinds)
    meta = {**example.meta, "modalities": [k for k in MEDIA_KINDS if k in kinds]}
    return dataclasses.replace(example, messages=messages, media=media, meta=meta)


def is_empty_prompt(example: Example) -> bool:
    """No media and no text in the prompt: nothing for a model to answer."""
    from modalign.data.records import message_text

    return not example.media and not any(message_text(m).strip() for m in example.prompt_messages)


def apply_modalities(examples: Iterable[Example], modalities: str, where: str = "") -> list[Example]:
    """`keep_modalities` on every example; those left empty are dropped and counted in the log."""
    examples = list(examples)
    if not modalities.strip():
        return examples
    kinds = parse_modalities(modalities)
    kept = [keep_modalities(e, kinds) for e in examples]
    nonempty = [e for e in kept if not is_empty_prompt(e)]
    if len(nonempty) < len(kept):
        from modalign.ui import console

        console.print(f"modalities={modalities}: skipped {len(kept) - len(nonempty)} of {len(kept)} examples"
                      f"{' of ' + where if where else ''} left with no media and no text")
    return nonempty


def _has_dropped_parts(example: Example, kinds: Sequence[str]) -> bool:
    return any(isinstance(m.get("content"), list) and any(_dropped(part, kinds) for part in m["content"])
               for m in example.messages)


def _dropped(part, kinds: Sequence[str]) -> bool:
    return part.get("type") in MEDIA_KINDS and part.get("type") not in kinds


def _without_parts(message, kinds: Sequence[str]):
    content = message.get("content")
    if not isinstance(content, list):
        return message
    return {**message, "content": [part for part in content if not _dropped(part, kinds)]}
