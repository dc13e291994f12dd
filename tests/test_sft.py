"""SFT recipe smoke tests on tiny models: it trains, saves, resumes exactly, and uses the audio."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from modalign.data.dataset import read_examples
from modalign.data.shapes import build_shapes_dataset
from modalign.eval.generation import generate_answers
from modalign.eval.metrics import score_completions
from modalign.models.inputs import MediaStore
from modalign.models.policy import load_policy
from modalign.recipes.sft import SFTConfig, run_sft
from modalign.runs import RunDir

TINY = dict(hidden_size=32, num_layers=1, num_heads=2, encoder_layers=1, vocab_size=300, batch_size=8,
            eval_examples=10, max_new_tokens=12, log_every=1, warmup_steps=5)


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory):
    return build_shapes_dataset(tmp_path_factory.mktemp("shapes"), n_train=40, n_test=4, seed=0, caption_noise=0.3)


def losses(run_dir):
    return [json.loads(line)["train/loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_sft_writes_a_complete_run(tmp_path, shapes_root):
    summary = run_sft(SFTConfig(out=str(tmp_path / "run"), data=str(shapes_root), max_steps=6, **TINY))
    run = tmp_path / "run"
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "samples/eval.jsonl", "model/config.json"):
        assert (run / name).exists(), name
    assert summary["steps"] == 6 and len(losses(run)) == 6
    assert {"vqa_accuracy", "hallucination_rate", "bleu", "rouge_l"} <= set(summary["eval"])
    assert load_policy(run / "model").model.config.model_type == "tinyvlm"

    from modalign.recipes.evaluate import EvalConfig, run_eval

    result = run_eval(EvalConfig(policy=str(run / "model"), data=str(shapes_root), out=str(tmp_path / "eval"),
                                 max_examples=5, temperature=0.0))
    saved = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert saved["metrics"] == result["metrics"] and saved["metrics"]["n_examples"] == 5.0
    assert len((tmp_path / "eval" / "samples.jsonl").read_text().splitlines()) == 5


@pytest.mark.parametrize("fusion", ["concat", "cross_attention", "weighted_sum"])
def test_each_fusion_trains_and_the_loss_falls(tmp_path, shapes_root, fusion):
    cfg = SFTConfig(out=str(tmp_path / fusion), data=str(shapes_root), fusion=fusion, max_steps=40, lr=3e-3,
                    eval_examples=1, **{k: v for k, v in TINY.items() if k != "eval_examples"})
    run_sft(cfg)
    curve = losses(tmp_path / fusion)
    assert np.mean(curve[-5:]) < 0.75 * np.mean(curve[:5]), curve


def test_resume_after_interruption_matches_uninterrupted_run(tmp_path, shapes_root, monkeypatch):
    common = dict(data=str(shapes_root), max_steps=10, checkpoint_every=4, **TINY)
    run_sft(SFTConfig(out=str(tmp_path / "straight"), **common))

    original = RunDir.save_checkpoint

    def save_then_die(self, state, step, keep=2):
        path = original(self, state, step, keep)
        if step == 4:
            raise KeyboardInterrupt("simulated kill after the step-4 checkpoint")
        return path

    monkeypatch.setattr(RunDir, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        run_sft(SFTConfig(out=str(tmp_path / "killed"), **common))
    monkeypatch.setattr(RunDir, "save_checkpoint", original)
    run_sft(SFTConfig(out=str(tmp_path / "killed"), **common), resume=str(tmp_path / "killed"))

    straight = load_policy(tmp_path / "straight" / "model").model.state_dict()
    resumed = load_policy(tmp_path / "killed" / "model").model.state_dict()
    for key in straight:
        assert torch.allclose(straight[key], resumed[key], atol=1e-6), key
    assert losses(tmp_path / "killed")[-6:] == pytest.approx(losses(tmp_path / "straight")[-6:], abs=1e-6)


class SilentAudio(MediaStore):
    """The same media, with every audio clip replaced by silence."""

    def audio(self, example):
        return [np.zeros_like(clip) for clip in super().audio(example)]


@pytest.mark.slow
def test_audio_really_matters(media_sft):
    model_folder, root = media_sft  # 400 SFT steps on 300 noise-free scenes, shared with test_reward_model
    policy = load_policy(model_folder)
    audio_questions = [e for e in read_examples(root, "test") if e.meta["task"] == "vqa_audio"]
    assert len(audio_questions) >= 20

    def accuracy(media):
        answers = generate_answers(policy, media, audio_questions, temperature=0.0, max_new_tokens=4)
        return score_completions(audio_questions, answers)["audio_accuracy"]

    with_audio, silenced = accuracy(MediaStore(root)), accuracy(SilentAudio(root))
    assert with_audio >= 0.8, with_audio
    assert with_audio >= silenced + 0.3, (with_audio, silenced)
