"""Claim-level verification (`judge: claims:<model>`, `claims:self`): an answer is split into atomic claims,
each claim is asked about the media as a question to a judge model, and the answer is scored by its
verified and refuted claims. RLAIF-V (Yu et al. 2024, "RLAIF-V: Open-Source AI Feedback Leads to
Super GPT-4V Trustworthiness", sec. 3.2) scores responses this way, with the policy itself as the
labeler in its self-alignment setting (`claims:self`).

Score of an answer (the documented formula):

    score = verified_weight * verified - refute_weight * refuted
            (verified_weight 1, refute_weight 2 by default; 0 claims: 0)

A claim is verified when the judge's most likely option (`ask.score_options`, renormalised over the
options) is the claim's expected one, refuted otherwise. Stating more true facts raises the score,
each hallucinated fact costs twice what a true one earns, like the ShapesWorld gold utility.

`verified=0` scores refuted claims only, as RLAIF-V does (sec. 3.2, "divide-and-conquer": a response's
score is minus the number of its rejected claims): `claims:self?verified=0&refute=1` gives
score = -refuted. Paying nothing for a verified claim removes the reward for adding claims, which a
self-judge that wrongly verifies some of them otherwise turns into extra (hallucinated) objects.

`score=soft` weighs each claim by the judge's probability p of its expected option instead of the verdict:

    score = verified_weight * sum(p) - refute_weight * sum(1 - p)

so a claim the judge is unsure of moves the score little, and a confident refutation moves it most.

Pair selection (`select_pairs`): `pairs=all` (default) judges every pair of a prompt's distinct answers;
`pairs=best-worst` only the highest- against the lowest-scored one, as RLAIF-V and RLHF-V build their
preference pairs from many samples per prompt (`per_prompt=<n>`: also the 2nd best against the 2nd worst, ...,
n pairs per prompt); `margin=<m>` drops pairs whose scores differ by less than
m (with margin 0 equal scores are stored as ties). A noisy judge is right more often on its clearest pairs.

`self=round|start|both` (claims:self only): which policy judges in the loop / iterative DPO - the
round's own (default), the policy the run started from (the same self, frozen: a judge that trains on its
own verdicts drifts), or both, each claim's option probabilities averaged over the two.

`forms=first|mean`: ask each claim's own question only (default), or also its other forms (`Claim.forms`, the
`shapes` splitters give them from the grammar), p = the mean over the forms of the expected option's
probability, verified when p >= 0.5.

`gate=none|agreement`: with `agreement` each kind of claim (`Claim.kind`: shape_at, colour_at, size, count, ...
from the `shapes` splitters; else the claim's question) is weighed, in the score, by how consistently the judge
answers that kind over the round's claims (`kind_weights`: its self-agreement sum_k p_k^2 rescaled from chance
to certainty), so kinds it wavers on move the score less. Gold-free: only the judge's own option probabilities.

`consistency=<w>` (default 0: off), `pool=linear|log`, `silence=neutral|against`: sample consistency as a second,
gold-free source of evidence (SelfCheckGPT, Manakul et al. 2023; `consistency.py`): each claim's consistency with
the same prompt's OTHER answers in the call (agree / contradict on the same question) is pooled with the judge's
probability p of the expected option, p' = (1 - w) p + w cons (linear) or their logarithmic pool; the claim is then
verified when p' >= 0.5 and the soft score uses p'. Only the policy's own answers: no gold, no references.

Spec: `claims:<model folder or hub id | self>[?splitter=<name>&template=<file>&refute=<weight>&verified=<weight>
&score=hard|soft&pairs=all|best-worst&per_prompt=<n>&margin=<m>&self=round|start|both&forms=first|mean
&gate=none|agreement&consistency=<w>&pool=linear|log&silence=neutral|against]`
- splitter: `shapes`, `sentences`, `model` or `py:<file.py>:<fn>` (`splitters`); default `auto`:
  `shapes` on ShapesWorld data, else `model`.
- template: a text file holding the yes/no question asked about a free-text claim, with `{claim}`;
  default `DEFAULT_TEMPLATE`. Claims that carry their own question (the `shapes` splitter) ignore it.
- refute: refute_weight.
- verified: verified_weight (0: RLAIF-V's refuted-only score).

Judgments (`judge_with_claims`): every selected pair of a prompt's distinct answers is one pairwise judgment,
the higher score winning and equal scores a tie, each with provenance (judge model, template sha256,
splitter, both answers' scores and per-claim results). Every claim goes through a `ClaimCache`, keyed
by (judge, media sha256, question, options): a claim is never asked twice of the same judge.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import torch

from modalign.config import ConfigError
from modalign.data.records import Completion, Example
from modalign.feedback.judges.cache import ClaimCache, MediaDigests
from modalign.feedback.judges.consistency import POOLS, SILENCE, claim_consistency, group_by, pool
from modalign.feedback.judges.splitters import Claim, as_claims, auto_splitter, splitter_from

if TYPE_CHECKING:
    from modalign.feedback.collect import JudgedGroups
    from modalign.models.inputs import MediaStore
    from modalign.models.policy import Policy

PREFIX = "claims:"
SELF = "self"
DEFAULT_TEMPLATE = "is it true that {claim}? answer yes or no."
OPTIONS = ("splitter", "template", "refute", "verified", "score", "pairs", "margin", "self", "forms", "per_prompt",
           "gate", "consistency", "pool", "silence")
CHOICES = {"score": ("hard", "soft"), "pairs": ("all", "best-worst"), "self": ("round", "start", "both"),
           "forms": ("first", "mean"), "gate": ("none", "agreement"), "pool": POOLS, "silence": SILENCE}


def is_claims(spec: str) -> bool:
    return spec.strip().startswith(PREFIX)


@dataclass(frozen=True)
class ClaimJudgeSpec:
    """A parsed `claims:...` spec (see the module docstring)."""

    model: str
    splitter: str = "auto"
    template: str = ""
    refute_weight: float = 2.0
    verified_weight: float = 1.0
    score: str = "hard"
    pairs: str = "all"
    margin: float = 0.0
    judge_self: str = "round"
    forms: str = "first"
    per_prompt: int = 1
    gate: str = "none"
    consistency: float = 0.0
    pool: str = "linear"
    silence: str = "neutral"

    @classmethod
    def parse(cls, spec: str) -> "ClaimJudgeSpec":
        body = spec.strip().removeprefix(PREFIX)
        model, _, query = body.partition("?")
        if not model:
            raise ConfigError(f"judge {spec!r}: name the judge model, claims:<folder or hub id> or claims:{SELF}")
        options: dict[str, Any] = {}
        for item in filter(None, query.split("&")):
            key, _, value = item.partition("=")
            if key not in OPTIONS or not value:
                raise ConfigError(f"judge {spec!r}: option {item!r}: write splitter=<name>, template=<file>, "
                                  f"refute=<weight>, verified=<weight>, score=hard|soft, pairs=all|best-worst, "
                                  f"margin=<number>, self=round|start|both, forms=first|mean, per_prompt=<pairs>, "
                                  f"gate=none|agreement, consistency=<weight 0..1>, pool=linear|log or "
                                  f"silence=neutral|against")
            options[key] = value
        numbers = {}
        for key, default in (("refute", 2.0), ("verified", 1.0), ("margin", 0.0), ("consistency", 0.0)):
            try:
                numbers[key] = float(options.get(key, default))
            except ValueError:
                raise ConfigError(f"judge {spec!r}: {key}={options[key]!r} is not a number") from None
        for key, default in (("score", "hard"), ("pairs", "all"), ("self", "round"), ("forms", "first"),
                             ("gate", "none"), ("pool", "linear"), ("silence", "neutral")):
            if options.get(key, default) not in CHOICES[key]:
                raise ConfigError(f"judge {spec!r}: {key}={options[key]!r}: one of {', '.join(CHOICES[key])}")
        if numbers["margin"] < 0:
            raise ConfigError(f"judge {spec!r}: margin={options['margin']!r} must be >= 0")
        if not 0 <= numbers["consistency"] <= 1:
            raise ConfigError(f"judge {spec!r}: consistency={options['consistency']!r}: a weight from 0 to 1")
        per_prompt = options.get("per_prompt", "1")
        if not per_prompt.isdigit() or int(per_prompt) < 1:
            raise ConfigError(f"judge {spec!r}: per_prompt={per_prompt!r}: a whole number of pairs, at least 1")
        if int(per_prompt) > 1 and options.get("pairs", "all") != "best-worst":
            raise ConfigError(f"judge {spec!r}: per_prompt={per_prompt} is for pairs=best-worst only")
        if options.get("self", "round") != "round" and model != SELF:
            raise ConfigError(f"judge {spec!r}: self={options['self']} is for claims:{SELF} only")
        return cls(model, options.get("splitter", "auto"), options.get("template", ""), numbers["refute"],
                   numbers["verified"], options.get("score", "hard"), options.get("pairs", "all"), numbers["margin"],
                   options.get("self", "round"), options.get("forms", "first"), int(per_prompt),
                   options.get("gate", "none"), numbers["consistency"], options.get("pool", "linear"),
                   options.get("silence", "neutral"))

    @property
    def is_self(self) -> bool:
        return self.model == SELF

    def template_text(self) -> str:
        if not self.template:
            return DEFAULT_TEMPLATE
        path = Path(self.template)
        if not path.is_file():
            raise ConfigError(f"claim question template {self.template}: no such file")
        text = path.read_text(encoding="utf-8").strip()
        if "{claim}" not in text:
            raise ConfigError(f"claim question template {self.template} has no {{claim}} placeholder")
        return text


def check_claims_judge(spec: str, examples: Sequence[Example]) -> ClaimJudgeSpec:
    """Fail before any work on a claims spec that cannot run: options, template, splitter, model folder."""
    from modalign.plugins import PluginError

    parsed = ClaimJudgeSpec.parse(spec)
    parsed.template_text()
    name = auto_splitter(examples) if parsed.splitter == "auto" else parsed.splitter
    if name != "model":
        try:
            splitter_from(name)
        except PluginError as err:
            raise PluginError(f"judge {spec!r}: claim splitter {err}") from None
    if not parsed.is_self and Path(parsed.model).exists() and not (Path(parsed.model) / "config.json").is_file():
        raise ConfigError(f"judge {spec!r}: {parsed.model} has no config.json: not a saved model")
    return parsed


@dataclass(frozen=True)
class ClaimResult:
    """The judge's answer to one claim: the option it found most likely and the expected option's probability."""

    claim: Claim
    answer: str
    probability: float
    agreement: float = 1.0  # sum_k p_k^2: the chance two answers sampled from the judge agree (`kind_weights`)
    judged: float | None = None  # with consistency=<w>: the judge's own p, before pooling (`probability` is p')
    consistency: float | None = None  # with consistency=<w>: the claim's sample consistency

    @property
    def verified(self) -> bool:
        return self.answer == self.claim.expected

    def to_dict(self) -> dict:
        pooled = ({"p_judge": round(self.judged, 4), "consistency": round(self.consistency, 4)}
                  if self.consistency is not None else {})
        return {"claim": self.claim.text, "question": self.claim.question, "expected": self.claim.expected,
                "answer": self.answer, "p_expected": round(self.probability, 4), "verified": self.verified, **pooled}


@dataclass(frozen=True)
class Verification:
    """One answer's claims as judged, and its score."""

    results: tuple[ClaimResult, ...]
    score: float

    @property
    def verified(self) -> int:
        return sum(r.verified for r in self.results)

    @property
    def refuted(self) -> int:
        return len(self.results) - self.verified

    def to_dict(self) -> dict:
        return {"score": self.score, "verified": self.verified, "refuted": self.refuted,
                "claims": [r.to_dict() for r in self.results]}


class ClaimJudge:
    """Verifies answers claim by claim with `policy` as the judge; batched, cached.

    `name` identifies the judge in the cache keys and the provenance (its folder; for `claims:self`
    the round's policy folder). `media`: a MediaStore over the examples' dataset root.
    `anchor`: a second judge (policy, name) asked every claim too (`self=both`); a claim's option
    probabilities are then the mean of the two judges'. `score`: "hard" or "soft" (`claim_score`).
    `pairs` / `margin` / `per_prompt`: which pairs of a prompt's answers become judgments (`select_pairs`).
    `forms`: "first" asks each claim's own question only; "mean" also its other forms (`Claim.forms`) and
    averages the expected option's probability over them (`_form_result`).
    `consistency` / `pool` / `silence`: weight, pooling and silence rule of sample consistency (`_pooled`).
    """

    def __init__(self, policy: "Policy", media: "MediaStore", splitter: str, name: str,
                 template: str = DEFAULT_TEMPLATE, refute_weight: float = 2.0, cache: ClaimCache | None = None,
                 batch_size: int = 32, verified_weight: float = 1.0, score: str = "hard",
                 anchor: "tuple[Policy, str] | None" = None, pairs: str = "all", margin: float = 0.0,
                 forms: str = "first", per_prompt: int = 1, gate: str = "none", consistency: float = 0.0,
                 pool: str = "linear", silence: str = "neutral") -> None:
        self.policy, self.media, self.name = policy, media, name
        self.voters = [(policy, name)] + ([anchor] if anchor is not None else [])
        self.splitter_name, self.splitter = splitter, splitter_from(splitter, policy)
        self.template, self.refute_weight, self.verified_weight = template, refute_weight, verified_weight
        self.score_kind, self.pairs, self.margin, self.forms = score, pairs, margin, forms
        self.per_prompt, self.gate = per_prompt, gate
        self.consistency, self.pool, self.silence = consistency, pool, silence
        self.kind_weights: dict[str, float] = {}  # the last `verify` call's, with gate=agreement
        self.cache = cache if cache is not None else ClaimCache()
        self.batch_size = batch_size
        self.digests = MediaDigests(media.root)

    @property
    def template_sha(self) -> str:
        return hashlib.sha256(self.template.encode()).hexdigest()[:16]

    def question(self, claim: Claim) -> str:
        return claim.question or self.template.format(claim=claim.text)

    def verify(self, examples: Sequence[Example], answers: Sequence[str]) -> list[Verification]:
        """Each answer's claims, asked (only the ones not in the cache) in batches; one Verification per answer."""
        claims = [as_claims(self.splitter(e, a), self.splitter_name) for e, a in zip(examples, answers)]
        for policy, name in self.voters:  # each judge asks only what it was never asked
            pending: dict[str, tuple[Example, Claim]] = {}
            for example, own in zip(examples, claims):
                for claim in (form for c in own for form in self._forms(c)):
                    key = self._key(example, claim, name)
                    if key not in pending and self.cache.get(key) is None:
                        pending[key] = (example, claim)
            self._ask(policy, pending)
        results = [self._results(example, own) for example, own in zip(examples, claims)]
        if self.consistency > 0:
            results = self._pooled(examples, claims, results)
        # gate=agreement: each kind of claim weighed by the judge's self-agreement over this call's claims
        self.kind_weights = kind_weights([r for rows in results for r in rows]) if self.gate == "agreement" else {}
        return [Verification(tuple(rows), claim_score(rows, self.verified_weight, self.refute_weight, self.score_kind,
                                                      self.kind_weights)) for rows in results]

    def scores(self, examples: Sequence[Example], answers: Sequence[str]) -> list[float]:
        return [v.score for v in self.verify(examples, answers)]

    def provenance(self, verifications: Sequence[Verification]) -> dict:
        return {"judge": f"claims:{self.name}", "template_sha256": self.template_sha, "splitter": self.splitter_name,
                "refute_weight": self.refute_weight, "verified_weight": self.verified_weight,
                "score": self.score_kind, "pairs": self.pairs, "margin": self.margin, "forms": self.forms,
                "per_prompt": self.per_prompt,
                **({"gate": self.gate, "kind_weights": self.kind_weights} if self.gate != "none" else {}),
                **({"consistency": self.consistency, "pool": self.pool, "silence": self.silence}
                   if self.consistency > 0 else {}),
                **({"anchor": self.voters[1][1]} if len(self.voters) > 1 else {}),
                "answers": [v.to_dict() for v in verifications]}

    def _pooled(self, examples: Sequence[Example], claims: Sequence[Sequence[Claim]],
                results: list[list[ClaimResult]]) -> list[list[ClaimResult]]:
        """Each claim's p pooled with its consistency with the other answers to the same example in this call
        (`consistency.py`); verified when p' >= 0.5, else the answer is the judge's most likely other option."""
        pooled = [list(rows) for rows in results]
        for members in group_by([e.id for e in examples]):
            facts = [[((self.question(c), c.options), c.expected) for c in claims[i]] for i in members]
            for i, row in zip(members, claim_consistency([facts], self.silence)[0]):
                pooled[i] = [self._pool_one(examples[i], r, cons) for r, cons in zip(results[i], row)]
        return pooled

    def _pool_one(self, example: Example, result: ClaimResult, cons: float) -> ClaimResult:
        claim, p = result.claim, pool(result.probability, cons, self.consistency, self.pool)
        answer = claim.expected
        if p < 0.5:  # refuted: the judge's most likely option other than the expected one
            others = self._probabilities(example, claim).clone()
            others[claim.options.index(claim.expected)] = -1.0
            answer = claim.options[int(others.argmax())]
        return ClaimResult(claim, answer, p, result.agreement, result.probability, cons)

    def _key(self, example: Example, claim: Claim, name: str = "") -> str:
        return ClaimCache.key(name or self.name, self.digests.of(example), self.question(claim), claim.options)

    def _ask(self, policy: "Policy", pending: dict[str, tuple[Example, Claim]]) -> None:
        """Ask every pending claim, grouped by its options and, within a group, by example (media encoded once)."""
        from modalign.feedback.judges.ask import Query, media_key, score_options

        by_options: dict[tuple[str, ...], list[str]] = {}
        for key, (_, claim) in pending.items():
            by_options.setdefault(claim.options, []).append(key)
        for options, group in by_options.items():
            group.sort(key=lambda k: media_key(pending[k][0]))
            queries = [Query(pending[k][0], self.question(pending[k][1])) for k in group]
            scores = score_options(policy, queries, options, self.media, self.batch_size)  # (N, K)
            self.cache.put({k: row for k, row in zip(group, scores.tolist())})

    def _forms(self, claim: Claim) -> tuple[Claim, ...]:
        """The questions asked about `claim`: its own, and with `forms=mean` its other forms too."""
        return (claim, *claim.forms) if self.forms == "mean" else (claim,)

    def _probabilities(self, example: Example, claim: Claim) -> torch.Tensor:
        """(K,) the claim's option probabilities: each judge's renormalised over the options, then their mean."""
        return torch.stack([torch.softmax(torch.tensor(self.cache.entries[self._key(example, claim, n)]), 0)
                            for _, n in self.voters]).mean(0)

    def _results(self, example: Example, claims: Sequence[Claim]) -> list[ClaimResult]:
        return [self._form_result(claim, [self._probabilities(example, form) for form in self._forms(claim)])
                for claim in claims]

    def _form_result(self, claim: Claim, probabilities: Sequence[torch.Tensor]) -> ClaimResult:
        """One form: its most likely option decides. Several (`forms=mean`): p = the mean over the forms of the
        expected option's probability, verified when p >= 0.5 (else the answer is the first form's most likely
        other option)."""
        first = probabilities[0]
        agreement = float(first.pow(2).sum())  # of the claim's own question
        if len(probabilities) == 1:
            expected = float(first[claim.options.index(claim.expected)])
            return ClaimResult(claim, claim.options[int(first.argmax())], expected, agreement)
        p = sum(float(probs[form.options.index(form.expected)])
                for probs, form in zip(probabilities, self._forms(claim))) / len(probabilities)
        others = first.clone()
        others[claim.options.index(claim.expected)] = -1.0
        return ClaimResult(claim, claim.expected if p >= 0.5 else claim.options[int(others.argmax())], p, agreement)


def claim_score(results: Sequence[ClaimResult], verified_weight: float = 1.0, refute_weight: float = 2.0,
                kind: str = "hard", weights: dict[str, float] | None = None) -> float:
    """The module docstring's formula (0 claims: 0):
    hard: verified_weight * verified - refute_weight * refuted
    soft: verified_weight * sum(p) - refute_weight * sum(1 - p), p = each claim's expected-option probability.
    `weights`: a factor per kind of claim (`Claim.kind_name`, 1 for a kind not in it) on each claim's term."""
    weights = weights or {}

    def term(r: ClaimResult) -> float:
        if kind == "soft":
            value = verified_weight * r.probability - refute_weight * (1 - r.probability)
        else:
            value = verified_weight if r.verified else -refute_weight
        return weights.get(r.claim.kind_name, 1.0) * value

    return float(sum(term(r) for r in results))


def kind_weights(results: Sequence[ClaimResult]) -> dict[str, float]:
    """`gate=agreement`: per kind of claim, how far the judge agrees with itself above chance, in [0, 1].

    Each claim's agreement is sum_k p_k^2 over its options (the chance two answers sampled from the judge
    agree); a kind's is the mean over its claims, c, rescaled from chance (1/K for K options: a judge that
    guesses uniformly) to certainty: w = max(0, (c - 1/K) / (1 - 1/K)). A kind the judge answers
    consistently keeps its weight; one it wavers on counts less. Gold-free: only the judge's own answers."""
    by_kind: dict[str, list[tuple[float, int]]] = {}
    for r in results:
        by_kind.setdefault(r.claim.kind_name, []).append((r.agreement, len(r.claim.options)))
    weights = {}
    for name, rows in by_kind.items():
        agreement = sum(a for a, _ in rows) / len(rows)
        chance = sum(1 / k for _, k in rows) / len(rows)
        weights[name] = round(max(0.0, (agreement - chance) / (1 - chance)), 4) if chance < 1 else 1.0
    return weights


def select_pairs(scores: Sequence[float], rule: str = "all", margin: float = 0.0,
                 per_prompt: int = 1) -> list[tuple[int, int]]:
    """Which pairs of one prompt's (distinct) answers become judgments: (i, j) with scores[i] >= scores[j].

    all: every pair; best-worst: the highest- against the lowest-scored answer (the first of equal ones),
    and with `per_prompt` n > 1 also the 2nd highest against the 2nd lowest, ... up to n pairs (no answer in
    two pairs, at most half the answers' worth). A pair whose scores differ by less than `margin` is dropped;
    with margin 0 equal scores stay, as a tie."""
    if len(scores) < 2:
        return []
    if rule == "best-worst":
        best_first = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
        worst_first = sorted(range(len(scores)), key=lambda i: (scores[i], i))
        candidates = [(best_first[0], worst_first[0])] if best_first[0] != worst_first[0] else [(0, 1)]
        for best, worst in zip(best_first[1 : min(per_prompt, len(scores) // 2)],
                               worst_first[1 : min(per_prompt, len(scores) // 2)]):
            if best != worst and not {best, worst} & {k for pair in candidates for k in pair}:
                candidates.append((best, worst))
    else:
        candidates = [(i, j) if scores[i] >= scores[j] else (j, i) for i, j in combinations(range(len(scores)), 2)]
    return [(i, j) for i, j in candidates if scores[i] - scores[j] >= margin]


def claim_judge(spec: str, examples: Sequence[Example], media: "MediaStore", policy: "Policy | None" = None,
                policy_name: str = "", cache: ClaimCache | None = None, start: str = "") -> ClaimJudge:
    """The ClaimJudge of `spec`: for `claims:self` over `policy` (the current one, named `policy_name`),
    else over the model the spec names (loaded here). `start`: the folder of the policy the run started
    from, the judge of `claims:self?self=start` and the anchor of `self=both` (loaded here)."""
    parsed = check_claims_judge(spec, examples)
    anchor = None
    if parsed.is_self:
        if policy is None:
            raise ConfigError(f"judge {spec!r}: claims:self needs the current policy (only the loop, iterative DPO "
                              f"and online RL have one)")
        name = policy_name or getattr(policy, "name", "") or "self"
        if parsed.judge_self != "round" and start and start != name:
            started = _load_judge(start, policy)
            if parsed.judge_self == "start":
                policy, name = started, start
            else:
                anchor = (started, start)
    else:
        from modalign.models.inputs import MediaStore
        from modalign.validate import load_checked_policy

        from modalign.device import model_device

        device = model_device(policy.model) if policy is not None else None  # the current policy's, if any
        policy, name = load_checked_policy(parsed.model), parsed.model
        if device is not None:
            policy.model.to(device)
        extractor = getattr(policy.processor, "feature_extractor", None)  # audio at the judge's own rate
        media = MediaStore(media.root, sample_rate=int(getattr(extractor, "sampling_rate", media.sample_rate)))
    splitter = auto_splitter(examples) if parsed.splitter == "auto" else parsed.splitter
    return ClaimJudge(policy, media, splitter, name, parsed.template_text(), parsed.refute_weight, cache,
                      verified_weight=parsed.verified_weight, score=parsed.score, anchor=anchor, pairs=parsed.pairs,
                      margin=parsed.margin, forms=parsed.forms, per_prompt=parsed.per_prompt, gate=parsed.gate,
                      consistency=parsed.consistency, pool=parsed.pool, silence=parsed.silence)


_JUDGES: dict[tuple, "Policy"] = {}  # (folder, its files' mtimes, device) -> a frozen judge loaded once per process


def _load_judge(folder: str, like: "Policy") -> "Policy":
    """The policy saved in `folder`, on the device of `like`, for judging only; loaded once per process (the
    start policy of `self=start|both` judges every round)."""
    from modalign.device import model_device
    from modalign.validate import load_checked_policy

    device = model_device(like.model)
    # the files' mtimes are in the key: a model saved again into the same folder is loaded again
    stamps = (tuple(sorted((p.name, p.stat().st_mtime_ns) for p in Path(folder).iterdir() if p.is_file()))
              if Path(folder).is_dir() else ())  # a hub id: the hub's cache does not change under us
    key = (str(Path(folder).resolve()), stamps, str(device))
    if key not in _JUDGES:
        judge = load_checked_policy(folder)
        _JUDGES[key] = judge
        judge.model.to(device).eval()
    return _JUDGES[key]


def judge_with_claims(judge: ClaimJudge, prompts: Sequence[Example], completions: Sequence[Completion],
                      k: int) -> tuple["JudgedGroups", list[float]]:
    """Verify every answer (one batched pass), then the pairs of a prompt's distinct answers the judge's `pairs`
    and `margin` select (`select_pairs`; default every pair) are pairwise judgments: the higher score wins,
    equal scores are a tie. Returns the judgments and every answer's score."""
    owners = [e for e in prompts for _ in range(k)]
    verifications = judge.verify(owners, [c.text for c in completions])
    scores = [v.score for v in verifications]
    pairs = []
    for i, example in enumerate(prompts):
        distinct = list({c.text: (c, v) for c, v in zip(completions[k * i : k * i + k],
                                                        verifications[k * i : k * i + k])}.values())
        chosen = select_pairs([v.score for _, v in distinct], judge.pairs, judge.margin, judge.per_prompt)
        pairs += [(example, distinct[a], distinct[b]) for a, b in chosen]
    return _pair_judgments(judge, pairs), scores


def judge_pairs_with_claims(judge: ClaimJudge, pairs) -> "JudgedGroups":
    """The claim judge chooses in every selected pair (`feedback.select.CandidatePair`); equal scores are ties,
    pairs whose scores differ by less than the judge's `margin` are dropped."""
    verifications = judge.verify([p.example for p in pairs for _ in range(2)],
                                 [c.text for p in pairs for c in (p.a, p.b)])
    judged = [(p.example, (p.a, verifications[2 * i]), (p.b, verifications[2 * i + 1])) for i, p in enumerate(pairs)]
    return _pair_judgments(judge, [(e, a, b) for e, a, b in judged if abs(a[1].score - b[1].score) >= judge.margin])


def _pair_judgments(judge: ClaimJudge, pairs) -> "JudgedGroups":
    from modalign.feedback.collect import JudgedGroups

    annotator = f"claims:{judge.name}"[:200]
    examples, groups, verdicts, ties, provenance = [], [], [], [], []
    for example, first, second in pairs:
        (a, verified_a), (b, verified_b) = (first, second) if first[1].score >= second[1].score else (second, first)
        examples.append(example)
        groups.append([a, b])  # the winner first, so the provenance's answers are candidate_a's, candidate_b's
        verdicts.append([(annotator, (0, 1))])
        ties.append(verified_a.score == verified_b.score)
        provenance.append(judge.provenance([verified_a, verified_b]))
    return JudgedGroups(examples, groups, verdicts, pairwise=True, ties=ties, provenance=provenance)
