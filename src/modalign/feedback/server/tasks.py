"""Annotation tasks: creation with configurable overlap, balanced assignment, per-annotator queues.

A task is one question about one example (pairwise, ranking, rating or critique) over some of
its stored candidates. Each task goes to `overlap` distinct annotators; an assignment is
"queued" until that annotator's judgment is stored and "done" after (both in one transaction).
Per-task settings the `tasks` table has no column for (rating axes and scale) live in a small
side table, `task_settings`, created next to the store's own tables; so does each assignment's
display order (`assignment_order`): every annotator sees a task's candidates in their own random
order, so whatever put a candidate first (e.g. the reward model's favourite under `selection: top`)
gives it no position advantage. A judgment records the candidates in the order that annotator saw.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Iterable, Sequence

from sqlalchemy import JSON, Integer, String, func, select, text, update
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from modalign.data.records import Example
from modalign.feedback.schema import AnnotatorRow, AssignmentRow, CandidateRow, DeactivatedRow, ExampleRow, TaskRow
from modalign.feedback.store import FeedbackStore

TASK_KINDS = ("pairwise", "ranking", "rating", "critique")
DEFAULT_AXES = ("accuracy", "fluency", "safety")
QUEUED, DONE, SET_ASIDE = "queued", "done", "skipped"  # skipped: the annotator skipped or flagged it


class TaskError(ValueError):
    """Tasks cannot be created as asked; the message names the item or argument."""


class _SideBase(DeclarativeBase):
    pass


class TaskSettingsRow(_SideBase):
    __tablename__ = "task_settings"
    task_id: Mapped[int] = mapped_column(Integer, primary_key=True)  # tasks.id (other metadata, so no FK)
    settings: Mapped[dict] = mapped_column(JSON)


class AssignmentOrderRow(_SideBase):
    """The order in which one annotator is shown one task's candidates (a permutation of its ids)."""

    __tablename__ = "assignment_order"
    task_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    annotator: Mapped[str] = mapped_column(String(200), primary_key=True)
    candidate_ids: Mapped[list] = mapped_column(JSON)


@dataclass(frozen=True)
class TaskItem:
    """What one task asks about: an example and the candidates shown (in display order)."""

    example_id: str
    candidate_ids: tuple[int, ...]


@dataclass(frozen=True)
class TaskSettings:
    """Rating axes and Likert scale (1..scale); ignored by the other kinds."""

    axes: tuple[str, ...] = DEFAULT_AXES
    scale: int = 5


@dataclass(frozen=True)
class TaskView:
    """Everything a page or API client needs to show one task. `candidates`: (id, text) in display order."""

    id: int
    kind: str
    example: Example
    candidates: tuple[tuple[int, str], ...]
    settings: TaskSettings

    @property
    def candidate_ids(self) -> tuple[int, ...]:
        return tuple(cid for cid, _ in self.candidates)


@dataclass(frozen=True)
class Progress:
    done: int  # answered or set aside: no longer in the queue
    total: int
    set_aside: int = 0  # of `done`: skipped or flagged


def ensure_tables(store: FeedbackStore) -> None:
    """Create the side table and the queue index if missing (idempotent)."""
    _SideBase.metadata.create_all(store.engine)
    # Raw DDL: an Index object would attach itself to the shared schema's table metadata.
    with store.engine.begin() as connection:
        connection.execute(text("CREATE INDEX IF NOT EXISTS ix_assignments_queue ON assignments (annotator, status, task_id)"))


def create_tasks(
    store: FeedbackStore, kind: str, items: Iterable[TaskItem | tuple[str, Sequence[int]]], overlap: int = 1,
    annotators: Sequence[str] = (), axes: Sequence[str] | None = None, scale: int = 5, seed: int | None = None,
) -> list[int]:
    """Create one task per item and assign each to `overlap` distinct annotators; returns the task ids.

    Assignment is greedy and balanced: each task goes to the annotators with the shortest open
    queues (ties by name), so queues differ by at most one when all start empty. All or nothing.
    Each assignment of a pairwise or ranking task gets its own random display order (`seed`: of
    that shuffle; None draws from the system's randomness).
    """
    rng = random.Random(seed) if seed is not None else random.SystemRandom()
    items = [item if isinstance(item, TaskItem) else TaskItem(item[0], tuple(item[1])) for item in items]
    settings = _check_settings(kind, axes, scale)
    _check_overlap(overlap, annotators)
    ensure_tables(store)
    now = datetime.now(timezone.utc)
    with Session(store.engine) as session, session.begin():
        _check_annotators(session, annotators)
        _check_items(session, kind, items)
        load = _open_load(session, annotators)
        tasks = [TaskRow(kind=kind, example_id=item.example_id, candidate_ids=list(item.candidate_ids),
                         status="open", created_at=now) for item in items]
        session.add_all(tasks)
        session.flush()
        for task in tasks:
            for name in sorted(annotators, key=lambda a: (load[a], a))[:overlap]:
                session.add(AssignmentRow(task_id=task.id, annotator=name, status=QUEUED))
                if len(task.candidate_ids) > 1:
                    session.add(AssignmentOrderRow(task_id=task.id, annotator=name,
                                                   candidate_ids=rng.sample(task.candidate_ids, len(task.candidate_ids))))
                load[name] += 1
            session.add(TaskSettingsRow(task_id=task.id, settings={"axes": list(settings.axes), "scale": settings.scale}))
        return [task.id for task in tasks]


def next_task_id(store: FeedbackStore, annotator: str) -> int | None:
    """The annotator's next open task (lowest id first), or None when the queue is empty."""
    ids = open_task_ids(store, annotator, limit=1)
    return ids[0] if ids else None


def open_task_ids(store: FeedbackStore, annotator: str, limit: int | None = None) -> list[int]:
    query = (select(AssignmentRow.task_id).where(AssignmentRow.annotator == annotator, AssignmentRow.status == QUEUED)
             .order_by(AssignmentRow.task_id).limit(limit))
    with Session(store.engine) as session:
        return list(session.scalars(query))


def progress(store: FeedbackStore, annotator: str) -> Progress:
    """How many of the annotator's assignments are done."""
    query = (select(AssignmentRow.status, func.count()).where(AssignmentRow.annotator == annotator)
             .group_by(AssignmentRow.status))
    with Session(store.engine) as session:
        counts = dict(session.execute(query).all())
    return Progress(done=counts.get(DONE, 0) + counts.get(SET_ASIDE, 0), total=sum(counts.values()),
                    set_aside=counts.get(SET_ASIDE, 0))


def assignment_status(session: Session, task_id: int, annotator: str) -> str | None:
    """"queued", "done", or None when the task is not assigned to this annotator."""
    row = session.get(AssignmentRow, (task_id, annotator))
    return None if row is None else row.status


def load_task(session: Session, task_id: int, annotator: str | None = None) -> TaskView | None:
    """The task with its example, candidate texts and settings, or None if there is no such task.

    The candidates come in `annotator`'s display order when they have one, else in the task's order.
    """
    task = session.get(TaskRow, task_id)
    if task is None:
        return None
    example = Example.from_dict(session.get(ExampleRow, task.example_id).record)
    order = session.get(AssignmentOrderRow, (task_id, annotator)) if annotator and len(task.candidate_ids) > 1 else None
    shown = order.candidate_ids if order else task.candidate_ids
    candidates = tuple((cid, session.get(CandidateRow, cid).text) for cid in shown)
    raw = session.get(TaskSettingsRow, task_id)
    settings = TaskSettings(tuple(raw.settings["axes"]), int(raw.settings["scale"])) if raw else TaskSettings()
    return TaskView(task.id, task.kind, example, candidates, settings)


def mark_done(session: Session, task_id: int, annotator: str, status: str = DONE) -> bool:
    """Close a queued assignment as `status` (inside the caller's transaction), and the task once all are closed.
    False (nothing changed) when the assignment is not queued: set aside, or moved to someone else."""
    # one UPDATE, no SELECT first: this runs under the app's write lock
    closed = session.execute(update(AssignmentRow).where(AssignmentRow.task_id == task_id,
                                                         AssignmentRow.annotator == annotator,
                                                         AssignmentRow.status == QUEUED).values(status=status))
    if closed.rowcount != 1:
        return False
    left = session.scalar(select(func.count()).select_from(AssignmentRow)
                          .where(AssignmentRow.task_id == task_id, AssignmentRow.status == QUEUED))
    if not left:
        session.get(TaskRow, task_id).status = DONE
    return True


def reopen(session: Session, task_id: int, annotator: str) -> None:
    """Put an assignment back in its annotator's queue (an undone answer), and its task with it."""
    session.execute(update(AssignmentRow).where(AssignmentRow.task_id == task_id, AssignmentRow.annotator == annotator)
                    .values(status=QUEUED))
    session.get(TaskRow, task_id).status = "open"


# ---- checks ----------------------------------------------------------------------------


def _check_settings(kind: str, axes: Sequence[str] | None, scale: int) -> TaskSettings:
    if kind not in TASK_KINDS:
        raise TaskError(f"task kind {kind!r} is not one of {TASK_KINDS}")
    axes = tuple(axes) if axes is not None else DEFAULT_AXES
    if kind == "rating" and (not axes or len(set(axes)) != len(axes) or not all(isinstance(a, str) and a for a in axes)):
        raise TaskError(f"rating axes {axes!r} must be distinct non-empty names")
    if not isinstance(scale, int) or not 2 <= scale <= 9:  # one digit key per point of the scale
        raise TaskError(f"rating scale {scale!r} must be an integer in 2..9")
    return TaskSettings(axes, scale)


def _check_overlap(overlap: int, annotators: Sequence[str]) -> None:
    if len(set(annotators)) != len(annotators):
        raise TaskError("annotators are listed twice")
    if not isinstance(overlap, int) or not 1 <= overlap <= len(annotators):
        raise TaskError(f"overlap {overlap!r} must be between 1 and the number of annotators ({len(annotators)})")


def _check_annotators(session: Session, annotators: Sequence[str]) -> None:
    known = set(session.scalars(select(AnnotatorRow.name).where(AnnotatorRow.name.in_(annotators))))
    missing = [a for a in annotators if a not in known]
    if missing:
        raise TaskError(f"unknown annotator(s) {missing[:5]}: create their accounts first")
    inactive = sorted(set(session.scalars(select(DeactivatedRow.name).where(DeactivatedRow.name.in_(annotators)))))
    if inactive:
        raise TaskError(f"annotator(s) {inactive[:5]} are deactivated: activate them on /admin or leave them out")


def _check_items(session: Session, kind: str, items: list[TaskItem]) -> None:
    sizes = {"pairwise": (2, 2), "ranking": (2, 9), "rating": (1, 1), "critique": (1, 1)}[kind]
    owners = dict(session.execute(select(CandidateRow.id, CandidateRow.example_id)
                                  .where(CandidateRow.id.in_({c for i in items for c in i.candidate_ids}))).all())
    for number, item in enumerate(items):
        where = f"item {number} ({item.example_id!r})"
        if not sizes[0] <= len(item.candidate_ids) <= sizes[1] or len(set(item.candidate_ids)) != len(item.candidate_ids):
            raise TaskError(f"{where}: a {kind} task needs {sizes[0]}..{sizes[1]} distinct candidates, "
                            f"got {list(item.candidate_ids)}")
        for cid in item.candidate_ids:
            if owners.get(cid) != item.example_id:
                raise TaskError(f"{where}: candidate {cid} is not a stored candidate of this example")


def _open_load(session: Session, annotators: Sequence[str]) -> dict[str, int]:
    rows = session.execute(select(AssignmentRow.annotator, func.count())
                           .where(AssignmentRow.annotator.in_(annotators), AssignmentRow.status == QUEUED)
                           .group_by(AssignmentRow.annotator)).all()
    return {name: 0 for name in annotators} | dict(rows)
