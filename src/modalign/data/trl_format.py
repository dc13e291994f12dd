"""Import and export of the conversational format TRL uses.

A TRL row (one per example)::

    {"id": "scene-12",
     "messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "..."}]},
                  {"role": "assistant", "content": [{"type": "text", "text": "..."}]}],
     "images": ["/abs/root/media/img/12.png"],      # TRL's column, in placeholder order
     "audios": ["/abs/root/media/audio/12.wav"],    # ours, only when the example has audio
     "meta": {...}}                                 # ours (a JSON string in an HF Dataset)

On import, `messages` may instead be TRL's prompt-completion pair (`prompt` +
`completion`, lists of messages or TRL's standard plain strings) or a prompt alone. Media items may be paths,
PIL images, or the `{"bytes", "path"}` / `{"array", "sampling_rate"}` dicts of HF
`datasets`, in the `images` / `audios` columns or inline in the messages
(`{"type": "image", "image": <PIL or path>}`, `{"type": "audio", "audio": {...}}`), which
become bare placeholders. Items that are not files inside `root` are written once to
`root/media/<sha256[:2]>/<sha256>.<ext>` (see `modalign.data.media_items`), so the imported
dataset is self-contained. Columns TRL does not define (`task`, `answer`, ...) go into `meta`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from modalign.data.dataset import jsonl_rows
from modalign.data.media_items import MediaTarget, media_ref
from modalign.data.records import (
    Example, RecordError, assistant_turn, fill_media_slots, split_inline_media, user_turn,
)

if TYPE_CHECKING:
    import datasets

MEDIA_COLUMNS = {"image": "images", "audio": "audios"}
# columns with a meaning in TRL's formats (and ours); any other column goes into `meta`
TRL_COLUMNS = frozenset({"id", "example_id", "messages", "prompt", "completion", "chosen", "rejected", "label",
                         "images", "image", "audios", "audio", "meta"})


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
    row: Mapping[str, Any], row_index: int, root: str | Path | None, *, where: str | None = None,
    base: str | Path | None = None, staging: str | Path | None = None, id_column: str = "id",
) -> Example:
    """An `Example` from one TRL row; errors are `RecordError`s naming the row and the column.

    `root` is the dataset root: files inside it are referenced by their root-relative path, and
    everything else (in-memory media, bytes, outside files) is written once under
    `root/media/<sha256[:2]>/` (`modalign.data.media_items`). `base` is the folder relative
    paths in the row resolve against (the source file's folder; default: they are root-relative);
    `staging` is where new files are written before the caller moves them into `root`. With
    `root=None` files are referenced in place (absolute paths when `base` is set, as given
    otherwise) and in-memory media are refused. The id comes from `id_column` (else `row-<index>`);
    columns other than TRL's go into `meta`. `where` overrides the row label (e.g. "file.jsonl:3").
    """
    where = where or f"row {row_index}"
    record_id = str(row[id_column]) if row.get(id_column) is not None else f"row-{row_index}"
    label = f"{where} (record {record_id!r})"
    listed = {kind: _media_items(row, kind, label) for kind in MEDIA_COLUMNS}
    n_media = {kind: len(items) for kind, items in listed.items()}
    messages, slots = split_inline_media([_strip_none(m) for m in _row_messages(row, label, n_media)], label)
    target = MediaTarget.of(root, base, staging)
    media = [media_ref(kind, item, target, f"{label}: {column}").to_dict()
             for kind, item, column in fill_media_slots(slots, listed, label, MEDIA_COLUMNS)]
    meta = {**_extra_columns(row, id_column), **_row_meta(row, label)}
    raw = {"id": record_id, "messages": messages, "media": media, "meta": meta}
    return Example.from_dict(raw, where=where)


def import_trl_jsonl(path: str | Path, root: str | Path | None, *, relative_to_file: bool = False) -> list[Example]:
    """Read a TRL JSONL file; a bad line raises `RecordError` naming the file and line.

    With `relative_to_file`, relative media paths resolve against the file's folder (as
    `modalign import` reads them); otherwise they are taken as `root`-relative.
    """
    path = Path(path)
    base = path.parent if relative_to_file else None
    examples = []
    for line_no, row in jsonl_rows(path):
        if not isinstance(row, dict):
            raise RecordError(f"{path}:{line_no}: a row must be a JSON object")
        examples.append(example_from_trl(row, len(examples), root, where=f"{path}:{line_no}", base=base))
    return examples


def from_hf_dataset(dataset: "datasets.Dataset", root: str | Path | None) -> list[Example]:
    """Examples from a TRL-format `datasets.Dataset`.

    `Image` / `Audio` columns are read undecoded, so files keep their paths when they
    lie inside `root` and embedded bytes are stored under `root/media/`.
    """
    return [example_from_trl(row, index, root) for index, row in enumerate(undecoded_media(dataset))]


def undecoded_media(dataset: "datasets.Dataset") -> "datasets.Dataset":
    """The dataset with every `Image` / `Audio` feature (in any column, nested too) read as `{"bytes", "path"}`.

    Files keep their paths and encoded images their bytes (no PNG re-encoding of a JPEG).
    """
    for column, feature in dataset.features.items():
        undecoded = _undecoded_feature(feature)
        if undecoded != feature:
            dataset = dataset.cast_column(column, undecoded)
    return dataset


# ---------------------------------------------------------------------------------------------
# Row parts


def _row_messages(row: Mapping[str, Any], label: str, n_media: Mapping[str, int]) -> list[Any]:
    """The row's conversation: `messages`, or `prompt` + `completion` (conversational or TRL's standard strings).

    A string prompt becomes one user turn with a placeholder per listed media item before the text,
    as TRL places them; a string completion one assistant turn.
    """
    if row.get("messages") is not None:
        messages = row["messages"]
    elif row.get("prompt") is not None:
        prompt, completion = row["prompt"], row.get("completion") or []
        if isinstance(prompt, str):
            prompt = [user_turn(prompt, n_images=n_media["image"], n_audio=n_media["audio"])]
        if isinstance(completion, str):
            completion = [assistant_turn(completion)]
        messages = _message_list(prompt, "prompt", label) + _message_list(completion, "completion", label)
    else:
        raise RecordError(f"{label}: no 'messages' (or 'prompt' + 'completion') column")
    return _message_list(messages, "messages", label)


def _message_list(value: Any, column: str, label: str) -> list[Any]:
    """`value` as a list of message mappings whose list content holds part mappings."""
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        raise RecordError(f"{label}: '{column}' must be a list of messages (TRL's conversational format) or a string")
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


def _extra_columns(row: Mapping[str, Any], id_column: str) -> dict[str, Any]:
    """Columns TRL does not define (`task`, `answer`, ...) with JSON values: they become `meta` keys."""
    extra = {}
    for key, value in row.items():
        if key in TRL_COLUMNS or key == id_column or value is None:
            continue
        try:
            json.dumps(value)
        except (TypeError, ValueError):
            continue  # media, arrays, bytes: not meta
        extra[key] = value
    return extra


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
    """The same feature with `decode=False` on every `Image` / `Audio` inside (lists, dicts, nesting)."""
    if isinstance(feature, dict):
        return type(feature)({key: _undecoded_feature(value) for key, value in feature.items()})
    if isinstance(feature, (list, tuple)):
        return type(feature)(_undecoded_feature(value) for value in feature)
    if dataclasses.is_dataclass(feature) and any(f.name == "decode" for f in dataclasses.fields(feature)):
        return dataclasses.replace(feature, decode=False)
    if dataclasses.is_dataclass(feature) and any(f.name == "feature" for f in dataclasses.fields(feature)):
        return dataclasses.replace(feature, feature=_undecoded_feature(feature.feature))
    return feature
