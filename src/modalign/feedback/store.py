"""The feedback store: examples, candidate answers and judgments in any SQLAlchemy database.

SQLite (WAL, synchronous=FULL) in the run folder by default, or a server such as PostgreSQL
(`store=postgresql+psycopg://...`); every `add_*` call commits before it returns, so a
judgment that got a success answer survives a crash.
"""

from __future__ import annotations

import dataclasses
import json
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Sequence

from sqlalchemy import Engine, create_engine, event, func, select, text
from sqlalchemy.exc import ArgumentError, IntegrityError, NoSuchModuleError, SQLAlchemyError
from sqlalchemy.orm import Session

from modalign.data.records import Completion, Example
from modalign.errors import first_line
from modalign.feedback.agreement import majority_vote
from modalign.feedback.judgments import (
    STRENGTHS, CritiqueJudgment, ImplicitJudgment, Judgment, JudgmentError, PairwiseJudgment, RankingJudgment,
    RatingJudgment,
)
from modalign.feedback.schema import Base, CandidateRow, ExampleRow, JudgmentRow, SkipRow
from modalign.feedback.store_spec import StoreError, masked, sqlite_url, with_driver

KINDS = {"pairwise": PairwiseJudgment, "ranking": RankingJudgment, "rating": RatingJudgment,
         "critique": CritiqueJudgment, "implicit": ImplicitJudgment}
COMMON = {"example_id", "annotator", "guideline_version", "created_at", "task_id"}
CONNECT_TIMEOUT = 10  # seconds: an unreachable server is an error, not a hang
SCHEMA_LOCK = 0x6D6F64616C  # PostgreSQL advisory-lock key of table creation ("modal")


@dataclasses.dataclass(frozen=True)
class StoredPair:
    """Aggregated preference between two stored candidates of one example."""

    example_id: str
    chosen: Completion
    rejected: Completion
    tie: bool
    votes: int
    margin: float  # share of votes for the chosen answer minus share for the rejected one, weighted by strength


class FeedbackStore:
    """The store at an SQLAlchemy URL (`store_spec.open_store` turns a `store=` setting into one).

    `key`: the setting the URL came from, named with the masked URL when it cannot be opened.
    """

    def __init__(self, url: str, key: str = "store") -> None:
        self.url = url = with_driver(url)
        self.engine = _engine(url, key)
        try:
            _create_tables(self.engine)
        except SQLAlchemyError as err:
            self.engine.dispose()
            raise StoreError(f"{key} {masked(url)!r}: not a readable feedback store "
                             f"({_without_password(first_line(getattr(err, 'orig', None) or err), url)})") from None

    @property
    def display_url(self) -> str:
        """The URL with its password masked, for messages."""
        return masked(self.url)

    @classmethod
    def sqlite(cls, path: str | Path) -> "FeedbackStore":
        """The SQLite store in the file `path` (its folder created)."""
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        return cls(sqlite_url(path))

    # ---- examples and candidates -------------------------------------------------
    def add_examples(self, examples: Iterable[Example], root: str | Path | None = None) -> None:
        """Store examples with their dataset root, made absolute so readers in any folder find the media."""
        root_text = str(Path(root).resolve()) if root else None
        with Session(self.engine) as session, session.begin():
            for example in examples:
                session.merge(ExampleRow(id=example.id, record=example.to_dict(), root=root_text))

    def get_example(self, example_id: str) -> Example:
        with Session(self.engine) as session:
            row = session.get(ExampleRow, example_id)
            if row is None:
                raise KeyError(f"feedback store has no example {example_id!r}")
            return Example.from_dict(row.record)

    def example_root(self, example_id: str) -> str | None:
        with Session(self.engine) as session:
            row = session.get(ExampleRow, example_id)
            return None if row is None else row.root

    def add_candidates(self, completions: Sequence[Completion]) -> list[int]:
        now = datetime.now(timezone.utc)
        with Session(self.engine) as session, session.begin():
            self._require_examples(session, {c.example_id for c in completions})
            rows = [CandidateRow(example_id=c.example_id, text=c.text, policy_version=c.policy_version,
                                 sampling=dict(c.sampling), created_at=now) for c in completions]
            session.add_all(rows)
            session.flush()
            return [row.id for row in rows]

    def get_candidate(self, candidate_id: int) -> Completion:
        with Session(self.engine) as session:
            row = session.get(CandidateRow, candidate_id)
            if row is None:
                raise KeyError(f"feedback store has no candidate {candidate_id}")
            return _completion(row)

    # ---- judgments ---------------------------------------------------------------
    def add_judgment(self, judgment: Judgment) -> int:
        return self.add_judgments([judgment])[0]

    def add_judgments(self, judgments: Sequence[Judgment]) -> list[int]:
        """All or nothing, committed before returning; unknown examples/candidates or a second
        answer to the same task by the same annotator raise `JudgmentError` and store nothing."""
        with Session(self.engine) as session:
            try:
                with session.begin():
                    self._require_examples(session, {j.example_id for j in judgments})
                    for judgment in judgments:
                        self._require_candidates(session, judgment)
                    rows = [judgment_row(j) for j in judgments]
                    session.add_all(rows)
                    session.flush()
                    return [row.id for row in rows]
            except IntegrityError:
                raise JudgmentError("a judgment for this task by this annotator is already stored") from None

    def judgments(self, kind: str | None = None, annotator: str | None = None, since_id: int = 0,
                  training: bool = False) -> list[Judgment]:
        """Current judgments (an edited one in its latest version, an undone one not at all), oldest first.

        `training`: leave out the judgments of tasks someone skipped or flagged (`set_aside_task_ids`):
        those items never become training pairs."""
        query = select(JudgmentRow).where(JudgmentRow.id > since_id).order_by(JudgmentRow.id)
        if kind:
            query = query.where(JudgmentRow.kind == kind)
        if annotator:
            query = query.where(JudgmentRow.annotator == annotator)
        if training:
            query = query.where(JudgmentRow.task_id.not_in(select(SkipRow.task_id)) | JudgmentRow.task_id.is_(None))
        with Session(self.engine) as session:
            return [_judgment_from_row(row) for row in session.scalars(query)]

    def set_aside_task_ids(self) -> set[int]:
        """Tasks an annotator skipped ("can't judge") or flagged (e.g. broken media) in the annotation app."""
        with Session(self.engine) as session:
            return set(session.scalars(select(SkipRow.task_id)))

    def count_judgments(self, kind: str | None = None) -> int:
        query = select(func.count(JudgmentRow.id))
        if kind:
            query = query.where(JudgmentRow.kind == kind)
        with Session(self.engine) as session:
            return int(session.scalar(query))

    def _require_examples(self, session: Session, ids: set[str]) -> None:
        found = set(session.scalars(select(ExampleRow.id).where(ExampleRow.id.in_(ids))))
        if ids - found:
            raise JudgmentError(f"unknown example id(s): {sorted(ids - found)[:5]}")

    def _require_candidates(self, session: Session, judgment: Judgment) -> None:
        for candidate_id in _candidate_ids(judgment):
            row = session.get(CandidateRow, candidate_id)
            if row is None or row.example_id != judgment.example_id:
                raise JudgmentError(f"candidate {candidate_id} is not a candidate of example {judgment.example_id!r}")

    # ---- aggregation and export ----------------------------------------------------
    def preference_pairs(self, min_votes: int = 1) -> list[StoredPair]:
        """Majority over annotators per (example, candidate pair); rankings count as their pairs.

        Skipped or flagged tasks are left out. The margin is the vote share difference, each vote
        weighted by its preference strength (`judgments.STRENGTHS`; 1 when none was given)."""
        votes: dict[tuple[str, int, int], list[tuple[str, float]]] = defaultdict(list)
        for judgment in self.judgments(training=True):
            for example_id, first, second, choice in _as_pairs(judgment):
                key = (example_id, min(first, second), max(first, second))
                side = choice if first < second or choice == "tie" else {"a": "b", "b": "a"}[choice]
                votes[key].append((side, STRENGTHS.get(getattr(judgment, "strength", None), 1.0)))
        pairs = []
        for (example_id, low, high), weighted in votes.items():
            choices = [side for side, _ in weighted]
            if len(choices) < min_votes:
                continue
            winner = majority_vote(choices)
            chosen, rejected = (low, high) if winner in ("a", "tie") else (high, low)
            lead = sum(w for side, w in weighted if side == "a") - sum(w for side, w in weighted if side == "b")
            margin = abs(lead) / len(choices)
            pairs.append(StoredPair(example_id, self.get_candidate(chosen), self.get_candidate(rejected),
                                    winner == "tie", len(choices), margin))
        return pairs

    def export_trl(self, path: str | Path | None = None, min_votes: int = 1) -> list[dict]:
        """Rows in TRL's preference format: prompt / chosen / rejected (conversational) + images / audios."""
        rows = []
        for pair in self.preference_pairs(min_votes):
            if pair.tie:
                continue
            example, root = self.get_example(pair.example_id), Path(self.example_root(pair.example_id) or ".")
            rows.append({
                "example_id": pair.example_id,
                "prompt": [dict(m) for m in example.prompt_messages],
                "chosen": [{"role": "assistant", "content": [{"type": "text", "text": pair.chosen.text}]}],
                "rejected": [{"role": "assistant", "content": [{"type": "text", "text": pair.rejected.text}]}],
                "images": [str((root / r.path).resolve()) for r in example.media_of("image")],
                "audios": [str((root / r.path).resolve()) for r in example.media_of("audio")],
            })
        if path is not None:
            Path(path).write_text("".join(json.dumps(row) + "\n" for row in rows))
        return rows


def _engine(url: str, key: str) -> Engine:
    """An engine for `url`: SQLite with durable WAL pragmas; servers with a connect timeout and a ping
    before reusing a pooled connection (a restarted server would otherwise fail the next request)."""
    try:
        if url.startswith("sqlite"):
            engine = create_engine(url)
            event.listen(engine, "connect", _sqlite_pragmas)
            return engine
        connect_args = {"connect_timeout": CONNECT_TIMEOUT} if "psycopg" in url and "connect_timeout" not in url else {}
        return create_engine(url, pool_pre_ping=True, connect_args=connect_args)
    except NoSuchModuleError:
        raise StoreError(f"{key} {masked(url)!r}: SQLAlchemy knows no such database kind (use a feedback.db path, "
                         f"sqlite:///path or postgresql+psycopg://user@host/db)") from None
    except ImportError as err:
        extra = " (pip install 'modalign[postgres]')" if url.startswith("postgres") else ""
        raise StoreError(f"{key} {masked(url)!r}: its database driver is not installed{extra}: "
                         f"{first_line(err)}") from None
    except ArgumentError as err:
        raise StoreError(f"{key} {masked(url)!r}: not a valid store URL ({first_line(err)})") from None


def _create_tables(engine: Engine) -> None:
    """The tables, created if missing. On PostgreSQL under an advisory lock: two processes starting on
    one new database at once (the loop and `modalign annotate`) would otherwise race on CREATE TABLE."""
    with engine.begin() as connection:
        if engine.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": SCHEMA_LOCK})
        Base.metadata.create_all(connection)


def _without_password(message: str, url: str) -> str:
    """A driver's message with the URL's password (should the driver quote it) masked."""
    from sqlalchemy.engine import make_url

    try:
        password = make_url(url).password
    except (ArgumentError, ValueError):
        return message
    return message.replace(password, "***") if password else message


def _sqlite_pragmas(connection, _record) -> None:
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")  # durable at commit, not only at checkpoint
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _completion(row: CandidateRow) -> Completion:
    return Completion(row.example_id, row.text, row.policy_version, dict(row.sampling or {}))


def _candidate_ids(judgment: Judgment) -> list[int]:
    if isinstance(judgment, PairwiseJudgment):
        return [judgment.candidate_a, judgment.candidate_b]
    if isinstance(judgment, RankingJudgment):
        return list(judgment.ranking)
    return [getattr(judgment, "candidate")]


def _as_pairs(judgment: Judgment) -> list[tuple[str, int, int, str]]:
    if isinstance(judgment, PairwiseJudgment):
        return [(judgment.example_id, judgment.candidate_a, judgment.candidate_b, judgment.choice)]
    if isinstance(judgment, RankingJudgment):
        order = judgment.ranking
        return [(judgment.example_id, order[i], order[j], "a") for i in range(len(order)) for j in range(i + 1, len(order))]
    return []


def judgment_row(judgment: Judgment) -> JudgmentRow:
    """The table row of a judgment, for callers that write it inside their own transaction (the web app)."""
    kind = next(name for name, cls in KINDS.items() if isinstance(judgment, cls))
    payload = {k: v for k, v in dataclasses.asdict(judgment).items() if k not in COMMON}
    if not payload.get("provenance"):  # only machine judges have one: other rows stay as they were
        payload.pop("provenance", None)
    return JudgmentRow(kind=kind, example_id=judgment.example_id, annotator=judgment.annotator,
                       guideline_version=judgment.guideline_version, created_at=judgment.created_at,
                       task_id=judgment.task_id, payload=json.loads(json.dumps(payload)))


def judgment_from_row(row: JudgmentRow) -> Judgment:
    """The judgment a table row holds (for callers that read rows in their own transaction, like the web app)."""
    return _judgment_from_row(row)


def _judgment_from_row(row: JudgmentRow) -> Judgment:
    payload = dict(row.payload)
    if "ranking" in payload:
        payload["ranking"] = tuple(payload["ranking"])
    if "corrected_spans" in payload:
        payload["corrected_spans"] = tuple(tuple(span) for span in payload["corrected_spans"])
    created = row.created_at if row.created_at.tzinfo else row.created_at.replace(tzinfo=timezone.utc)
    return KINDS[row.kind](example_id=row.example_id, annotator=row.annotator, guideline_version=row.guideline_version,
                           created_at=created, task_id=row.task_id, **payload)
