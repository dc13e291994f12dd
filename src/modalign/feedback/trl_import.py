"""Import preference pairs in TRL's format into the feedback store (the inverse of `FeedbackStore.export_trl`).

A TRL preference row::

    {"id": "scene-12",                                   # optional (`example_id`, as export_trl writes, too)
     "prompt": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "..."}]}],
     "chosen": [{"role": "assistant", "content": [{"type": "text", "text": "..."}]}],   # or a plain string
     "rejected": [{"role": "assistant", "content": "..."}],                            # or a plain string
     "images": [...], "audios": [...],                   # paths, PIL images, HF `datasets` dicts
     "meta": {...}}                                      # optional, kept on the example (first row wins)

Each row becomes one pairwise judgment (choice "a" = chosen) between two new candidates.
Rows with the same prompt and media share one stored example: rows with an `id` share it by
id, rows without one by a content-derived id. The prompt and media go through
`modalign.data.trl_format.example_from_trl`, so media outside `root` are copied into
`root/media/` by content hash. All rows are checked before anything is written to the store.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

from modalign.data.records import Completion, Example, MediaRef, RecordError, message_text
from modalign.data.trl_format import example_from_trl, read_jsonl_rows, undecoded_media
from modalign.feedback.judgments import PairwiseJudgment
from modalign.feedback.store import FeedbackStore

if TYPE_CHECKING:
    import datasets

PROMPT_COLUMNS = ("prompt", "images", "image", "audios", "audio", "meta")  # what example_from_trl reads


def import_trl_preferences(
    store: FeedbackStore,
    source: str | Path | Sequence[Mapping[str, Any]] | datasets.Dataset,
    root: str | Path,
    annotator: str = "import",
) -> int:
    """Add TRL preference rows to `store` as examples, candidates and pairwise judgments.

    `source` is a JSONL file, a list of row dicts or a `datasets.Dataset`; `root` is the
    dataset root the stored examples' media are relative to (relative media paths in rows
    are read from it too). Returns the number of pairs. A bad row raises `RecordError`
    naming the file and line (or the 0-based row index) and the field, and nothing is stored.
    """
    examples, pairs = _read_pairs(source, root)
    new_examples = [example for example, where in examples.values() if not _already_stored(store, example, root, where)]
    if not pairs:
        return 0
    store.add_examples(new_examples, root=root)
    ids = store.add_candidates([Completion(example_id, text) for example_id, *texts in pairs for text in texts])
    store.add_judgments([
        PairwiseJudgment(example_id=example_id, annotator=annotator,
                         candidate_a=ids[2 * i], candidate_b=ids[2 * i + 1], choice="a")  # "a" = chosen
        for i, (example_id, _, _) in enumerate(pairs)
    ])
    return len(pairs)


def _read_pairs(source: Any, root: str | Path) -> tuple[dict[str, tuple[Example, str]], list[tuple[str, str, str]]]:
    """Every row checked: examples by id (with where first seen) and (example id, chosen, rejected) per row."""
    examples: dict[str, tuple[Example, str]] = {}
    pairs: list[tuple[str, str, str]] = []
    for index, where, row in _rows(source):
        row_id = _row_id(row)
        label = where if row_id is None else f"{where} (record {str(row_id)!r})"
        chosen, rejected = _answer_text(row, "chosen", label), _answer_text(row, "rejected", label)
        example = _row_example(row, row_id, index, where, root)  # may copy media into root/media
        first, first_where = examples.setdefault(example.id, (example, where))
        if (first.messages, first.media) != (example.messages, example.media):
            raise RecordError(f"{where}: example id {example.id!r} has another prompt or media than at {first_where}")
        pairs.append((example.id, chosen, rejected))
    return examples, pairs


# ---------------------------------------------------------------------------------------------
# Sources


def _rows(source: Any) -> list[tuple[int, str, Mapping[str, Any]]]:
    """(index, label for messages, row) for every row of a JSONL file, a list or a `datasets.Dataset`."""
    if isinstance(source, (str, os.PathLike)):
        return _jsonl_rows(Path(source))
    hf = sys.modules.get("datasets")  # a Dataset can only exist if `datasets` is imported
    if hf is not None and isinstance(source, hf.Dataset):
        return [(i, f"row {i}", _mapping(row, f"row {i}")) for i, row in enumerate(undecoded_media(source))]
    if isinstance(source, Sequence):
        return [(i, f"row {i}", _mapping(row, f"row {i}")) for i, row in enumerate(source)]
    raise TypeError("source must be a JSONL path, a list of row dicts or a datasets.Dataset, "
                    f"not {type(source).__name__}")


def _jsonl_rows(path: Path) -> list[tuple[int, str, Mapping[str, Any]]]:
    rows = read_jsonl_rows(path)
    return [(line_no, f"{path}:{line_no}", _mapping(row, f"{path}:{line_no}")) for line_no, row in rows]


def _mapping(row: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(row, Mapping):
        raise RecordError(f"{where}: a row must be an object with 'prompt', 'chosen' and 'rejected'")
    return row


# ---------------------------------------------------------------------------------------------
# Row parts


def _row_id(row: Mapping[str, Any]) -> Any:
    """TRL's `id`, or `example_id` as `FeedbackStore.export_trl` writes it; None when neither is set."""
    return row.get("id") if row.get("id") is not None else row.get("example_id")


def _row_example(row: Mapping[str, Any], row_id: Any, index: int, where: str, root: str | Path) -> Example:
    """The prompt + media of a row as an `Example`; without an id, the id derives from the content."""
    if row.get("prompt") is None:
        raise RecordError(f"{where}: no 'prompt' column (a list of messages)")
    prompt_row = {key: row[key] for key in PROMPT_COLUMNS if key in row}
    if row_id is not None:
        prompt_row["id"] = row_id
    example = example_from_trl(prompt_row, index, root, where=where)
    if example.messages[-1].get("role") == "assistant":
        raise RecordError(f"{where} (record {example.id!r}): 'prompt' ends with an assistant message; "
                          "the answers belong in 'chosen' / 'rejected'")
    if row_id is None:
        example = Example(_content_id(example), example.messages, example.media, example.meta)
    return example


def _content_id(example: Example) -> str:
    """A stable id from the prompt and the media paths (copied media are named by content hash)."""
    content = [list(example.messages), [ref.to_dict() for ref in example.media]]
    return "trl-" + hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:16]


def _answer_text(row: Mapping[str, Any], column: str, label: str) -> str:
    """Text of `chosen` / `rejected`: a plain string or a list holding one text-only assistant message."""
    value = row.get(column)
    if value is None:
        raise RecordError(f"{label}: no '{column}' column")
    if isinstance(value, str):
        return value
    message = value[0] if isinstance(value, (list, tuple)) and len(value) == 1 else None
    if not isinstance(message, Mapping) or message.get("role") != "assistant":
        raise RecordError(f"{label}: '{column}' must be a string or a list with one assistant message")
    content = message.get("content")
    parts = [] if isinstance(content, str) else content
    if not isinstance(parts, (list, tuple)) or not all(_is_text_part(part) for part in parts):
        raise RecordError(f"{label}: '{column}' content must be a string or a list of text parts")
    return message_text(message)


def _is_text_part(part: Any) -> bool:
    return isinstance(part, Mapping) and part.get("type") == "text" and isinstance(part.get("text", ""), str)


# ---------------------------------------------------------------------------------------------
# Examples already in the store


def _already_stored(store: FeedbackStore, example: Example, root: str | Path, where: str) -> bool:
    """True if the store holds this example (then it is kept as is, reference answer and meta included).

    An example stored under the same id with another prompt or media is an error: storing the
    import would overwrite it under candidates and judgments that were made for it.
    """
    try:
        stored = store.get_example(example.id)
    except KeyError:
        return False
    stored_root = Path(store.example_root(example.id) or ".")
    same_prompt = _as_json(stored.prompt_messages) == _as_json(example.messages)
    same_media = len(stored.media) == len(example.media) and all(
        _same_file(stored_root, a, Path(root), b) for a, b in zip(stored.media, example.media)
    )
    if not (same_prompt and same_media):
        raise RecordError(f"{where}: example id {example.id!r} is already in the feedback store "
                          "with another prompt or media")
    return True


def _as_json(messages: Iterable[Mapping[str, Any]]) -> str:
    return json.dumps([dict(m) for m in messages], sort_keys=True)


def _same_file(root_a: Path, a: MediaRef, root_b: Path, b: MediaRef) -> bool:
    path_a, path_b = root_a / a.path, root_b / b.path
    if a.kind != b.kind:
        return False
    if os.path.realpath(path_a) == os.path.realpath(path_b):
        return True
    return path_a.is_file() and path_b.is_file() and path_a.read_bytes() == path_b.read_bytes()
