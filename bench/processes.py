"""One process against two through `accelerate launch`: the same DPO run, wall time and pairs per second.

    .venv/bin/python bench/processes.py [--size compute] [--steps 30] [--batch 8] [--reps 3]

The fixtures of bench/trl_compare.py (a random-weight Qwen2-VL, 64 ShapesWorld pairs as a TRL
file). Three ways to use this machine's two cores, each run in fresh processes, alternating:
one process with 1 thread, one process with 2 threads, two processes (DDP over gloo) with 1
thread each. Reported: the recipe's wall time from its summary (store import, reference pass,
training; no evaluation) and pairs per second over it, medians over the repetitions. Writes
bench/results/processes.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from trl_compare_setup import ROOT, build_fixtures  # noqa: E402

RESULTS = ROOT / "bench" / "results"
ACCELERATE = Path(sys.executable).with_name("accelerate")
LAYOUTS = {"1 process x 1 thread": (1, 1), "1 process x 2 threads": (1, 2), "2 processes x 1 thread": (2, 1)}


def dpo_args(model: Path, pairs: Path, out: Path, steps: int, batch: int) -> list[str]:
    count = sum(1 for _ in pairs.open(encoding="utf-8"))
    settings = {"policy": model, "store": pairs, "data": "", "batch_size": batch, "max_length": 64, "lr": 5e-5,
                "checkpoint_every": 0, "epochs": (steps - 0.5) * batch / count}
    return ["-m", "modalign.cli", "dpo", "--out", str(out),
            *[arg for key, value in settings.items() for arg in ("--set", f"{key}={value}")]]


def run_once(processes: int, threads: int, args: list[str], out: Path, batch: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    if processes == 1:
        command = [sys.executable, *args]
    else:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        command = [str(ACCELERATE), "launch", "--config_file", str(ROOT / "configs/accelerate/cpu_ddp.yaml"),
                   "--num_processes", str(processes), "--main_process_ip", "127.0.0.1",
                   "--main_process_port", str(port), *args]
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
    if done.returncode:
        raise RuntimeError(done.stderr[-3000:])
    summary = json.loads((out / "summary.json").read_text())
    return {"wall_seconds": summary["wall_seconds"], "steps": summary["steps"],
            "pairs_per_second": summary["steps"] * batch / summary["wall_seconds"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="compute")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--reps", type=int, default=3)
    opts = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="modalign-mp-bench-"))
    fixtures = build_fixtures(work / "fixtures", [opts.size])
    rows: dict[str, list[dict]] = {name: [] for name in LAYOUTS}
    for rep in range(opts.reps):
        order = list(LAYOUTS) if rep % 2 == 0 else list(reversed(LAYOUTS))
        for name in order:
            processes, threads = LAYOUTS[name]
            out = work / f"{name.replace(' ', '_')}-{rep}"
            result = run_once(processes, threads,
                              dpo_args(fixtures.models[opts.size], fixtures.pairs, out, opts.steps, opts.batch), out,
                              opts.batch)
            rows[name].append(result)
            print(f"{name}: {result['wall_seconds']:.1f} s, {result['pairs_per_second']:.2f} pairs/s", flush=True)
    medians = {name: {key: statistics.median(r[key] for r in results) for key in ("wall_seconds", "pairs_per_second")}
               for name, results in rows.items()}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "processes.json").write_text(json.dumps({"settings": vars(opts), "runs": rows, "medians": medians},
                                                          indent=2))
    base = medians["1 process x 2 threads"]["pairs_per_second"]
    lines = ["# One process against two (bench/processes.py)\n",
             f"DPO, {opts.size} Qwen2-VL, global batch {opts.batch}, {opts.steps} steps, max length 64; "
             f"medians of {opts.reps}; wall time of the recipe (import of the pairs, reference pass, training).\n",
             "| layout | wall s | pairs/s | vs 1 process x 2 threads |", "|---|---|---|---|"]
    lines += [f"| {name} | {m['wall_seconds']:.1f} | {m['pairs_per_second']:.2f} | {m['pairs_per_second'] / base:.2f} |"
              for name, m in medians.items()]
    (RESULTS / "processes.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
