"""Model judges (`judge=model:<folder or hub id>`): a policy judges answers pairwise, as rankings or as ratings.

The judge is any policy modalign loads (built-in or Hugging Face). It is asked about the example's own
media (image, audio) through a prompt template (`templates`) and its answer is the option with the
highest log-likelihood (`ask.score_options`); it never generates.

Tasks:
- pairwise: every pair of an example's distinct answers, judged in both orders (`both_orders`); a pair
  whose orders disagree is a tie or dropped (`disagreement`).
- rating: each answer alone, rating = the most likely option (1..K); its expected rating (options'
  probabilities renormalised over the K options) is its score.
- ranking: from pairwise judgments (`ranking_from="pairwise"`: Bradley-Terry over both-order pairs, n(n-1)
  questions for n answers) or from ratings (`"rating"`: sorted by expected rating, n questions).

Every verdict carries its provenance (judge, template hash, task, and per pair both orders' scores, or
per answer its option scores), stored with the judgment in the feedback store.

Cost: `forwards` counts the sequences the judge model ran: one per question when the options are
packed behind the prompt (the built-in model, `models.shared_prefix`), else one per (question, option).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Sequence

import torch

from modalign.config import ConfigError
from modalign.data.records import Completion, Example
from modalign.feedback.judges.ask import Query
from modalign.feedback.judges.both_orders import DISAGREEMENTS, PairResult, all_pairs, judge_pairs, ranking_from_pairs
from modalign.feedback.judges.templates import JudgeTemplate, load_template

if TYPE_CHECKING:
    from modalign.feedback.collect import JudgedGroups

PREFIX = "model:"
TASKS = ("pairwise", "ranking", "rating")
RANKING_FROM = ("pairwise", "rating")
AskFn = Callable[[Sequence[Query], Sequence[str]], torch.Tensor]  # (queries, options) -> (N, K) log-likelihoods


def is_model_judge(spec: str) -> bool:
    return spec.strip().startswith(PREFIX)


@dataclass
class ModelJudge:
    """A judge model behind `ask`, its templates and settings, and what it has cost so far."""

    name: str  # the annotator of its judgments: model:<location>
    ask: AskFn
    pairwise: JudgeTemplate
    rating: JudgeTemplate
    disagreement: str = "tie"
    ranking_from: str = "pairwise"
    packed: bool = True  # options packed behind one prompt: one forward per question
    counts: dict = field(default_factory=lambda: {"questions": 0, "forwards": 0, "both_orders": 0,
                                                  "position_inconsistent": 0})

    def scores(self, template: JudgeTemplate, example: Example, fields: Sequence[dict]) -> torch.Tensor:
        """(N, K) option log-likelihoods of the N questions `template` makes of `fields` about `example`'s media."""
        queries = [Query(example, template.render(**f)) for f in fields]
        scores = self.ask(queries, template.options)
        self.counts["questions"] += len(queries)
        self.counts["forwards"] += len(queries) * (1 if self.packed else len(template.options))
        return scores.float()

    def reset_counts(self) -> None:
        self.counts = {key: 0 for key in self.counts}

    def count_pairs(self, results: Sequence[PairResult]) -> None:
        self.counts["both_orders"] += len(results)  # pairs asked in both orders
        self.counts["position_inconsistent"] += sum(not r.consistent for r in results)

    def provenance(self, task: str, template: JudgeTemplate, **details) -> dict:
        return {"judge": self.name, "task": task, "template": template.sha, "options": list(template.options),
                **({"disagreement": self.disagreement} if template.task == "pairwise" else {}), **details}


@dataclass(frozen=True)
class Verdict:
    """One judgment of a group's answers, by index: pairwise (`candidates` (x, y), `choice` a|b|tie),
    ranking (`candidates` best first) or rating (`candidates` (i,), `rating` in 1..`scale`)."""

    kind: str
    candidates: tuple[int, ...]
    provenance: dict
    choice: str = ""
    rating: int = 0
    scale: int = 0


def check_settings(task: str, disagreement: str, ranking_from: str, key: str = "judge") -> None:
    """The task, disagreement rule and ranking source are ones the judge has; else a ConfigError naming the field."""
    if task not in TASKS:
        raise ConfigError(f"task={task!r}: choose one of {', '.join(TASKS)}")
    if disagreement not in DISAGREEMENTS:
        raise ConfigError(f"{key}_disagreement={disagreement!r}: choose tie or drop")
    if ranking_from not in RANKING_FROM:
        raise ConfigError(f"{key}_ranking={ranking_from!r}: choose pairwise or rating")


def load_model_judge(spec: str, data_root: str, template: str = "", disagreement: str = "tie",
                     ranking_from: str = "pairwise", batch_size: int = 32, task: str = "ranking",
                     device: str = "auto") -> ModelJudge:
    """The judge of `model:<folder or hub id>` over the media of `data_root`; `template`: a file that replaces
    the template `task` uses (`template_pair`)."""
    from modalign.eval.generation import media_store
    from modalign.feedback.judges.ask import score_options
    from modalign.models.shared_prefix import supports_shared_prefix
    from modalign.device import placed
    from modalign.validate import load_checked_policy

    location = spec.strip().removeprefix(PREFIX)
    check_settings("ranking", disagreement, ranking_from)
    pairwise, rating = template_pair(template, ranking_from, task)
    policy = placed(load_checked_policy(location, key="judge"), device)  # asked on the run's device
    media = media_store(policy, data_root)

    def ask(queries: Sequence[Query], options: Sequence[str]) -> torch.Tensor:
        return score_options(policy, queries, options, media, batch_size=batch_size)

    return ModelJudge(f"{PREFIX}{location}"[:200], ask, pairwise, rating, disagreement, ranking_from,
                      packed=supports_shared_prefix(policy.model))


def template_pair(path: str, ranking_from: str, task: str = "ranking") -> tuple[JudgeTemplate, JudgeTemplate]:
    """(pairwise, rating) templates; the file at `path` replaces the one `task` asks with (a ranking: the one of
    `ranking_from`)."""
    own = task if task in ("pairwise", "rating") else ranking_from
    return (load_template("pairwise", path if own == "pairwise" else ""),
            load_template("rating", path if own == "rating" else ""))


def check_model_judge(spec: str, template: str = "", ranking_from: str = "pairwise", key: str = "judge",
                      task: str = "ranking") -> None:
    """Fail before any work on a judge model that is not there or a template file that is wrong."""
    from modalign.validate import check_policy

    check_policy(spec.strip().removeprefix(PREFIX), key=key)
    template_pair(template, ranking_from, task)


# ---- ratings ---------------------------------------------------------------------------------------------
def rate_answers(judge: ModelJudge, example: Example, texts: Sequence[str]) -> list[Verdict]:
    """One rating verdict per answer: the most likely option's rating, the expected rating in the provenance."""
    template = judge.rating
    scores = judge.scores(template, example, [dict(question=example.prompt_text, answer=t) for t in texts])  # (N, K)
    probabilities = torch.softmax(scores.double(), dim=-1)  # float64: a confident judge's 1 - 1e-12 is not 1
    values = torch.arange(1, len(template.options) + 1, dtype=probabilities.dtype)
    verdicts = []
    for i, (row, p) in enumerate(zip(scores.tolist(), probabilities)):
        expected = float((p * values).sum())
        verdicts.append(Verdict("rating", (i,), judge.provenance("rating", template, logprobs=row, expected=expected),
                                rating=int(torch.argmax(scores[i])) + 1, scale=len(template.options)))
    return verdicts


def expected_rating(verdict: Verdict) -> float:
    return float(verdict.provenance["expected"])


# ---- a group of answers --------------------------------------------------------------------------------
def judge_group(judge: ModelJudge, example: Example, texts: Sequence[str], task: str) -> tuple[list[Verdict], list[float]]:
    """`judge`'s verdicts on one example's distinct answers `texts` and a score per answer (higher is better:
    Bradley-Terry strength from pairs, or expected rating).

    pairwise: one verdict per pair that stands (ties kept or dropped by `judge.disagreement`); ranking: one
    verdict, none when the judge orders nothing; rating: one per answer.
    """
    if task == "rating" or (task == "ranking" and judge.ranking_from == "rating"):
        ratings = rate_answers(judge, example, texts)
        scores = [expected_rating(v) for v in ratings]
        if task == "rating":
            return ratings, scores
        order = tuple(sorted(range(len(texts)), key=lambda i: -scores[i]))
        decided = max(scores) > min(scores)
        details = {"expected": scores, "ratings": [v.rating for v in ratings]}
        return ([Verdict("ranking", order, judge.provenance("ranking", judge.rating, ranking_from="rating", **details))]
                if decided else []), scores
    pairs = all_pairs(len(texts))
    results = dict(zip(pairs, judge_pairs(judge, example, [(texts[i], texts[j]) for i, j in pairs])))
    if task == "pairwise":
        verdicts = [Verdict("pairwise", (i, j), judge.provenance("pairwise", judge.pairwise, **r.provenance()),
                            choice=choice)
                    for (i, j), r in results.items() if (choice := r.choice(judge.disagreement)) is not None]
        _, scores = ranking_from_pairs(len(texts), results, judge.disagreement)
        return verdicts, scores
    order, scores = ranking_from_pairs(len(texts), results, judge.disagreement)
    details = {"ranking_from": "pairwise", "pairs": [[i, j, r.provenance()] for (i, j), r in results.items()]}
    return ([Verdict("ranking", order, judge.provenance("ranking", judge.pairwise, **details))] if order else []), scores


# ---- the loop's and iterative DPO's feedback ------------------------------------------------------------
def judge_with_model(judge: ModelJudge, prompts: Sequence[Example], completions: Sequence[Completion],
                     k: int) -> tuple["JudgedGroups", list[float]]:
    """Each prompt's distinct answers ranked by the judge (one ranking judgment per prompt, with provenance);
    prompts with one distinct answer, or whose answers the judge does not order, are left out. The scores
    are each sampled answer's score in its group."""
    from modalign.feedback.collect import JudgedGroups

    examples, groups, verdicts, provenance, scores = [], [], [], [], []
    for i, example in enumerate(prompts):
        own = list(completions[k * i : k * i + k])
        distinct = list({c.text: c for c in own}.values())
        if len(distinct) < 2:
            scores += [0.0] * len(own)
            continue
        found, group_scores = judge_group(judge, example, [c.text for c in distinct], "ranking")
        by_text = {c.text: s for c, s in zip(distinct, group_scores)}
        scores += [by_text[c.text] for c in own]
        if found:
            examples.append(example)
            groups.append(distinct)
            verdicts.append([(judge.name, found[0].candidates)])
            provenance.append(found[0].provenance)
    return JudgedGroups(examples, groups, verdicts, pairwise=False, provenance=provenance), scores


def judge_pairs_with_model(judge: ModelJudge, pairs) -> "JudgedGroups":
    """Each selected pair (`feedback.select.CandidatePair`) judged in both orders: a winner, a tie (stored as a
    tie: the reward model's loss takes ties, DPO leaves them out), or nothing when dropped."""
    from modalign.feedback.collect import JudgedGroups

    examples, groups, verdicts, ties, provenance = [], [], [], [], []
    for pair in pairs:
        found, _ = judge_group(judge, pair.example, [pair.a.text, pair.b.text], "pairwise")
        if found:
            examples.append(pair.example)
            groups.append([pair.a, pair.b])
            verdicts.append([(judge.name, (1, 0) if found[0].choice == "b" else (0, 1))])
            ties.append(found[0].choice == "tie")
            provenance.append(found[0].provenance)
    return JudgedGroups(examples, groups, verdicts, pairwise=True, ties=ties, provenance=provenance)


def judge_round(judge: ModelJudge, prompts: Sequence[Example], completions: Sequence[Completion], k: int,
                pairs=None, seed: int = 0) -> tuple["JudgedGroups", list[float], dict]:
    """A round's feedback from the judge (`pairs`: the selected pairs, else each prompt's answers ranked),
    the answers' scores (none for pairs) and the round's judge report (`report.judge_report`)."""
    from modalign.feedback.judges.report import groups_report

    judge.reset_counts()
    if pairs is None:
        feedback, scores = judge_with_model(judge, prompts, completions, k)
    else:
        feedback, scores = judge_pairs_with_model(judge, pairs), []
    task = "pairwise" if pairs is not None else f"ranking from {judge.ranking_from}"
    return feedback, scores, {"judge": judge.name, "task": task,
                              **groups_report(judge.name, feedback, usage(judge, feedback.judgments), seed)}


def usage(judge: ModelJudge, judgments: int) -> dict:
    """What judging cost and how often the orders disagreed: the judge report's model-only part."""
    counts = judge.counts
    return {**counts, "judgments": judgments,
            "forwards_per_judgment": counts["forwards"] / judgments if judgments else math.nan,
            "position_inconsistent_share": (counts["position_inconsistent"] / counts["both_orders"]
                                            if counts["both_orders"] else math.nan)}
