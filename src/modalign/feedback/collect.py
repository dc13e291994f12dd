"""Judging groups of sampled answers and storing the verdicts, shared by the demo, the loop and iterative DPO.

A group is the distinct answers one policy sampled for one prompt. Judges: the simulated
annotator panel (rankings from ShapesWorld ground truth), a user's Python judge
(`py:<module or file.py>:<fn>`, rankings from its scores) or any reward source (best vs worst pair).

A Python judge is `fn(example: Example, completions: list[str]) -> list[float]`: one finite score
per completion of one prompt, higher is better (to return a ranking, score by minus the rank).
It sees a prompt's answers together, so it may compare them.
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
    `ties[i]`: group i's pairwise verdicts are ties (the claim judge's equal scores); `provenance[i]`:
    what its judgments record of how they were made (judge model, template, per-claim results).
    """

    examples: list[Example]
    groups: list[list[Completion]]
    verdicts: list[list[tuple[str, tuple[int, ...]]]]
    pairwise: bool
    ties: list[bool] | None = None
    provenance: list[dict] | None = None

    @property
    def judgments(self) -> int:
        return sum(map(len, self.verdicts))


def judge_with_panel(prompts: Sequence[Example], completions: Sequence[Completion], k: int,
                     seed: int) -> tuple[JudgedGroups, list[float]]:
    """The simulated panel ranks each prompt's distinct answers (the demo's and the loop's feedback).

    Identical answers are one candidate; prompts with fewer than two are left out. The scores
    are the gold utilities of every sampled answer.
    """
    from modalign.feedback.simulated import default_panel, gold_utility, require_panel_data

    require_panel_data(prompts)
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


SIMULATED = "simulated"


def check_judge(spec: str, examples: Sequence[Example]) -> None:
    """Fail before any work when judge `spec` cannot judge `examples` (the prompts it will see).

    `simulated` needs ShapesWorld ground truth; `py:` must load and take (example, completions);
    `claims:...` is checked by `judges.claims.check_claims_judge`;
    `people` is checked by its recipe (annotators); anything else is a reward spec (`check_reward`).
    Raises a ConfigError subclass naming the judge (and the first record it cannot judge).
    """
    from modalign.feedback.judges.claims import check_claims_judge, is_claims
    from modalign.plugins import is_plugin, load_callable

    if is_claims(spec):
        check_claims_judge(spec, examples)
    elif spec == SIMULATED:
        from modalign.feedback.simulated import require_panel_data

        require_panel_data(examples)
    elif is_plugin(spec):
        load_callable(spec, positional=2)
    elif spec.strip().startswith("model:"):  # a model judge (feedback.judges.model_judge): the model is there
        from modalign.feedback.judges.model_judge import check_model_judge

        check_model_judge(spec)
    elif spec != "people":
        from modalign.rl.rewards import check_reward

        check_reward(spec, examples, key="judge")


def python_judge(spec: str):
    """The function of a `py:` judge, checked to take (example, completions)."""
    from modalign.plugins import load_callable

    return load_callable(spec, positional=2)


def judge_scores(spec: str, fn, example: Example, texts: list[str]) -> list[float]:
    """`fn`'s scores of one prompt's answers, checked (one finite number per answer)."""
    from modalign.plugins import check_scores

    return check_scores(spec, fn(example, list(texts)), len(texts), f"record {example.id!r}'s {len(texts)} completions")


def judge_with_function(spec: str, fn, prompts: Sequence[Example], completions: Sequence[Completion],
                        k: int) -> tuple[JudgedGroups, list[float]]:
    """A Python judge scores each prompt's k answers; its distinct answers, best first, become one ranking.

    Equal scores keep the sampling order; a prompt whose distinct answers all score the same (or
    that has only one) is left out. The annotator of the records is the spec (`py:...`).
    """
    annotator = spec.strip()[:200]
    examples, groups, verdicts, scores = [], [], [], []
    for i, example in enumerate(prompts):
        own = list(completions[k * i : k * i + k])
        own_scores = judge_scores(spec, fn, example, [c.text for c in own])
        scores += own_scores
        distinct = list({c.text: (c, s) for c, s in zip(own, own_scores)}.values())
        if len(distinct) < 2 or len({s for _, s in distinct}) == 1:
            continue
        order = sorted(range(len(distinct)), key=lambda j: -distinct[j][1])
        examples.append(example)
        groups.append([c for c, _ in distinct])
        verdicts.append([(annotator, tuple(order))])
    return JudgedGroups(examples, groups, verdicts, pairwise=False), scores


def judge_pairs_with_function(spec: str, fn, pairs) -> JudgedGroups:
    """A Python judge chooses in every selected pair (`feedback.select.CandidatePair`); equal scores are left out."""
    examples, groups, verdicts = [], [], []
    for pair in pairs:
        a, b = judge_scores(spec, fn, pair.example, [pair.a.text, pair.b.text])
        if a != b:
            examples.append(pair.example)
            groups.append([pair.a, pair.b])
            verdicts.append([(spec.strip()[:200], (0, 1) if a > b else (1, 0))])
    return JudgedGroups(examples, groups, verdicts, pairwise=True)


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
    for g, (example, group, verdicts) in enumerate(zip(feedback.examples, feedback.groups, feedback.verdicts)):
        group_ids = [next(ids) for _ in group]
        provenance = feedback.provenance[g] if feedback.provenance else {}
        for annotator, order in verdicts:
            ranked = tuple(group_ids[i] for i in order)
            if feedback.pairwise:
                choice = "tie" if feedback.ties and feedback.ties[g] else "a"
                judgments.append(PairwiseJudgment(example_id=example.id, annotator=annotator, candidate_a=ranked[0],
                                                  candidate_b=ranked[1], choice=choice, provenance=provenance))
            else:
                judgments.append(RankingJudgment(example_id=example.id, annotator=annotator, ranking=ranked,
                                                 provenance=provenance))
    store.add_judgments(judgments)


def panel_agreement(feedback: JudgedGroups) -> dict:
    """Krippendorff's alpha over the pairwise orders the rankings imply, and the raters' accuracy against the
    ground truth on the pairs whose gold utilities differ (None without ShapesWorld ground truth)."""
    from modalign.data.shapes.scorers import truth_problem
    from modalign.feedback.agreement import krippendorff_alpha
    from modalign.feedback.simulated import gold_utility

    has_truth = all(truth_problem(e) is None for e in feedback.examples)
    units, agree_gold, decided = [], 0, 0
    for g, (example, group, verdicts) in enumerate(zip(feedback.examples, feedback.groups, feedback.verdicts)):
        orders = [order for _, order in verdicts]
        utilities = [gold_utility(example, c.text) if has_truth else 0.0 for c in group]
        tie = bool(feedback.ties and feedback.ties[g])
        for i, j in combinations(range(len(group)), 2):
            choices = ["tie" if tie else "a" if order.index(i) < order.index(j) else "b" for order in orders]
            units.append(choices)
            if utilities[i] != utilities[j]:
                better = "a" if utilities[i] > utilities[j] else "b"
                agree_gold += sum(choice == better for choice in choices)
                decided += len(choices)
    gold_accuracy = agree_gold / max(1, decided) if has_truth else None
    return {"agreement": krippendorff_alpha(units), "gold_accuracy": gold_accuracy,
            "n_raters": max((len(v) for v in feedback.verdicts), default=0), "rankings": feedback.judgments,
            "prompts": len(feedback.examples), "candidates": sum(map(len, feedback.groups))}
