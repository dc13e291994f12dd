"""Judgment records: what an annotator said about candidates of one example.

Every judgment names its annotator, the guideline version they followed, and when.
Candidate ids refer to candidates in the feedback store.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal, Mapping


class JudgmentError(ValueError):
    """A judgment is malformed; the message names the field."""


# How strongly A (or B) is preferred, and the weight that vote gets in a stored pair's margin
# (`FeedbackStore.preference_pairs`); a vote without a strength weighs 1, as before strengths existed.
STRENGTHS = {"slight": 0.5, "clear": 1.0, "strong": 2.0}


def _now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass(frozen=True, kw_only=True)
class Judgment:
    """`provenance`: how a machine judge made it (judge model, template hash, per-claim results); {} for people."""

    example_id: str
    annotator: str
    guideline_version: str = "v1"
    created_at: datetime = field(default_factory=_now)
    task_id: int | None = None
    provenance: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class PairwiseJudgment(Judgment):
    """A / B / tie between two candidates, with an optional reason and how strong the preference is
    (`strength`: one of `STRENGTHS`, or None when not given)."""

    candidate_a: int
    candidate_b: int
    choice: Literal["a", "b", "tie"]
    reason: str = ""
    strength: str | None = None

    def __post_init__(self) -> None:
        if self.strength is not None and (self.strength not in STRENGTHS or self.choice == "tie"):
            raise JudgmentError(f"pairwise judgment of {self.example_id!r}: strength {self.strength!r} must be one of "
                                f"{tuple(STRENGTHS)} and only with choice a or b")
        if self.choice not in ("a", "b", "tie"):
            raise JudgmentError(f"pairwise judgment of {self.example_id!r}: choice {self.choice!r} is not a, b or tie")
        if self.candidate_a == self.candidate_b:
            raise JudgmentError(f"pairwise judgment of {self.example_id!r}: candidate_a equals candidate_b")


@dataclass(frozen=True, kw_only=True)
class RankingJudgment(Judgment):
    """Candidates ordered best first."""

    ranking: tuple[int, ...]

    def __post_init__(self) -> None:
        if len(self.ranking) < 2 or len(set(self.ranking)) != len(self.ranking):
            raise JudgmentError(f"ranking of {self.example_id!r}: needs two or more distinct candidates")


@dataclass(frozen=True, kw_only=True)
class RatingJudgment(Judgment):
    """Likert ratings per axis (e.g. accuracy, fluency, safety) of one candidate."""

    candidate: int
    ratings: Mapping[str, int]
    scale: int = 5

    def __post_init__(self) -> None:
        for axis, value in self.ratings.items():
            if not isinstance(value, int) or not 1 <= value <= self.scale:
                raise JudgmentError(f"rating of {self.example_id!r}: axis {axis!r} = {value!r} is not in 1..{self.scale}")


@dataclass(frozen=True, kw_only=True)
class CritiqueJudgment(Judgment):
    """Free-text critique plus a corrected answer and the corrected spans (start, end, replacement)."""

    candidate: int
    critique: str
    corrected_text: str | None = None
    corrected_spans: tuple[tuple[int, int, str], ...] = ()


@dataclass(frozen=True, kw_only=True)
class ImplicitJudgment(Judgment):
    """A signal from use rather than a question: accepted, rejected, clicked, copied, regenerated."""

    candidate: int
    signal: Literal["accepted", "rejected", "clicked", "copied", "regenerated"]
    value: float = 1.0
