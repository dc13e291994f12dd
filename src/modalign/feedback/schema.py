"""Tables of the feedback store (SQLAlchemy 2 ORM)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, DateTime, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class ExampleRow(Base):
    __tablename__ = "examples"
    id: Mapped[str] = mapped_column(String(200), primary_key=True)
    record: Mapped[dict] = mapped_column(JSON)  # Example.to_dict()
    root: Mapped[str | None] = mapped_column(Text, nullable=True)  # dataset root of its media


class CandidateRow(Base):
    __tablename__ = "candidates"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    example_id: Mapped[str] = mapped_column(ForeignKey("examples.id"), index=True)
    text: Mapped[str] = mapped_column(Text)
    policy_version: Mapped[str] = mapped_column(String(500), default="")
    sampling: Mapped[dict] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class JudgmentRow(Base):
    __tablename__ = "judgments"
    __table_args__ = (UniqueConstraint("task_id", "annotator", name="one_answer_per_task"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(20), index=True)
    example_id: Mapped[str] = mapped_column(ForeignKey("examples.id"), index=True)
    annotator: Mapped[str] = mapped_column(String(200), index=True)
    guideline_version: Mapped[str] = mapped_column(String(50))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    task_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    payload: Mapped[dict] = mapped_column(JSON)


class AnnotatorRow(Base):
    __tablename__ = "annotators"
    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(20), default="annotator")


class TaskRow(Base):
    __tablename__ = "tasks"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(20))
    example_id: Mapped[str] = mapped_column(ForeignKey("examples.id"))
    candidate_ids: Mapped[list] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(20), default="open")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class AssignmentRow(Base):
    __tablename__ = "assignments"
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id"), primary_key=True)
    annotator: Mapped[str] = mapped_column(ForeignKey("annotators.name"), primary_key=True)
    status: Mapped[str] = mapped_column(String(20), default="queued")


class SessionRow(Base):
    """A browser login: the hash of its cookie value, whose it is, and when it stops working.

    No foreign key to `annotators`: the admin token (no account row) logs in too."""

    __tablename__ = "sessions"
    id_hash: Mapped[str] = mapped_column(String(100), primary_key=True)
    account: Mapped[str] = mapped_column(String(200), index=True)
    role: Mapped[str] = mapped_column(String(20))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


# ---- annotation-app additions (issue 21): new tables only, so old store files open unchanged ----------


class SkipRow(Base):
    """An annotator set a task aside instead of judging it: "skip" (cannot judge) or "flag" (a problem
    with the item, e.g. broken media). The task leaves their queue and never becomes a training pair."""

    __tablename__ = "task_skips"
    __table_args__ = (UniqueConstraint("task_id", "annotator", name="one_skip_per_task"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    task_id: Mapped[int] = mapped_column(Integer, index=True)
    annotator: Mapped[str] = mapped_column(String(200), index=True)
    action: Mapped[str] = mapped_column(String(10))  # "skip" or "flag"
    reason: Mapped[str] = mapped_column(String(30))  # "cant_judge", "broken_media" or "other"
    note: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class JudgmentRevisionRow(Base):
    """An earlier version of a judgment, kept when its annotator edited ("edit") or withdrew ("undo") it.
    The `judgments` table holds only the current answer: what training reads. A withdrawn skip or flag
    is kept here too, as kind "skip" (payload: action, reason, note)."""

    __tablename__ = "judgment_revisions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    judgment_id: Mapped[int] = mapped_column(Integer, index=True)
    task_id: Mapped[int | None] = mapped_column(Integer, nullable=True, index=True)
    annotator: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(20))
    guideline_version: Mapped[str] = mapped_column(String(50))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))  # when the answer was first given
    payload: Mapped[dict] = mapped_column(JSON)
    change: Mapped[str] = mapped_column(String(10))  # "edit" or "undo"
    replaced_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class GuidelineSeenRow(Base):
    """The guideline version of a task kind an annotator was last shown open."""

    __tablename__ = "guideline_views"
    annotator: Mapped[str] = mapped_column(String(200), primary_key=True)
    kind: Mapped[str] = mapped_column(String(20), primary_key=True)
    version: Mapped[str] = mapped_column(String(50))
    seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class DeactivatedRow(Base):
    """An account that may no longer log in (a row here; reactivating deletes it)."""

    __tablename__ = "deactivated_accounts"
    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    by: Mapped[str] = mapped_column(String(200))
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class AssignmentMoveRow(Base):
    """An assignment moved from one annotator to another (stalled work reassigned by an admin).
    The latest move to an annotator is when their assignment started; otherwise the task's creation."""

    __tablename__ = "assignment_moves"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    task_id: Mapped[int] = mapped_column(Integer, index=True)
    from_annotator: Mapped[str] = mapped_column(String(200))
    to_annotator: Mapped[str] = mapped_column(String(200))
    by: Mapped[str] = mapped_column(String(200))
    moved_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
