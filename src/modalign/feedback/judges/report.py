"""The judge report: a model judge against the gold answers, the simulated panel and people, and what it cost.

Everything is compared on pairs of answers: a pairwise judgment is one pair, a ranking of n answers
its n(n-1)/2 pairs, ratings the pairs of one example's answers (the higher expected rating wins). A pair
is keyed by (example id, answer text, answer text), texts sorted, so judgments of the same answers
stored as different candidates (another run, another store) meet; label "a" means the first text
(in sorted order) is better, "b" the second, "tie" neither.

- gold accuracy (ShapesWorld ground truth, `feedback.simulated.gold_utility`): on the pairs whose gold
  utilities differ, the share the judge got right, a tie counting half.
- agreement with the simulated panel (ShapesWorld) and with people (the store's annotator accounts):
  the share of pairs where the judge equals their majority, Cohen's kappa against that majority, and
  Krippendorff's alpha of the judge with them and of them alone (`feedback.agreement`).
- position-inconsistent share: pairs whose two orders disagreed, of all pairs judged in both orders
  (`both_orders`; `pairs` is the number of answer pairs the judge's verdicts decide, compared above).
- cost: judge forward passes per stored judgment (`model_judge.usage`).
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from itertools import combinations
from typing import TYPE_CHECKING, Iterable, Mapping, Sequence

from modalign.data.records import Example

if TYPE_CHECKING:
    from modalign.feedback.judges.model_judge import Verdict
    from modalign.feedback.store import FeedbackStore

PairKey = tuple[str, str, str]  # (example id, text, text) with the texts in sorted order


def pair_label(example_id: str, better: str, worse: str, tie: bool = False) -> tuple[PairKey, str]:
    """The key of the pair (better, worse) and its label in the key's text order."""
    low, high = sorted((better, worse))
    return (example_id, low, high), "tie" if tie else ("a" if better == low else "b")


def labels_from_verdicts(example_id: str, texts: Sequence[str], verdicts: Sequence["Verdict"]) -> dict[PairKey, str]:
    """The pairs a model judge's verdicts on one example's answers `texts` decide."""
    labels: dict[PairKey, str] = {}
    ratings = {v.candidates[0]: float(v.provenance["expected"]) for v in verdicts if v.kind == "rating"}
    for verdict in verdicts:
        if verdict.kind == "pairwise":
            x, y = (texts[i] for i in verdict.candidates)
            better, worse = (y, x) if verdict.choice == "b" else (x, y)
            labels.update([pair_label(example_id, better, worse, verdict.choice == "tie")])
        elif verdict.kind == "ranking":
            order = [texts[i] for i in verdict.candidates]
            labels.update(pair_label(example_id, order[i], order[j]) for i, j in combinations(range(len(order)), 2))
    for i, j in combinations(sorted(ratings), 2):
        better, worse = (texts[i], texts[j]) if ratings[i] >= ratings[j] else (texts[j], texts[i])
        labels.update([pair_label(example_id, better, worse, ratings[i] == ratings[j])])
    return labels


def labels_from_groups(feedback) -> dict[PairKey, dict[str, str]]:
    """key -> {annotator: label} of `feedback.collect.JudgedGroups` (rankings as their pairs)."""
    labels: dict[PairKey, dict[str, str]] = defaultdict(dict)
    for g, (example, group, verdicts) in enumerate(zip(feedback.examples, feedback.groups, feedback.verdicts)):
        tie = bool(feedback.ties and feedback.ties[g])
        for annotator, order in verdicts:
            for i, j in combinations(range(len(order)), 2):
                key, label = pair_label(example.id, group[order[i]].text, group[order[j]].text, tie)
                labels[key][annotator] = label
    return dict(labels)


def people_labels(store: "FeedbackStore") -> dict[PairKey, dict[str, str]]:
    """key -> {account: label} of every pairwise or ranking judgment by a person (an annotator account)."""
    from sqlalchemy import select
    from sqlalchemy.orm import Session

    from modalign.feedback.judgments import PairwiseJudgment, RankingJudgment
    from modalign.feedback.schema import AnnotatorRow

    with Session(store.engine) as session:
        people = set(session.scalars(select(AnnotatorRow.name)))
    texts: dict[int, str] = {}

    def text(candidate: int) -> str:
        if candidate not in texts:
            texts[candidate] = store.get_candidate(candidate).text
        return texts[candidate]

    labels: dict[PairKey, dict[str, str]] = defaultdict(dict)
    for judgment in store.judgments():
        if judgment.annotator not in people:
            continue
        if isinstance(judgment, PairwiseJudgment):
            x, y = text(judgment.candidate_a), text(judgment.candidate_b)
            key, label = pair_label(judgment.example_id, *((y, x) if judgment.choice == "b" else (x, y)),
                                    tie=judgment.choice == "tie")
            labels[key][judgment.annotator] = label
        elif isinstance(judgment, RankingJudgment):
            order = [text(c) for c in judgment.ranking]
            for i, j in combinations(range(len(order)), 2):
                key, label = pair_label(judgment.example_id, order[i], order[j])
                labels[key][judgment.annotator] = label
    return dict(labels)


def has_gold(examples: Iterable[Example]) -> bool:
    from modalign.data.shapes.scorers import truth_problem

    examples = list(examples)
    return bool(examples) and all(truth_problem(e) is None for e in examples)


def gold_labels(keys: Iterable[PairKey], examples: Mapping[str, Example]) -> dict[PairKey, str]:
    """The gold label of each pair (ShapesWorld gold utility; "tie" when equal)."""
    from modalign.feedback.simulated import gold_utility

    labels = {}
    for key in keys:
        example_id, low, high = key
        u_low, u_high = gold_utility(examples[example_id], low), gold_utility(examples[example_id], high)
        labels[key] = "tie" if u_low == u_high else ("a" if u_low > u_high else "b")
    return labels


def panel_labels(keys: Iterable[PairKey], examples: Mapping[str, Example], seed: int) -> dict[PairKey, dict[str, str]]:
    """What each rater of the simulated panel (`feedback.simulated.default_panel`) says about each pair."""
    from modalign.feedback.simulated import default_panel

    rng, panel = random.Random(seed), default_panel()
    return {key: {rater.name: rater.prefers_a(examples[key[0]], key[1], key[2], rng) for rater in panel}
            for key in sorted(keys)}


def gold_accuracy(judge: Mapping[PairKey, str], gold: Mapping[PairKey, str]) -> dict:
    decided = [key for key in judge if gold.get(key) in ("a", "b")]
    score = sum(1.0 if judge[k] == gold[k] else 0.5 if judge[k] == "tie" else 0.0 for k in decided)
    return {"gold_pairs": len(decided), "gold_accuracy": score / len(decided) if decided else math.nan}


def agreement(judge: Mapping[PairKey, str], others: Mapping[PairKey, Mapping[str, str]], prefix: str) -> dict:
    """The judge against a group of raters on the pairs both labelled (`feedback.agreement`)."""
    from modalign.feedback.agreement import cohen_kappa, krippendorff_alpha, majority_vote

    shared = [key for key in judge if others.get(key)]
    if not shared:
        return {f"{prefix}_pairs": 0}
    majority = [majority_vote(list(others[key].values())) for key in shared]
    mine = [judge[key] for key in shared]
    raters = sorted({name for key in shared for name in others[key]})
    units = [[others[key].get(name) for name in raters] for key in shared]
    return {f"{prefix}_pairs": len(shared), f"{prefix}_raters": len(raters),
            f"{prefix}_agreement": sum(a == b for a, b in zip(mine, majority)) / len(shared),
            f"{prefix}_kappa": cohen_kappa(mine, majority),
            f"{prefix}_alpha_with_judge": krippendorff_alpha([[label, *unit] for label, unit in zip(mine, units)]),
            f"{prefix}_alpha": krippendorff_alpha(units)}


def judge_report(judge: Mapping[PairKey, str], examples: Mapping[str, Example], usage: Mapping,
                 people: Mapping[PairKey, Mapping[str, str]] | None = None, seed: int = 0) -> dict:
    """The whole report of one judge's pair labels (`usage`: `model_judge.usage`)."""
    report: dict = {"pairs": len(judge), **usage}
    if has_gold(examples[key[0]] for key in judge):
        report.update(gold_accuracy(judge, gold_labels(judge, examples)))
        report.update(agreement(judge, panel_labels(judge, examples, seed), "panel"))
    if people:
        report.update(agreement(judge, people, "people"))
    return {key: (None if isinstance(value, float) and not math.isfinite(value) else value)
            for key, value in report.items()}


def groups_report(annotator: str, feedback, usage: Mapping, seed: int = 0) -> dict:
    """The report of `annotator`'s verdicts in `feedback.collect.JudgedGroups` (a loop round's feedback)."""
    labels = {key: by[annotator] for key, by in labels_from_groups(feedback).items() if annotator in by}
    return judge_report(labels, {e.id: e for e in feedback.examples}, usage, None, seed)


# ---- `modalign report` --------------------------------------------------------------------------------
SHOWN = ("judge", "task", "judgments", "pairs", "gold_accuracy", "panel_agreement", "panel_kappa",
         "people_agreement", "people_kappa", "position_inconsistent_share", "forwards_per_judgment")


def judge_reports(summary: Mapping) -> dict[str, dict]:
    """The judge reports in a run's summary: `judge_report` (modalign judge) or in its rounds' feedback (loop,
    iterative DPO)."""
    found = {}
    if isinstance(summary.get("judge_report"), dict):
        found["judge"] = summary["judge_report"]
    for row in summary.get("rounds", []) or []:
        if not isinstance(row, dict):
            continue
        report = row.get("judge_report") or (row.get("feedback") or {}).get("judge_report")
        if isinstance(report, dict):
            found[f"round {row.get('round')}"] = report
    return found
