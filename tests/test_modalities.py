"""Keeping one media kind (`modalities`), image-only ShapesWorld, and the built-in model's sizes from the sft config."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile
from PIL import Image
from typer.testing import CliRunner

from modalign.config import ConfigError
from modalign.data.dataset import read_examples, write_examples
from modalign.data.media import MediaError
from modalign.data.modalities import apply_modalities, keep_modalities, parse_modalities
from modalign.data.records import Example, MediaRef, assistant_turn

BOTH = Example(
    id="both",
    messages=({"role": "user", "content": [{"type": "image"}, {"type": "audio"}, {"type": "image"},
                                           {"type": "text", "text": "what do you see and hear?"}]},
              assistant_turn("a dog barking")),
    media=(MediaRef("image", "a.png"), MediaRef("audio", "s.wav"), MediaRef("image", "b.png")),
    meta={"task": "caption"},
)
AUDIO_ONLY = Example(id="sound", messages=({"role": "user", "content": [{"type": "audio"}]}, assistant_turn("rain")),
                     media=(MediaRef("audio", "r.wav"),))


def test_keep_modalities_drops_the_other_kind():
    image = keep_modalities(BOTH, ("image",))
    assert image.media == (MediaRef("image", "a.png"), MediaRef("image", "b.png"))  # order kept
    assert [p["type"] for p in image.messages[0]["content"]] == ["image", "image", "text"]
    assert image.answer == "a dog barking" and image.meta == {"task": "caption", "modalities": ["image"]}
    audio = keep_modalities(BOTH, ("audio",))
    assert audio.media == (MediaRef("audio", "s.wav"),)
    assert [p["type"] for p in audio.messages[0]["content"]] == ["audio", "text"]
    assert keep_modalities(BOTH, ("image", "audio")) is BOTH
    assert BOTH.media_of("audio")  # the input is not changed


def test_modalities_values_and_empty_examples_are_skipped(capsys):
    assert parse_modalities("") == ("image", "audio") and parse_modalities("audio, image") == ("audio", "image")
    with pytest.raises(ConfigError, match="modalities='video': 'video' is not a media kind"):
        parse_modalities("video")
    kept = apply_modalities([BOTH, AUDIO_ONLY], "image", where="data/train")
    assert [e.id for e in kept] == ["both"]  # "sound" has no image and no text left
    assert "skipped 1 of 2 examples of data/train" in capsys.readouterr().err
    assert apply_modalities([BOTH, AUDIO_ONLY], "") == [BOTH, AUDIO_ONLY]


def test_shapes_modalities_image_writes_image_only_data(tmp_path):
    from modalign.cli import app
    from modalign.data.shapes import score_shapes

    result = CliRunner().invoke(app, ["shapes", "--out", str(tmp_path / "d"), "--train", "6", "--test", "2",
                                      "--modalities", "image"])
    assert result.exit_code == 0, result.output
    examples = read_examples(tmp_path / "d", "train") + read_examples(tmp_path / "d", "test")
    for e in examples:  # no audio refs or parts, no sound in captions, answers or questions
        words = json.dumps([e.to_dict()["messages"], e.to_dict()["media"], e.meta["answer"], e.meta.get("references")])
        assert '"audio"' not in words and "beep" not in words, e.id
    assert not (tmp_path / "d" / "media" / "audio").exists()
    assert {e.meta["task"] for e in examples} <= {"caption", "vqa_image"}
    assert all(len(e.media) == 1 and e.media[0].kind == "image" for e in examples)
    captions = [e for e in examples if e.meta["task"] == "caption"]
    # a right image-only caption covers every true fact; adding beeps it cannot hear is hallucinating
    right = score_shapes(captions[:1], [captions[0].meta["answer"]])
    assert right["coverage"] == 1.0 and right["hallucination_rate"] == 0.0
    heard = score_shapes(captions[:1], [captions[0].meta["answer"] + " two high beeps."])
    assert heard["hallucination_rate"] > 0
    bad = CliRunner().invoke(app, ["shapes", "--out", str(tmp_path / "e"), "--modalities", "smell"])
    assert bad.exit_code == 2 and "'smell' is not a media kind" in bad.output


def tone(seconds: float, rate: int = 16000) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


def user_data(root, long_seconds: float = 0.0):
    """A user's dataset: odd-sized photos-like images, 1.5 s clips, and optionally one longer clip (record r7)."""
    (root / "media").mkdir(parents=True)
    rng = np.random.default_rng(0)
    examples = []
    for i in range(8):
        Image.fromarray(rng.integers(0, 255, (30 + i, 41, 3), dtype=np.uint8)).save(root / "media" / f"i{i}.png")
        seconds = long_seconds if (i == 7 and long_seconds) else 1.5
        soundfile.write(root / "media" / f"a{i}.wav", tone(seconds), 16000)
        examples.append(Example(
            id=f"r{i}", media=(MediaRef("image", f"media/i{i}.png"), MediaRef("audio", f"media/a{i}.wav")),
            messages=({"role": "user", "content": [{"type": "image"}, {"type": "audio"},
                                                   {"type": "text", "text": f"what is in clip {i}?"}]},
                      assistant_turn(f"a tone number {i}"))))
    write_examples(root, "train", examples)
    write_examples(root, "test", examples[:2])
    return root


def sft_config(tmp_path, data, **overrides):
    from modalign.recipes.sft import SFTConfig

    fields = dict(out=str(tmp_path / "run"), data=str(data), hidden_size=32, num_layers=1, num_heads=2,
                  encoder_layers=1, vocab_size=300, batch_size=4, max_steps=2, eval_examples=1, max_length=160,
                  max_new_tokens=4, image_size=32, audio_seconds=2.0)
    return SFTConfig(**{**fields, **overrides})


def test_builtin_sizes_from_the_sft_config(tmp_path):
    from modalign.models.policy import load_policy
    from modalign.recipes.sft import run_sft

    summary = run_sft(sft_config(tmp_path, user_data(tmp_path / "data")))
    policy = load_policy(summary["model"])
    config = policy.model.config
    assert (config.image_size, config.audio_seconds, config.num_patches) == (32, 2.0, 4)
    assert policy.processor.feature_extractor.num_samples == 32000  # the 1.5 s clips fit the 2 s window
    assert policy.processor.feature_extractor.max_seconds == 2.0  # what later stages check their data against
    assert policy.processor.image_processor.image_size == 32
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["steps"] == 2


def test_a_too_long_clip_names_the_record_before_training(tmp_path):
    from modalign.recipes.sft import run_sft

    data = user_data(tmp_path / "data", long_seconds=3.0)
    message = r"record 'r7': audio media/a7.wav is 3.00 s, the built-in model reads at most 2 s \(set audio_seconds"
    with pytest.raises(MediaError, match=message):
        run_sft(sft_config(tmp_path, data))
    # no step ran (the run folder itself is made first today; validating before it is the i17-errors helper's)
    assert not (tmp_path / "run" / "model").exists() and not (tmp_path / "run" / "metrics.jsonl").exists()
    # truncate: the clip's first 2 s are read; image only: the audio is not read at all
    cut = run_sft(sft_config(tmp_path, data, out=str(tmp_path / "cut"), audio_overflow="truncate"))
    assert cut["steps"] == 2
    from modalign.models.policy import load_policy

    extractor = load_policy(cut["model"]).processor.feature_extractor
    assert extractor.truncate and extractor.max_seconds is None  # later stages cut the clip too
    image_only = run_sft(sft_config(tmp_path, data, out=str(tmp_path / "img"), modalities="image"))
    assert image_only["steps"] == 2


def test_bad_size_settings_name_the_key(tmp_path):
    from modalign.recipes.sft import make_policy, tokenizer_corpus

    with pytest.raises(ConfigError, match="image_size=40: the built-in model needs a multiple of its 16-pixel"):
        make_policy(sft_config(tmp_path, "x", image_size=40), ["a b"])
    with pytest.raises(ConfigError, match="audio_overflow='drop': choose one of error, truncate"):
        make_policy(sft_config(tmp_path, "x", audio_overflow="drop"), ["a b"])
    data = user_data(tmp_path / "data")
    train = read_examples(data, "train")
    (tmp_path / "words.txt").write_text("zebra crossing\n\nquokka\n")
    assert tokenizer_corpus(sft_config(tmp_path, data, tokenizer_corpus=str(tmp_path / "words.txt")), data, train) \
        == ["zebra crossing", "quokka"]
    both = tokenizer_corpus(sft_config(tmp_path, data, tokenizer_corpus="train+test"), data, train)
    assert len(both) == len(tokenizer_corpus(sft_config(tmp_path, data), data, train)) + 2 * 2
    with pytest.raises(ConfigError, match="tokenizer_corpus='nope.txt': write train, train\\+test or the path"):
        tokenizer_corpus(sft_config(tmp_path, data, tokenizer_corpus="nope.txt"), data, train)


def test_recipes_read_only_the_kept_kind(sft_model, tmp_path, monkeypatch):
    """GRPO and eval with modalities=image on ShapesWorld never open an audio file."""
    from modalign.models.inputs import MediaStore
    from modalign.recipes.evaluate import EvalConfig, run_eval
    from modalign.recipes.online import OnlineConfig, run_online

    model, data = sft_model
    monkeypatch.setattr("modalign.data.media.load_audio", _no_audio)
    with pytest.raises(MediaError, match="audio opened"):  # the trap works: without modalities audio is read
        MediaStore(data).audio(read_examples(data, "train")[0])
    summary = run_online(OnlineConfig(out=str(tmp_path / "grpo"), policy=str(model), data=str(data),
                                      reward_model="rule:shapes_hallucination", steps=1, prompts_per_step=2,
                                      samples_per_prompt=2, max_new_tokens=6, eval_examples=2, modalities="image"))
    assert summary["steps"] == 1 and summary["eval"]["n_examples"] == 2
    summary = run_eval(EvalConfig(policy=str(model), data=str(data), out=str(tmp_path / "eval"), max_examples=3,
                                  max_new_tokens=6, modalities="image"))
    assert summary["metrics"]["n_examples"] == 3


def _no_audio(*args, **kwargs):
    raise MediaError("audio opened")
