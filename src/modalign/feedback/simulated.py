"""Simulated annotators for worlds with ground truth (ShapesWorld).

Each rater has a gold utility for an answer and chooses between two answers by a
Bradley-Terry draw, P(a over b) = sigmoid((u_a - u_b) / temperature), optionally biased
toward longer answers or the first-shown one, so that several raters disagree in
realistic ways and their agreement can be measured.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from modalign.data.records import Example
from modalign.data.shapes.scorers import answer_facts, normalize_answer, require_shapes_truth


# What the panel's users are told to use instead on data without ShapesWorld ground truth.
PANEL_ALTERNATIVE = "for your data use judge=people|<reward>|<model judge> (e.g. judge=py:<file.py>:<function>)"


def require_panel_data(examples) -> None:
    """The simulated panel judges from ShapesWorld ground truth: fail up front on other data."""
    require_shapes_truth(examples, "judge=simulated (the simulated annotator panel)", PANEL_ALTERNATIVE)


def gold_utility(example: Example, text: str) -> float:
    """Caption: (facts stated correctly - 2 * facts hallucinated) / true facts. Question: 1 if right."""
    require_shapes_truth([example], "the ShapesWorld gold utility (simulated panel, rule:shapes_gold)",
                         PANEL_ALTERNATIVE, need_world=False)
    if example.meta.get("task") == "caption":
        facts = answer_facts(example, text)
        return (facts["covered"] - 2 * facts["hallucinated"]) / facts["true_facts"]
    return float(normalize_answer(text) == normalize_answer(str(example.meta.get("answer", ""))))


@dataclass(frozen=True)
class SimulatedAnnotator:
    """A rater with Bradley-Terry noise and optional length and position biases."""

    name: str
    temperature: float = 0.1
    length_bias: float = 0.0
    position_bias: float = 0.0
    tie_margin: float = 1e-9

    def prefers_a(self, example: Example, text_a: str, text_b: str, rng: random.Random) -> str:
        """'a', 'b' or 'tie' (a tie only when the biased utilities are equal within `tie_margin`)."""
        u_a = gold_utility(example, text_a) + self.length_bias * len(text_a.split()) + self.position_bias
        u_b = gold_utility(example, text_b) + self.length_bias * len(text_b.split())
        if abs(u_a - u_b) <= self.tie_margin:
            return "tie"
        p_a = 1.0 / (1.0 + math.exp(-(u_a - u_b) / max(self.temperature, 1e-6)))
        return "a" if rng.random() < p_a else "b"

    def rank(self, example: Example, texts: list[str], rng: random.Random) -> list[int]:
        """Indices of `texts`, best first, drawn from the Plackett-Luce model (Plackett 1975).

        P(i next) = exp(u_i / T) / sum_j exp(u_j / T) over the candidates not yet placed, so
        a pair of candidates is ordered with the same Bradley-Terry odds as `prefers_a`.
        The first-shown candidate gets `position_bias`, longer ones `length_bias` per word.
        """
        utilities = [gold_utility(example, text) + self.length_bias * len(text.split()) for text in texts]
        utilities[0] += self.position_bias
        left, order = list(range(len(texts))), []
        while left:
            top = max(utilities[i] for i in left)  # shift for a stable exp
            weights = [math.exp((utilities[i] - top) / max(self.temperature, 1e-6)) for i in left]
            pick = rng.choices(left, weights=weights)[0]
            order.append(pick)
            left.remove(pick)
        return order


def default_panel() -> list[SimulatedAnnotator]:
    """Three distinct raters: careful, noisy, and one who likes long answers."""
    return [
        SimulatedAnnotator("careful", temperature=0.05),
        SimulatedAnnotator("noisy", temperature=0.3),
        SimulatedAnnotator("verbose", temperature=0.1, length_bias=0.01, position_bias=0.02),
    ]
