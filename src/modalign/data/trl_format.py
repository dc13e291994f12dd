"""Import and export of the conversational format TRL uses.

A TRL row (one per example)::

    {"id": "scene-12",
     "messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "..."}]},
                  {"role": "assistant", "content": [{"type": "text", "text": "..."}]}],
     "images": ["/abs/root/media/img/12.png"],      # TRL's column, in placeholder order
     "audios": ["/abs/root/media/audio/12.wav"],    # ours, only when the example has audio
     "meta": {...}}                                 # ours (a JSON string in an HF Dataset)

On import, `messages` may instead be TRL's prompt-completion pair (`prompt` +
`completion`, both lists of messages) or a prompt alone. Media items may be paths,
PIL images, or the `{"bytes", "path"}` / `{"array", "sampling_rate"}` dicts of HF
`datasets`. Items that are not files inside `root` are written to `root/media/`
under a content-hash name, so the imported dataset is self-contained.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping

import numpy as np

from modalign.data.records import Example, MediaRef, RecordError, count_placeholders

if TYPE_CHECKING:
    import datasets

MEDIA_COLUMNS = {"image": "images", "audio": "audios"}


# ---------------------------------------------------------------------------------------------
# Export


def example_to_trl(example: Example, root: str | Path) -> dict[str, Any]:
    """A TRL conversational row; media become absolute paths (files are not read)."""
    base = Path(os.path.abspath(root))
    row: dict[str, Any] = {"id": example.id, "messages": [_plain(m) for m in example.messages]}
    row["images"] = [os.path.normpath(base / ref.path) for ref in example.media_of("image")]
    audios = [os.path.normpath(base / ref.path) for ref in example.media_of("audio")]
    if audios:
        row["audios"] = audios
    row["meta"] = dict(example.meta)
    return row


def export_trl_jsonl(examples: Iterable[Example], root: str | Path, out_path: str | Path) -> Path:
    """Write one TRL row per line, atomically (temp file, then rename)."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as handle:
        for example in examples:
            handle.write(json.dumps(example_to_trl(example, root), ensure_ascii=False) + "\n")
    tmp.replace(out_path)
    return out_path


def to_hf_dataset(examples: Iterable[Example], root: str | Path) -> "datasets.Dataset":
    """A `datasets.Dataset` in TRL's format; `images` uses the `Image` feature (PIL on access).

    Arrow needs one schema for all rows, so message content is always a list of parts
    (a plain-string content becomes one text part), `meta` is a JSON string, and
    `audios` holds path strings (decoding the `Audio` feature needs torchcodec).
    """
    import datasets

    rows = [example_to_trl(example, root) for example in examples]
    has_audio = any("audios" in row for row in rows)
    columns: dict[str, list[Any]] = {"id": [], "messages": [], "images": [], "meta": []}
    if has_audio:
        columns["audios"] = []
    for row in rows:
        columns["id"].append(row["id"])
        columns["messages"].append([_content_as_parts(m) for m in row["messages"]])
        columns["images"].append(row["images"])
        columns["meta"].append(json.dumps(row["meta"], ensure_ascii=False, sort_keys=True))
        if has_audio:
            columns["audios"].append(row.get("audios", []))
    list_feature = getattr(datasets, "List", None) or datasets.Sequence  # `List` since datasets 4
    return datasets.Dataset.from_dict(columns).cast_column("images", list_feature(datasets.Image()))


# ---------------------------------------------------------------------------------------------
# Import


def example_from_trl(
    row: Mapping[str, Any], row_index: int, root: str | Path | None, *, where: str | None = None
) -> Example:
    """An `Example` from one TRL row; errors are `RecordError`s naming the row.

    `root` is the dataset root: relative media paths are taken from it, absolute paths
    inside it become relative, and everything else is stored under `root/media/`.
    With `root=None` paths are kept as given and in-memory media are refused.
    `where` overrides the row label in messages (e.g. "file.jsonl:3").
    """
    where = where or f"row {row_index}"
    record_id = str(row["id"]) if row.get("id") is not None else f"row-{row_index}"
    label = f"{where} (record {record_id!r})"
    messages = [_strip_none(m) for m in _row_messages(row, label)]
    items = {kind: _media_items(row, kind, label) for kind in MEDIA_COLUMNS}
    for kind, column in MEDIA_COLUMNS.items():
        n_parts = count_placeholders(messages, kind)
        if n_parts != len(items[kind]):
            raise RecordError(
                f"{label}: {n_parts} {{'type': '{kind}'}} placeholder(s) in messages "
                f"but {len(items[kind])} item(s) in '{column}'"
            )
    refs = {
        kind: [_media_ref(kind, item, root, f"{label}: {column}[{i}]") for i, item in enumerate(items[kind])]
        for kind, column in MEDIA_COLUMNS.items()
    }
    media = [refs[kind].pop(0).to_dict() for kind in _placeholder_order(messages)]
    raw = {"id": record_id, "messages": messages, "media": media, "meta": _row_meta(row, label)}
    return Example.from_dict(raw, where=where)


def import_trl_jsonl(path: str | Path, root: str | Path | None) -> list[Example]:
    """Read a TRL JSONL file; a bad line raises `RecordError` naming the file and line."""
    path = Path(path)
    examples = []
    for line_no, row in read_jsonl_rows(path):
        if not isinstance(row, dict):
            raise RecordError(f"{path}:{line_no}: a row must be a JSON object")
        examples.append(example_from_trl(row, len(examples), root, where=f"{path}:{line_no}"))
    return examples


def read_jsonl_rows(path: Path) -> list[tuple[int, Any]]:
    """(line number, parsed value) of every non-blank line; bad JSON raises `RecordError` naming file and line."""
    rows = []
    with path.open(encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                rows.append((line_no, json.loads(line)))
            except json.JSONDecodeError as err:
                raise RecordError(f"{path}:{line_no}: not valid JSON ({err.msg})") from None
    return rows


def from_hf_dataset(dataset: "datasets.Dataset", root: str | Path | None) -> list[Example]:
    """Examples from a TRL-format `datasets.Dataset`.

    `Image` / `Audio` columns are read undecoded, so files keep their paths when they
    lie inside `root` and embedded bytes are stored under `root/media/`.
    """
    return [example_from_trl(row, index, root) for index, row in enumerate(undecoded_media(dataset))]


def undecoded_media(dataset: "datasets.Dataset") -> "datasets.Dataset":
    """The dataset with its `Image` / `Audio` columns read as `{"bytes", "path"}` dicts (files keep their paths)."""
    for column in ("images", "image", "audios", "audio"):
        if column in dataset.column_names:
            undecoded = _undecoded_feature(dataset.features[column])
            if undecoded != dataset.features[column]:
                dataset = dataset.cast_column(column, undecoded)
    return dataset


# ---------------------------------------------------------------------------------------------
# Row parts


def _row_messages(row: Mapping[str, Any], label: str) -> list[Any]:
    if row.get("messages") is not None:
        messages = row["messages"]
    elif row.get("prompt") is not None:
        completion = row.get("completion") or []
        messages = _message_list(row["prompt"], "prompt", label) + _message_list(completion, "completion", label)
    else:
        raise RecordError(f"{label}: no 'messages' (or 'prompt' + 'completion') column")
    return _message_list(messages, "messages", label)


def _message_list(value: Any, column: str, label: str) -> list[Any]:
    """`value` as a list of message mappings whose list content holds part mappings."""
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        raise RecordError(f"{label}: '{column}' must be a list of messages (TRL's conversational format)")
    for i, message in enumerate(value):
        content = message.get("content") if isinstance(message, Mapping) else None
        if not isinstance(message, Mapping) or not isinstance(content, (str, list, tuple)):
            raise RecordError(f"{label}: {column}[{i}] must be a message with a 'content' string or list")
        if not isinstance(content, str) and not all(isinstance(part, Mapping) for part in content):
            raise RecordError(f"{label}: {column}[{i}]['content'] must hold {{'type': ...}} parts")
    return list(value)


def _media_items(row: Mapping[str, Any], kind: str, label: str) -> list[Any]:
    column = MEDIA_COLUMNS[kind]
    value = row.get(column)
    if value is None and row.get(kind) is not None:  # TRL's single-`image` column
        value = [row[kind]]
    if value is None:
        return []
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, (list, tuple)):
        raise RecordError(f"{label}: '{column}' must be a list")
    return list(value)


def _row_meta(row: Mapping[str, Any], label: str) -> dict[str, Any]:
    meta = row.get("meta")
    if isinstance(meta, str):
        try:
            meta = json.loads(meta)
        except json.JSONDecodeError as err:
            raise RecordError(f"{label}: 'meta' is not valid JSON ({err.msg})") from None
    if meta is None:
        return {}
    if not isinstance(meta, Mapping):
        raise RecordError(f"{label}: 'meta' must be an object")
    return dict(meta)


def _placeholder_order(messages: list[Any]) -> list[str]:
    """Media kinds in the order their placeholders appear (defines `Example.media` order)."""
    order = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, list):
            order += [part["type"] for part in content if part.get("type") in MEDIA_COLUMNS]
    return order


def _plain(value: Any) -> Any:
    """JSON-ready deep copy (mappings to dicts, tuples to lists)."""
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


def _strip_none(value: Any) -> Any:
    """Deep copy without `None`-valued keys (Arrow adds them when it unifies row schemas)."""
    if isinstance(value, Mapping):
        return {key: _strip_none(item) for key, item in value.items() if item is not None}
    if isinstance(value, (list, tuple)):
        return [_strip_none(item) for item in value]
    return value


def _content_as_parts(message: dict[str, Any]) -> dict[str, Any]:
    content = message.get("content", "")
    if isinstance(content, str):
        return {**message, "content": [{"type": "text", "text": content}]}
    return message


def _undecoded_feature(feature: Any) -> Any:
    """The same feature with `decode=False` on any `Image` / `Audio` inside a list."""
    if dataclasses.is_dataclass(feature) and any(f.name == "decode" for f in dataclasses.fields(feature)):
        return dataclasses.replace(feature, decode=False)
    if dataclasses.is_dataclass(feature) and any(f.name == "feature" for f in dataclasses.fields(feature)):
        return dataclasses.replace(feature, feature=_undecoded_feature(feature.feature))
    return feature


# ---------------------------------------------------------------------------------------------
# Media items


def _media_ref(kind: str, item: Any, root: str | Path | None, label: str) -> MediaRef:
    """A `MediaRef` for one media item: a path, a PIL image, or an HF `datasets` dict."""
    if isinstance(item, (str, os.PathLike)):
        return _path_ref(kind, Path(item), root, label)
    if isinstance(item, Mapping):
        return _dict_ref(kind, item, root, label)
    if kind == "image" and _is_pil_image(item):
        return _store(kind, _png_bytes(item), ".png", root, label)
    raise RecordError(f"{label}: cannot read a {kind} from {type(item).__name__}")


def _dict_ref(kind: str, item: Mapping[str, Any], root: str | Path | None, label: str) -> MediaRef:
    """HF `datasets` storage: `{"bytes", "path"}` (undecoded) or `{"array", "sampling_rate"}`."""
    path = str(item.get("path") or "")
    if path and os.path.isabs(path) and os.path.isfile(path):  # a local file: keep its path
        return _path_ref(kind, Path(path), root, label)
    if item.get("bytes"):
        suffix = Path(path).suffix.lower() or (".png" if kind == "image" else ".wav")
        return _store(kind, bytes(item["bytes"]), suffix, root, label)
    if path:
        return _path_ref(kind, Path(path), root, label)
    if kind == "audio" and item.get("array") is not None and item.get("sampling_rate"):
        return _store(kind, _wav_bytes(item["array"], int(item["sampling_rate"])), ".wav", root, label)
    raise RecordError(f"{label}: a {kind} entry needs 'path', 'bytes' or 'array' + 'sampling_rate'")


def _path_ref(kind: str, path: Path, root: str | Path | None, label: str) -> MediaRef:
    if root is None or not path.is_absolute():
        return MediaRef(kind, path.as_posix())  # type: ignore[arg-type]
    relative = _relative_inside(path, Path(root))
    if relative is not None:
        return MediaRef(kind, relative)  # type: ignore[arg-type]
    if not path.is_file():
        raise RecordError(f"{label}: {kind} file {path} does not exist")
    return _store(kind, path.read_bytes(), path.suffix.lower(), root, label)


def _relative_inside(path: Path, root: Path) -> str | None:
    """`path` relative to `root` (posix) if it lies inside, comparing plain then real paths."""
    for resolve in (os.path.abspath, os.path.realpath):
        full, base = resolve(path), resolve(root)
        if full != base and os.path.commonpath([full, base]) == base:
            return Path(os.path.relpath(full, base)).as_posix()
    return None


def _store(kind: str, data: bytes, suffix: str, root: str | Path | None, label: str) -> MediaRef:
    """Write `data` once to `root/media/<sha256[:32]><suffix>`; the ref carries the digest."""
    if root is None:
        raise RecordError(f"{label}: an in-memory or outside {kind} needs a dataset root to be written into")
    digest = hashlib.sha256(data).hexdigest()
    relative = f"media/{digest[:32]}{suffix}"
    target = Path(root) / relative
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
        tmp.write_bytes(data)
        tmp.replace(target)
    return MediaRef(kind, relative, sha256=digest)  # type: ignore[arg-type]


def _is_pil_image(item: Any) -> bool:
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - Pillow is a dependency
        return False
    return isinstance(item, Image.Image)


def _png_bytes(image: Any) -> bytes:
    from modalign.data.media import to_rgb

    if image.mode not in ("1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA"):
        image = to_rgb(image)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _wav_bytes(array: Any, sample_rate: int) -> bytes:
    import soundfile

    buffer = io.BytesIO()
    soundfile.write(buffer, np.asarray(array, dtype=np.float32), sample_rate, subtype="PCM_16", format="WAV")
    return buffer.getvalue()
