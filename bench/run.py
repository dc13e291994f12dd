"""`make bench`: issue 7 and 23's benchmarks with their full settings (about 1.5 hours on 2 quiet cores).

    .venv/bin/python bench/run.py [--quick] [--threads 2]

1. bench/trl_compare.py: modalign vs TRL 1.16, DPO and GRPO on a tiny Qwen2-VL at two sizes, fp32 and
   bf16, a prompt-heavy and an answer-heavy workload, 5 seeds per cell: steady samples/s (setup on its
   own line), executed-FLOP MFU against a peak measured in each run, per-run contention with contended
   runs repeated -> bench/results/trl_compare.{json,md} (skipped, with a note, when TRL is not
   installed: `.venv/bin/pip install -e '.[bench]'`). `--trl-args` passes more options to it.
2. bench/stages.py: modalign only: PPO with a critic on the same settings, rollout tokens/s with
   and without the media-feature cache, the share of each stage in a step
   -> bench/results/stages.{json,md}
3. bench/processes.py: the same DPO run on 1 process (1 or 2 threads) and on 2 processes through
   `accelerate launch` -> bench/results/processes.{json,md}

All run in fresh processes, one after the other (never concurrently: they time themselves).
Writes bench/results/bench.md, the tables one after the other.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"


def run(script: str, *args: str) -> None:
    """Run one benchmark script with this interpreter; stop on its failure."""
    print(f"== bench/{script} {' '.join(args)}", flush=True)
    done = subprocess.run([sys.executable, str(BENCH / script), *args], cwd=BENCH.parent)
    if done.returncode:
        raise SystemExit(f"bench/{script} failed with exit code {done.returncode}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="one repetition each (a smoke run, minutes)")
    parser.add_argument("--threads", default="2", help="torch threads of every timed run")
    parser.add_argument("--trl-args", default="", help="more options for bench/trl_compare.py, e.g. "
                        "'--reps 2 --max-repeats 0 --cells small-'")
    args = parser.parse_args()
    started, work = time.time(), Path(tempfile.mkdtemp(prefix="bench-"))
    parts = []
    if importlib.util.find_spec("trl") is None:
        parts.append("# modalign vs TRL\n\nSkipped: TRL is not installed (`.venv/bin/pip install -e '.[bench]'`).\n")
    else:
        run("trl_compare.py", "--threads", args.threads, "--work", str(work / "trl_compare"),
            *(["--quick"] if args.quick else []), *args.trl_args.split())
        parts.append((RESULTS / "trl_compare.md").read_text())
    run("stages.py", "--threads", args.threads, "--work", str(work / "stages"),
        *(["--reps", "1"] if args.quick else []))
    parts.append((RESULTS / "stages.md").read_text())
    run("processes.py", *(["--reps", "1"] if args.quick else []))
    parts.append((RESULTS / "processes.md").read_text())
    minutes = (time.time() - started) / 60
    (RESULTS / "bench.md").write_text("\n".join(parts) + f"\n(`make bench`: {minutes:.1f} min)\n")
    print(f"bench/results/bench.md written ({minutes:.1f} min; fixtures and logs in {work})")


if __name__ == "__main__":
    main()
