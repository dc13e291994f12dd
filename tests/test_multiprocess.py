"""Two processes through `accelerate launch` (DDP over gloo) do what one process does with the same global batch."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from modalign.data.dataset import read_examples
from modalign.feedback.store import FeedbackStore
from modalign.models.inputs import MediaStore
from modalign.models.policy import load_policy
from modalign.recipes.demo import collect_feedback

ROOT = Path(__file__).resolve().parents[1]
ACCELERATE = Path(sys.executable).with_name("accelerate")


def launch(args: list[str], processes: int = 2, timeout: float = 600,
           config: Path = ROOT / "configs/accelerate/cpu_ddp.yaml") -> subprocess.CompletedProcess:
    """`accelerate launch` with `config` (DDP by default) on a free port; one torch thread per process."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [str(ACCELERATE), "launch", "--config_file", str(config),
               "--num_processes", str(processes), "--main_process_ip", "127.0.0.1", "--main_process_port", str(port),
               *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def one_process(args: list[str], timeout: float = 600) -> subprocess.CompletedProcess:
    """The same command as one plain process, as a user runs it without `accelerate launch` (the launcher alone
    costs ~3.5 s of CPU; the 1-process references need none of it); one torch thread."""
    done = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def cli(command: str, out: Path, settings: dict) -> list[str]:
    sets = [arg for key, value in settings.items() for arg in ("--set", f"{key}={value}")]
    return ["-m", "modalign.cli", command, "--out", str(out), *sets]


def assert_same_weights(start: Path, folder_a: Path, folder_b: Path) -> None:
    """Equal to float tolerance: per tensor, the gap is tiny next to what training changed.

    Adam divides by sqrt(v): a gradient summed in another order (two halves, all-reduced) moves
    a weight whose gradient is near zero by up to lr per step, so no 1e-6 elementwise test; a
    process training apart (gradients not averaged) gives gaps of the size of the change itself.
    """
    before = load_policy(start).model.state_dict()
    a = load_policy(folder_a).model.state_dict()
    b = load_policy(folder_b).model.state_dict()
    assert a.keys() == b.keys()
    gaps = {k: float((a[k] - b[k]).norm()) for k in a}
    moved = {k: float((a[k] - before[k]).norm()) for k in a}
    assert sum(moved.values()) > 0
    for key in a:
        assert gaps[key] <= 1e-2 * moved[key] + 1e-6, (key, gaps[key], moved[key])
    assert sum(g * g for g in gaps.values()) ** 0.5 < 1e-3 * sum(m * m for m in moved.values()) ** 0.5


def logged_steps(run: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def store(tmp_path_factory, sft_model):
    model, data = sft_model
    path = tmp_path_factory.mktemp("mp") / "feedback.db"
    captions = [e for e in read_examples(data, "train") if e.meta["task"] == "caption"][:12]
    collect_feedback(load_policy(model), MediaStore(data), captions, data, path, seed=0)
    return path


def test_dpo_two_processes_equal_one(tmp_path, sft_model, store):
    """Global batch 4: one process takes all 4 pairs a step, each of two takes 2; DDP averages the gradients."""
    model, _ = sft_model
    settings = {"policy": model, "store": store, "data": "", "batch_size": 4, "epochs": 1.0, "lr": 1e-3,
                "checkpoint_every": 0}
    one_process(cli("dpo", tmp_path / "one", settings))
    launch(cli("dpo", tmp_path / "two", settings))
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["steps"] >= 3
    assert_same_weights(model, tmp_path / "one" / "model", tmp_path / "two" / "model")
    # only the main process wrote: one metrics line per step, the same curves as one process
    assert logged_steps(tmp_path / "two") == list(range(1, summary["steps"] + 1))
    for a, b in zip(*(map(json.loads, (tmp_path / r / "metrics.jsonl").read_text().splitlines())
                      for r in ("one", "two"))):
        assert a["dpo/loss"] == pytest.approx(b["dpo/loss"], abs=1e-4)


def test_a_batch_that_does_not_split_is_a_clear_error(tmp_path, sft_model, store):
    model, _ = sft_model
    settings = {"policy": model, "store": store, "data": "", "batch_size": 3, "epochs": 1.0}
    with pytest.raises(AssertionError, match="batch_size of 3 does not split over 2 processes"):
        launch(cli("dpo", tmp_path / "odd", settings))


def test_eval_two_processes_scores_every_example_in_order(tmp_path, sft_model):
    """Each process generates for its share; the samples come back in the split's order, scored once."""
    model, data = sft_model
    launch(["-m", "modalign.cli", "eval", "--policy", str(model), "--data", str(data), "--out", str(tmp_path / "e"),
            "--set", "max_examples=7", "--set", "max_new_tokens=8"])
    summary = json.loads((tmp_path / "e" / "summary.json").read_text())
    samples = [json.loads(line) for line in (tmp_path / "e" / "samples.jsonl").read_text().splitlines()]
    assert summary["processes"] == 2 and summary["metrics"]["n_examples"] == 7
    assert [row["example_id"] for row in samples] == [e.id for e in read_examples(data, "test")[:7]]


@pytest.mark.parametrize("method", ["ppo", "grpo"])
def test_update_two_processes_equal_one(tmp_path, sft_model, method):
    """The same 8-answer rollout: one process updates on all 8, each of two on 4 (2 epochs, one minibatch).

    ppo: PPO with a critic; grpo: token-averaged GRPO (DAPO) with its k3 KL, each process holding whole groups.
    """
    model, data = sft_model
    script = str(ROOT / "tests" / "mp_ppo_update.py")
    one_process([script, str(model), str(data), str(tmp_path / "one.pt"), method])
    two = launch([script, str(model), str(data), str(tmp_path / "two.pt"), method])
    # the processes print at once and their lines may run together: find the counts anywhere
    counts = dict(re.findall(r"process (\d): (\d+) of", two.stdout))
    assert len(counts) == 2 and counts["0"] != counts["1"], two.stdout  # the shares hold unequal token counts
    start = load_policy(model).model.state_dict()
    one, two = torch.load(tmp_path / "one.pt"), torch.load(tmp_path / "two.pt")
    for part in ("policy", "critic") if method == "ppo" else ("policy",):
        gaps = {k: float((one[part][k] - two[part][k]).norm()) for k in one[part]}
        moved = {k: float((one[part][k] - start[k.removeprefix("backbone.")]).norm())
                 for k in one[part] if k.removeprefix("backbone.") in start}
        assert sum(moved.values()) > 0
        for key, gap in gaps.items():
            assert gap <= 1e-2 * moved.get(key, float(one[part][key].norm())) + 1e-6, (part, key, gap)


def ppo_settings(sft_model, steps: int = 4) -> dict:
    model, data = sft_model
    return {"policy": model, "data": data, "reward_model": "rule:shapes_gold", "steps": steps,
            "prompts_per_step": 4, "samples_per_prompt": 2, "max_new_tokens": 12, "minibatch_size": 4,
            "checkpoint_every": 2, "eval_examples": 2, "ptx_coef": 0.5}


def test_ppo_two_processes_end_to_end_and_resume(tmp_path, sft_model):
    """A 2-process PPO run completes; only the main process writes; a run killed after its step-2 checkpoint
    resumes with both processes' random states and ends where the uninterrupted run ends."""
    import shutil

    launch(cli("ppo", tmp_path / "straight", ppo_settings(sft_model)))
    straight = json.loads((tmp_path / "straight" / "summary.json").read_text())
    assert straight["processes"] == 2 and straight["steps"] == 4
    assert logged_steps(tmp_path / "straight") == [1, 2, 3, 4]
    assert [p.name for p in (tmp_path / "straight" / "checkpoints").iterdir()] == ["step-000002"]
    assert len(torch.load(tmp_path / "straight/checkpoints/step-000002/state.pt", weights_only=False)["rng"]) == 2
    # the state a kill after step 3 leaves: the step-2 checkpoint, a log line past it, no model or summary
    killed = tmp_path / "killed"
    shutil.copytree(tmp_path / "straight", killed)
    for done in ("model", "critic", "summary.json"):
        shutil.rmtree(killed / done, ignore_errors=True)
        (killed / done).unlink(missing_ok=True)
    lines = (killed / "metrics.jsonl").read_text().splitlines()
    (killed / "metrics.jsonl").write_text("\n".join(lines[:3]) + "\n")
    launch(["-m", "modalign.cli", "ppo", "--resume", str(killed)])
    resumed = json.loads((killed / "summary.json").read_text())
    assert resumed["eval"] == straight["eval"]
    assert logged_steps(killed) == [1, 2, 3, 4]
    assert_same_weights(sft_model[0], tmp_path / "straight" / "model", killed / "model")


def test_sft_two_processes_equal_one(tmp_path, sft_model):
    """Global batch 8 of SFT examples; the loss is the mean over all answer tokens in both runs."""
    model, data = sft_model
    settings = {"policy": model, "data": data, "batch_size": 8, "max_steps": 4, "lr": 1e-3, "warmup_steps": 0,
                "log_every": 1, "checkpoint_every": 0, "eval_examples": 1, "max_new_tokens": 8}
    one_process(cli("sft", tmp_path / "one", settings))
    launch(cli("sft", tmp_path / "two", settings))
    assert json.loads((tmp_path / "two" / "summary.json").read_text())["processes"] == 2
    assert_same_weights(model, tmp_path / "one" / "model", tmp_path / "two" / "model")
    for a, b in zip(*(map(json.loads, (tmp_path / r / "metrics.jsonl").read_text().splitlines())
                      for r in ("one", "two"))):
        assert a["train/loss"] == pytest.approx(b["train/loss"], abs=1e-4)


@pytest.mark.parametrize("algorithm", ["grpo", "a2c"])
def test_online_two_processes_end_to_end(tmp_path, sft_model, algorithm):
    model, data = sft_model
    settings = {"policy": model, "data": data, "reward_model": "rule:shapes_gold", "steps": 2, "prompts_per_step": 4,
                "samples_per_prompt": 2, "max_new_tokens": 12, "minibatch_size": 4, "eval_examples": 2}
    launch(cli(algorithm, tmp_path / "run", settings))
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["steps"] == 2 and "hallucination_rate" in summary["eval"]
    assert logged_steps(tmp_path / "run") == [1, 2]


def test_reward_two_processes_equal_one(tmp_path, sft_model, store):
    """The frozen backbone's passes split over 2 processes and gathered: the same head and accuracy."""
    settings = {"policy": sft_model[0], "store": store, "steps": 200, "heldout_fraction": 0.3}
    one_process(cli("reward", tmp_path / "one", settings))
    launch(cli("reward", tmp_path / "two", settings))
    one, two = (json.loads((tmp_path / r / "summary.json").read_text()) for r in ("one", "two"))
    assert two["processes"] == 2 and one["train_pairs"] == two["train_pairs"] > 0
    assert one["heldout_accuracy"] == two["heldout_accuracy"] and one["train_accuracy"] == two["train_accuracy"]
    from modalign.reward.model import ScalarHeadModel

    heads = [ScalarHeadModel.load(tmp_path / r / "model").state_dict() for r in ("one", "two")]
    for key in heads[0]:
        assert torch.allclose(heads[0][key], heads[1][key], atol=1e-5), key


def test_loop_two_processes_end_to_end_and_resume(tmp_path, sft_model):
    """Two rounds on 2 processes: the main process samples, judges and evaluates; the reward model and PPO
    run on both; one writer; a rerun with rounds=3 runs round 3 alone."""
    model, data = sft_model
    settings = {"policy": model, "data": data, "rounds": 2, "prompts_per_round": 6, "samples_per_prompt": 3,
                "reward_steps": 4, "rl_steps": 2, "prompts_per_step": 2, "rl_samples_per_prompt": 2,
                "max_new_tokens": 8, "eval_examples": 4, "eval_samples": 2, "kl_budget": 5.0}
    out = tmp_path / "loop"
    launch(cli("loop", out, settings))
    rows = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]
    summary = json.loads((out / "summary.json").read_text())
    assert [row["round"] for row in rows] == [1, 2] and rows[1]["policy"] == rows[0]["model"]
    assert summary["judgments"] == sum(row["judgments"] for row in rows) > 0
    assert FeedbackStore.sqlite(out / "feedback.db").count_judgments() == summary["judgments"]
    for r in (1, 2):
        assert json.loads((out / f"round-{r}/reward/summary.json").read_text())["processes"] == 2
        assert json.loads((out / f"round-{r}/rl/summary.json").read_text())["processes"] == 2
        assert logged_steps(out / f"round-{r}/rl") == [1, 2]
    done = (out / "round-1" / "rl" / "summary.json").stat().st_mtime_ns
    launch(cli("loop", out, {**settings, "rounds": 3}))
    assert (out / "round-1" / "rl" / "summary.json").stat().st_mtime_ns == done
    rows = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]
    assert [row["round"] for row in rows] == [1, 2, 3]


def test_loop_with_people_refuses_many_processes():
    from modalign.config import ConfigError
    from modalign.recipes.loop import LoopConfig, check_loop_settings

    cfg = LoopConfig(policy="p", data="d", judge="people", annotators="ann")
    check_loop_settings(cfg, world=1)
    with pytest.raises(ConfigError, match="judge=people runs in one process"):
        check_loop_settings(cfg, world=2)


def test_iterative_dpo_two_processes_end_to_end(tmp_path, sft_model):
    """The main process samples and judges each round, DPO runs on both; one writer."""
    model, data = sft_model
    settings = {"policy": model, "data": data, "rounds": 2, "prompts_per_round": 6, "samples_per_prompt": 2,
                "batch_size": 2, "lr": 1e-3, "max_new_tokens": 10, "eval_examples": 2}
    launch(cli("iterative-dpo", tmp_path / "run", settings))
    rows = [json.loads(line) for line in (tmp_path / "run" / "rounds.jsonl").read_text().splitlines()]
    assert [row["round"] for row in rows] == [1, 2] and rows[1]["policy"] == rows[0]["model"]
    for r in (1, 2):
        dpo = json.loads((tmp_path / f"run/round-{r}/dpo/summary.json").read_text())
        assert dpo["processes"] == 2 and logged_steps(tmp_path / f"run/round-{r}/dpo") == list(range(1, dpo["steps"] + 1))
    assert "hallucination_rate" in json.loads((tmp_path / "run" / "summary.json").read_text())["eval"]


def test_bon_two_processes_gather_every_prompts_winner(tmp_path, sft_model):
    """Each process samples and scores its share of the prompts; the winners come back in prompt order."""
    from modalign.rl.rewards import RULES

    model, data = sft_model
    settings = {"policy": model, "data": data, "task": "caption", "reward_model": "rule:shapes_gold", "prompts": 5,
                "n": 4, "max_new_tokens": 12, "epochs": 1.0, "batch_size": 2, "eval_examples": 2}
    launch(cli("bon", tmp_path / "bon", settings))
    winners = [json.loads(line) for line in (tmp_path / "bon" / "winners.jsonl").read_text().splitlines()]
    captions = [e for e in read_examples(data, "train") if e.meta.get("task") == "caption"][:5]
    assert [row["example_id"] for row in winners] == [e.id for e in captions]
    for example, row in zip(captions, winners):
        assert RULES["shapes_gold"](example, row["answer"]) == pytest.approx(row["score"])  # scores are float32
        assert row["score"] >= row["mean_score"]
    sft = json.loads((tmp_path / "bon" / "sft" / "summary.json").read_text())
    assert sft["processes"] == 2 and "vqa_accuracy" in sft["eval"]


def test_quick_demo_two_processes(tmp_path):
    """The whole demo under accelerate launch: SFT, reward models and PPO on both processes, one report."""
    launch(["-m", "modalign.cli", "demo", "--quick", "--out", str(tmp_path / "demo")])
    saved = json.loads((tmp_path / "demo" / "summary.json").read_text())
    assert "hallucination_rate" in saved["rlhf"] and [row["round"] for row in saved["rounds"]] == [1, 2]
    assert json.loads((tmp_path / "demo" / "sft" / "summary.json").read_text())["processes"] == 2
    assert json.loads((tmp_path / "demo" / "loop" / "round-2" / "rl" / "summary.json").read_text())["processes"] == 2
    assert (tmp_path / "demo" / "report.html").is_file()
