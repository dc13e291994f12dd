"""Reading import sources, and writing imported SFT rows as a modalign dataset, all or nothing.

A source is a saved Hugging Face `datasets` folder (`save_to_disk`), a local `.parquet`,
`.jsonl` or `.json` file (HF rows or TRL rows), or a hub dataset id (only when the hub can be
reached; offline it is one clear error). Every row keeps a label naming where it came from
(`file.jsonl:3`, `file.parquet row 2`, `org/name[train] row 5`), so an error names the file, the
row and (from `example_from_trl`) the column. Relative media paths resolve against the source
file's folder (a saved folder: the folder itself).

Writes are staged: everything goes to a temp folder beside `out`, renamed into place at the end,
so a failed import leaves nothing behind and never touches what `out` already holds.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from modalign.data.dataset import jsonl_rows, split_path, write_examples
from modalign.data.records import Example, RecordError
from modalign.data.trl_format import example_from_trl, undecoded_media

HUB_ID = re.compile(r"^[\w.-]+(/[\w.-]+)?$")
LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet")
Row = tuple[int, str, Mapping[str, Any]]  # (index, label for messages, row)


class SourceError(ValueError):
    """The import source cannot be read (unknown format, missing split, hub unreachable); names the source."""


@dataclass(frozen=True)
class SourceSplit:
    """The rows of one split of a source, and the folder their relative media paths start from."""

    name: str
    rows: Sequence[Row]
    base: Path | None


def read_source(source: str, data_split: str | None = None, config: str | None = None) -> list[SourceSplit]:
    """Every split of `source` (or only `data_split`); see the module docstring for what a source is."""
    path = Path(source)
    if path.is_dir():
        return _saved_folder(path, data_split)
    if path.is_file():
        return [_local_file(path, data_split)]
    if path.suffix in LOCAL_SUFFIXES or source.startswith((".", "/", "~")) or not HUB_ID.match(source):
        raise FileNotFoundError(f"{source}: no such file or folder")
    return _hub(source, data_split, config)


def source_kind(splits: Sequence[SourceSplit]) -> str:
    """'preference' when rows carry `chosen` or `rejected` (a row missing the other is then an error), else 'sft'."""
    first = next((row for split in splits for _, _, row in split.rows), {})  # reads one row only
    if "label" in first and "completion" in first and "chosen" not in first:
        raise SourceError("unpaired preference rows (prompt / completion / label, TRL's KTO format) cannot be "
                          "imported: pair a good and a bad answer as chosen / rejected")
    return "preference" if "chosen" in first or "rejected" in first else "sft"


# ---------------------------------------------------------------------------------------------
# Sources


def _local_file(path: Path, data_split: str | None) -> SourceSplit:
    name = data_split or "train"
    if path.suffix == ".jsonl":
        rows = [(i, f"{path}:{line}", _mapping(row, f"{path}:{line}")) for i, (line, row) in enumerate(jsonl_rows(path))]
        return SourceSplit(name, rows, path.parent)
    if path.suffix == ".json":
        return SourceSplit(name, _json_rows(path), path.parent)
    if path.suffix == ".parquet":
        import datasets
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except Exception as err:  # noqa: BLE001 - pyarrow raises ArrowInvalid, OSError, ... for a bad file
            raise SourceError(f"{path}: not a readable parquet file ({err})") from None
        return SourceSplit(name, dataset_rows(datasets.Dataset(table), f"{path}"), path.parent)
    raise SourceError(f"{path}: cannot import a {path.suffix or 'suffix-less'} file "
                      "(give a .jsonl, .json or .parquet file, a save_to_disk folder or a hub id)")


def _json_rows(path: Path) -> list[Row]:
    """A JSON list of rows, or JSON Lines in a .json file (as `datasets.load_dataset("json")` reads both)."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        if err.msg == "Extra data":  # more than one value: JSON Lines
            return [(i, f"{path}:{line}", _mapping(row, f"{path}:{line}"))
                    for i, (line, row) in enumerate(jsonl_rows(path))]
        raise RecordError(f"{path}: not valid JSON ({err.msg}, line {err.lineno}); a .json file holds a list of rows") from None
    if not isinstance(value, list):
        raise RecordError(f"{path}: a .json source must hold a list of rows (one object per example)")
    return [(i, f"{path} row {i}", _mapping(row, f"{path} row {i}")) for i, row in enumerate(value)]


def _saved_folder(path: Path, data_split: str | None) -> list[SourceSplit]:
    if not any((path / name).is_file() for name in ("dataset_dict.json", "state.json")):
        raise SourceError(f"{path}: not a saved `datasets` folder (no dataset_dict.json or state.json); "
                          "give the .jsonl / .parquet file itself")
    import datasets

    try:
        with quiet_datasets():
            loaded = datasets.load_from_disk(str(path))
    except Exception as err:  # noqa: BLE001 - a damaged folder fails in arrow, json or fsspec
        raise SourceError(f"{path}: the saved `datasets` folder cannot be read ({type(err).__name__}: {err})") from None
    return _splits_of(loaded, str(path), data_split, path)


def _hub(source: str, data_split: str | None, config: str | None) -> list[SourceSplit]:
    import datasets

    if not _hub_offline() and not _hub_reachable():
        raise SourceError(f"{source}: not a local file or folder, and the Hugging Face hub cannot be reached "
                          "(offline?); download the dataset and import the saved folder or file")
    try:
        with quiet_datasets():
            loaded = datasets.load_dataset(source, name=config, split=data_split)
    except Exception as err:  # noqa: BLE001 - the hub client raises many types; the user needs one line
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        offline = " (the hub is offline: HF_HUB_OFFLINE is set)" if _hub_offline() else ""
        raise SourceError(f"{source}: could not load it from the Hugging Face hub{offline}: {reason}") from None
    return _splits_of(loaded, source, data_split, None)


def _splits_of(loaded: Any, label: str, data_split: str | None, base: Path | None) -> list[SourceSplit]:
    """One `SourceSplit` per split of a `Dataset` (named `data_split` or 'train') or a `DatasetDict`."""
    import datasets

    if isinstance(loaded, datasets.Dataset):
        return [SourceSplit(data_split or "train", dataset_rows(loaded, label), base)]
    names = list(loaded.keys())
    if data_split is not None and data_split not in names:
        raise SourceError(f"{label}: no split {data_split!r} (splits: {', '.join(names)})")
    chosen = [data_split] if data_split else names
    return [SourceSplit(name, dataset_rows(loaded[name], f"{label}[{name}]"), base) for name in chosen]


class DatasetRows(Sequence):
    """Labelled rows of a `datasets.Dataset`, read one at a time (a hub dataset need not fit in memory).

    Media are undecoded: files keep their paths and encoded images their bytes.
    """

    def __init__(self, dataset: Any, label: str) -> None:
        with quiet_datasets():
            self.dataset = undecoded_media(dataset)
        self.label = label

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Row:  # type: ignore[override]
        return index, f"{self.label} row {index}", self.dataset[index]

    def __iter__(self) -> Iterator[Row]:
        return ((i, f"{self.label} row {i}", row) for i, row in enumerate(self.dataset))


def dataset_rows(dataset: Any, label: str) -> DatasetRows:
    return DatasetRows(dataset, label)


def _mapping(row: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(row, Mapping):
        raise RecordError(f"{where}: a row must be a JSON object")
    return row


def _hub_offline() -> bool:
    flags = (os.environ.get(name, "").upper() for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))
    return any(flag in ("1", "ON", "YES", "TRUE") for flag in flags)


def _hub_reachable(timeout: float = 3.0) -> bool:
    """A TCP connection to the hub within `timeout` s: a blocked network fails here instead of hanging."""
    from urllib.parse import urlparse

    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((endpoint.hostname or "huggingface.co", endpoint.port or 443), timeout=timeout).close()
        return True
    except OSError:
        return False


@contextlib.contextmanager
def quiet_datasets() -> Iterator[None]:
    """No `datasets` progress bars while importing (the command prints one summary line)."""
    import datasets

    was_enabled = not datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if was_enabled:
            datasets.enable_progress_bars()


# ---------------------------------------------------------------------------------------------
# Staged writes


@contextlib.contextmanager
def staged(out: str | Path) -> Iterator[Path]:
    """A temp folder beside `out`; on success its files move into `out` (created if missing), on error it is removed.

    A new `out` is one rename. Into an existing `out` the files are moved one by one; a file that
    is already there is kept (media are content-addressed, so it holds the same bytes).
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.import-", dir=out.parent))
    try:
        yield staging
        if not out.exists():
            os.replace(staging, out)
            return
        for file in sorted(p for p in staging.rglob("*") if p.is_file()):
            destination = out / file.relative_to(staging)
            if not destination.exists():
                destination.parent.mkdir(parents=True, exist_ok=True)
                os.replace(file, destination)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def import_sft(
    splits: Sequence[SourceSplit], out: str | Path, *, split: str | None = None, id_column: str = "id"
) -> dict[str, int]:
    """Write each source split as `out/<split>.jsonl` + content-addressed media; returns examples per split.

    `split` renames a single source split. Ids come from `id_column` (else `row-<index>`); two rows
    with one id are a `RecordError` naming both. Nothing is written unless every row imports.
    """
    out = Path(out)
    if split is not None and len(splits) > 1:
        raise SourceError(f"--split names one output split, but the source has {len(splits)} "
                          f"({', '.join(s.name for s in splits)}); pick one with --data-split")
    names = [split or source.name for source in splits]
    for name in names:
        if split_path(out, name).exists():
            raise FileExistsError(f"{split_path(out, name)} already exists; import into another folder or split")
    counts = {}
    with staged(out) as staging:
        for name, source in zip(names, splits):
            examples, wheres = [], []
            for index, where, row in source.rows:  # one pass: a hub dataset is read once
                examples.append(example_from_trl(row, index, out, where=where, base=source.base, staging=staging,
                                                 id_column=id_column))
                wheres.append(where)
            if not examples:
                raise RecordError(f"source split {source.name!r}: no rows to import")
            check_unique_ids(examples, wheres)
            write_examples(staging, name, examples)
            counts[name] = len(examples)
    return counts


def check_unique_ids(examples: Sequence[Example], wheres: Sequence[str]) -> None:
    """A `RecordError` naming both rows when two examples share an id."""
    first_seen: dict[str, str] = {}
    for example, where in zip(examples, wheres):
        if example.id in first_seen:
            raise RecordError(f"{where}: id {example.id!r} is already used by {first_seen[example.id]} "
                              "(ids must be unique within a split)")
        first_seen[example.id] = where
