"""Asking a claim in more than one form (`forms=mean`, issue 19) and the start judge loaded once."""

from __future__ import annotations

import math

import pytest

from modalign.config import ConfigError
from modalign.data.dataset import read_examples
from modalign.data.shapes.world import COLOURS, SHAPES
from modalign.feedback.judges.claims import ClaimJudge, ClaimJudgeSpec, claim_judge
from modalign.feedback.judges.splitters import Claim, shapes_claims
from modalign.models.inputs import MediaStore
from modalign.models.policy import create_tinyvlm

from test_claims_judge import CORPUS as JUDGE_CORPUS
from test_claims_judge import TINY

CORPUS = JUDGE_CORPUS + ["what colour is the circle?"] * 20  # the words of the colour form too


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """A tiny ShapesWorld (one caption example) and an untrained built-in policy."""
    from modalign.data.shapes import build_shapes_dataset

    root = build_shapes_dataset(tmp_path_factory.mktemp("forms") / "data", n_train=2, n_test=1, seed=0,
                                questions_per_scene=1)
    example = next(e for e in read_examples(root, "train") if e.meta["task"] == "caption")
    return root, example, create_tinyvlm(CORPUS, vocab_size=200, seed=0, **TINY)


def test_the_shapes_splitter_gives_the_grammars_other_forms_of_a_claim():
    on_left, red_left, square = shapes_claims(None, "a red circle on the left, a blue square.")
    red_circle = Claim("there is a red circle", "is there a red circle?")
    assert on_left == Claim("a circle on the left", "what shape is on the left?", SHAPES + ("nothing",), "circle")
    assert on_left.forms == (red_circle,)
    assert red_left.forms == (red_circle,)  # its colour too
    assert square.forms == (Claim("the square is blue", "what colour is the square?", COLOURS, "blue"),)
    assert shapes_claims(None, "a circle on the left.")[0].forms == ()  # no colour: no yes/no form


def put(judge: ClaimJudge, example, claim: Claim, probabilities: dict[str, float]) -> None:
    """The judge's log-likelihoods of a claim's options, in its cache (unlisted options share what is left)."""
    rest = (1 - sum(probabilities.values())) / (len(claim.options) - len(probabilities))
    judge.cache.put({judge._key(example, claim): [math.log(probabilities.get(o, rest)) for o in claim.options]})


def test_forms_mean_averages_the_expected_options_probability_over_the_forms(shapes):
    root, example, policy = shapes
    answer = "a red circle on the left."
    on_left, colour_left = shapes_claims(example, answer)
    red_circle = on_left.forms[0]
    mean = ClaimJudge(policy, MediaStore(root), "shapes", "j", score="soft", forms="mean")
    put(mean, example, on_left, {"circle": 0.7, "nothing": 0.2})  # square, triangle: 0.05 each
    put(mean, example, colour_left, {"red": 0.3, "blue": 0.4})
    put(mean, example, red_circle, {"yes": 0.1})
    (verification,) = mean.verify([example], [answer])
    assert mean.cache.asked == 3  # nothing asked: every form was in the cache
    # circle on the left: (0.7 + 0.1) / 2 = 0.4 < 0.5, refuted: the first form's most likely other option
    # the left shape is red: (0.3 + 0.1) / 2 = 0.2, refuted: blue
    assert [(r.answer, round(r.probability, 4)) for r in verification.results] == [("nothing", 0.4), ("blue", 0.2)]
    assert verification.score == pytest.approx(0.4 + 0.2 - 2 * (0.6 + 0.8))
    put(mean, example, red_circle, {"yes": 0.9})  # now the yes/no form agrees: (0.7 + 0.9) / 2, (0.3 + 0.9) / 2
    (verification,) = mean.verify([example], [answer])
    assert [(r.answer, round(r.probability, 4)) for r in verification.results] == [("circle", 0.8), ("red", 0.6)]
    assert verification.verified == 2 and mean.provenance([verification])["forms"] == "mean"
    first = ClaimJudge(policy, MediaStore(root), "shapes", "j", cache=mean.cache, score="soft")
    (verification,) = first.verify([example], [answer])  # forms=first: each claim's own question only
    assert [(r.answer, round(r.probability, 4)) for r in verification.results] == [("circle", 0.7), ("blue", 0.3)]


def test_forms_mean_asks_each_form_once(shapes):
    root, example, policy = shapes
    answers = ["a red circle on the left.", "a red circle on the left, a red circle on the right."]
    mean = ClaimJudge(policy, MediaStore(root), "shapes", "j", forms="mean")
    mean.verify([example, example], answers)
    # shape and colour on the left and on the right (4 questions) + "is there a red circle?" once
    assert mean.cache.asked == 5
    first = ClaimJudge(policy, MediaStore(root), "shapes", "j2")
    first.verify([example, example], answers)
    assert first.cache.asked == 4


def test_a_claims_spec_parses_forms_and_refuses_a_bad_one():
    assert ClaimJudgeSpec.parse("claims:self?forms=mean").forms == "mean"
    assert ClaimJudgeSpec.parse("claims:self").forms == "first"
    with pytest.raises(ConfigError, match="forms='all': one of first, mean"):
        ClaimJudgeSpec.parse("claims:self?forms=all")


def test_the_start_judge_is_loaded_once_for_every_round(shapes, sft_model):
    root, example, policy = shapes
    start = str(sft_model[0])
    judges = [claim_judge("claims:self?self=start", [example], MediaStore(root), policy, f"round-{r}", start=start)
              for r in (2, 3)]
    assert judges[0].policy is judges[1].policy and judges[0].policy is not policy


def test_a_model_saved_again_into_the_start_folder_is_loaded_again(shapes, tmp_path):
    root, example, policy = shapes
    folder = tmp_path / "start"
    policy.save(folder)
    first = claim_judge("claims:self?self=start", [example], MediaStore(root), policy, "r1", start=str(folder))
    policy.save(folder)  # the same folder written again (a rerun): the cached judge would be stale
    again = claim_judge("claims:self?self=start", [example], MediaStore(root), policy, "r2", start=str(folder))
    assert again.policy is not first.policy
