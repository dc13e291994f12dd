"""Agreement between annotators and aggregation of their labels: pure functions."""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from itertools import permutations
from typing import Hashable, Mapping, Sequence

Label = Hashable


def cohen_kappa(labels_a: Sequence[Label], labels_b: Sequence[Label]) -> float:
    """Cohen's kappa for two raters on the same items (Cohen 1960): (p_o - p_e) / (1 - p_e)."""
    if len(labels_a) != len(labels_b) or not labels_a:
        raise ValueError("cohen_kappa needs two equally long, non-empty label lists")
    n = len(labels_a)
    observed = sum(a == b for a, b in zip(labels_a, labels_b)) / n
    count_a, count_b = Counter(labels_a), Counter(labels_b)
    expected = sum(count_a[k] * count_b[k] for k in count_a) / (n * n)
    return 1.0 if expected == 1.0 else (observed - expected) / (1.0 - expected)


def krippendorff_alpha(units: Sequence[Sequence[Label | None]], level: str = "nominal") -> float:
    """Krippendorff's alpha (Krippendorff 2011, "Computing Krippendorff's Alpha-Reliability").

    `units`: one row per item, one entry per rater, None where a rater gave no label.
    alpha = 1 - D_o / D_e over the coincidence matrix of pairable values (units with
    at least two labels). `level`: "nominal" (0/1 distance) or "interval" (squared difference).
    """
    distance = (lambda a, b: float(a != b)) if level == "nominal" else (lambda a, b: float(a - b) ** 2)
    coincidence: dict[tuple[Label, Label], float] = defaultdict(float)
    for unit in units:
        values = [v for v in unit if v is not None]
        if len(values) < 2:
            continue
        for a, b in permutations(values, 2):
            coincidence[(a, b)] += 1.0 / (len(values) - 1)
    totals: dict[Label, float] = defaultdict(float)
    for (a, _), weight in coincidence.items():
        totals[a] += weight
    n = sum(totals.values())
    if n <= 1:
        return math.nan
    observed = sum(w * distance(a, b) for (a, b), w in coincidence.items())
    expected = sum(totals[a] * totals[b] * distance(a, b) for a in totals for b in totals) / (n - 1)
    return 1.0 if expected == 0 else 1.0 - observed / expected


def majority_vote(labels: Sequence[Label]) -> Label:
    """The most common label; "tie" when the top count is shared."""
    ranked = Counter(labels).most_common()
    if len(ranked) > 1 and ranked[0][1] == ranked[1][1]:
        return "tie"
    return ranked[0][0]


def bradley_terry_scores(comparisons: Sequence[tuple[Hashable, Hashable]], iterations: int = 200, prior: float = 0.5) -> dict:
    """Bradley-Terry strengths by the MM algorithm (Hunter 2004, eq. 3), as log-strengths.

    `comparisons` are (winner, loser) pairs. A `prior` of virtual half-wins against every
    opponent keeps unbeaten or winless items finite.
    """
    items = sorted({i for pair in comparisons for i in pair}, key=str)
    wins = Counter(w for w, _ in comparisons)
    games: Counter = Counter()
    for w, l in comparisons:
        games[(w, l)] += 1
        games[(l, w)] += 1
    strength = {i: 1.0 for i in items}
    for _ in range(iterations):
        updated = {}
        for i in items:
            denominator = sum((games[(i, j)] / 2 + prior) * 2 / (strength[i] + strength[j]) for j in items if j != i)
            updated[i] = (wins[i] + prior * (len(items) - 1)) / max(denominator, 1e-12)
        scale = math.exp(sum(math.log(v) for v in updated.values()) / len(updated))
        strength = {i: v / scale for i, v in updated.items()}
    return {i: math.log(v) for i, v in strength.items()}


def agreement_with_majority(per_item: Mapping[Hashable, Mapping[str, Label]]) -> dict[str, float]:
    """Share of each annotator's labels that equal the majority of the *other* annotators."""
    hits: Counter = Counter()
    seen: Counter = Counter()
    for labels in per_item.values():
        for annotator, label in labels.items():
            others = [v for a, v in labels.items() if a != annotator]
            if not others:
                continue
            seen[annotator] += 1
            hits[annotator] += int(majority_vote(others) == label)
    return {a: hits[a] / seen[a] for a in seen}
