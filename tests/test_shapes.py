"""ShapesWorld: determinism, media that carry the facts, and gold scorers on hand-counted cases."""

from __future__ import annotations

import random

import numpy as np
import pytest

from modalign.data.dataset import read_examples
from modalign.data.records import assistant_turn, user_turn, Example
from modalign.data.shapes import (
    Obj, Scene, build_shapes_dataset, caption, caption_facts, noisy_caption, normalize_answer, parse_caption,
    sample_scene, score_shapes,
)
from modalign.data.shapes.audio import synth_audio
from modalign.data.shapes.render import RGB, render_image

SCENE = Scene((Obj("circle", "red", "large", "left"),), beeps=2, pitch="high")


def test_generation_is_deterministic(tmp_path):
    a = build_shapes_dataset(tmp_path / "a", n_train=5, n_test=2, seed=3, caption_noise=0.5)
    b = build_shapes_dataset(tmp_path / "b", n_train=5, n_test=2, seed=3, caption_noise=0.5)
    for split in ("train", "test"):
        assert (a / f"{split}.jsonl").read_bytes() == (b / f"{split}.jsonl").read_bytes()
    assert (a / "media/img/train-00000.png").read_bytes() == (b / "media/img/train-00000.png").read_bytes()


def test_image_shows_the_object_in_its_column():
    image = np.asarray(render_image(SCENE, size=48))
    assert image.shape == (48, 48, 3)
    left = image[:, :16].reshape(-1, 3)
    assert any((pixel == RGB["red"]).all() for pixel in left)
    assert not any((pixel == RGB["red"]).all() for pixel in image[:, 16:].reshape(-1, 3))


@pytest.mark.parametrize("beeps,pitch", [(1, "low"), (2, "high"), (3, "low")])
def test_audio_carries_beep_count_and_pitch(beeps, pitch):
    wave = synth_audio(Scene(SCENE.objects, beeps, pitch), sample_rate=16000, rng=random.Random(1))
    loud = np.convolve(np.abs(wave), np.ones(160) / 160, mode="same") > 0.1
    bursts = int(np.sum(np.diff(loud.astype(int)) == 1))
    assert bursts == beeps
    spectrum = np.abs(np.fft.rfft(wave))
    peak = np.fft.rfftfreq(wave.shape[0], 1 / 16000)[spectrum.argmax()]
    assert (peak < 800) == (pitch == "low")


def test_clean_caption_has_no_hallucination_and_full_coverage():
    rng = random.Random(0)
    for _ in range(50):
        scene = sample_scene(rng)
        facts = caption_facts(scene, parse_caption(caption(scene)))
        assert facts["hallucinated"] == 0
        assert facts["covered"] == facts["true_facts"]


def test_noisy_caption_has_exactly_one_hallucination():
    rng = random.Random(0)
    for _ in range(100):
        scene = sample_scene(rng)
        text, kind = noisy_caption(scene, rng)
        facts = caption_facts(scene, parse_caption(text))
        expected = 4 if kind == "extra_object" else 1  # an invented object: existence, colour, size, position
        assert facts["hallucinated"] == expected, (text, kind)


def test_hallucination_counted_by_hand():
    # Scene: large red circle on the left; two high beeps.
    # Mentions: circle (ok), red (ok), left (ok); blue square on the right: 3 hallucinated
    # (existence, colour, position); "two" (ok), "low" (wrong). 8 mentions, 4 hallucinated.
    answer = "a red circle on the left, a blue square on the right. two low beeps."
    facts = caption_facts(SCENE, parse_caption(answer))
    assert facts == {"mentions": 8, "hallucinated": 4, "true_facts": 6, "covered": 4}
    example = Example("s-caption", (user_turn("describe the scene.", 1, 1), assistant_turn("x")),
                      media=_media(), meta={"world": "shapes", "task": "caption", "scene": SCENE.to_dict()})
    metrics = score_shapes([example], [answer])
    assert metrics["hallucination_rate"] == pytest.approx(4 / 8)
    assert metrics["coverage"] == pytest.approx(4 / 6)
    assert metrics["caption_hallucinated_share"] == 1.0
    assert "vqa_accuracy" not in metrics  # no questions: the metric is left out, never NaN


def test_vqa_normalisation_and_accuracy():
    assert normalize_answer(" Red. ") == "red" and normalize_answer("2") == "two"
    examples = [Example(f"q{i}", (user_turn("q", 1, 1), assistant_turn(a)), media=_media(),
                        meta={"world": "shapes", "task": task, "answer": a, "scene": SCENE.to_dict()})
                for i, (task, a) in enumerate([("vqa_image", "red"), ("vqa_audio", "two"), ("vqa_audio", "high")])]
    metrics = score_shapes(examples, ["Red.", "2", "low"])
    assert metrics["vqa_accuracy"] == pytest.approx(2 / 3)
    assert metrics["audio_accuracy"] == pytest.approx(1 / 2)
    assert metrics["image_vqa_accuracy"] == 1.0


def test_dataset_records_and_noise_only_in_train(tmp_path):
    root = build_shapes_dataset(tmp_path, n_train=200, n_test=50, seed=0, caption_noise=0.5)
    train, test = read_examples(root, "train"), read_examples(root, "test")
    assert len(train) == 200 * 5 and len(test) == 50 * 5
    noisy = [e for e in train if e.meta["task"] == "caption" and e.meta["noisy"]]
    assert 0.4 < len(noisy) / 200 < 0.6
    assert all(e.answer != e.meta["answer"] for e in noisy)
    assert not any(e.meta["noisy"] for e in test)
    assert {e.meta["scene_id"] for e in test}.isdisjoint({e.meta["scene_id"] for e in train})
    train_scenes = {str(e.meta["scene"]) for e in train}
    assert not any(str(e.meta["scene"]) in train_scenes for e in test)
    audio_share = sum(e.meta["task"] == "vqa_audio" for e in train) / sum(e.meta["task"] != "caption" for e in train)
    assert 0.2 < audio_share < 0.4


def _media():
    from modalign.data.records import MediaRef

    return (MediaRef("image", "x.png"), MediaRef("audio", "x.wav"))
