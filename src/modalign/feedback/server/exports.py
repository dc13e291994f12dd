"""Downloads for the admin: TRL preference rows, every judgment as JSONL, and a `datasets` Parquet file."""

from __future__ import annotations

import dataclasses
import io
import json

from modalign.feedback.store import KINDS, FeedbackStore


def trl_jsonl(store: FeedbackStore) -> str:
    """TRL's preference format (prompt / chosen / rejected + images / audios), majority over annotators."""
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in store.export_trl())


def judgments_jsonl(store: FeedbackStore, annotator: str | None = None) -> str:
    """Every current judgment (of `annotator`, or everyone's), one JSON object a line, with its kind, annotator,
    guideline version and time (and, for pairwise, the preference strength)."""
    lines = []
    for judgment in store.judgments(annotator=annotator):
        kind = next(name for name, cls in KINDS.items() if isinstance(judgment, cls))
        row = {"kind": kind, **dataclasses.asdict(judgment)}
        row["created_at"] = judgment.created_at.isoformat()
        lines.append(json.dumps(row, ensure_ascii=False) + "\n")
    return "".join(lines)


def preferences_parquet(store: FeedbackStore) -> bytes:
    """The TRL preference rows as a Hugging Face `datasets` Parquet file.

    Load it with `datasets.load_dataset("parquet", data_files="preferences.parquet")`.
    """
    import datasets  # heavy: only when this export is asked for

    rows = store.export_trl()
    table = datasets.Dataset.from_list(rows) if rows else datasets.Dataset.from_dict(
        {column: [] for column in ("example_id", "prompt", "chosen", "rejected", "images", "audios")})
    buffer = io.BytesIO()
    quiet = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()  # a server log is no place for a progress bar
    try:
        table.to_parquet(buffer)
    finally:
        if not quiet:
            datasets.enable_progress_bars()
    return buffer.getvalue()
