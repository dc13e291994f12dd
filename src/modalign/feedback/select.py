"""Active selection: which candidate pairs go to annotators, and the simulated panel's verdicts on them.

A round samples k answers per prompt; every two distinct answers of a prompt are a candidate
pair. A budget of pairs goes to people. `random` draws them uniformly (the baseline);
`margin` scores every answer with the current reward model and sends the pairs it is least
sure about: per prompt the pair with the smallest |r(a) - r(b)|, then the prompts whose pair
is closest (uncertainty sampling for preference learning: Christiano et al. 2017 sec. 2.2.4
choose by ensemble disagreement; a single Bradley-Terry model's margin is its own
uncertainty, P(a > b) = sigmoid(r(a) - r(b)) nearest 1/2).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Sequence

from modalign.data.records import Completion, Example
from modalign.feedback.collect import JudgedGroups

STRATEGIES = ("random", "margin")


@dataclass(frozen=True)
class CandidatePair:
    """Two distinct sampled answers of one prompt; `margin` is |r(a) - r(b)| under the reward model (or None)."""

    example: Example
    a: Completion
    b: Completion
    margin: float | None = None


def candidate_pairs(prompts: Sequence[Example], completions: Sequence[Completion], k: int,
                    scores: Sequence[float] | None = None) -> list[list[CandidatePair]]:
    """Per prompt, every pair of its distinct answers (`completions` holds k per prompt, in prompt order)."""
    grouped = []
    for i, example in enumerate(prompts):
        own = range(k * i, k * i + k)
        distinct = {completions[j].text: j for j in own}  # last copy of each text
        index = sorted(distinct.values())
        pairs = [CandidatePair(example, completions[x], completions[y],
                               None if scores is None else abs(float(scores[x]) - float(scores[y])))
                 for n, x in enumerate(index) for y in index[n + 1:]]
        grouped.append(pairs)
    return grouped


def select_pairs(grouped: Sequence[Sequence[CandidatePair]], count: int, strategy: str,
                 seed: int) -> list[CandidatePair]:
    """`count` pairs, at most one per prompt, chosen by `strategy` ('random' or 'margin')."""
    if strategy not in STRATEGIES:
        raise ValueError(f"selection {strategy!r}: choose one of {', '.join(STRATEGIES)}")
    rng = random.Random(seed)
    usable = [pairs for pairs in grouped if pairs]
    if strategy == "random" or any(p.margin is None for pairs in usable for p in pairs):
        picks = [rng.choice(list(pairs)) for pairs in usable]
        rng.shuffle(picks)
        return picks[:count]
    # closest pair per prompt, then the closest prompts; a random key breaks equal margins
    closest = [min(pairs, key=lambda p: (p.margin, rng.random())) for pairs in usable]
    closest.sort(key=lambda p: (p.margin, rng.random()))
    return closest[:count]


def judge_pairs_with_panel(pairs: Sequence[CandidatePair], seed: int) -> JudgedGroups:
    """Every rater of the simulated panel chooses in every pair; a tie (equal utilities) is left out."""
    from modalign.feedback.simulated import default_panel

    rng, panel = random.Random(seed), default_panel()
    examples, groups, verdicts = [], [], []
    for pair in pairs:
        votes = []
        for rater in panel:
            choice = rater.prefers_a(pair.example, pair.a.text, pair.b.text, rng)
            if choice != "tie":
                votes.append((rater.name, (0, 1) if choice == "a" else (1, 0)))
        if votes:
            examples.append(pair.example)
            groups.append([pair.a, pair.b])
            verdicts.append(votes)
    return JudgedGroups(examples, groups, verdicts, pairwise=True)
