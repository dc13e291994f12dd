"""What a task looks like to an annotator, shared by the HTML pages and the JSON API.

Only what judging needs is shown: the prompt, the media and the candidate texts. Never the
policy that wrote a candidate (labels stay blind) and never another annotator's answer.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from modalign.data.records import message_text
from modalign.feedback.judgments import CritiqueJudgment, Judgment, PairwiseJudgment, RankingJudgment, RatingJudgment
from modalign.feedback.store import COMMON
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


def judgment_fields(judgment: Judgment) -> dict[str, Any]:
    """A judgment's answer as JSON fields (what the annotator said, without who / when)."""
    fields = {k: v for k, v in dataclasses.asdict(judgment).items() if k not in COMMON}
    return json.loads(json.dumps(fields))


def judgment_form_values(task: TaskView, judgment: Judgment) -> dict[str, str]:
    """The task form filled in with a stored answer (to change it): the inverse of `pages.form_to_body`."""
    if isinstance(judgment, PairwiseJudgment):
        return {"choice": judgment.choice, "reason": judgment.reason, "strength": judgment.strength or ""}
    if isinstance(judgment, RankingJudgment):
        positions = {cid: str(i + 1) for i, cid in enumerate(task.candidate_ids)}
        return {"ranking": ",".join(positions[cid] for cid in judgment.ranking)}
    if isinstance(judgment, RatingJudgment):
        return {f"rating.{axis}": str(value) for axis, value in judgment.ratings.items()}
    if isinstance(judgment, CritiqueJudgment):
        return {"corrected_text": judgment.corrected_text or "", "critique": judgment.critique}
    return {}


def describe(judgment: Judgment) -> str:
    """A stored answer in a few words, as its annotator saw the task (their A and B)."""
    if isinstance(judgment, PairwiseJudgment):
        if judgment.choice == "tie":
            return "Tie"
        return f"{judgment.choice.upper()} is better" + (f" ({judgment.strength})" if judgment.strength else "")
    if isinstance(judgment, RankingJudgment):
        return "ranked " + " > ".join(f"#{cid}" for cid in judgment.ranking)
    if isinstance(judgment, RatingJudgment):
        return ", ".join(f"{axis} {value}" for axis, value in judgment.ratings.items())
    if isinstance(judgment, CritiqueJudgment):
        text = judgment.corrected_text or ""
        return "corrected: " + (text[:80] + "…" if len(text) > 80 else text)
    return type(judgment).__name__
