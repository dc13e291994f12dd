"""Claim-judge options for a steadier self-judge (issue 19): soft scores, pair selection (best-worst, margin),
the described-object count claim, and judging with the start policy (self=start / self=both)."""

from __future__ import annotations

import pytest

from modalign.config import ConfigError
from modalign.feedback.judges.claims import ClaimJudgeSpec, ClaimResult, claim_score, select_pairs
from modalign.feedback.judges.splitters import Claim, shapes_claims, splitter_from


def test_all_pairs_keep_ties_and_a_margin_drops_near_ties():
    scores = [3.0, 0.0, 0.5, 3.0]
    # every pair, the higher score first; equal scores stay as a tie (0, 3)
    assert select_pairs(scores) == [(0, 1), (0, 2), (0, 3), (2, 1), (3, 1), (3, 2)]
    assert select_pairs(scores, margin=1.0) == [(0, 1), (0, 2), (3, 1), (3, 2)]  # 0.5 - 0 and 3 - 3 dropped
    assert select_pairs(scores, margin=2.6) == [(0, 1), (3, 1)]  # 3 - 0.5 = 2.5 < 2.6
    assert select_pairs([1.0]) == []


def test_best_worst_keeps_one_pair_per_prompt_if_its_margin_is_clear():
    scores = [2.5, -1.0, 4.0, -1.0]
    assert select_pairs(scores, "best-worst") == [(2, 1)]  # the first of the equal lowest
    assert select_pairs(scores, "best-worst", margin=5.0) == [(2, 1)]  # 4 - (-1) = 5: kept
    assert select_pairs(scores, "best-worst", margin=5.5) == []
    assert select_pairs([1.0, 1.0, 1.0], "best-worst") == [(0, 1)]  # all equal: one tie
    assert select_pairs([1.0, 1.0, 1.0], "best-worst", margin=0.5) == []


def test_the_soft_score_weighs_each_claims_probability():
    said = [Claim("there is a circle"), Claim("there is a square")]
    results = [ClaimResult(said[0], "yes", 0.9), ClaimResult(said[1], "no", 0.2)]
    assert claim_score(results, kind="soft") == pytest.approx(1 * (0.9 + 0.2) - 2 * (0.1 + 0.8))  # -0.7
    assert claim_score(results, 0.0, 1.0, kind="soft") == pytest.approx(-(0.1 + 0.8))
    assert claim_score(results) == 1 - 2 * 1  # hard: the argmax verdicts only
    assert claim_score([], kind="soft") == 0.0


def test_a_claims_spec_parses_the_selection_options_and_refuses_bad_ones():
    spec = ClaimJudgeSpec.parse("claims:self?score=soft&pairs=best-worst&margin=1.5&self=both&splitter=shapes+count")
    assert (spec.score, spec.pairs, spec.margin, spec.judge_self, spec.splitter) == (
        "soft", "best-worst", 1.5, "both", "shapes+count")
    plain = ClaimJudgeSpec.parse("claims:self")
    assert (plain.score, plain.pairs, plain.margin, plain.judge_self) == ("hard", "all", 0.0, "round")
    for bad, message in (("claims:self?score=fuzzy", "score='fuzzy': one of hard, soft"),
                         ("claims:self?pairs=top", "pairs='top': one of all, best-worst"),
                         ("claims:self?margin=-1", "margin='-1' must be >= 0"),
                         ("claims:self?margin=wide", "margin='wide' is not a number"),
                         ("claims:runs/judge?self=start", "self=start is for claims:self only")):
        with pytest.raises(ConfigError, match=message):
            ClaimJudgeSpec.parse(bad)


def test_the_count_splitter_adds_the_number_of_objects_described():
    answer = "a large red circle on the left, a blue square. two high beeps."
    claims = splitter_from("shapes+count")(None, answer)
    assert claims[:-1] == shapes_claims(None, answer)
    assert claims[-1] == Claim("there are two shapes", "how many shapes are there?", ("one", "two", "three"), "two")
    assert splitter_from("shapes+count")(None, "two high beeps.") == shapes_claims(None, "two high beeps.")


def test_best_worst_per_prompt_pairs_the_ith_best_with_the_ith_worst():
    scores = [2.0, -1.0, 4.0, 0.5, -3.0, 1.0]  # ranked: 2 (4.0), 0 (2.0), 5 (1.0), 3 (0.5), 1 (-1.0), 4 (-3.0)
    assert select_pairs(scores, "best-worst", per_prompt=2) == [(2, 4), (0, 1)]
    assert select_pairs(scores, "best-worst", per_prompt=5) == [(2, 4), (0, 1), (5, 3)]  # at most 6 // 2 pairs
    assert select_pairs(scores, "best-worst", per_prompt=1) == select_pairs(scores, "best-worst") == [(2, 4)]
    assert select_pairs(scores, "best-worst", margin=1.0, per_prompt=3) == [(2, 4), (0, 1)]  # 1.0 - 0.5 dropped
    assert select_pairs([1.0, 1.0, 1.0, 1.0], "best-worst", per_prompt=2) == [(0, 1)]  # all tied: one tie
    assert ClaimJudgeSpec.parse("claims:self?pairs=best-worst&per_prompt=2").per_prompt == 2
    for bad, message in (("claims:self?pairs=best-worst&per_prompt=0", "per_prompt='0': a whole number"),
                         ("claims:self?pairs=best-worst&per_prompt=1.5", "per_prompt='1.5': a whole number"),
                         ("claims:self?per_prompt=2", "per_prompt=2 is for pairs=best-worst only")):
        with pytest.raises(ConfigError, match=message):
            ClaimJudgeSpec.parse(bad)
