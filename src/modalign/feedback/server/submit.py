"""Reading a task as a given account, and storing a judgment durably.

A judgment is stored, its assignment closed, and the transaction committed (SQLite WAL with
synchronous=FULL: on disk) before the caller answers 2xx. A second answer to the same task by
the same annotator is refused by the store's unique constraint, not by a prior check, so two
racing requests cannot both win.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, Mapping, TypeVar

from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from modalign.feedback.judgments import Judgment
from modalign.feedback.server.accounts import Account
from modalign.feedback.server.answers import build_judgment
from modalign.feedback.server.errors import Conflict, Forbidden, NotFound
from modalign.feedback.server.guidelines import Guideline, guideline_for
from modalign.feedback.server.tasks import TaskView, assignment_status, load_task, mark_done
from modalign.feedback.store import FeedbackStore, judgment_row

LOCK_RETRIES = 5
T = TypeVar("T")


def read_task(store: FeedbackStore, task_id: int, account: Account) -> tuple[TaskView, str | None]:
    """The task and the account's assignment status ("queued" / "done"; None for an admin looking on)."""
    with Session(store.engine) as session:
        task = load_task(session, task_id, account.name)
        if task is None:
            raise NotFound(f"there is no task {task_id}", field="task_id")
        status = assignment_status(session, task_id, account.name)
        if status is None and not account.is_admin:
            raise Forbidden(f"task {task_id} is not assigned to {account.name!r}", field="task_id")
        return task, status


def submit_judgment(store: FeedbackStore, write_lock: threading.Lock, task_id: int, annotator: str,
                    body: Any, guidelines: Mapping[str, Guideline]) -> int:
    """Validate `body` against the task, store the judgment and close the assignment; returns the judgment id.

    The judgment records the version of the task kind's guideline in `guidelines`. It is built
    (validation, a critique's diff) before the write lock is taken: a task never changes once
    created, so only the assignment check and the insert need the lock, and one slow critique
    cannot hold up everyone else's saves.
    """
    task = task_of(store, task_id, annotator)
    version = guideline_for(guidelines, task.kind).version
    judgment = build_judgment(task, body, annotator, version)
    return locked_write(write_lock, lambda: _store(store, judgment))


def locked_write(write_lock: threading.Lock, write: Callable[[], T]) -> T:
    """Run `write` (one short transaction) under the app's write lock, retrying while another process holds
    the database's: every state change of the app goes through here."""
    for attempt in range(LOCK_RETRIES):
        try:
            # One writer at a time in this process: SQLite has a single write lock anyway, and
            # queueing here avoids "database is locked" errors between our own threads.
            with write_lock:
                return write()
        except OperationalError as err:  # another process (e.g. a CLI adding tasks) holds the lock
            if "locked" not in str(err) or attempt == LOCK_RETRIES - 1:
                raise
            time.sleep(0.05 * 2 ** attempt)
    raise AssertionError("unreachable")


def task_of(store: FeedbackStore, task_id: int, annotator: str) -> TaskView:
    """The task as `annotator` sees it (their A/B order), or 404 / 403."""
    with Session(store.engine) as session:
        task = load_task(session, task_id, annotator)
        if task is None:
            raise NotFound(f"there is no task {task_id}", field="task_id")
        if assignment_status(session, task_id, annotator) is None:
            raise Forbidden(f"task {task_id} is not assigned to {annotator!r}", field="task_id")
        return task


def _store(store: FeedbackStore, judgment: Judgment) -> int:
    task_id, annotator = judgment.task_id, judgment.annotator
    with Session(store.engine) as session:
        try:
            with session.begin():
                row = judgment_row(judgment)
                session.add(row)
                session.flush()  # the unique (task_id, annotator) constraint fires here
                if not mark_done(session, task_id, annotator):  # raising here rolls the insert back
                    raise Conflict(f"task {task_id} was set aside or moved: it is no longer in {annotator!r}'s queue",
                                   field="task_id")
                return row.id
        except IntegrityError:
            raise Conflict(f"task {task_id} already has a judgment by {annotator!r}", field="task_id") from None
