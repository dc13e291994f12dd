"""Import preference pairs in TRL's format into the feedback store (the inverse of `FeedbackStore.export_trl`).

A TRL preference row::

    {"id": "scene-12",                                   # optional (`example_id`, as export_trl writes, too)
     "prompt": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "..."}]}],
     "chosen": [{"role": "assistant", "content": [{"type": "text", "text": "..."}]}],   # or a plain string
     "rejected": [{"role": "assistant", "content": "..."}],                            # or a plain string
     "images": [...], "audios": [...],                   # paths, PIL images, HF `datasets` dicts
     "meta": {...}}                                      # optional, kept on the example (first row wins)

Each row becomes one pairwise judgment (choice "a" = chosen) between two new candidates.
Rows with the same prompt and media share one stored example: rows with an id (the `id` column,
or `example_id` as `export_trl` writes it) share it by id - the same id with another prompt or
media is an error naming both rows - and rows without one by a content-derived id. Rows without
`prompt` whose `chosen` / `rejected` are whole conversations (TRL's implicit prompt) take their
shared first messages as the prompt. Other columns become the example's `meta`. The prompt and
media go through `modalign.data.trl_format.example_from_trl`: relative paths resolve against the
JSONL file's folder; media are either stored once by content hash under the store's root, or
(root=None, how `dpo` / `reward` read a preference file) referenced where they are.
All rows are checked before anything is written to the store.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

from modalign.data.records import Completion, Example, MediaRef, RecordError, message_text
from modalign.data.dataset import jsonl_rows
from modalign.data.trl_format import example_from_trl, undecoded_media
from modalign.feedback.judgments import PairwiseJudgment
from modalign.feedback.store import FeedbackStore

if TYPE_CHECKING:
    import datasets

ANSWER_COLUMNS = ("chosen", "rejected")


def import_trl_preferences(
    store: FeedbackStore,
    source: str | Path | Sequence[Mapping[str, Any]] | datasets.Dataset,
    root: str | Path | None,
    annotator: str = "import",
    *,
    base: str | Path | None = None,
    staging: str | Path | None = None,
    id_column: str = "id",
) -> int:
    """Add TRL preference rows to `store` as examples, candidates and pairwise judgments.

    `source` is a JSONL file, a list of row dicts or a `datasets.Dataset`. `root` is the folder
    the stored examples' media are relative to: files inside it are referenced, others written
    once under `root/media/<sha256[:2]>/` (into `staging` first when given; the caller moves them).
    `root=None` references every file in place: each example's root is the source's folder (or
    the nearest folder holding it and the files the row names outside it), nothing is copied.
    Relative media paths resolve against `base`: by default the JSONL file's folder, and `root`
    for in-memory rows. Returns the number of pairs. A bad row raises `RecordError` naming the
    file and line (or the 0-based row index) and the field, and nothing is stored.
    """
    if base is None and isinstance(source, (str, os.PathLike)):
        base = Path(source).parent
    return add_preference_rows(store, _rows(source), root, annotator, base=base, staging=staging,
                               id_column=id_column)


def check_preference_file(path: str | Path) -> int:
    """The number of pairs in a TRL preference JSONL, every row checked as `dpo` / `reward` will read it.

    Nothing is written (an in-memory store, media referenced in place), so a recipe can call this
    before it creates its run folder. A bad row raises `RecordError` naming the file, line and field.
    """
    return import_trl_preferences(FeedbackStore("sqlite://"), path, None)


def add_preference_rows(
    store: FeedbackStore, rows: Iterable[tuple[int, str, Mapping[str, Any]]], root: str | Path | None,
    annotator: str, *, base: str | Path | None = None, staging: str | Path | None = None, id_column: str = "id",
) -> int:
    """`import_trl_preferences` over rows already read: (index, label for messages, row) each."""
    if root is None and base is None:
        raise ValueError("referencing media in place needs the folder relative paths start from (base)")
    examples, pairs = _read_pairs(rows, root, base, staging, id_column)
    new_examples = [(example, example_root) for example, example_root, where in examples.values()
                    if not _already_stored(store, example, example_root, where)]
    if not pairs:
        return 0
    for example_root in {example_root for _, example_root in new_examples}:
        store.add_examples([e for e, r in new_examples if r == example_root], root=example_root)
    ids = store.add_candidates([Completion(example_id, text) for example_id, *texts in pairs for text in texts])
    store.add_judgments([
        PairwiseJudgment(example_id=example_id, annotator=annotator,
                         candidate_a=ids[2 * i], candidate_b=ids[2 * i + 1], choice="a")  # "a" = chosen
        for i, (example_id, _, _) in enumerate(pairs)
    ])
    return len(pairs)


def _read_pairs(
    rows: Iterable[tuple[int, str, Mapping[str, Any]]], root: str | Path | None, base: str | Path | None,
    staging: str | Path | None, id_column: str,
) -> tuple[dict[str, tuple[Example, Path, str]], list[tuple[str, str, str]]]:
    """Every row checked: examples by id (with their root and where first seen), (example id, chosen, rejected) per row."""
    examples: dict[str, tuple[Example, Path, str]] = {}
    pairs: list[tuple[str, str, str]] = []
    for index, where, row in rows:
        row_id = row.get(id_column) if row.get(id_column) is not None else row.get("example_id")
        label = where if row_id is None else f"{where} (record {str(row_id)!r})"
        row = _with_explicit_prompt(row, label)
        chosen, rejected = _answer_text(row, "chosen", label), _answer_text(row, "rejected", label)
        example = _row_example(row, row_id, index, where, root, base, staging, id_column)  # may write media
        example, example_root = (example, Path(root).resolve()) if root is not None else in_place(example, base)
        first, first_root, first_where = examples.setdefault(example.id, (example, example_root, where))
        if (first.messages, first.media, first_root) != (example.messages, example.media, example_root):
            raise RecordError(f"{where}: example id {example.id!r} has another prompt or media than at {first_where}")
        pairs.append((example.id, chosen, rejected))
    return examples, pairs


def in_place(example: Example, base: str | Path) -> tuple[Example, Path]:
    """The example with its (absolute) media paths made relative to the nearest folder holding them and `base`.

    Real paths are used, so a symlinked folder of photos is read where it points and the media
    loader's check that files lie inside the root holds.
    """
    files = [os.path.realpath(ref.path) for ref in example.media]
    root = Path(os.path.commonpath([os.path.realpath(base)] + [os.path.dirname(f) for f in files]))
    media = tuple(MediaRef(ref.kind, Path(os.path.relpath(f, root)).as_posix()) for ref, f in zip(example.media, files))
    return Example(example.id, example.messages, media, example.meta), root


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
    rows = jsonl_rows(path)
    return [(line_no, f"{path}:{line_no}", _mapping(row, f"{path}:{line_no}")) for line_no, row in rows]


def _mapping(row: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(row, Mapping):
        raise RecordError(f"{where}: a row must be an object with 'prompt', 'chosen' and 'rejected'")
    return row


# ---------------------------------------------------------------------------------------------
# Row parts


def _with_explicit_prompt(row: Mapping[str, Any], label: str) -> Mapping[str, Any]:
    """TRL's implicit-prompt rows (whole conversations in `chosen` / `rejected`) with the shared start as `prompt`."""
    chosen, rejected = row.get("chosen"), row.get("rejected")
    if row.get("prompt") is not None or not all(isinstance(v, (list, tuple)) for v in (chosen, rejected)):
        return row
    shared = 0
    while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
        shared += 1
    if shared == 0:
        raise RecordError(f"{label}: no 'prompt' column, and 'chosen' and 'rejected' share no first message "
                          "(TRL's implicit prompt)")
    return {**row, "prompt": list(chosen[:shared]), "chosen": list(chosen[shared:]),
            "rejected": list(rejected[shared:])}


def _row_example(row: Mapping[str, Any], row_id: Any, index: int, where: str, root: str | Path | None,
                 base: str | Path | None, staging: str | Path | None, id_column: str) -> Example:
    """The prompt + media (+ other columns as meta) of a row as an `Example`; without an id, the id derives from the content."""
    if row.get("prompt") is None:
        raise RecordError(f"{where}: no 'prompt' column (a list of messages)")
    prompt_row = {key: value for key, value in row.items() if key not in (*ANSWER_COLUMNS, "example_id")}
    prompt_row[id_column] = row_id
    example = example_from_trl(prompt_row, index, root, where=where, base=base, staging=staging, id_column=id_column)
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


def _already_stored(store: FeedbackStore, example: Example, root: Path, where: str) -> bool:
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
        _same_file(stored_root, a, root, b) for a, b in zip(stored.media, example.media)
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
