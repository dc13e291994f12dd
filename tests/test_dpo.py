"""DPO / IPO / cDPO from the feedback store: trains, logs, changes the policy, resumes exactly."""

from __future__ import annotations

import json

import pytest
import torch

from modalign.data.dataset import read_examples
from modalign.models.inputs import MediaStore
from modalign.models.policy import load_policy
from modalign.recipes.demo import collect_feedback
from modalign.recipes.dpo import DPOConfig, run_dpo


@pytest.fixture(scope="module")
def store(tmp_path_factory, sft_model):
    model, data = sft_model
    path = tmp_path_factory.mktemp("dpo") / "feedback.db"
    captions = [e for e in read_examples(data, "train") if e.meta["task"] == "caption"][:12]
    stats = collect_feedback(load_policy(model), MediaStore(data), captions, data, path, seed=0)
    assert stats["rankings"] > 0
    return path


def dpo_config(out, sft_model, store, **overrides):
    model, data = sft_model
    fields = dict(out=str(out), policy=str(model), store=str(store), data=str(data), batch_size=4, epochs=1.0,
                  lr=1e-3, eval_examples=2, max_new_tokens=10, checkpoint_every=2)
    return DPOConfig(**{**fields, **overrides})


@pytest.mark.parametrize("loss,extra", [("dpo", {}), ("dpo", {"label_smoothing": 0.1}), ("ipo", {}), ("hinge", {})])
def test_preference_losses_train_from_the_store(tmp_path, sft_model, store, loss, extra):
    summary = run_dpo(dpo_config(tmp_path / "run", sft_model, store, loss=loss, **extra))
    lines = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == summary["steps"] >= 2
    assert lines[0][f"{loss}/reward_margin"] == pytest.approx(0.0, abs=1e-5)  # step 1 starts at the reference
    assert "hallucination_rate" in summary["eval"]
    before = load_policy(sft_model[0]).model.state_dict()
    after = load_policy(tmp_path / "run" / "model").model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_dpo_raises_the_chosen_margin(tmp_path, sft_model, store):
    run_dpo(dpo_config(tmp_path / "run", sft_model, store, epochs=4.0))
    lines = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert sum(l["dpo/reward_margin"] for l in lines[-3:]) / 3 > 0.0


def test_dpo_resume_matches_uninterrupted(tmp_path, sft_model, store, monkeypatch):
    from modalign.runs import RunDir

    run_dpo(dpo_config(tmp_path / "straight", sft_model, store, epochs=2.0))
    original = RunDir.save_checkpoint

    def save_then_die(self, state, step, keep=2):
        original(self, state, step, keep)
        raise KeyboardInterrupt("killed after the first checkpoint")

    monkeypatch.setattr(RunDir, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        run_dpo(dpo_config(tmp_path / "killed", sft_model, store, epochs=2.0))
    monkeypatch.setattr(RunDir, "save_checkpoint", original)
    run_dpo(dpo_config(tmp_path / "killed", sft_model, store, epochs=2.0), resume=str(tmp_path / "killed"))
    straight = load_policy(tmp_path / "straight" / "model").model.state_dict()
    resumed = load_policy(tmp_path / "killed" / "model").model.state_dict()
    for key in straight:
        assert torch.allclose(straight[key], resumed[key], atol=1e-6), key


def test_rpo_adds_the_chosen_answers_nll_per_token(tmp_path, sft_model, store, monkeypatch):
    import modalign.rl.objectives as objectives

    seen = []
    original = objectives.rpo_nll
    monkeypatch.setattr(objectives, "rpo_nll", lambda chosen, tokens, alpha: seen.append((tokens, alpha)) or
                        original(chosen, tokens, alpha))
    summary = run_dpo(dpo_config(tmp_path / "run", sft_model, store, rpo_alpha=0.5, checkpoint_every=0))
    assert len(seen) == summary["steps"] >= 2 and all(alpha == 0.5 for _, alpha in seen)
    assert all(len(tokens) == 4 and bool((tokens >= 1).all()) for tokens, _ in seen)  # a batch of 4
    seen.clear()
    run_dpo(dpo_config(tmp_path / "plain", sft_model, store, checkpoint_every=0))
    assert not seen  # rpo_alpha 0: plain DPO, the term is never computed


def test_answer_tokens_are_what_the_log_probs_sum_over():
    from types import SimpleNamespace

    from modalign.recipes.dpo import answer_tokens

    pair = lambda length, prompt: SimpleNamespace(chosen=SimpleNamespace(input_ids=torch.arange(length),
                                                                         prompt_length=prompt))
    assert answer_tokens([pair(7, 4), pair(10, 9)], torch.device("cpu")).tolist() == [3.0, 1.0]


def test_a_negative_rpo_alpha_is_a_clear_error(tmp_path, sft_model, store):
    from modalign.config import ConfigError

    with pytest.raises(ConfigError, match="rpo_alpha=-1.0"):
        run_dpo(dpo_config(tmp_path / "run", sft_model, store, rpo_alpha=-1.0))
    assert not (tmp_path / "run").exists()


def test_unknown_loss_is_a_clear_error(tmp_path, sft_model, store):
    with pytest.raises(ValueError, match="unknown preference loss 'kto'"):
        run_dpo(dpo_config(tmp_path / "run", sft_model, store, loss="kto"))


def test_dpo_from_a_trl_preference_file(tmp_path, sft_model, store):
    from modalign.feedback.store import FeedbackStore

    rows = FeedbackStore.sqlite(store).export_trl(tmp_path / "pairs.jsonl")
    from_store = run_dpo(dpo_config(tmp_path / "store_run", sft_model, store))
    from_file = run_dpo(dpo_config(tmp_path / "file_run", sft_model, tmp_path / "pairs.jsonl"))
    assert from_file["steps"] == from_store["steps"] >= 2
    imported = FeedbackStore.sqlite(tmp_path / "file_run" / "feedback.db")
    assert imported.count_judgments() == len(rows)
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        run_dpo(dpo_config(tmp_path / "bad_run", sft_model, tmp_path / "missing.jsonl"))
