"""Active selection: which candidate pairs go to annotators, and the simulated panel's verdicts on them.

A round samples k answers per prompt; every two distinct answers of a prompt are a candidate
pair. A budget of pairs goes to people, at most one per prompt, lowest `priority` first.
- `random`: drawn uniformly (the baseline).
- `margin`: the pairs the current reward model is least sure about, priority |r(a) - r(b)|
  (a Bradley-Terry model's own uncertainty: P(a > b) = sigmoid(r(a) - r(b)) nearest 1/2).
- `ensemble`: the pairs on which an ensemble of reward heads, each trained on a bootstrap
  resample of the judgments so far, disagrees most: priority -std_k sigmoid(r_k(a) - r_k(b))
  (Christiano et al. 2017, "Deep RL from Human Preferences", sec. 2.2.4).
- `top`: the same ensemble, but each prompt offers only pairs of its best answer (highest mean
  reward over the members) against another, the one the members are least sure it beats: RL
  moves the policy toward what the reward model ranks first, so that is where a wrong
  ranking costs most (the best-vs-rest pairs of online iterative RLHF, Dong et al. 2024,
  "RLHF Workflow", sec. 3, with the partner chosen by disagreement). Measured on
  ShapesWorld, margin chose worse pairs than random: the closest pairs are mostly two equally
  right answers, whose labels teach nothing.
Whatever the strategy, each chosen pair's sides are swapped at random: under `top` the reward
model's favourite would otherwise always be shown first (as A), and raters favour the first.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from typing import Sequence

from modalign.data.records import Completion, Example
from modalign.feedback.collect import JudgedGroups

STRATEGIES = ("random", "margin", "ensemble", "top")


@dataclass(frozen=True)
class CandidatePair:
    """Two distinct sampled answers of one prompt; `priority`: lower goes to annotators first (None: unscored)."""

    example: Example
    a: Completion
    b: Completion
    priority: float | None = None


def candidate_pairs(prompts: Sequence[Example], completions: Sequence[Completion], k: int,
                    scores=None, against_top: bool = False) -> list[list[CandidatePair]]:
    """Per prompt, every pair of its distinct answers (`completions` holds k per prompt, in prompt order).

    `scores`: none; one reward per answer (N,), priority |r(a) - r(b)|; or an ensemble's (K, N),
    priority -std over members of sigmoid(r_k(a) - r_k(b)). `against_top` (with scores): only the
    pairs of each prompt's best-scored answer (mean over members) against each other answer.
    """
    import torch

    priority = _priority_of(scores)
    mean = torch.as_tensor(scores, dtype=torch.float).reshape(-1, len(completions)).mean(0) if against_top else None
    grouped = []
    for i, example in enumerate(prompts):
        own = range(k * i, k * i + k)
        distinct = {completions[j].text: j for j in own}  # last copy of each text
        index = sorted(distinct.values())
        if mean is not None and index:
            top = max(index, key=lambda j: float(mean[j]))
            pairs = [CandidatePair(example, completions[top], completions[y], priority(top, y)) for y in index if y != top]
        else:
            pairs = [CandidatePair(example, completions[x], completions[y], priority(x, y))
                     for n, x in enumerate(index) for y in index[n + 1:]]
        grouped.append(pairs)
    return grouped


def _priority_of(scores):
    """priority(x, y) of answers x and y from the scores' shape (see `candidate_pairs`)."""
    import torch

    if scores is None:
        return lambda x, y: None
    table = torch.as_tensor(scores, dtype=torch.float)
    if table.dim() == 1:
        return lambda x, y: abs(float(table[x] - table[y]))
    return lambda x, y: -float(torch.sigmoid(table[:, x] - table[:, y]).std())


def select_pairs(grouped: Sequence[Sequence[CandidatePair]], count: int, strategy: str,
                 seed: int) -> list[CandidatePair]:
    """`count` pairs, at most one per prompt, chosen by `strategy` ('random', or by priority: 'margin', 'ensemble')."""
    if strategy not in STRATEGIES:
        raise ValueError(f"selection {strategy!r}: choose one of {', '.join(STRATEGIES)}")
    rng = random.Random(seed)
    usable = [pairs for pairs in grouped if pairs]
    if strategy == "random" or any(p.priority is None for pairs in usable for p in pairs):
        picks = [rng.choice(list(pairs)) for pairs in usable]
        rng.shuffle(picks)
        return _random_sides(picks[:count], seed)
    # first pair per prompt, then the first prompts; a random key breaks equal priorities
    closest = [min(pairs, key=lambda p: (p.priority, rng.random())) for pairs in usable]
    closest.sort(key=lambda p: (p.priority, rng.random()))
    return _random_sides(closest[:count], seed)


def _random_sides(pairs: list[CandidatePair], seed: int) -> list[CandidatePair]:
    """Each pair as is or with a and b swapped, by a fair coin (its own stream: the picks stay as they were).
    Priorities are symmetric in a and b, so they still hold."""
    coin = random.Random(f"sides-{seed}")
    return [replace(p, a=p.b, b=p.a) if coin.random() < 0.5 else p for p in pairs]


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
