"""Sample consistency as a second, gold-free source of evidence for a claims judge (`consistency=<w>`, issue 19)."""

from __future__ import annotations

import pytest

from modalign.config import ConfigError
from modalign.feedback.judges.claims import ClaimJudge, ClaimJudgeSpec, claim_judge
from modalign.feedback.judges.consistency import claim_consistency, group_by, pool
from modalign.feedback.judges.splitters import Claim, shapes_claims
from modalign.models.inputs import MediaStore

from test_claims_forms import put, shapes  # noqa: F401  (the module's fixture: a tiny ShapesWorld and policy)

# one prompt, four answers, claims as (fact, option): L = "what shape is on the left?", C = "how many shapes?"
ANSWERS = [[("L", "circle"), ("C", "two")],
           [("L", "square"), ("C", "two")],
           [("C", "two")],
           [("L", "circle")]]


def flat(rows: list[list[float]]) -> list[float]:
    return [value for row in rows for value in row]


def test_consistency_by_hand_silence_neutral():
    (rows,) = claim_consistency([ANSWERS])
    # answer 0, L=circle: answer 1 contradicts, 2 is silent, 3 agrees: (1 + 0.5) / (1 + 1 + 1) = 0.5
    # answer 0, C=two: answers 1 and 2 agree, 3 is silent: (2 + 0.5) / (2 + 0 + 1) = 0.8333
    # answer 1, L=square: answers 0 and 3 contradict: (0 + 0.5) / (0 + 2 + 1) = 0.1667
    # answer 3, L=circle: 0 agrees, 1 contradicts: 1.5 / 3 = 0.5
    assert [len(row) for row in rows] == [2, 2, 1, 1]
    assert flat(rows) == pytest.approx([0.5, 2.5 / 3, 0.5 / 3, 2.5 / 3, 2.5 / 3, 0.5])


def test_consistency_by_hand_silence_against():
    (rows,) = claim_consistency([ANSWERS], silence="against")
    # every claim over the 3 other answers: (agree + 0.5) / (3 + 1); silent answers count against
    assert flat(rows) == pytest.approx([1.5 / 4, 2.5 / 4, 0.5 / 4, 2.5 / 4, 2.5 / 4, 1.5 / 4])


def test_consistency_counts_duplicates_and_only_the_same_prompt():
    same = [("L", "circle")]
    (first, second) = claim_consistency([[same, same, same], [same]])
    assert flat(first) == pytest.approx([2.5 / 3] * 3)  # two other answers agree, duplicates counted
    assert second == [[0.5]]  # a prompt's only answer: no evidence, the prior
    # an answer stating two options for one fact (two circles of different sizes) agrees with either
    assert claim_consistency([[[("S", "big"), ("S", "small")], [("S", "small")]]])[0][1] == [1.5 / 2]


def test_pool_by_hand():
    assert pool(0.2, 0.8, 0.25) == pytest.approx(0.75 * 0.2 + 0.25 * 0.8)
    assert pool(0.2, 0.8, 1.0) == pytest.approx(0.8) and pool(0.2, 0.8, 0.0) == pytest.approx(0.2)
    # log pool: 0.2^0.5 0.8^0.5 = 0.4 for yes and for no: 0.5; w = 0.25: 0.2^0.75 0.8^0.25 = 0.2828 vs
    # 0.8^0.75 0.2^0.25 = 0.5657 -> 0.3333
    assert pool(0.2, 0.8, 0.5, "log") == pytest.approx(0.5)
    assert pool(0.2, 0.8, 0.25, "log") == pytest.approx(1 / 3)
    assert 0 < pool(0.0, 0.9, 0.5, "log") < 0.01  # a judge's hard 0 stays finite


def test_group_by_keeps_first_seen_order():
    assert group_by(["b", "a", "b", "c", "a"]) == [[0, 2], [1, 4], [3]]


def test_consistency_pools_each_claims_p_with_the_other_answers(shapes):
    root, example, policy = shapes
    answers = ["a circle on the left.", "a circle on the left.", "a square on the left."]
    circle, square = shapes_claims(example, answers[0])[0], shapes_claims(example, answers[2])[0]
    judge = ClaimJudge(policy, MediaStore(root), "shapes", "j", score="soft", consistency=0.5)
    put(judge, example, circle, {"circle": 0.4, "square": 0.5})  # the judge answers "square": refuted, p 0.4
    put(judge, example, square, {"square": 0.5, "circle": 0.4})  # the same question: the same probabilities
    first, _, third = judge.verify([example] * 3, answers)
    # circle: 1 other agrees, 1 contradicts: cons (1 + 0.5) / (2 + 1) = 0.5; p' = 0.5 * 0.4 + 0.5 * 0.5 = 0.45
    (result,) = first.results
    assert (result.judged, result.consistency, result.probability) == pytest.approx((0.4, 0.5, 0.45), abs=1e-6)
    assert not result.verified and result.answer == "square"  # p' < 0.5: refuted, the judge's own answer
    # square: both others contradict: cons 0.5 / 3; p' = 0.5 * 0.5 + 0.5 / 6 = 0.3333: refuted although the judge
    # itself verified it (answer "square", p 0.5); soft score 0.3333 - 2 * 0.6667 = -1
    (result,) = third.results
    assert result.probability == pytest.approx(1 / 3, abs=1e-6) and result.answer == "circle"
    assert third.score == pytest.approx(-1.0, abs=1e-5)
    assert first.to_dict()["claims"][0]["consistency"] == 0.5
    assert judge.provenance([first])["consistency"] == 0.5
    plain = ClaimJudge(policy, MediaStore(root), "shapes", "j", score="soft", cache=judge.cache)
    (untouched, _, _) = plain.verify([example] * 3, answers)
    assert untouched.results[0].consistency is None and untouched.results[0].answer == "square"
    assert untouched.score == pytest.approx(0.4 - 2 * 0.6, abs=1e-6)
    assert "consistency" not in plain.provenance([untouched]) and "consistency" not in untouched.to_dict()["claims"][0]


def test_consistency_uses_only_answers_to_the_same_example(shapes):
    root, example, policy = shapes
    other = type(example)(id=example.id + "-other", messages=example.messages, media=example.media, meta=example.meta)
    answer = "a circle on the left."
    circle = shapes_claims(example, answer)[0]
    judge = ClaimJudge(policy, MediaStore(root), "shapes", "j", score="soft", consistency=1.0)
    put(judge, example, circle, {"circle": 0.9})
    put(judge, other, circle, {"circle": 0.9})
    alone, elsewhere = judge.verify([example, other], [answer, answer])
    assert alone.results[0].consistency == 0.5 == elsewhere.results[0].consistency  # no other answer of its own


def test_the_consistency_options_are_parsed_and_checked():
    parsed = ClaimJudgeSpec.parse("claims:self?consistency=0.25&pool=log&silence=against")
    assert (parsed.consistency, parsed.pool, parsed.silence) == (0.25, "log", "against")
    plain = ClaimJudgeSpec.parse("claims:self")
    assert (plain.consistency, plain.pool, plain.silence) == (0.0, "linear", "neutral")
    with pytest.raises(ConfigError, match="consistency='1.5': a weight from 0 to 1"):
        ClaimJudgeSpec.parse("claims:self?consistency=1.5")
    with pytest.raises(ConfigError, match="consistency='lots' is not a number"):
        ClaimJudgeSpec.parse("claims:self?consistency=lots")
    with pytest.raises(ConfigError, match="pool='max': one of linear, log"):
        ClaimJudgeSpec.parse("claims:self?pool=max")
    with pytest.raises(ConfigError, match="silence='loud': one of neutral, against"):
        ClaimJudgeSpec.parse("claims:self?silence=loud")


def test_free_text_claims_agree_by_equal_text(shapes):
    root, example, policy = shapes
    answers = ["a dog, a red ball", "a dog, a cat", "a red ball"]  # the `sentences` splitter: cut at commas
    judge = ClaimJudge(policy, MediaStore(root), "sentences", "j", score="soft", consistency=0.5)
    for text in ("a dog", "a red ball", "a cat"):
        put(judge, example, Claim(text), {"yes": 0.6})  # yes / no questions of the template
    first, second, _ = judge.verify([example] * 3, answers)
    # "a dog" in answer 0: answer 1 states it, answer 2 is silent: (1 + 0.5) / (1 + 1) = 0.75; p' = 0.3 + 0.375
    # "a red ball": answer 2 agrees: 0.75 too; "a cat" in answer 1: nobody else: 0.5, p' = 0.3 + 0.25 = 0.55
    assert [r.consistency for r in first.results] == [0.75, 0.75]
    assert [r.consistency for r in second.results] == [0.75, 0.5]
    assert second.results[1].probability == pytest.approx(0.55, abs=1e-6)
    against = ClaimJudge(policy, MediaStore(root), "sentences", "j", consistency=0.5, silence="against",
                         cache=judge.cache)
    # silence counts against: "a cat" (0 + 0.5) / (2 + 1) = 0.1667, p' = 0.3 + 0.0833 < 0.5: refuted
    assert not against.verify([example] * 3, answers)[1].results[1].verified


def test_claim_judge_passes_the_consistency_options_on(shapes):
    root, example, policy = shapes
    judge = claim_judge("claims:self?splitter=shapes&consistency=0.25&pool=log", [example], MediaStore(root), policy, "p")
    assert (judge.consistency, judge.pool, judge.silence) == (0.25, "log", "neutral")
