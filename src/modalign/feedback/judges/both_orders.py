"""Pairwise model judgments in both orders, and rankings made from them.

LLM and VLM judges prefer the answer shown first (or second) regardless of content (Zheng et al.
2023, "Judging LLM-as-a-Judge with MT-Bench and Chatbot Arena", sec. 3.3 and table 2; Wang et al.
2023, "Large Language Models are not Fair Evaluators"). So every pair (x, y) is asked twice, once with
x shown as answer A and once with y shown as A (the swap of Zheng et al.). The judgment stands when both
orders pick the same answer; a pair whose orders disagree is position-inconsistent and becomes a tie
(`disagreement="tie"`) or is dropped (`"drop"`).

A ranking of n answers from pairwise judgments: every pair judged in both orders, then Bradley-Terry
strengths (Hunter 2004, `feedback.agreement.bradley_terry_scores`) over the stood judgments; a tie
counts as one win each way.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations
from typing import TYPE_CHECKING, Sequence

from modalign.data.records import Example

if TYPE_CHECKING:
    from modalign.feedback.judges.model_judge import ModelJudge

DISAGREEMENTS = ("tie", "drop")


@dataclass(frozen=True)
class PairResult:
    """One pair (x, y) judged in both orders: the log-likelihoods of the options (A, B) when x is shown as
    A (`x_first`) and when y is shown as A (`y_first`)."""

    x_first: tuple[float, float]
    y_first: tuple[float, float]

    @property
    def orders(self) -> tuple[str, str]:
        """The winner ("x", "y" or "tie": equal scores) of each order, (x shown first, y shown first)."""
        return _winner(*self.x_first), _winner(*reversed(self.y_first))

    @property
    def consistent(self) -> bool:
        """Both orders give the same verdict (position-consistent)."""
        return self.orders[0] == self.orders[1]

    def choice(self, disagreement: str = "tie") -> str | None:
        """"a" (x is better), "b" (y), "tie", or None when the orders disagree and `disagreement="drop"`."""
        if not self.consistent:
            return "tie" if disagreement == "tie" else None
        return {"x": "a", "y": "b", "tie": "tie"}[self.orders[0]]

    def provenance(self) -> dict:
        """Both orders' option scores and verdicts, as stored with the judgment."""
        first, second = self.orders
        return {"orders": [{"shown": "xy", "logprobs": list(self.x_first), "winner": first},
                           {"shown": "yx", "logprobs": list(self.y_first), "winner": second}],
                "consistent": self.consistent}


def _winner(score_x: float, score_y: float) -> str:
    return "x" if score_x > score_y else "y" if score_y > score_x else "tie"


def judge_pairs(judge: "ModelJudge", example: Example, pairs: Sequence[tuple[str, str]]) -> list[PairResult]:
    """Each (x, y) answer pair of `example` judged in both orders, all in one call to the judge model."""
    question = example.prompt_text
    fields = [dict(question=question, answer_a=x, answer_b=y) for x, y in pairs]
    fields += [dict(question=question, answer_a=y, answer_b=x) for x, y in pairs]
    scores = judge.scores(judge.pairwise, example, fields).tolist()  # (2P, 2): rows P.. are the swapped orders
    results = [PairResult(tuple(scores[i]), tuple(scores[len(pairs) + i])) for i in range(len(pairs))]
    judge.count_pairs(results)
    return results


def all_pairs(n: int) -> list[tuple[int, int]]:
    return list(combinations(range(n), 2))


def ranking_from_pairs(n: int, results: dict[tuple[int, int], PairResult],
                       disagreement: str = "tie") -> tuple[tuple[int, ...] | None, list[float]]:
    """(indices best first, or None when the judgments order nothing; Bradley-Terry log-strength per answer).

    A dropped pair adds no comparison; a tie adds one win each way.
    """
    from modalign.feedback.agreement import bradley_terry_scores

    comparisons = []
    for (i, j), result in results.items():
        choice = result.choice(disagreement)
        if choice in ("a", "tie"):
            comparisons.append((i, j))
        if choice in ("b", "tie"):
            comparisons.append((j, i))
    strengths = bradley_terry_scores(comparisons) if comparisons else {}
    scores = [float(strengths.get(i, 0.0)) for i in range(n)]
    if max(scores) - min(scores) < 1e-9:
        return None, scores
    return tuple(sorted(range(n), key=lambda i: -scores[i])), scores
