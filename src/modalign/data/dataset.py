"""The on-disk dataset format: JSONL records plus a media folder.

A dataset is a folder::

    root/
      train.jsonl        one `Example.to_dict()` per line
      test.jsonl
      media/...          files named by the records' `media[].path` (relative to root)

Splits are the `*.jsonl` files in the root.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Iterator

from modalign.data.records import Example, RecordError


def split_path(root: str | Path, split: str) -> Path:
    return Path(root) / f"{split}.jsonl"


def list_splits(root: str | Path) -> list[str]:
    return sorted(p.stem for p in Path(root).glob("*.jsonl"))


def write_examples(root: str | Path, split: str, examples: Iterable[Example]) -> Path:
    """Write a split atomically (temp file, then rename) so a crash never leaves half a file."""
    path = split_path(root, split)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".jsonl.tmp")
    with tmp.open("w", encoding="utf-8") as handle:
        for example in examples:
            handle.write(json.dumps(example.to_dict(), ensure_ascii=False) + "\n")
    tmp.replace(path)
    return path


def iter_examples(root: str | Path, split: str) -> Iterator[Example]:
    """Read a split; a bad line raises `RecordError` naming the file and line."""
    path = split_path(root, split)
    if not path.is_file():
        available = ", ".join(list_splits(root)) or "none"
        raise FileNotFoundError(f"dataset {root}: no split file {path.name} (splits found: {available})")
    for line_no, raw in jsonl_rows(path):
        where = f"{path}:{line_no}"
        if not isinstance(raw, dict):
            raise RecordError(f"{where}: a record must be a JSON object")
        yield Example.from_dict(raw, where=where)


def jsonl_rows(path: str | Path) -> Iterator[tuple[int, Any]]:
    """(line number, parsed value) of every non-blank line of a JSONL file, read line by line.

    A line that is not JSON raises `RecordError` naming the file and line (`answers.jsonl:7`); what
    a row must hold (an object, which keys) the caller checks, naming the same `path:line`.
    """
    with Path(path).open(encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as err:
                raise RecordError(f"{path}:{line_no}: not valid JSON ({err.msg})") from None
            yield line_no, value


def read_examples(root: str | Path, split: str, modalities: str = "") -> list[Example]:
    """A split's examples; `modalities` ('image', 'audio', ...): keep only those media kinds (`data.modalities`)."""
    if not modalities:
        return list(iter_examples(root, split))
    from modalign.data.modalities import apply_modalities

    return apply_modalities(iter_examples(root, split), modalities, where=f"{root}/{split}")
