"""How much one `generate` call's speed varies between fresh processes (docs/scale.md, "GRPO spreads").

    .venv/bin/python bench/decode_spread.py [--size small] [--processes 8] [--threads 2,1] [--work DIR]

The same call in every process: trl_compare's Qwen2-VL checkpoint of that size (bench/trl_compare_setup.py),
8 rows of 56 random prompt tokens, exactly 16 sampled tokens (min = max new tokens, so every call decodes
the same number of steps), 3 warm-up calls, then 30 timed calls. Each process prints its wall ms per
decoding step and its CPU / wall; the parent starts them one after the other, alternating thread counts,
and prints the range and median per thread count. Text-only: the spread is about decoding, not the vision
tower. Nothing is written to bench/results.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from trl_compare_setup import build_fixtures  # noqa: E402

ROWS, PROMPT_TOKENS, NEW_TOKENS, WARMUP_CALLS, TIMED_CALLS = 8, 56, 16, 3, 30


def one_process(model_folder: str, threads: int) -> None:
    """The child: time the call and print `ms_per_step cpu_per_wall`."""
    import torch
    from transformers import AutoModelForImageTextToText

    torch.set_num_threads(threads)
    model = AutoModelForImageTextToText.from_pretrained(model_folder).eval()
    torch.manual_seed(0)
    ids = torch.randint(10, 200, (ROWS, PROMPT_TOKENS))  # (rows, prompt tokens)
    settings = dict(max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=True, pad_token_id=0)
    with torch.no_grad():
        for _ in range(WARMUP_CALLS):
            model.generate(input_ids=ids, **settings)
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(TIMED_CALLS):
            model.generate(input_ids=ids, **settings)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    print(f"{wall / TIMED_CALLS / NEW_TOKENS * 1000:.3f} {cpu / wall:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="small", help="trl_compare model size: small or compute")
    parser.add_argument("--processes", type=int, default=8, help="fresh processes per thread count")
    parser.add_argument("--threads", default="2,1", help="comma-separated torch thread counts")
    parser.add_argument("--work", default="", help="fixtures folder (default: a temp folder)")
    parser.add_argument("--child", nargs=2, metavar=("MODEL", "THREADS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return one_process(args.child[0], int(args.child[1]))
    work = Path(args.work or tempfile.mkdtemp(prefix="decode-spread-"))
    model = work / f"model-{args.size}"
    if not (model / "config.json").exists():
        build_fixtures(work, [args.size])
    thread_counts = [int(t) for t in args.threads.split(",")]
    steps_ms: dict[int, list[float]] = {t: [] for t in thread_counts}
    for process in range(args.processes):
        for threads in thread_counts:
            env = dict(os.environ, OMP_NUM_THREADS=str(threads))
            out = subprocess.run([sys.executable, __file__, "--child", str(model), str(threads)], env=env,
                                 check=True, capture_output=True, text=True).stdout.split()
            steps_ms[threads].append(float(out[0]))
            print(f"process {process} threads {threads}: {out[0]} ms per decoding step, CPU / wall {out[1]}")
    for threads, values in steps_ms.items():
        print(f"threads {threads}: {min(values):.2f}-{max(values):.2f} ms per step, "
              f"median {statistics.median(values):.2f} ({len(values)} processes)")


if __name__ == "__main__":
    main()
