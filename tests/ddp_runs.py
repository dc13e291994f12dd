"""Run by tests/test_multiprocess.py: every command of the test file in one interpreter per process.

    ddp_runs.py MODEL DATA STORE OUT

Under `accelerate launch` (DDP, 2 processes) it runs every 2-process command into OUT; as one plain
process it runs the 1-process references (`ONE_PROCESS`) into OUT. Each command goes through the CLI
(`modalign.cli.app`, as `modalign <command> --out ... --set ...`), in order; the interpreters, torch and the
process group start once instead of once per command (a launch costs ~7 s of CPU before any work).

Besides the commands' own folders it leaves, for the checks that need them:
- OUT/odd.<rank>.txt: exit code and stderr of the DPO run whose batch does not split over 2 processes;
- OUT/update-<method>.pt and OUT/update-<method>.<rank>.txt: `mp_ppo_update`'s weights and each process's line;
- OUT/ppo-killed: the PPO run cut back to its step-2 checkpoint (as a kill after step 3 leaves it), resumed;
- OUT/loop-2rounds: rounds.jsonl, summary.json, feedback.db and round 1's RL summary mtime after 2 rounds,
  before the rerun with rounds=3 in OUT/loop.
"""

from __future__ import annotations

import contextlib
import io
import shutil
import sys
from pathlib import Path

ODD_BATCH = 3  # does not split over 2 processes


def dpo_settings(model, store) -> dict:
    return {"policy": model, "store": store, "data": "", "batch_size": 4, "epochs": 1.0, "lr": 1e-3,
            "checkpoint_every": 0}


def sft_settings(model, data) -> dict:
    return {"policy": model, "data": data, "batch_size": 8, "max_steps": 4, "lr": 1e-3, "warmup_steps": 0,
            "log_every": 1, "checkpoint_every": 0, "eval_examples": 1, "max_new_tokens": 8}


def reward_settings(model, store) -> dict:
    return {"policy": model, "store": store, "steps": 200, "heldout_fraction": 0.3}


def ppo_settings(model, data) -> dict:
    return {"policy": model, "data": data, "reward_model": "rule:shapes_gold", "steps": 4,
            "prompts_per_step": 4, "samples_per_prompt": 2, "max_new_tokens": 12, "minibatch_size": 4,
            "checkpoint_every": 2, "eval_examples": 2, "ptx_coef": 0.5}


def online_settings(model, data) -> dict:
    return {"policy": model, "data": data, "reward_model": "rule:shapes_gold", "steps": 2, "prompts_per_step": 4,
            "samples_per_prompt": 2, "max_new_tokens": 12, "minibatch_size": 4, "eval_examples": 2}


def loop_settings(model, data) -> dict:
    return {"policy": model, "data": data, "rounds": 2, "prompts_per_round": 6, "samples_per_prompt": 3,
            "reward_steps": 4, "rl_steps": 2, "prompts_per_step": 2, "rl_samples_per_prompt": 2,
            "max_new_tokens": 8, "eval_examples": 4, "eval_samples": 2, "kl_budget": 5.0}


def iterative_dpo_settings(model, data) -> dict:
    return {"policy": model, "data": data, "rounds": 2, "prompts_per_round": 6, "samples_per_prompt": 2,
            "batch_size": 2, "lr": 1e-3, "max_new_tokens": 10, "eval_examples": 2}


def bon_settings(model, data) -> dict:
    return {"policy": model, "data": data, "task": "caption", "reward_model": "rule:shapes_gold", "prompts": 5,
            "n": 4, "max_new_tokens": 12, "epochs": 1.0, "batch_size": 2, "eval_examples": 2}


def cli_args(command: str, out: Path, settings: dict) -> list[str]:
    """`modalign <command> --out OUT --set key=value ...`'s arguments."""
    sets = [arg for key, value in settings.items() for arg in ("--set", f"{key}={value}")]
    return [command, "--out", str(out), *sets]


def modalign(args: list[str]) -> int:
    """The CLI on `args` in this interpreter; its exit code (0: done)."""
    from modalign.cli import app

    code = app(args=[str(a) for a in args], prog_name="modalign", standalone_mode=False)
    return 0 if code is None else int(code)


def command(args: list[str]) -> None:
    code = modalign(args)
    assert code == 0, f"modalign {' '.join(map(str, args))} exited with {code}"


def update(model: str, data: str, out: Path, method: str, rank: int) -> None:
    """`mp_ppo_update` on the fixed rollout; this process's 'process N: k of n answer tokens' line to a file."""
    import mp_ppo_update

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        mp_ppo_update.main(model, data, str(out / f"update-{method}.pt"), method)
    (out / f"update-{method}.{rank}.txt").write_text(printed.getvalue())


def one_process_runs(model: str, data: str, store: str, out: Path) -> None:
    """The 1-process references of the comparisons."""
    command(cli_args("dpo", out / "dpo", dpo_settings(model, store)))
    update(model, data, out, "ppo", 0)
    update(model, data, out, "grpo", 0)
    command(cli_args("sft", out / "sft", sft_settings(model, data)))
    command(cli_args("reward", out / "reward", reward_settings(model, store)))


def two_process_runs(model: str, data: str, store: str, out: Path, dist) -> None:
    command(cli_args("dpo", out / "dpo", dpo_settings(model, store)))
    odd_batch(model, store, out, dist.rank)
    command(["eval", "--policy", model, "--data", data, "--out", out / "eval",
             "--set", "max_examples=7", "--set", "max_new_tokens=8"])
    update(model, data, out, "ppo", dist.rank)
    update(model, data, out, "grpo", dist.rank)
    command(cli_args("ppo", out / "ppo-straight", ppo_settings(model, data)))
    if dist.is_main:
        cut_back(out / "ppo-straight", out / "ppo-killed")
    dist.wait()
    command(["ppo", "--resume", out / "ppo-killed"])
    command(cli_args("sft", out / "sft", sft_settings(model, data)))
    for algorithm in ("grpo", "a2c"):
        command(cli_args(algorithm, out / algorithm, online_settings(model, data)))
    command(cli_args("reward", out / "reward", reward_settings(model, store)))
    loop = loop_settings(model, data)
    command(cli_args("loop", out / "loop", loop))
    if dist.is_main:
        snapshot_loop(out / "loop", out / "loop-2rounds")
    dist.wait()
    command(cli_args("loop", out / "loop", {**loop, "rounds": 3}))
    command(cli_args("iterative-dpo", out / "iterative-dpo", iterative_dpo_settings(model, data)))
    command(cli_args("bon", out / "bon", bon_settings(model, data)))
    command(["demo", "--quick", "--out", out / "demo"])


def odd_batch(model: str, store: str, out: Path, rank: int) -> None:
    """DPO with a global batch of 3 on 2 processes: each process's exit code and stderr to OUT/odd.<rank>.txt."""
    settings = {**dpo_settings(model, store), "batch_size": ODD_BATCH}
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        code = modalign(cli_args("dpo", out / "odd", settings))
    (out / f"odd.{rank}.txt").write_text(f"{code}\n{stderr.getvalue()}")


def cut_back(run: Path, killed: Path) -> None:
    """What a kill after step 3 of 4 leaves: the step-2 checkpoint, 3 logged steps, no model, critic or summary."""
    shutil.copytree(run, killed)
    for done in ("model", "critic"):
        shutil.rmtree(killed / done, ignore_errors=True)
    (killed / "summary.json").unlink()
    lines = (killed / "metrics.jsonl").read_text().splitlines()
    (killed / "metrics.jsonl").write_text("\n".join(lines[:3]) + "\n")


def snapshot_loop(loop: Path, snapshot: Path) -> None:
    """The files the 2-round checks read, before the rerun with rounds=3 rewrites them."""
    import sqlite3

    snapshot.mkdir()
    for name in ("rounds.jsonl", "summary.json"):
        shutil.copy2(loop / name, snapshot / name)
    # the store's backup API, not a file copy: its last commits may still be in the write-ahead log
    with contextlib.closing(sqlite3.connect(loop / "feedback.db")) as source, \
            contextlib.closing(sqlite3.connect(snapshot / "feedback.db")) as copy:
        source.backup(copy)
    (snapshot / "round-1-rl-mtime").write_text(str((loop / "round-1" / "rl" / "summary.json").stat().st_mtime_ns))


def main(model: str, data: str, store: str, out: str) -> None:
    from modalign.dist import processes

    dist, root = processes(), Path(out)
    if dist.world == 1:
        one_process_runs(model, data, store, root)
        return
    assert dist.world == 2 and not dist.sharded, "launch with configs/accelerate/cpu_ddp.yaml on 2 processes"
    two_process_runs(model, data, store, root, dist)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))  # mp_ppo_update
    main(*sys.argv[1:5])
