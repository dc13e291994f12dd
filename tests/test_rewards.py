"""Rule rewards for ShapesWorld, weighted composites with per-component logs, and spec errors."""

from __future__ import annotations

import json

import pytest
import torch

from modalign.data.records import Example
from modalign.data.shapes.world import Obj, Scene
from modalign.rl.rewards import RULES, CompositeSource, reward_source_from

SCENE = Scene([Obj("circle", "red", "large", "left")], beeps=2, pitch="high")
CAPTION = Example(id="c", messages=[{"role": "user", "content": "Describe."}],
                  meta={"task": "caption", "scene": SCENE.to_dict()})


def test_shapes_rules_by_hand():
    right = "a large red circle on the left. two high beeps."
    wrong_colour = "a large blue circle on the left. two high beeps."
    # 6 true facts (4 of the object + beeps + pitch); the blue caption states 6, one of them false
    assert RULES["shapes_accuracy"](CAPTION, right) == pytest.approx(1.0)
    assert RULES["shapes_accuracy"](CAPTION, wrong_colour) == pytest.approx(5 / 6)
    assert RULES["shapes_hallucination"](CAPTION, right) == 0.0
    assert RULES["shapes_hallucination"](CAPTION, wrong_colour) == pytest.approx(-1 / 6)
    assert RULES["shapes_gold"](CAPTION, wrong_colour) == pytest.approx((5 - 2) / 6)
    assert RULES["length_penalty"](CAPTION, "word " * 45) == pytest.approx(-0.5)
    assert RULES["format"](CAPTION, right) == 1.0 and RULES["format"](CAPTION, "a red circle. a red circle.") == 0.0


def test_composite_weights_and_components():
    source = reward_source_from("2*rule:shapes_accuracy + 0.5*rule:length_penalty")
    assert isinstance(source, CompositeSource)
    answers = ["a large red circle on the left. two high beeps.", "a large blue circle on the left." + " x" * 53]
    scores = source([CAPTION, CAPTION], answers, None, None)
    # second answer: accuracy 3/6 (object, size, position right; colour wrong; no sound), 56 words
    expected = [2 * 1.0 + 0.5 * 0.0, 2 * (3 / 6) + 0.5 * (-(len(answers[1].split()) - 30) / 30)]
    assert scores.tolist() == pytest.approx(expected)
    assert set(source.last_components) == {"rule:shapes_accuracy", "rule:length_penalty"}


def test_bad_specs_name_the_term():
    with pytest.raises(ValueError, match="no rule named 'nope'"):
        reward_source_from("rule:nope")
    with pytest.raises(ValueError, match="term '0.5\\*rule:nope'"):
        reward_source_from("1*rule:format + 0.5*rule:nope")
    with pytest.raises(ValueError, match="no reward given"):
        reward_source_from(" ")


def test_online_run_logs_each_component(tmp_path, sft_model):
    from modalign.recipes.online import OnlineConfig, run_online

    model, data = sft_model
    run_online(OnlineConfig(out=str(tmp_path / "run"), algorithm="rloo", policy=str(model), data=str(data),
                            reward_model="1*rule:shapes_hallucination + 0.2*rule:format", steps=1,
                            prompts_per_step=2, samples_per_prompt=2, max_new_tokens=8, eval_examples=1))
    line = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert "reward/rule:shapes_hallucination" in line and "reward/rule:format" in line
