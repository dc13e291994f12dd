"""FSDP2 on 2 CPU processes (gloo, `configs/accelerate/cpu_fsdp.yaml`): each process holds half of every
weight, and SFT, DPO and GRPO end where one process with the same global batch ends; a sharded run
cut back to its checkpoint and resumed ends where the uninterrupted one ends.

All sharded runs happen in one launch (`fsdp_runs.py`); the one-process runs happen in this process.

Tolerance (`test_multiprocess.assert_same_weights`): per tensor, the gap is under 1% of what training
moved it. The gradients are the same sums taken in another order (each process's half, then
FSDP's reduce-scatter), so they differ in the last bits, and Adam's division by sqrt(v) turns that
into up to about lr per step on weights whose gradient is near zero; a process training alone (no
reduction) is off by about half the change. Measured: at most 0.04% (SFT), 0.12% (DPO), 0.05% (GRPO
update) of the change; the resumed run equals the uninterrupted one exactly.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from fsdp_runs import dpo_config, grpo_config, sft_config
from test_multiprocess import ROOT, assert_same_weights, launch, logged_steps, store  # noqa: F401 (fixture)

CONFIG = ROOT / "configs" / "accelerate" / "cpu_fsdp.yaml"


@pytest.fixture(scope="module")
def sharded(tmp_path_factory, sft_model, store):  # noqa: F811 (the fixture imported above)
    """The folder of every 2-process FSDP run (fsdp_runs.py), launched once for this file."""
    model, data = sft_model
    out = tmp_path_factory.mktemp("fsdp")
    launch([str(ROOT / "tests" / "fsdp_runs.py"), str(model), str(data), str(store), str(out)], config=CONFIG)
    return out


def one_process(run, config) -> None:
    """A recipe in this process (one process: no wrapper, no sharding), its random state left as it was."""
    with torch.random.fork_rng(devices=[]):  # CPU only: a fake device registered by another test has no RNG
        run(config)


def test_fsdp_sft_equals_one_process(tmp_path, sft_model, sharded):
    from modalign.recipes.sft import run_sft

    model, data = sft_model
    one_process(run_sft, sft_config(model, data, tmp_path / "one"))
    summary = json.loads((sharded / "sft" / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["steps"] == 4
    assert_same_weights(model, tmp_path / "one" / "model", sharded / "sft" / "model")
    for a, b in zip(*(map(json.loads, (folder / "metrics.jsonl").read_text().splitlines())
                      for folder in (tmp_path / "one", sharded / "sft"))):
        assert a["train/loss"] == pytest.approx(b["train/loss"], abs=1e-4)
    # the step-2 checkpoint holds the full (gathered) weights, not the main process's half
    saved = torch.load(sharded / "sft/checkpoints/step-000002/state.pt", weights_only=False)["model"]
    whole = torch.load(tmp_path / "one/checkpoints/step-000002/state.pt", weights_only=False)["model"]
    assert {k: v.shape for k, v in saved.items()} == {k: v.shape for k, v in whole.items()}


def test_fsdp_dpo_equals_one_process(tmp_path, sft_model, sharded, store):  # noqa: F811
    from modalign.recipes.dpo import run_dpo

    model, _ = sft_model
    one_process(run_dpo, dpo_config(model, store, tmp_path / "one"))
    summary = json.loads((sharded / "dpo" / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["steps"] >= 3
    assert_same_weights(model, tmp_path / "one" / "model", sharded / "dpo" / "model")


def test_fsdp_grpo_update_equals_one_process(tmp_path, sft_model, sharded):
    """The same 8-answer rollout (sampled alike in every process): one process updates on all 8 answers,
    each of two sharded processes on its two prompt groups (token-averaged GRPO with its k3 KL, 2 epochs)."""
    import mp_ppo_update
    from modalign.models.policy import load_policy

    model, data = sft_model
    with torch.random.fork_rng(devices=[]):  # CPU only: a fake device registered by another test has no RNG
        mp_ppo_update.main(str(model), str(data), str(tmp_path / "one.pt"), "grpo")
    start = load_policy(model).model.state_dict()
    one = torch.load(tmp_path / "one.pt")["policy"]
    two = torch.load(sharded / "grpo-update.pt")["policy"]
    assert one.keys() == two.keys()
    moved = {k: float((one[k] - start[k]).norm()) for k in one}
    assert sum(moved.values()) > 0
    for key in one:
        assert float((one[key] - two[key]).norm()) <= 1e-2 * moved[key] + 1e-6, key


def test_fsdp_ppo_end_to_end(sharded):
    """PPO with its critic, both sharded: sampling and the old-policy and critic passes on gathered weights,
    a checkpoint of full state dicts, the policy and the critic saved whole."""
    from modalign.models.policy import load_policy
    from modalign.reward.model import ScalarHeadModel

    summary = json.loads((sharded / "ppo" / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["steps"] == 2 and logged_steps(sharded / "ppo") == [1, 2]
    policy = load_policy(sharded / "ppo" / "model").model.state_dict()
    critic = ScalarHeadModel.load(sharded / "ppo" / "critic").state_dict()
    state = torch.load(sharded / "ppo/checkpoints/step-000001/state.pt", weights_only=False)
    assert {k: v.shape for k, v in state["policy"].items()} == {k: v.shape for k, v in policy.items()}
    assert {k: v.shape for k, v in state["critic"].items()} == {k: v.shape for k, v in critic.items()}


def test_fsdp_grpo_resume_equals_uninterrupted(sft_model, sharded):
    """GRPO on 2 sharded processes, 4 iterations; the same run cut back to its step-2 checkpoint (full state
    dicts, both processes' random states) and resumed ends with the same weights and evaluation."""
    straight, resumed = sharded / "grpo-straight", sharded / "grpo-resumed"
    summary = json.loads((straight / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["steps"] == 4
    assert [p.name for p in (straight / "checkpoints").iterdir()] == ["step-000002"]
    assert logged_steps(resumed) == [1, 2, 3, 4]
    assert json.loads((resumed / "summary.json").read_text())["eval"] == summary["eval"]
    assert_same_weights(sft_model[0], straight / "model", resumed / "model")
