"""Judging groups of sampled answers and storing the verdicts, shared by the demo and iterative DPO.

A group is the distinct answers one policy sampled for one prompt. Judges: the simulated
annotator panel (rankings from ground truth) or any reward source (best vs worst pair).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from itertools import combinations
from typing import TYPE_CHECKING, Sequence

from modalign.data.records import Completion, Example

if TYPE_CHECKING:
    from modalign.feedback.store import FeedbackStore
    from modalign.models.inputs import MediaStore
    from modalign.rl.rewards import RewardSource


@dataclass(frozen=True)
class JudgedGroups:
    """Verdicts on groups of answers, independent of any store (a recipe may write them to several).

    `groups[i]` are the stored answers of `examples[i]`; `verdicts[i]` its (annotator, order)
    entries, `order` indexing `groups[i]` best first. `pairwise`: a verdict is one pairwise
    judgment (the reward judge), else a ranking judgment (the simulated panel).
    """

    examples: list[Example]
    groups: list[list[Completion]]
    verdicts: list[list[tuple[str, tuple[int, ...]]]]
    pairwise: bool

    @property
    def judgments(self) -> int:
        return sum(map(len, self.verdicts))


def judge_with_panel(prompts: Sequence[Example], completions: Sequence[Completion], k: int,
                     seed: int) -> tuple[JudgedGroups, list[float]]:
    """The simulated panel ranks each prompt's distinct answers (the demo's and the loop's feedback).

    Identical answers are one candidate; prompts with fewer than two are left out. The scores
    are the gold utilities of every sampled answer.
    """
    from modalign.feedback.simulated import default_panel, gold_utility

    rng, panel = random.Random(seed), default_panel()
    examples, groups, verdicts = [], [], []
    for i, example in enumerate(prompts):
        group = list({c.text: c for c in completions[k * i : k * i + k]}.values())
        if len(group) < 2:
            continue
        texts = [c.text for c in group]
        examples.append(example)
        groups.append(group)
        verdicts.append([(rater.name, tuple(rater.rank(example, texts, rng))) for rater in panel])
    scores = [gold_utility(prompts[i // k], c.text) for i, c in enumerate(completions)]
    return JudgedGroups(examples, groups, verdicts, pairwise=False), scores


def judge_with_reward(source: "RewardSource", spec: str, prompts: Sequence[Example],
                      completions: Sequence[Completion], k: int,
                      media: "MediaStore") -> tuple[JudgedGroups, list[float]]:
    """Score every answer; each prompt's best and worst distinct answers become one pair, ties left out.

    The best-vs-worst pair of n samples under a reward: Xiong et al. 2024; Dong et al. 2024,
    "RLHF Workflow: From Reward Modeling to Online RLHF".
    """
    from modalign.rl.rewards import score_texts

    owners = [e for e in prompts for _ in range(k)]
    scores = [float(s) for s in score_texts(source, owners, [c.text for c in completions], media)]
    annotator = f"reward:{spec}"[:200]
    examples, groups, verdicts = [], [], []
    for i, example in enumerate(prompts):
        own = slice(k * i, k * i + k)
        distinct = {c.text: (c, s) for c, s in zip(completions[own], scores[own])}.values()
        best, worst = max(distinct, key=lambda cs: cs[1]), min(distinct, key=lambda cs: cs[1])
        if best[1] == worst[1]:
            continue  # one distinct answer, or all tied: no preference
        examples.append(example)
        groups.append([best[0], worst[0]])
        verdicts.append([(annotator, (0, 1))])
    return JudgedGroups(examples, groups, verdicts, pairwise=True), scores


def write_feedback(store: "FeedbackStore", feedback: JudgedGroups, data_root: str) -> None:
    """Examples, candidates, then the judgments (one all-or-nothing commit) into `store`."""
    from modalign.feedback.judgments import PairwiseJudgment, RankingJudgment

    store.add_examples(feedback.examples, root=data_root)
    ids = iter(store.add_candidates([c for group in feedback.groups for c in group]))
    judgments = []
    for example, group, verdicts in zip(feedback.examples, feedback.groups, feedback.verdicts):
        group_ids = [next(ids) for _ in group]
        for annotator, order in verdicts:
            ranked = tuple(group_ids[i] for i in order)
            if feedback.pairwise:
                judgments.append(PairwiseJudgment(example_id=example.id, annotator=annotator,
                                                  candidate_a=ranked[0], candidate_b=ranked[1], choice="a"))
            else:
                judgments.append(RankingJudgment(example_id=example.id, annotator=annotator, ranking=ranked))
    store.add_judgments(judgments)


def panel_agreement(feedback: JudgedGroups) -> dict:
    """Krippendorff's alpha over the pairwise orders the rankings imply, and the raters' accuracy against the
    ground truth on the pairs whose gold utilities differ."""
    from modalign.feedback.agreement import krippendorff_alpha
    from modalign.feedback.simulated import gold_utility

    units, agree_gold, decided = [], 0, 0
    for example, group, verdicts in zip(feedback.examples, feedback.groups, feedback.verdicts):
        orders = [order for _, order in verdicts]
        utilities = [gold_utility(example, c.text) for c in group]
        for i, j in combinations(range(len(group)), 2):
            choices = ["a" if order.index(i) < order.index(j) else "b" for order in orders]
            units.append(choices)
            if utilities[i] != utilities[j]:
                better = "a" if utilities[i] > utilities[j] else "b"
                agree_gold += sum(choice == better for choice in choices)
                decided += len(choices)
    return {"agreement": krippendorff_alpha(units), "gold_accuracy": agree_gold / max(1, decided),
            "n_raters": max((len(v) for v in feedback.verdicts), default=0), "rankings": feedback.judgments,
            "prompts": len(feedback.examples), "candidates": sum(map(len, feedback.groups))}
