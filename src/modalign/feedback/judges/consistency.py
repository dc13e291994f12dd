"""Sample consistency: a second, gold-free source of evidence about a claim (`consistency=<w>` of a claims judge).

SelfCheckGPT (Manakul et al. 2023, EMNLP, "SelfCheckGPT: Zero-Resource Black-Box Hallucination Detection for
Generative Large Language Models") checks a fact against the model's OTHER samples for the same prompt: a fact
the model perceives recurs across its samples, one it hallucinates tends to vary. A claims judge already has
every sampled answer of a prompt and their claims, so it can do the same at no extra forward pass.

Agreement between claims. Two claims address the same fact when the judge asks them the same question with the
same options (`ClaimJudge.question`: the splitter's own question, e.g. "what shape is on the left?", or for a
free-text claim the template's yes/no question about its text). An other answer AGREES with claim c when one
of its claims asks c's question and expects c's option, CONTRADICTS c when it asks c's question but expects
another option only (it says a different shape is on the left), and is SILENT otherwise. Free-text claims
agree only by equal text (the template's question holds the text) and cannot contradict.

Consistency of claim c of answer a, over the n - 1 other answers of the same prompt (duplicates counted: a fact
stated in 5 of 7 samples recurs more than one stated once), with one pseudo-answer of prior split half / half:

    silence=neutral (default):  cons = (agree + 0.5) / (agree + contradict + 1)
    silence=against:            cons = (agree + 0.5) / ((n - 1) + 1)

`neutral` is SelfCheckGPT-NLI's rule (its score is P(contradict) renormalised over entail and contradict, the
neutral class left out): an answer that does not mention the left shape says nothing about it, so a caption is
not blamed for stating a fact the other samples leave out. `against` is SelfCheckGPT-prompt's rule (a sentence
not supported by a sample counts against it), the only one under which a free-text claim can lose consistency.
The prior keeps one agreeing answer from meaning certainty, and gives a claim no other answer addresses 0.5.

Pooling with the judge's probability p of the claim's expected option (w in [0, 1]):

    pool=linear (default):  p' = (1 - w) p + w cons
    pool=log:               p' = p^(1-w) cons^w / (p^(1-w) cons^w + (1-p)^(1-w) (1-cons)^w)

(linear and logarithmic opinion pools; the log pool is a product of experts on verified / refuted).
"""

from __future__ import annotations

from typing import Hashable, Sequence

PRIOR = 0.5  # the pseudo-answer's share of agreement
PRIOR_WEIGHT = 1.0  # how many answers the prior counts as
SILENCE = ("neutral", "against")
POOLS = ("linear", "log")


def claim_consistency(groups: Sequence[Sequence[Sequence[tuple[Hashable, str]]]],
                      silence: str = "neutral") -> list[list[list[float]]]:
    """cons for every claim of every answer of every prompt (the module docstring's formula).

    groups[prompt][answer] is the list of that answer's claims as (fact, option): `fact` what the claim is about
    (the judge's question and options), `option` the option it expects. Returns the same nesting of floats."""
    out = []
    for answers in groups:
        stated = [_options_by_fact(claims) for claims in answers]  # per answer: fact -> options it expects
        rows = []
        for i, claims in enumerate(answers):
            others = stated[:i] + stated[i + 1 :]
            rows.append([_consistency(fact, option, others, silence) for fact, option in claims])
        out.append(rows)
    return out


def _options_by_fact(claims: Sequence[tuple[Hashable, str]]) -> dict[Hashable, set[str]]:
    found: dict[Hashable, set[str]] = {}
    for fact, option in claims:
        found.setdefault(fact, set()).add(option)
    return found


def _consistency(fact: Hashable, option: str, others: Sequence[dict[Hashable, set[str]]], silence: str) -> float:
    agree = sum(option in answer.get(fact, ()) for answer in others)
    contradict = sum(fact in answer and option not in answer[fact] for answer in others)
    seen = agree + contradict if silence == "neutral" else len(others)
    return (agree + PRIOR * PRIOR_WEIGHT) / (seen + PRIOR_WEIGHT)


def pool(p: float, cons: float, weight: float, how: str = "linear") -> float:
    """The judge's probability p and the sample consistency cons pooled with weight `weight` on cons."""
    if how == "linear":
        return (1 - weight) * p + weight * cons
    eps = 1e-6  # a judge's softmax can round to exactly 0 or 1
    p, cons = min(max(p, eps), 1 - eps), min(max(cons, eps), 1 - eps)
    yes = p ** (1 - weight) * cons ** weight
    no = (1 - p) ** (1 - weight) * (1 - cons) ** weight
    return yes / (yes + no)


def group_by(keys: Sequence[Hashable]) -> list[list[int]]:
    """Indices of equal keys, in first-seen order: the answers of each prompt in one `verify` call."""
    groups: dict[Hashable, list[int]] = {}
    for i, key in enumerate(keys):
        groups.setdefault(key, []).append(i)
    return list(groups.values())

