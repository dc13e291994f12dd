"""Typed records that cross pipeline stages.

Messages follow the conversational format TRL uses::

    [{"role": "user", "content": [{"type": "image"}, {"type": "audio"},
                                  {"type": "text", "text": "what colour is the circle?"}]},
     {"role": "assistant", "content": [{"type": "text", "text": "red"}]}]

Each `{"type": "image"}` / `{"type": "audio"}` part is a placeholder; the i-th
placeholder of a kind refers to the i-th `MediaRef` of that kind in `Example.media`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Mapping

from modalign.errors import UserError

MediaKind = Literal["image", "audio"]
MEDIA_KINDS: tuple[str, ...] = ("image", "audio")
Message = Mapping[str, Any]


class RecordError(UserError):
    """A record is malformed; the message names the record and the field."""


@dataclass(frozen=True)
class MediaRef:
    """A media file of an example.

    `path` is relative to the dataset root (absolute paths are allowed but must
    still lie inside the root when loaded). `sha256` is checked on load when set.
    """

    kind: MediaKind
    path: str
    sha256: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "path": self.path}
        if self.sha256:
            out["sha256"] = self.sha256
        return out

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], record_id: str = "?") -> "MediaRef":
        kind = raw.get("kind")
        if kind not in MEDIA_KINDS:
            raise RecordError(f"record {record_id!r}: media kind {kind!r} is not one of {MEDIA_KINDS}")
        path = raw.get("path")
        if not isinstance(path, str) or not path:
            raise RecordError(f"record {record_id!r}: media entry has no 'path' string")
        return cls(kind=kind, path=path, sha256=raw.get("sha256"))


def message_text(message: Message) -> str:
    """Concatenated text parts of one message (content may be a plain string)."""
    content = message.get("content", "")
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content if part.get("type") == "text")


INLINE_MEDIA_KEYS = ("path", "url")  # besides the part's own kind: {"type": "image", "image": ...}


def split_inline_media(messages: list[Any], label: str) -> tuple[list[Any], list[tuple[str, Any]]]:
    """Messages with inline media parts turned into bare placeholders, and one (kind, item) per placeholder.

    HF datasets and chat templates put media inside the parts: `{"type": "image", "image": <PIL or
    path>}`, `{"type": "audio", "audio": <array dict or path>}`, or `"path"` / `"url"` keys. The item
    is that value, or None for a bare placeholder (its file then comes from the media list/column).
    `messages` are not changed; a remote URL is a `RecordError` naming the part.
    """
    bare_messages, slots = [], []
    for i, message in enumerate(messages):
        content = message.get("content") if isinstance(message, Mapping) else None
        if not isinstance(content, (list, tuple)):
            bare_messages.append(message)
            continue
        parts = []
        for j, part in enumerate(content):
            kind = part.get("type") if isinstance(part, Mapping) else None
            if kind not in MEDIA_KINDS:
                parts.append(part)
                continue
            item = next((part[key] for key in (kind, *INLINE_MEDIA_KEYS) if part.get(key) is not None), None)
            if isinstance(item, str) and "://" in item:
                if not item.startswith("file://"):
                    raise RecordError(f"{label}: messages[{i}].content[{j}]: remote {kind} {item} is not "
                                      "downloaded; save it and give its path")
                item = item[len("file://"):]
            slots.append((kind, item))
            parts.append({key: value for key, value in part.items() if key not in (kind, *INLINE_MEDIA_KEYS)})
        bare_messages.append({**message, "content": parts})
    return bare_messages, slots


def fill_media_slots(
    slots: list[tuple[str, Any]], listed: Mapping[str, list[Any]], label: str, columns: Mapping[str, str]
) -> list[tuple[str, Any, str]]:
    """(kind, item, column label) per placeholder: inline items, else the next listed item of that kind.

    `listed` holds the media list of each kind (a dataset's `media`, TRL's `images` / `audios`);
    `columns` names them for errors. Counts that do not match are a `RecordError`.
    """
    filled, used = [], {kind: 0 for kind in MEDIA_KINDS}
    for position, (kind, item) in enumerate(slots):
        if item is not None:
            filled.append((kind, item, f"placeholder {position} ({kind} part in messages)"))
            continue
        if used[kind] < len(listed.get(kind, [])):
            filled.append((kind, listed[kind][used[kind]], f"{columns[kind]}[{used[kind]}]"))
        used[kind] += 1
    inline = any(item is not None for _, item in slots)
    for kind in MEDIA_KINDS:
        n_listed = len(listed.get(kind, []))
        if used[kind] != n_listed:
            raise RecordError(
                f"{label}: {used[kind]} {{'type': '{kind}'}} placeholder(s) in messages "
                f"but {n_listed} item(s) in '{columns[kind]}'" + (" (inline media parts not counted)" if inline else "")
            )
    return filled


def count_placeholders(messages: tuple[Message, ...] | list[Message], kind: str) -> int:
    """Number of `{"type": kind}` parts across all messages."""
    total = 0
    for message in messages:
        content = message.get("content", "")
        if isinstance(content, list):
            total += sum(1 for part in content if part.get("type") == kind)
    return total


@dataclass(frozen=True)
class Example:
    """One multimodal example.

    `messages` is the whole conversation; when the last message is the
    assistant's, it is the reference answer (SFT target). `meta` carries ground
    truth where a world has it (ShapesWorld: `meta["scene"]`, `meta["task"]`,
    `meta["answer"]`, `meta["references"]`).
    """

    id: str
    messages: tuple[Message, ...]
    media: tuple[MediaRef, ...] = ()
    meta: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for kind in MEDIA_KINDS:
            n_parts = count_placeholders(self.messages, kind)
            n_refs = sum(1 for ref in self.media if ref.kind == kind)
            if n_parts != n_refs:
                raise RecordError(
                    f"record {self.id!r}: {n_parts} {{'type': '{kind}'}} placeholder(s) in messages "
                    f"but {n_refs} {kind} file(s) in 'media'"
                )

    @property
    def prompt_messages(self) -> tuple[Message, ...]:
        """The conversation without the final assistant answer (what the policy sees)."""
        if self.messages and self.messages[-1].get("role") == "assistant":
            return self.messages[:-1]
        return self.messages

    @property
    def answer(self) -> str | None:
        """Reference answer text, if the conversation ends with the assistant."""
        if self.messages and self.messages[-1].get("role") == "assistant":
            return message_text(self.messages[-1])
        return None

    @property
    def prompt_text(self) -> str:
        """Text of the last user message (for logs and reports)."""
        for message in reversed(self.prompt_messages):
            if message.get("role") == "user":
                return message_text(message)
        return ""

    def media_of(self, kind: str) -> tuple[MediaRef, ...]:
        return tuple(ref for ref in self.media if ref.kind == kind)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "messages": [dict(m) for m in self.messages],
            "media": [ref.to_dict() for ref in self.media],
            "meta": dict(self.meta),
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], where: str = "") -> "Example":
        record_id = str(raw.get("id", "?"))
        prefix = f"{where}: " if where else ""
        if "id" not in raw:
            raise RecordError(f"{prefix}record has no 'id' field")
        messages = raw.get("messages")
        if not isinstance(messages, list) or not messages:
            raise RecordError(f"{prefix}record {record_id!r}: 'messages' must be a non-empty list")
        for i, message in enumerate(messages):
            if not isinstance(message, Mapping) or message.get("role") not in ("system", "user", "assistant"):
                raise RecordError(f"{prefix}record {record_id!r}: messages[{i}] needs a role of system/user/assistant")
        media = tuple(MediaRef.from_dict(m, record_id) for m in raw.get("media", []) or [])
        messages, media = _with_inline_paths(messages, media, f"{prefix}record {record_id!r}")
        try:
            return cls(id=record_id, messages=tuple(messages), media=media, meta=dict(raw.get("meta", {}) or {}))
        except RecordError as err:
            raise RecordError(f"{prefix}{err}") from None


def _with_inline_paths(
    messages: list[Any], media: tuple[MediaRef, ...], label: str
) -> tuple[list[Any], tuple[MediaRef, ...]]:
    """Inline path parts (`{"type": "image", "image": "photos/a.jpg"}`) become placeholders + `MediaRef`s.

    Paths are relative to the dataset root like `media[].path`; the listed `media` fill the bare
    placeholders in order. In-memory media (PIL images, arrays) need `modalign import`.
    """
    bare, slots = split_inline_media(messages, label)
    if all(item is None for _, item in slots):
        return messages, media
    listed = {kind: [ref for ref in media if ref.kind == kind] for kind in MEDIA_KINDS}
    refs = []
    for kind, item, column in fill_media_slots(slots, listed, label, {"image": "media", "audio": "media"}):
        if isinstance(item, MediaRef):
            refs.append(item)
        elif isinstance(item, str) and item:
            refs.append(MediaRef(kind, item))  # type: ignore[arg-type]
        else:
            raise RecordError(f"{label}: {column}: an inline {kind} in a dataset file must be a path string "
                              f"(not {type(item).__name__}); in-memory media go through `modalign import`")
    return bare, tuple(refs)


@dataclass(frozen=True)
class Completion:
    """A policy's answer to an example."""

    example_id: str
    text: str
    policy_version: str = ""
    sampling: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "example_id": self.example_id,
            "text": self.text,
            "policy_version": self.policy_version,
            "sampling": dict(self.sampling),
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> "Completion":
        return cls(
            example_id=str(raw["example_id"]),
            text=str(raw["text"]),
            policy_version=str(raw.get("policy_version", "")),
            sampling=dict(raw.get("sampling", {}) or {}),
        )


def user_turn(text: str, n_images: int = 0, n_audio: int = 0) -> dict[str, Any]:
    """A user message with media placeholders before the text (TRL's convention)."""
    content: list[dict[str, Any]] = [{"type": "image"} for _ in range(n_images)]
    content += [{"type": "audio"} for _ in range(n_audio)]
    content.append({"type": "text", "text": text})
    return {"role": "user", "content": content}


def assistant_turn(text: str) -> dict[str, Any]:
    return {"role": "assistant", "content": [{"type": "text", "text": text}]}
