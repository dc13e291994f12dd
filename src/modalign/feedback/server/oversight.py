"""What an admin looks into and fixes: items the annotators disagree on, one task's individual
judgments (with their edit history and skips), skipped / flagged items, and stalled assignments.

A task is "disputed" when two or more annotators answered it and not all gave the same answer:
the same winner (or tie) for pairwise, the same order for a ranking, the same scores for a rating.
Critiques are free text and never counted as disputed.
"""

from __future__ import annotations

import random
import threading
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Hashable, Sequence

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from modalign.feedback.judgments import Judgment, PairwiseJudgment, RankingJudgment, RatingJudgment
from modalign.feedback.schema import (
    AnnotatorRow, AssignmentMoveRow, AssignmentRow, DeactivatedRow, JudgmentRevisionRow, JudgmentRow, SkipRow, TaskRow,
)
from modalign.feedback.server.errors import InvalidField, NotFound
from modalign.feedback.server.submit import locked_write
from modalign.feedback.server.tasks import QUEUED, AssignmentOrderRow, TaskView, load_task
from modalign.feedback.store import KINDS, FeedbackStore, judgment_from_row


@dataclass(frozen=True)
class Vote:
    """One annotator's answer to a task, in words that do not depend on their A/B order."""

    annotator: str
    answer: str  # e.g. "candidate 12 (strong)", "tie", "12 > 14 > 13", "accuracy 4, fluency 5"
    detail: str  # reason / critique text, or ""
    created_at: str


@dataclass(frozen=True)
class DisputedTask:
    task_id: int
    kind: str
    example_id: str
    votes: list[Vote]
    answers: int  # distinct answers among the votes


@dataclass(frozen=True)
class SetAside:
    task_id: int
    annotator: str
    action: str
    reason: str
    note: str
    created_at: str


@dataclass(frozen=True)
class Stalled:
    task_id: int
    annotator: str
    since: datetime


@dataclass(frozen=True)
class Move:
    task_id: int
    from_annotator: str
    to_annotator: str | None  # None: no eligible annotator, left where it was


def answer_key(judgment: Judgment) -> Hashable:
    """What two annotators must share to agree on a task (None: not compared)."""
    if isinstance(judgment, PairwiseJudgment):
        return {"a": judgment.candidate_a, "b": judgment.candidate_b}.get(judgment.choice, "tie")
    if isinstance(judgment, RankingJudgment):
        return tuple(judgment.ranking)
    if isinstance(judgment, RatingJudgment):
        return tuple(sorted(judgment.ratings.items()))
    return None


def vote_of(judgment: Judgment) -> Vote:
    if isinstance(judgment, PairwiseJudgment):
        key = answer_key(judgment)
        answer = "tie" if key == "tie" else f"candidate {key}" + (f" ({judgment.strength})" if judgment.strength else "")
        detail = judgment.reason
    elif isinstance(judgment, RankingJudgment):
        answer, detail = " > ".join(map(str, judgment.ranking)), ""
    elif isinstance(judgment, RatingJudgment):
        answer, detail = ", ".join(f"{axis} {value}" for axis, value in judgment.ratings.items()), ""
    else:
        answer, detail = getattr(judgment, "corrected_text", "") or "", getattr(judgment, "critique", "")
    return Vote(judgment.annotator, answer, detail, judgment.created_at.isoformat(timespec="seconds"))


def disputed_tasks(store: FeedbackStore) -> list[DisputedTask]:
    """Tasks with split votes, the most split first (then by task id)."""
    by_task: dict[int, list[Judgment]] = defaultdict(list)
    for judgment in store.judgments():
        if judgment.task_id is not None and answer_key(judgment) is not None:
            by_task[judgment.task_id].append(judgment)
    out = []
    for task_id, judgments in by_task.items():
        answers = len({answer_key(j) for j in judgments})
        if len(judgments) >= 2 and answers >= 2:
            kind = store_kind(judgments[0])
            out.append(DisputedTask(task_id, kind, judgments[0].example_id, [vote_of(j) for j in judgments], answers))
    return sorted(out, key=lambda d: (-d.answers / len(d.votes), d.task_id))


def store_kind(judgment: Judgment) -> str:
    """The kind name a judgment is stored under ("pairwise", ...)."""
    return next(name for name, cls in KINDS.items() if isinstance(judgment, cls))


@dataclass(frozen=True)
class TaskDetail:
    task: TaskView  # candidates in the task's own order, not any annotator's
    assignments: list[tuple[str, str]]  # (annotator, status)
    votes: list[Vote]
    history: list[tuple[str, str, str, str]]  # (annotator, change, replaced at, the replaced answer)
    set_aside: list[SetAside]


def task_detail(store: FeedbackStore, task_id: int) -> TaskDetail:
    """Everything stored about one task: who has it, each annotator's current answer, the versions
    they replaced or withdrew, and any skip or flag."""
    with Session(store.engine) as session:
        task = load_task(session, task_id)
        if task is None:
            raise NotFound(f"there is no task {task_id}", field="task_id")
        assignments = [(row.annotator, row.status) for row in session.scalars(
            select(AssignmentRow).where(AssignmentRow.task_id == task_id).order_by(AssignmentRow.annotator))]
        votes = [vote_of(judgment_from_row(row)) for row in session.scalars(
            select(JudgmentRow).where(JudgmentRow.task_id == task_id).order_by(JudgmentRow.id))]
        history = []
        for rev in session.scalars(select(JudgmentRevisionRow).where(JudgmentRevisionRow.task_id == task_id)
                                   .order_by(JudgmentRevisionRow.id)):
            if rev.kind == "skip":  # a withdrawn skip or flag
                before = f"{rev.payload['action']} ({rev.payload['reason']}) {rev.payload['note']}".strip()
            else:
                old = JudgmentRow(kind=rev.kind, example_id=task.example.id, annotator=rev.annotator,
                                  guideline_version=rev.guideline_version, created_at=rev.created_at, task_id=task_id,
                                  payload=rev.payload)
                before = vote_of(judgment_from_row(old)).answer
            history.append((rev.annotator, rev.change, _iso(rev.replaced_at), before))
        skips = [_set_aside(row) for row in session.scalars(select(SkipRow).where(SkipRow.task_id == task_id))]
    return TaskDetail(task, assignments, votes, history, skips)


def set_aside_items(store: FeedbackStore, action: str | None = None) -> list[SetAside]:
    """Skipped and flagged tasks, newest first (`action`: only "skip" or only "flag")."""
    query = select(SkipRow).order_by(SkipRow.id.desc())
    if action:
        query = query.where(SkipRow.action == action)
    with Session(store.engine) as session:
        return [_set_aside(row) for row in session.scalars(query)]


# ---- stalled assignments ------------------------------------------------------------------------


def stalled_assignments(store: FeedbackStore, older_than: timedelta, annotator: str | None = None) -> list[Stalled]:
    """Queued assignments given out more than `older_than` ago: since their latest move to this annotator or
    their latest undo (the task came back to the queue then), else since the task's creation."""
    cutoff = datetime.now(timezone.utc) - older_than
    moved = (select(AssignmentMoveRow.task_id, AssignmentMoveRow.to_annotator, func.max(AssignmentMoveRow.moved_at))
             .group_by(AssignmentMoveRow.task_id, AssignmentMoveRow.to_annotator))
    undone = (select(JudgmentRevisionRow.task_id, JudgmentRevisionRow.annotator, func.max(JudgmentRevisionRow.replaced_at))
              .where(JudgmentRevisionRow.change == "undo")
              .group_by(JudgmentRevisionRow.task_id, JudgmentRevisionRow.annotator))
    query = (select(AssignmentRow.task_id, AssignmentRow.annotator, TaskRow.created_at)
             .join(TaskRow, TaskRow.id == AssignmentRow.task_id).where(AssignmentRow.status == QUEUED)
             .order_by(AssignmentRow.task_id, AssignmentRow.annotator))
    if annotator:
        query = query.where(AssignmentRow.annotator == annotator)
    with Session(store.engine) as session:
        restarted: dict[tuple[int, str], datetime] = {}
        for task, name, at in [*session.execute(moved), *session.execute(undone)]:
            restarted[task, name] = max(restarted.get((task, name), _aware(at)), _aware(at))
        out = []
        for task_id, name, created in session.execute(query):
            since = restarted.get((task_id, name)) or _aware(created)
            if since < cutoff:
                out.append(Stalled(task_id, name, since))
    return out


def reassign_stalled(store: FeedbackStore, write_lock: threading.Lock, older_than: timedelta, by: str,
                     to: str | None = None, annotator: str | None = None) -> list[Move]:
    """Move every stalled assignment (of `annotator`, or of everyone) to `to`, or, when `to` is None,
    back to the pool: the active annotator with the shortest open queue who does not have the task yet.
    An assignment nobody eligible can take stays where it is (`Move.to_annotator` None)."""
    if older_than < timedelta(0):
        raise InvalidField("older_than_minutes must be 0 or more", field="older_than_minutes")
    with Session(store.engine) as session:
        _check_target(session, to)
    stalled = stalled_assignments(store, older_than, annotator)
    return locked_write(write_lock, lambda: _move_all(store, stalled, to, by))


def _check_target(session: Session, to: str | None) -> None:
    if to is None:
        return
    row = session.get(AnnotatorRow, to)
    if row is None or row.role != "annotator":
        raise InvalidField(f"there is no annotator named {to!r}", field="to")
    if session.get(DeactivatedRow, to) is not None:
        raise InvalidField(f"{to!r} is deactivated", field="to")


def _move_all(store: FeedbackStore, stalled: Sequence[Stalled], to: str | None, by: str) -> list[Move]:
    rng, now, moves = random.SystemRandom(), datetime.now(timezone.utc), []
    with Session(store.engine) as session, session.begin():
        pool = _pool_load(session)
        for item in stalled:
            current = session.get(AssignmentRow, (item.task_id, item.annotator))
            if current is None or current.status != QUEUED:  # answered meanwhile
                continue
            holders = set(session.scalars(select(AssignmentRow.annotator).where(AssignmentRow.task_id == item.task_id)))
            candidates = [to] if to else sorted((n for n in pool if n not in holders), key=lambda n: (pool[n], n))
            target = next((n for n in candidates if n not in holders), None)
            if target is None:
                moves.append(Move(item.task_id, item.annotator, None))
                continue
            _move(session, item.task_id, item.annotator, target, rng)
            session.add(AssignmentMoveRow(task_id=item.task_id, from_annotator=item.annotator, to_annotator=target,
                                          by=by, moved_at=now))
            pool[target] = pool.get(target, 0) + 1
            if item.annotator in pool:
                pool[item.annotator] -= 1
            moves.append(Move(item.task_id, item.annotator, target))
    return moves


def _move(session: Session, task_id: int, old: str, new: str, rng: random.Random) -> None:
    """Hand one queued assignment to `new`, with its own random display order (as `create_tasks` gives)."""
    session.delete(session.get(AssignmentRow, (task_id, old)))
    order = session.get(AssignmentOrderRow, (task_id, old))
    if order is not None:
        session.delete(order)
        session.add(AssignmentOrderRow(task_id=task_id, annotator=new,
                                       candidate_ids=rng.sample(order.candidate_ids, len(order.candidate_ids))))
    session.flush()
    session.add(AssignmentRow(task_id=task_id, annotator=new, status=QUEUED))


def _pool_load(session: Session) -> dict[str, int]:
    """Active annotator accounts -> their open queue length."""
    names = set(session.scalars(select(AnnotatorRow.name).where(AnnotatorRow.role == "annotator")))
    names -= set(session.scalars(select(DeactivatedRow.name)))
    rows = session.execute(select(AssignmentRow.annotator, func.count()).where(AssignmentRow.status == QUEUED)
                           .group_by(AssignmentRow.annotator)).all()
    load = dict(rows)
    return {name: load.get(name, 0) for name in names}


def _set_aside(row: SkipRow) -> SetAside:
    return SetAside(row.task_id, row.annotator, row.action, row.reason, row.note, _iso(row.created_at))


def _iso(moment: datetime) -> str:
    return _aware(moment).isoformat(timespec="seconds")


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)
