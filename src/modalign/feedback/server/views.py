"""What a task looks like to an annotator, shared by the HTML pages and the JSON API.

Only what judging needs is shown: the prompt, the media and the candidate texts. Never the
policy that wrote a candidate (labels stay blind) and never another annotator's answer.
"""

from __future__ import annotations

from typing import Any

from modalign.data.records import message_text
from modalign.feedback.server.guidelines import Guideline
from modalign.feedback.server.tasks import Progress, TaskView


def prompt_lines(task: TaskView) -> list[dict[str, str]]:
    return [{"role": str(m.get("role")), "text": message_text(m)} for m in task.example.prompt_messages]


def media_items(task: TaskView) -> list[dict[str, str]]:
    """One URL per media file of the example; the media route serves nothing else."""
    return [{"kind": ref.kind, "url": f"/tasks/{task.id}/media/{index}"} for index, ref in enumerate(task.example.media)]


def candidate_label(kind: str, position: int) -> str:
    return "AB"[position] if kind == "pairwise" else str(position + 1)


def task_json(task: TaskView, guideline: Guideline, status: str | None) -> dict[str, Any]:
    return {
        "id": task.id,
        "kind": task.kind,
        "example_id": task.example.id,
        "prompt": prompt_lines(task),
        "media": media_items(task),
        "candidates": [{"id": cid, "label": candidate_label(task.kind, i), "text": text}
                       for i, (cid, text) in enumerate(task.candidates)],
        "axes": list(task.settings.axes) if task.kind == "rating" else [],
        "scale": task.settings.scale if task.kind == "rating" else None,
        "guideline_version": guideline.version,
        "status": status,
    }


def progress_json(progress: Progress) -> dict[str, int]:
    return {"done": progress.done, "total": progress.total}
