"""Two processes through `accelerate launch` (DDP over gloo) do what one process does with the same global batch.

Every command runs through the CLI in `ddp_runs.py`: the 2-process commands in one launch, the 1-process
references in one plain process (module fixture `runs`); the tests check the folders they leave.
"""

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


@pytest.fixture(scope="module")
def runs(tmp_path_factory, sft_model, store) -> tuple[Path, Path]:
    """(1-process folder, 2-process folder) of every command of this file (ddp_runs.py): one plain process runs
    the references, one `accelerate launch` runs every 2-process command."""
    model, data = sft_model
    one, two = tmp_path_factory.mktemp("one"), tmp_path_factory.mktemp("ddp")
    script = str(ROOT / "tests" / "ddp_runs.py")
    one_process([script, str(model), str(data), str(store), str(one)])
    launch([script, str(model), str(data), str(store), str(two)], timeout=1200)
    return one, two


def test_dpo_two_processes_equal_one(sft_model, runs):
    """Global batch 4: one process takes all 4 pairs a step, each of two takes 2; DDP averages the gradients."""
    model, _ = sft_model
    one, two = (folder / "dpo" for folder in runs)
    summary = json.loads((two / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["steps"] >= 3
    assert_same_weights(model, one / "model", two / "model")
    # only the main process wrote: one metrics line per step, the same curves as one process
    assert logged_steps(two) == list(range(1, summary["steps"] + 1))
    for a, b in zip(*(map(json.loads, (folder / "metrics.jsonl").read_text().splitlines()) for folder in (one, two))):
        assert a["dpo/loss"] == pytest.approx(b["dpo/loss"], abs=1e-4)


def test_a_batch_that_does_not_split_is_a_clear_error(runs):
    """Both processes refuse the run with the CLI's one-line error (exit code 2), before any training."""
    two = runs[1]
    for rank in (0, 1):
        code, stderr = (two / f"odd.{rank}.txt").read_text().split("\n", 1)
        assert code == "2" and "batch_size of 3 does not split over 2 processes" in stderr, stderr
        assert "Traceback" not in stderr
    assert not (two / "odd" / "model").exists()


def test_eval_two_processes_scores_every_example_in_order(sft_model, runs):
    """Each process generates for its share; the samples come back in the split's order, scored once."""
    _, data = sft_model
    out = runs[1] / "eval"
    summary = json.loads((out / "summary.json").read_text())
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert summary["processes"] == 2 and summary["metrics"]["n_examples"] == 7
    assert [row["example_id"] for row in samples] == [e.id for e in read_examples(data, "test")[:7]]


@pytest.mark.parametrize("method", ["ppo", "grpo"])
def test_update_two_processes_equal_one(sft_model, runs, method):
    """The same 8-answer rollout: one process updates on all 8, each of two on 4 (2 epochs, one minibatch).

    ppo: PPO with a critic; grpo: token-averaged GRPO (DAPO) with its k3 KL, each process holding whole groups.
    """
    model, _ = sft_model
    one_dir, two_dir = runs
    lines = "".join((two_dir / f"update-{method}.{rank}.txt").read_text() for rank in (0, 1))
    counts = dict(re.findall(r"process (\d): (\d+) of", lines))
    assert len(counts) == 2 and counts["0"] != counts["1"], lines  # the shares hold unequal token counts
    start = load_policy(model).model.state_dict()
    one, two = torch.load(one_dir / f"update-{method}.pt"), torch.load(two_dir / f"update-{method}.pt")
    for part in ("policy", "critic") if method == "ppo" else ("policy",):
        gaps = {k: float((one[part][k] - two[part][k]).norm()) for k in one[part]}
        moved = {k: float((one[part][k] - start[k.removeprefix("backbone.")]).norm())
                 for k in one[part] if k.removeprefix("backbone.") in start}
        assert sum(moved.values()) > 0
        for key, gap in gaps.items():
            assert gap <= 1e-2 * moved.get(key, float(one[part][key].norm())) + 1e-6, (part, key, gap)


def test_ppo_two_processes_end_to_end_and_resume(sft_model, runs):
    """A 2-process PPO run completes; only the main process writes; a run killed after its step-2 checkpoint
    resumes with both processes' random states and ends where the uninterrupted run ends."""
    straight_dir, killed = runs[1] / "ppo-straight", runs[1] / "ppo-killed"
    straight = json.loads((straight_dir / "summary.json").read_text())
    assert straight["processes"] == 2 and straight["steps"] == 4
    assert logged_steps(straight_dir) == [1, 2, 3, 4]
    assert [p.name for p in (straight_dir / "checkpoints").iterdir()] == ["step-000002"]
    assert len(torch.load(straight_dir / "checkpoints/step-000002/state.pt", weights_only=False)["rng"]) == 2
    # ddp_runs.cut_back left the state a kill after step 3 leaves: the step-2 checkpoint, a log line past it
    resumed = json.loads((killed / "summary.json").read_text())
    assert resumed["eval"] == straight["eval"]
    assert logged_steps(killed) == [1, 2, 3, 4]
    assert_same_weights(sft_model[0], straight_dir / "model", killed / "model")


def test_sft_two_processes_equal_one(sft_model, runs):
    """Global batch 8 of SFT examples; the loss is the mean over all answer tokens in both runs."""
    model, _ = sft_model
    one, two = (folder / "sft" for folder in runs)
    assert json.loads((two / "summary.json").read_text())["processes"] == 2
    assert_same_weights(model, one / "model", two / "model")
    for a, b in zip(*(map(json.loads, (folder / "metrics.jsonl").read_text().splitlines()) for folder in (one, two))):
        assert a["train/loss"] == pytest.approx(b["train/loss"], abs=1e-4)


@pytest.mark.parametrize("algorithm", ["grpo", "a2c"])
def test_online_two_processes_end_to_end(runs, algorithm):
    out = runs[1] / algorithm
    summary = json.loads((out / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["steps"] == 2 and "hallucination_rate" in summary["eval"]
    assert logged_steps(out) == [1, 2]


def test_reward_two_processes_equal_one(runs):
    """The frozen backbone's passes split over 2 processes and gathered: the same head and accuracy."""
    from modalign.reward.model import ScalarHeadModel

    folders = [folder / "reward" for folder in runs]
    one, two = (json.loads((folder / "summary.json").read_text()) for folder in folders)
    assert two["processes"] == 2 and one["train_pairs"] == two["train_pairs"] > 0
    assert one["heldout_accuracy"] == two["heldout_accuracy"] and one["train_accuracy"] == two["train_accuracy"]
    heads = [ScalarHeadModel.load(folder / "model").state_dict() for folder in folders]
    for key in heads[0]:
        assert torch.allclose(heads[0][key], heads[1][key], atol=1e-5), key


def test_loop_two_processes_end_to_end_and_resume(runs):
    """Two rounds on 2 processes: the main process samples, judges and evaluates; the reward model and PPO
    run on both; one writer; a rerun with rounds=3 runs round 3 alone."""
    out, after_two = runs[1] / "loop", runs[1] / "loop-2rounds"  # after_two: ddp_runs.snapshot_loop
    rows = [json.loads(line) for line in (after_two / "rounds.jsonl").read_text().splitlines()]
    summary = json.loads((after_two / "summary.json").read_text())
    assert [row["round"] for row in rows] == [1, 2] and rows[1]["policy"] == rows[0]["model"]
    assert summary["judgments"] == sum(row["judgments"] for row in rows) > 0
    assert FeedbackStore.sqlite(after_two / "feedback.db").count_judgments() == summary["judgments"]
    for r in (1, 2):
        assert json.loads((out / f"round-{r}/reward/summary.json").read_text())["processes"] == 2
        assert json.loads((out / f"round-{r}/rl/summary.json").read_text())["processes"] == 2
        assert logged_steps(out / f"round-{r}/rl") == [1, 2]
    done = int((after_two / "round-1-rl-mtime").read_text())
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


def test_iterative_dpo_two_processes_end_to_end(runs):
    """The main process samples and judges each round, DPO runs on both; one writer."""
    out = runs[1] / "iterative-dpo"
    rows = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]
    assert [row["round"] for row in rows] == [1, 2] and rows[1]["policy"] == rows[0]["model"]
    for r in (1, 2):
        dpo = json.loads((out / f"round-{r}/dpo/summary.json").read_text())
        assert dpo["processes"] == 2 and logged_steps(out / f"round-{r}/dpo") == list(range(1, dpo["steps"] + 1))
    assert "hallucination_rate" in json.loads((out / "summary.json").read_text())["eval"]


def test_bon_two_processes_gather_every_prompts_winner(sft_model, runs):
    """Each process samples and scores its share of the prompts; the winners come back in prompt order."""
    from modalign.rl.rewards import RULES

    _, data = sft_model
    out = runs[1] / "bon"
    winners = [json.loads(line) for line in (out / "winners.jsonl").read_text().splitlines()]
    captions = [e for e in read_examples(data, "train") if e.meta.get("task") == "caption"][:5]
    assert [row["example_id"] for row in winners] == [e.id for e in captions]
    for example, row in zip(captions, winners):
        assert RULES["shapes_gold"](example, row["answer"]) == pytest.approx(row["score"])  # scores are float32
        assert row["score"] >= row["mean_score"]
    sft = json.loads((out / "sft" / "summary.json").read_text())
    assert sft["processes"] == 2 and "vqa_accuracy" in sft["eval"]


def test_quick_demo_two_processes(runs):
    """The whole demo under accelerate launch: SFT, reward models and PPO on both processes, one report."""
    out = runs[1] / "demo"
    saved = json.loads((out / "summary.json").read_text())
    assert "hallucination_rate" in saved["rlhf"] and [row["round"] for row in saved["rounds"]] == [1, 2]
    assert json.loads((out / "sft" / "summary.json").read_text())["processes"] == 2
    assert json.loads((out / "loop" / "round-2" / "rl" / "summary.json").read_text())["processes"] == 2
    assert (out / "report.html").is_file()
