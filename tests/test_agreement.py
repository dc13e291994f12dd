"""Agreement and aggregation against published and hand-computed values."""

from __future__ import annotations

import pytest

from modalign.feedback.agreement import (
    agreement_with_majority, bradley_terry_scores, cohen_kappa, krippendorff_alpha, majority_vote,
)


def test_cohen_kappa_textbook_table():
    # 50 items: both yes 20, both no 15, A yes/B no 5, A no/B yes 10.
    # p_o = 35/50 = 0.7; p_e = (25*30 + 25*20) / 2500 = 0.5; kappa = 0.4
    a = ["y"] * 20 + ["n"] * 15 + ["y"] * 5 + ["n"] * 10
    b = ["y"] * 20 + ["n"] * 15 + ["n"] * 5 + ["y"] * 10
    assert cohen_kappa(a, b) == pytest.approx(0.4)
    assert cohen_kappa(a, a) == 1.0


def test_krippendorff_alpha_published_example():
    # Krippendorff (2011), nominal example: 4 coders, 12 units, missing values; alpha = 0.743.
    coders = [
        [1, 2, 3, 3, 2, 1, 4, 1, 2, None, None, None],
        [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, None, 3],
        [None, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, None],
        [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, None],
    ]
    units = list(zip(*coders))
    assert krippendorff_alpha(units) == pytest.approx(0.743, abs=1e-3)
    assert krippendorff_alpha([[1, 1], [2, 2], [1, 1]]) == 1.0


def test_majority_and_bradley_terry():
    assert majority_vote(["a", "b", "a"]) == "a"
    assert majority_vote(["a", "b"]) == "tie"
    scores = bradley_terry_scores([("x", "y")] * 3 + [("y", "z")] * 3 + [("x", "z")] * 2 + [("y", "x")])
    assert scores["x"] > scores["y"] > scores["z"]


def test_agreement_with_majority():
    per_item = {1: {"ann": "a", "bob": "a", "cy": "b", "dee": "a"}, 2: {"ann": "b", "bob": "b", "cy": "b", "dee": "b"}}
    assert agreement_with_majority(per_item) == {"ann": 1.0, "bob": 1.0, "cy": 0.5, "dee": 1.0}


def test_simulated_raters_prefer_the_faithful_caption_and_disagree_realistically():
    import random

    from modalign.data.records import Example, assistant_turn, user_turn
    from modalign.data.records import MediaRef
    from modalign.data.shapes import Obj, Scene, caption
    from modalign.feedback.simulated import SimulatedAnnotator, default_panel, gold_utility

    scene = Scene((Obj("circle", "red", "large", "left"),), beeps=2, pitch="high")
    example = Example("e", (user_turn("describe the scene.", 1, 1), assistant_turn("x")),
                      media=(MediaRef("image", "i.png"), MediaRef("audio", "a.wav")),
                      meta={"world": "shapes", "task": "caption", "scene": scene.to_dict()})
    good, bad = caption(scene), "a large red circle on the left, a blue square on the right. two high beeps."
    assert gold_utility(example, good) == 1.0 and gold_utility(example, bad) < 0.5
    rng = random.Random(0)
    careful = [SimulatedAnnotator("c", temperature=0.05).prefers_a(example, good, bad, rng) for _ in range(200)]
    noisy = [SimulatedAnnotator("n", temperature=2.0).prefers_a(example, good, bad, rng) for _ in range(200)]
    assert careful.count("a") == 200
    assert 100 < noisy.count("a") < 190
    assert SimulatedAnnotator("t").prefers_a(example, good, good, rng) == "tie"
    assert len({a.name for a in default_panel()}) == 3


def test_simulated_ranking_follows_gold_utility():
    import random

    from modalign.data.records import Example
    from modalign.data.shapes.world import Obj, Scene
    from modalign.feedback.simulated import SimulatedAnnotator

    scene = Scene([Obj("circle", "red", "large", "left")], beeps=2, pitch="high")
    example = Example(id="s", messages=[{"role": "user", "content": "Describe."}],
                      meta={"task": "caption", "scene": scene.to_dict()})
    texts = ["a large blue square on the right. three low beeps.",  # all wrong
             "a large red circle on the left. two high beeps.",  # all right
             "a red circle. two beeps."]  # right but partial
    careful = SimulatedAnnotator("careful", temperature=0.01)
    assert careful.rank(example, texts, random.Random(0)) == [1, 2, 0]
    noisy = SimulatedAnnotator("noisy", temperature=100.0)
    firsts = {noisy.rank(example, texts, random.Random(seed))[0] for seed in range(30)}
    assert firsts == {0, 1, 2}  # a very noisy rater ranks almost at random
