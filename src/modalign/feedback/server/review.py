"""What an annotator can do besides answering: set a task aside, and take back or change a recent answer.

- Skip ("I can't judge this") or flag ("broken media", "other" with a note): stored as a `SkipRow`
  with the annotator and time; the assignment leaves the queue (status "skipped") and the task
  never becomes a training pair (`FeedbackStore.judgments(training=True)` leaves it out).
- Undo / edit: only an annotator's last `EditPolicy.last` answers given within `EditPolicy.window`
  (a skip or flag can be undone within the same limits).
  The `judgments` table keeps the current answer (what training reads); the replaced version goes
  to `judgment_revisions` first. Undo also puts the task back at its place in the queue.

Every write runs through `submit.locked_write`, like a new answer.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Mapping

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from modalign.feedback.judgments import Judgment
from modalign.feedback.schema import AssignmentRow, JudgmentRevisionRow, JudgmentRow, SkipRow
from modalign.feedback.server.answers import build_judgment
from modalign.feedback.server.errors import Conflict, InvalidField, NotFound
from modalign.feedback.server.guidelines import Guideline, guideline_for
from modalign.feedback.server.submit import locked_write, task_of
from modalign.feedback.server.tasks import QUEUED, SET_ASIDE, mark_done, reopen
from modalign.feedback.store import FeedbackStore, judgment_from_row, judgment_row

# reason -> (action, what the annotator is shown)
SKIP_REASONS = {"cant_judge": ("skip", "I can't judge this"),
                "broken_media": ("flag", "Broken or missing media"),
                "other": ("flag", "Another problem (say what in the note)")}
MAX_NOTE = 2_000


@dataclass(frozen=True)
class EditPolicy:
    """Which answers an annotator may still undo or change: the last `last`, given within `window`."""

    last: int = 10
    window: timedelta = timedelta(minutes=30)


@dataclass(frozen=True)
class RecentAnswer:
    judgment_id: int
    task_id: int
    kind: str
    created_at: datetime
    judgment: Judgment


# ---- skip / flag -------------------------------------------------------------------------------


def parse_skip(body: Any) -> tuple[str, str, str]:
    """(action, reason, note) from `{"reason": ..., "note": ...}`; 422 naming the field otherwise."""
    if not isinstance(body, Mapping):
        raise InvalidField("the body must be a JSON object", field="body")
    unknown = sorted(set(body) - {"reason", "note"})
    if unknown:
        raise InvalidField(f"unknown field {unknown[0]!r} (expected reason, note)", field=unknown[0])
    reason, note = body.get("reason"), body.get("note", "")
    if reason not in SKIP_REASONS:
        raise InvalidField(f"reason must be one of {list(SKIP_REASONS)}, got {reason!r}", field="reason")
    if not isinstance(note, str) or len(note) > MAX_NOTE:
        raise InvalidField(f"note must be a string of at most {MAX_NOTE} characters", field="note")
    if reason == "other" and not note.strip():
        raise InvalidField("say in the note what is wrong with the item", field="note")
    return SKIP_REASONS[reason][0], reason, note.strip()


def skip_task(store: FeedbackStore, write_lock: threading.Lock, task_id: int, annotator: str, body: Any) -> int:
    """Set the annotator's queued assignment aside as a skip or flag; returns the skip record's id."""
    action, reason, note = parse_skip(body)
    task_of(store, task_id, annotator)  # 404 / 403 first

    def write() -> int:
        with Session(store.engine) as session:
            try:
                with session.begin():
                    if session.get(AssignmentRow, (task_id, annotator)).status != QUEUED:
                        raise Conflict(f"task {task_id} is already answered or set aside", field="task_id")
                    row = SkipRow(task_id=task_id, annotator=annotator, action=action, reason=reason, note=note,
                                  created_at=_now())
                    session.add(row)
                    session.flush()
                    mark_done(session, task_id, annotator, status=SET_ASIDE)
                    return row.id
            except IntegrityError:
                raise Conflict(f"task {task_id} is already set aside by {annotator!r}", field="task_id") from None

    return locked_write(write_lock, write)


def recent_skips(store: FeedbackStore, annotator: str, policy: EditPolicy) -> list[SkipRow]:
    """The annotator's skips and flags they may still undo (within `policy.window`), newest first."""
    with Session(store.engine) as session:
        return _recent_skip_rows(session, annotator, policy)


def _recent_skip_rows(session: Session, annotator: str, policy: EditPolicy) -> list[SkipRow]:
    since = _now() - policy.window
    query = select(SkipRow).where(SkipRow.annotator == annotator).order_by(SkipRow.id.desc()).limit(policy.last)
    return [row for row in session.scalars(query) if _aware(row.created_at) >= since]


def undo_skip(store: FeedbackStore, write_lock: threading.Lock, task_id: int, annotator: str,
              policy: EditPolicy) -> None:
    """Take back a recent skip or flag (a mis-click): the task is back in the queue; the withdrawn record
    is kept in `judgment_revisions` (kind "skip", change "undo")."""
    task_of(store, task_id, annotator)

    def write() -> None:
        with Session(store.engine) as session, session.begin():
            row = session.scalars(select(SkipRow).where(SkipRow.task_id == task_id, SkipRow.annotator == annotator)).first()
            if row is None:
                raise NotFound(f"you did not skip or flag task {task_id}", field="task_id")
            if row.id not in {r.id for r in _recent_skip_rows(session, annotator, policy)}:
                raise Conflict(f"only skips of the last {int(policy.window.total_seconds() // 60)} minutes can be "
                               f"undone; ask an admin", field="task_id")
            session.add(JudgmentRevisionRow(judgment_id=row.id, task_id=task_id, annotator=annotator, kind="skip",
                                            guideline_version="", created_at=row.created_at, change="undo",
                                            payload={"action": row.action, "reason": row.reason, "note": row.note},
                                            replaced_at=_now()))
            session.delete(row)
            session.flush()
            reopen(session, task_id, annotator)

    locked_write(write_lock, write)


# ---- recent answers: undo and edit --------------------------------------------------------------


def recent_answers(store: FeedbackStore, annotator: str, policy: EditPolicy) -> list[RecentAnswer]:
    """The annotator's answers they may still undo or change, newest first."""
    with Session(store.engine) as session:
        return [RecentAnswer(row.id, row.task_id, row.kind, _aware(row.created_at), judgment_from_row(row))
                for row in _recent_rows(session, annotator, policy)]


def edit_judgment(store: FeedbackStore, write_lock: threading.Lock, task_id: int, annotator: str, body: Any,
                  guidelines: Mapping[str, Guideline], policy: EditPolicy) -> int:
    """Replace the annotator's recent answer to `task_id` with the one in `body` (validated as a new answer,
    before the lock); the old version is kept in `judgment_revisions`. Returns the judgment id (unchanged)."""
    task = task_of(store, task_id, annotator)
    judgment = build_judgment(task, body, annotator, guideline_for(guidelines, task.kind).version)

    def write() -> int:
        with Session(store.engine) as session, session.begin():
            row = _editable(session, task_id, annotator, policy)
            session.add(_revision(row, "edit"))
            new = judgment_row(judgment)
            row.payload, row.guideline_version = new.payload, new.guideline_version
            return row.id

    return locked_write(write_lock, write)


def undo_judgment(store: FeedbackStore, write_lock: threading.Lock, task_id: int, annotator: str,
                  policy: EditPolicy) -> None:
    """Withdraw the annotator's recent answer to `task_id`: kept in `judgment_revisions`, gone from what
    training reads, and the task is back in their queue."""
    task_of(store, task_id, annotator)

    def write() -> None:
        with Session(store.engine) as session, session.begin():
            row = _editable(session, task_id, annotator, policy)
            session.add(_revision(row, "undo"))
            session.delete(row)
            session.flush()  # the unique (task, annotator) slot is free before a new answer can come
            reopen(session, task_id, annotator)

    locked_write(write_lock, write)


def current_judgment(store: FeedbackStore, task_id: int, annotator: str) -> Judgment | None:
    with Session(store.engine) as session:
        row = _row_of(session, task_id, annotator)
        return None if row is None else judgment_from_row(row)


def _recent_rows(session: Session, annotator: str, policy: EditPolicy) -> list[JudgmentRow]:
    query = (select(JudgmentRow).where(JudgmentRow.annotator == annotator, JudgmentRow.task_id.is_not(None))
             .order_by(JudgmentRow.id.desc()).limit(policy.last))
    since = _now() - policy.window
    return [row for row in session.scalars(query) if _aware(row.created_at) >= since]


def _editable(session: Session, task_id: int, annotator: str, policy: EditPolicy) -> JudgmentRow:
    row = _row_of(session, task_id, annotator)
    if row is None:
        raise NotFound(f"you have no answer to task {task_id} to undo or change", field="task_id")
    if row.id not in {r.id for r in _recent_rows(session, annotator, policy)}:
        minutes = int(policy.window.total_seconds() // 60)
        raise Conflict(f"only your last {policy.last} answers of the last {minutes} minutes can be undone or "
                       f"changed; task {task_id} is older: ask an admin", field="task_id")
    return row


def _row_of(session: Session, task_id: int, annotator: str) -> JudgmentRow | None:
    return session.scalars(select(JudgmentRow).where(JudgmentRow.task_id == task_id,
                                                     JudgmentRow.annotator == annotator)).first()


def _revision(row: JudgmentRow, change: str) -> JudgmentRevisionRow:
    return JudgmentRevisionRow(judgment_id=row.id, task_id=row.task_id, annotator=row.annotator, kind=row.kind,
                               guideline_version=row.guideline_version, created_at=row.created_at,
                               payload=dict(row.payload), change=change, replaced_at=_now())


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _aware(moment: datetime) -> datetime:
    """SQLite hands datetimes back without their zone; they were stored in UTC."""
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)
