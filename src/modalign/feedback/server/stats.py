"""Numbers for the admin dashboard: progress and inter-annotator agreement.

Agreement is measured on *units*, the smallest things two annotators can both label:
a pairwise judgment is one unit per candidate pair, a ranking one unit per pair of its
candidates (label for both: "a" when the lower candidate id is preferred, "b" when the higher
one is, or "tie", so the categories are the same across units), a rating one unit per
(candidate, axis) (label: the score, interval level). Units key on candidates, not task
ids, so judgments from outside the app (e.g. simulated raters) count too. Critiques are free
text and get no agreement figure.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from itertools import combinations
from typing import Hashable, Sequence

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from modalign.feedback.agreement import agreement_with_majority, cohen_kappa, krippendorff_alpha
from modalign.feedback.judgments import Judgment, PairwiseJudgment, RankingJudgment, RatingJudgment
from modalign.feedback.schema import AssignmentRow, TaskRow
from modalign.feedback.store import FeedbackStore

Units = dict[Hashable, dict[str, Hashable]]  # unit -> annotator -> label
LEVELS = {"pairwise": "nominal", "ranking": "nominal", "rating": "interval"}


@dataclass(frozen=True)
class AnnotatorProgress:
    name: str
    done: int  # answered
    assigned: int
    set_aside: int = 0  # skipped or flagged


@dataclass(frozen=True)
class KindAgreement:
    """Agreement on one task kind. `kappa` is Cohen's for exactly two raters, else the mean over rater pairs."""

    kind: str
    units: int  # units labelled by two or more annotators
    raters: int
    alpha: float
    kappa: float
    kappa_note: str
    with_majority: dict[str, float]  # annotator -> share of labels equal to the others' majority


def annotator_progress(store: FeedbackStore) -> list[AnnotatorProgress]:
    query = (select(AssignmentRow.annotator, func.sum(case((AssignmentRow.status == "done", 1), else_=0)), func.count(),
                    func.sum(case((AssignmentRow.status == "skipped", 1), else_=0)))
             .group_by(AssignmentRow.annotator).order_by(AssignmentRow.annotator))
    with Session(store.engine) as session:
        return [AnnotatorProgress(name, int(done or 0), int(total), int(aside or 0))
                for name, done, total, aside in session.execute(query)]


def task_progress(store: FeedbackStore) -> tuple[int, int]:
    """(tasks with every assignment done, all tasks)."""
    with Session(store.engine) as session:
        done = session.scalar(select(func.count()).select_from(TaskRow).where(TaskRow.status == "done"))
        total = session.scalar(select(func.count()).select_from(TaskRow))
    return int(done), int(total)


def agreement_by_kind(judgments: Sequence[Judgment]) -> list[KindAgreement]:
    out = []
    for kind, units in sorted(agreement_units(judgments).items()):
        shared = {unit: labels for unit, labels in units.items() if len(labels) >= 2}
        raters = sorted({a for labels in units.values() for a in labels})
        rows = [[labels.get(a) for a in raters] for labels in shared.values()]
        alpha = krippendorff_alpha(rows, LEVELS[kind]) if rows else math.nan
        kappa, note = _kappa(shared, raters)
        out.append(KindAgreement(kind, len(shared), len(raters), alpha, kappa, note, agreement_with_majority(shared)))
    return out


def agreement_units(judgments: Sequence[Judgment]) -> dict[str, Units]:
    """kind -> unit -> annotator -> label; a later judgment of the same unit by the same annotator wins."""
    units: dict[str, Units] = defaultdict(lambda: defaultdict(dict))
    for j in judgments:
        if isinstance(j, PairwiseJudgment):
            low, high = sorted((j.candidate_a, j.candidate_b))
            winner = {"a": j.candidate_a, "b": j.candidate_b}.get(j.choice)
            units["pairwise"][(j.example_id, low, high)][j.annotator] = _side(winner, low)
        elif isinstance(j, RankingJudgment):
            for first, second in combinations(j.ranking, 2):  # `first` ranks higher
                low, high = sorted((first, second))
                units["ranking"][(j.example_id, low, high)][j.annotator] = _side(first, low)
        elif isinstance(j, RatingJudgment):
            for axis, value in j.ratings.items():
                units["rating"][(j.example_id, j.candidate, axis)][j.annotator] = value
    return units


def _side(winner: int | None, low: int) -> str:
    return "tie" if winner is None else ("a" if winner == low else "b")


def _kappa(shared: Units, raters: list[str]) -> tuple[float, str]:
    values = []
    for a, b in combinations(raters, 2):
        both = [labels for labels in shared.values() if a in labels and b in labels]
        if len(both) >= 2:
            values.append(cohen_kappa([l[a] for l in both], [l[b] for l in both]))
    if not values:
        return math.nan, "fewer than 2 shared units"
    return sum(values) / len(values), "2 raters" if len(raters) == 2 else f"mean over {len(values)} rater pairs"
