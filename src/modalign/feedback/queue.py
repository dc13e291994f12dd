"""Feedback from people inside the loop: push a round's pairs to the annotation queue, wait, read the answers.

The tasks go to the annotators' queues of `modalign annotate` (the same store); the round
waits until every assignment is answered, then reads the judgments back. The task ids are
saved in the round folder first, so a resumed round waits for the same tasks instead of
pushing them again.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Sequence

from modalign.feedback.collect import JudgedGroups

if TYPE_CHECKING:
    from modalign.feedback.select import CandidatePair
    from modalign.feedback.store import FeedbackStore
    from modalign.recipes.loop import LoopConfig


def judgments_from_people(store: "FeedbackStore", pairs: Sequence["CandidatePair"], cfg: "LoopConfig",
                          r: int, poll_seconds: float = 1.0) -> JudgedGroups:
    """Pairwise tasks for `pairs` (each to `cfg.overlap` of `cfg.annotators`), answered before returning."""
    from modalign.recipes.loop import round_dir

    saved = round_dir(cfg, r) / "tasks.json"
    if saved.is_file():
        task_ids = json.loads(saved.read_text())["task_ids"]
    else:
        task_ids = push_pairs(store, pairs, cfg)
        saved.write_text(json.dumps({"task_ids": task_ids}))
    wait_for_answers(store, task_ids, cfg.wait_seconds, poll_seconds)
    return judged_tasks(store, task_ids)


def push_pairs(store: "FeedbackStore", pairs: Sequence["CandidatePair"], cfg: "LoopConfig") -> list[int]:
    """Store the pairs' examples and candidates, then one pairwise task per pair; returns the task ids."""
    from modalign.feedback.server.tasks import create_tasks

    store.add_examples({p.example.id: p.example for p in pairs}.values(), root=cfg.data)
    ids = iter(store.add_candidates([c for p in pairs for c in (p.a, p.b)]))
    items = [(p.example.id, (next(ids), next(ids))) for p in pairs]
    annotators = [name.strip() for name in cfg.annotators.split(",") if name.strip()]
    return create_tasks(store, "pairwise", items, overlap=cfg.overlap, annotators=annotators)


def wait_for_answers(store: "FeedbackStore", task_ids: Sequence[int], wait_seconds: float, poll_seconds: float) -> None:
    """Block until no assignment of `task_ids` is queued; a TimeoutError names how many are left."""
    from modalign.ui import console

    deadline, shown = time.monotonic() + wait_seconds, -1
    while (left := open_assignments(store, task_ids)) > 0:
        if left != shown:
            console.print(f"waiting for {left} judgment(s) from annotators (modalign annotate --store {store.display_url})")
            shown = left
        if time.monotonic() > deadline:
            raise TimeoutError(f"{left} of the round's assignments are still unanswered after {wait_seconds:.0f} s; "
                               f"rerun the loop to keep waiting (the tasks stay queued)")
        time.sleep(poll_seconds)


def open_assignments(store: "FeedbackStore", task_ids: Sequence[int]) -> int:
    from sqlalchemy import func, select
    from sqlalchemy.orm import Session

    from modalign.feedback.schema import AssignmentRow

    query = select(func.count()).where(AssignmentRow.task_id.in_(list(task_ids)), AssignmentRow.status == "queued")
    with Session(store.engine) as session:
        return int(session.scalar(query))


def judged_tasks(store: "FeedbackStore", task_ids: Sequence[int]) -> JudgedGroups:
    """The answered pairwise tasks as judged groups (ties left out, as `panel_agreement` reads orders)."""
    from modalign.feedback.judgments import PairwiseJudgment

    wanted = set(task_ids)
    by_task: dict[int, list[PairwiseJudgment]] = {}
    for judgment in store.judgments(kind="pairwise", training=True):  # skipped / flagged tasks never train
        if judgment.task_id in wanted and judgment.choice != "tie":
            by_task.setdefault(judgment.task_id, []).append(judgment)
    examples, groups, verdicts = [], [], []
    for task_id in sorted(by_task):
        first = by_task[task_id][0]
        a, b = store.get_candidate(first.candidate_a), store.get_candidate(first.candidate_b)
        examples.append(store.get_example(first.example_id))
        groups.append([a, b])
        verdicts.append([(j.annotator, (0, 1) if (j.choice == "a") == (j.candidate_a == first.candidate_a) else (1, 0))
                         for j in by_task[task_id]])
    return JudgedGroups(examples, groups, verdicts, pairwise=True)
