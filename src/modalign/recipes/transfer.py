"""`modalign import` and `modalign export`: other formats in and out, read top to bottom.

Import: source -> rows (`modalign.data.importing.read_source`) -> SFT / conversational rows become
a dataset folder (`out/<split>.jsonl` + `out/media/`), preference rows (`chosen` / `rejected`)
pairwise judgments in a feedback store (`out/feedback.db` + `out/media/`, annotator
`import:<source>`; or the judgments in the `store` named as every command names one: path, folder
or SQLAlchemy URL). Media are stored once per dataset / store under their content hash
(`media/<sha256[:2]>/<sha256>.<ext>`), so recipes reference them and never copy them per run.

Export: a dataset folder -> TRL conversational rows; a store -> TRL preference rows (majority
over annotators, ties left out); as JSONL (absolute media paths) or a `datasets` folder
(`save_to_disk`, images embedded). Every write is staged and renamed into place.
"""

from __future__ import annotations

import itertools
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from modalign.data.dataset import list_splits, read_examples
from modalign.data.importing import SourceError, import_sft, quiet_datasets, read_source, source_kind, staged
from modalign.feedback.store_spec import STORE_FILE, is_url, masked, open_store

EXPORT_FORMATS = ("trl-jsonl", "hf")


def import_source(
    source: str, out: str, kind: str = "auto", split: str | None = None, id_column: str = "id",
    config: str | None = None, data_split: str | None = None, store: str = "",
) -> dict[str, Any]:
    """Import `source` into `out`; returns what was written (kind, counts, folder, store).

    `store`: where preference rows go (`store_spec.open_store`: a feedback.db path, a folder or an
    SQLAlchemy URL); '' means `out/feedback.db`. Their media go under `out/media/` either way.
    """
    if kind not in ("auto", "sft", "preference"):
        raise SourceError(f"--kind must be auto, sft or preference, not {kind!r}")
    splits = read_source(source, data_split=data_split, config=config)
    kind = source_kind(splits) if kind == "auto" else kind
    if kind == "sft":
        if store:
            raise SourceError(f"--store {masked(store)!r}: the source holds SFT rows, which become a dataset "
                              f"folder (--out); a store takes preference rows (chosen / rejected)")
        return {"kind": "sft", "out": str(out), "examples": import_sft(splits, out, split=split, id_column=id_column)}
    store = _named_store(store, Path(out))
    pairs = import_preferences(splits, out, annotator=f"import:{_source_name(source)}", id_column=id_column,
                               store_spec=store)
    return {"kind": "preference", "out": str(out), "pairs": pairs,
            "store": masked(store) if store else str(Path(out) / STORE_FILE)}


def import_preferences(splits, out: str | Path, annotator: str, id_column: str = "id", store_spec: str = "") -> int:
    """Preference rows of every split into the store `store_spec` names (`store_spec.open_store`; '':
    `out/feedback.db`, created or added to); media under `out/media/`."""
    from modalign.data.records import RecordError
    from modalign.feedback.store import FeedbackStore
    from modalign.feedback.trl_import import add_preference_rows

    out = Path(out)
    rows = itertools.chain.from_iterable(split.rows for split in splits)  # read once, lazily
    existing = out / STORE_FILE
    with staged(out) as staging:
        store = (open_store(store_spec, key="--store") if store_spec
                 else FeedbackStore.sqlite(existing if existing.is_file() else staging / STORE_FILE))
        try:
            pairs = add_preference_rows(store, rows, out, annotator, base=splits[0].base, staging=staging,
                                        id_column=id_column)
        finally:
            store.engine.dispose()  # no open connection while the folder is renamed
        if not pairs:
            raise RecordError(f"{out}: the source holds no preference rows")
    return pairs


def _named_store(store: str, out: Path) -> str:
    """`store`, or '' when it names `out`'s own feedback.db, written through the staging folder as by default
    (so a failed import leaves no `out` behind)."""
    if not store.strip() or is_url(store):
        return store.strip()
    path = Path(store).expanduser().resolve()
    return "" if path in (out.resolve(), (out / STORE_FILE).resolve()) else store


def export_source(location: str, out: str, fmt: str = "trl-jsonl", split: str | None = None) -> dict[str, Any]:
    """Export a dataset folder or a feedback store (folder, .db file or URL); returns what was written."""
    if fmt not in EXPORT_FORMATS:
        raise SourceError(f"--format must be one of {', '.join(EXPORT_FORMATS)}, not {fmt!r}")
    if os.path.lexists(out):
        raise FileExistsError(f"{out} already exists; export to a new file or folder")
    if _is_store(location):
        return _export_store(location, Path(out), fmt)
    return _export_dataset(Path(location), Path(out), fmt, split)


def _export_dataset(root: Path, out: Path, fmt: str, split: str | None) -> dict[str, Any]:
    from modalign.data.trl_format import example_to_trl, to_hf_dataset

    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such dataset folder or feedback store")
    splits = [split] if split else list_splits(root)
    if not splits:
        raise FileNotFoundError(f"{root}: not a dataset folder (no <split>.jsonl files) nor a feedback store")
    examples = {name: read_examples(root, name) for name in splits}
    counts = {name: len(rows) for name, rows in examples.items()}
    if fmt == "hf":
        import datasets

        with quiet_datasets():
            tables = {name: to_hf_dataset(rows, root) for name, rows in examples.items()}
        _save_hf(datasets.DatasetDict(tables) if split is None else tables[split], out)
    elif out.suffix == ".jsonl":
        if len(splits) != 1:
            raise SourceError(f"{out}: one .jsonl file holds one split, and {root} has {', '.join(splits)}; "
                              "add --split NAME, or give a folder to get one file per split")
        _write_jsonl(out, [example_to_trl(example, root) for example in examples[splits[0]]])
    else:
        with staged(out) as staging:
            for name, rows in examples.items():
                _write_jsonl(staging / f"{name}.jsonl", [example_to_trl(example, root) for example in rows])
    return {"kind": "dataset", "out": str(out), "examples": counts}


def _export_store(location: str, out: Path, fmt: str) -> dict[str, Any]:
    from modalign.feedback.store_spec import masked, open_store

    path = Path(location) / "feedback.db" if Path(location).is_dir() else Path(location)
    if "://" not in location and not path.is_file():
        raise FileNotFoundError(f"{location}: no such feedback store")
    rows = open_store(location, key="LOCATION", must_exist=True).export_trl()
    if not rows:
        raise SourceError(f"{masked(location)}: the feedback store holds no decided preference pairs to export")
    if fmt == "hf":
        import datasets

        with quiet_datasets():
            table = datasets.Dataset.from_list(rows).cast_column("images", datasets.List(datasets.Image()))
        _save_hf(table, out)
    else:
        _write_jsonl(out, rows)
    return {"kind": "preference", "out": str(out), "pairs": len(rows)}


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    """One JSON row a line, written to a temp file and renamed (never half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(handle, "w", encoding="utf-8") as file:
        file.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    os.replace(tmp, path)


def _save_hf(table, out: Path) -> None:
    """`save_to_disk` into a staged folder (images embedded as bytes), renamed to `out`."""
    with staged(out) as staging:
        with quiet_datasets():
            table.save_to_disk(str(staging / "hf"))
        for item in (staging / "hf").iterdir():
            os.replace(item, staging / item.name)
        (staging / "hf").rmdir()


def _is_store(location: str) -> bool:
    path = Path(location)
    return "://" in location or path.suffix == ".db" or (path / "feedback.db").is_file()


def _source_name(source: str) -> str:
    path = Path(source)
    return path.name if path.exists() else source
