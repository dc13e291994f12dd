"""PPO with a critic: token rewards by hand, a smoke run, exact resume, non-finite steps."""

from __future__ import annotations

import json

import pytest
import torch

from modalign.feedback.simulated import gold_utility
from modalign.models.policy import load_policy
from modalign.recipes.ppo import PPOConfig, run_ppo
from modalign.rl.ppo import explained_variance, token_rewards
from modalign.rl.rewards import FunctionSource
from modalign.runs import RunDir


def test_token_rewards_by_hand():
    rewards, kl = token_rewards(torch.tensor([2.0]), torch.tensor([[-1.0, -1.0, -1.0]]),
                                torch.tensor([[-2.0, -1.0, 0.0]]), torch.tensor([[1.0, 1.0, 0.0]]), kl_coef=0.5)
    assert kl.tolist() == [[1.0, 0.0, 0.0]]
    assert rewards.tolist() == [[-0.5, 2.0, 0.0]]  # the score lands on the last real token


def test_explained_variance():
    target, mask = torch.tensor([[1.0, 2.0, 3.0]]), torch.ones(1, 3)
    assert explained_variance(target, target, mask) == pytest.approx(1.0)
    assert explained_variance(torch.full((1, 3), 2.0), target, mask) == pytest.approx(0.0)


def ppo_config(out, sft_model, **overrides):
    model, data = sft_model
    fields = dict(out=str(out), policy=str(model), data=str(data), steps=4, prompts_per_step=4,
                  samples_per_prompt=2, max_new_tokens=12, minibatch_size=4, checkpoint_every=2, eval_examples=2)
    return PPOConfig(**{**fields, **overrides})


GOLD = FunctionSource(gold_utility)


def test_ppo_smoke_logs_every_metric(tmp_path, sft_model):
    summary = run_ppo(ppo_config(tmp_path / "run", sft_model), reward_source=GOLD)
    lines = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 4
    for key in ("reward_mean", "reward_std", "kl_to_ref", "approx_kl", "clip_fraction", "explained_variance",
                "entropy", "answer_length", "value_loss", "policy_loss"):
        assert lines[-1][f"ppo/{key}"] is not None, key
    assert "hallucination_rate" in summary["eval"] and "kl_to_ref" in summary["eval"]
    assert (tmp_path / "run" / "critic" / "scalar_head.safetensors").is_file()


def question_nll(model_dir, data) -> float:
    from modalign.data.dataset import read_examples
    from modalign.models.inputs import MediaStore, collate_sft, encode_sft_example

    policy = load_policy(model_dir)
    questions = [e for e in read_examples(data, "train") if e.meta["task"] != "caption"][:32]
    encoded = [encode_sft_example(policy.processor, MediaStore(data), e, 128) for e in questions]
    with torch.no_grad():
        return float(policy.model.eval()(**collate_sft(encoded, policy.processor.tokenizer.pad_token_id)).loss)


def test_ppo_ptx_trains_the_tasks_the_reward_leaves_out(tmp_path, sft_model):
    # A constant reward leaves only the KL and PPO-ptx terms: the questions' NLL must fall.
    flat = FunctionSource(lambda example, text: 0.0)
    run_ppo(ppo_config(tmp_path / "ptx", sft_model, ptx_coef=1.0, lr=3e-3), reward_source=flat)
    lines = [json.loads(l) for l in (tmp_path / "ptx" / "metrics.jsonl").read_text().splitlines()]
    assert all(line["ppo/ptx_loss"] > 0 for line in lines)
    assert question_nll(tmp_path / "ptx" / "model", sft_model[1]) < question_nll(sft_model[0], sft_model[1]) - 0.05


def test_ppo_ptx_without_examples_is_a_config_error(tmp_path, sft_model):
    from modalign.config import ConfigError

    with pytest.raises(ConfigError, match="ptx_tasks"):
        run_ppo(ppo_config(tmp_path / "bad", sft_model, ptx_coef=1.0, ptx_tasks="no_such_task"), reward_source=GOLD)


def test_ppo_stops_at_the_kl_budget(tmp_path, sft_model):
    summary = run_ppo(ppo_config(tmp_path / "run", sft_model, steps=6, lr=3e-3, kl_budget=1e-6), reward_source=GOLD)
    lines = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert summary["stopped_at_kl_budget"] and summary["steps"] == len(lines) < 6
    assert sum(line["ppo/kl_to_ref"] for line in lines[-5:]) / len(lines[-5:]) > 1e-6  # why it stopped
    assert (tmp_path / "run" / "model" / "config.json").is_file() and "hallucination_rate" in summary["eval"]


def test_ppo_critic_warmup_moves_only_the_critic(tmp_path, sft_model):
    # two warm-up iterations of two: the policy is the start policy bit for bit, the critic learned
    from safetensors.torch import load_file

    for name, critic_lr in (("warm", 1e-3), ("still", 0.0)):  # same seed: same fresh head, trained or not
        run_ppo(ppo_config(tmp_path / name, sft_model, steps=2, critic_warmup=2, lr=3e-3, critic_lr=critic_lr,
                           ptx_coef=1.0, checkpoint_every=0), reward_source=GOLD)
    start = load_policy(sft_model[0]).model.state_dict()
    after = load_policy(tmp_path / "warm" / "model").model.state_dict()
    assert all(torch.equal(start[name], after[name]) for name in start)
    trained, fresh = (load_file(tmp_path / name / "critic" / "scalar_head.safetensors") for name in ("warm", "still"))
    assert any(not torch.equal(trained[name], fresh[name]) for name in trained)
    lines = [json.loads(l) for l in (tmp_path / "warm" / "metrics.jsonl").read_text().splitlines()]
    assert all(line["ppo/policy_loss"] == 0.0 and line["ppo/value_loss"] > 0 for line in lines)
    assert not any("ppo/ptx_loss" in line for line in lines)  # PPO-ptx trains the policy: not during warm-up


def test_kl_budget_counts_the_logged_iterations_of_a_resumed_run(tmp_path):
    from types import SimpleNamespace

    from modalign.dist import processes
    from modalign.recipes.ppo import KLBudget

    run = SimpleNamespace(path=tmp_path)
    lines = [{"step": 1, "ppo/kl_to_ref": 9.0}] + [{"step": s, "ppo/kl_to_ref": 1.0} for s in range(2, 6)]
    lines.insert(3, {"step": 3, "ppo/skipped_step": 1.0})  # a skipped step logs no KL
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    budget = KLBudget(run, 1.5, processes())
    assert list(budget.recent) == [9.0, 1.0, 1.0, 1.0, 1.0]
    assert not budget.passed(1.0, 6, 10)  # 9.0 drops out: mean 1.0 of the last 5
    assert budget.passed(float("nan"), 7, 10) is False and len(budget.recent) == 5  # non-finite: not counted
    assert budget.passed(4.0, 8, 10)  # (1 + 1 + 1 + 1 + 4) / 5 = 1.6 > 1.5
    assert not KLBudget(run, 0.0, processes()).passed(100.0, 1, 10)  # 0: never


def test_ppo_reference_other_than_the_start_policy(tmp_path, sft_model):
    # a later round starts from its last policy but keeps the SFT reference: KL > 0 from step 1
    policy = load_policy(sft_model[0])
    with torch.no_grad():
        policy.model.lm_head.weight.add_(0.05 * torch.randn_like(policy.model.lm_head.weight))
    policy.save(tmp_path / "moved")
    cfg = dict(steps=1, checkpoint_every=0)
    run_ppo(ppo_config(tmp_path / "own", sft_model, policy=str(tmp_path / "moved"), **cfg), reward_source=GOLD)
    run_ppo(ppo_config(tmp_path / "sft_ref", sft_model, policy=str(tmp_path / "moved"), reference=str(sft_model[0]),
                       **cfg), reward_source=GOLD)
    own, sft_ref = (json.loads((tmp_path / name / "metrics.jsonl").read_text().splitlines()[0])["ppo/kl_to_ref"]
                    for name in ("own", "sft_ref"))
    assert own == pytest.approx(0.0, abs=1e-5)
    assert sft_ref > 0.01


def test_ppo_reference_that_cannot_serve_is_refused_before_the_run_folder(tmp_path, sft_model):
    from modalign.errors import UserError

    with pytest.raises(UserError, match="reference '.*nowhere': no such folder"):
        run_ppo(ppo_config(tmp_path / "bad", sft_model, reference=str(tmp_path / "nowhere")), reward_source=GOLD)
    assert not (tmp_path / "bad").exists()


def test_ppo_resume_matches_uninterrupted(tmp_path, sft_model, monkeypatch):
    # with PPO-ptx on, so its batches are replayed exactly too
    run_ppo(ppo_config(tmp_path / "straight", sft_model, ptx_coef=0.5), reward_source=GOLD)
    original = RunDir.save_checkpoint

    def save_then_die(self, state, step, keep=2):
        path = original(self, state, step, keep)
        raise KeyboardInterrupt("simulated kill after the step-2 checkpoint")

    monkeypatch.setattr(RunDir, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        run_ppo(ppo_config(tmp_path / "killed", sft_model, ptx_coef=0.5), reward_source=GOLD)
    monkeypatch.setattr(RunDir, "save_checkpoint", original)
    run_ppo(ppo_config(tmp_path / "killed", sft_model, ptx_coef=0.5), resume=str(tmp_path / "killed"), reward_source=GOLD)
    straight = load_policy(tmp_path / "straight" / "model").model.state_dict()
    resumed = load_policy(tmp_path / "killed" / "model").model.state_dict()
    for key in straight:
        assert torch.allclose(straight[key], resumed[key], atol=1e-6), key


def test_non_finite_rewards_skip_then_stop(tmp_path, sft_model):
    calls = {"n": 0}

    def flaky(examples, answers, samples, prompts):
        calls["n"] += 1
        scores = torch.zeros(len(answers))
        return scores if calls["n"] <= 2 else scores + float("nan")

    with pytest.raises(RuntimeError, match="3 steps in a row"):
        run_ppo(ppo_config(tmp_path / "run", sft_model, steps=8), reward_source=flaky)
    skipped = [json.loads(l) for l in (tmp_path / "run" / "skipped_steps.jsonl").read_text().splitlines()]
    assert [s["step"] for s in skipped] == [3, 4, 5] and skipped[0]["example_ids"]
    assert RunDir.open(tmp_path / "run").latest_checkpoint().name == "step-000002"  # saved before: intact


def _ppo_command(out, sft_model, steps: int) -> list[str]:
    import sys

    model, data = sft_model
    settings = {"policy": model, "data": data, "reward_model": "rule:shapes_gold", "steps": steps,
                "prompts_per_step": 4, "samples_per_prompt": 2, "max_new_tokens": 12, "minibatch_size": 4,
                "checkpoint_every": 2, "eval_examples": 2}
    sets = [arg for key, value in settings.items() for arg in ("--set", f"{key}={value}")]
    return [sys.executable, "-m", "modalign.cli", "ppo", "--out", str(out), *sets]


def test_ppo_sigkill_then_resume_matches_uninterrupted(tmp_path, sft_model):
    """A real kill -9 mid-run (after a checkpoint, inside a later step); --resume ends where a straight run does."""
    import os
    import signal
    import subprocess
    import time

    steps = 8
    subprocess.run(_ppo_command(tmp_path / "straight", sft_model, steps), check=True, capture_output=True)
    killed = tmp_path / "killed"
    process = subprocess.Popen(_ppo_command(killed, sft_model, steps), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (killed / "checkpoints" / "step-000002").is_dir() and time.time() < deadline:
        assert process.poll() is None, "the run ended before it could be killed"
        time.sleep(0.01)
    time.sleep(0.3)  # inside step 3 or 4: work after the checkpoint is lost and must be redone
    assert process.poll() is None, "the run ended before it could be killed"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not (killed / "summary.json").exists()
    subprocess.run([*_ppo_command(killed, sft_model, steps)[:4], "--resume", str(killed)], check=True,
                   capture_output=True)
    straight = json.loads((tmp_path / "straight" / "summary.json").read_text())
    resumed = json.loads((killed / "summary.json").read_text())
    assert resumed["eval"] == straight["eval"]
    logged = [json.loads(l)["step"] for l in (killed / "metrics.jsonl").read_text().splitlines()]
    assert logged == list(range(1, steps + 1))  # steps logged before the kill and redone appear once
    straight_lines = (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(l)["ppo/reward_mean"] for l in straight_lines] == [
        json.loads(l)["ppo/reward_mean"] for l in (killed / "metrics.jsonl").read_text().splitlines()]
