"""Process CPU time and wall time of each stage of a `modalign demo` run.

    PYTHONPATH=src OMP_NUM_THREADS=2 python bench/demo_stages.py run --seed 0 --out /tmp/demo0
    python bench/demo_stages.py watch --pid PID --out /tmp/demo0     # a demo already running

    python bench/demo_stages.py table /tmp/demo0 /tmp/demo1 /tmp/demo2   # the gold numbers of finished demos
    python bench/demo_stages.py split /tmp/demo0 /tmp/demo1 /tmp/demo2   # wall s per stage, from the files' times

`run` starts `python -m modalign.cli demo --seed N --out DIR` and watches it; `watch` attaches to a
running one. Every second the watcher reads the process's CPU time (user + system, its finished
children included, from /proc/PID/stat) and notes when each stage's result file appears in the demo
folder. A stage's CPU seconds are what the demo process spent between two result files; its
CPU/wall ratio is the parallel efficiency it got (2.0 at most on 2 quiet cores, less on a shared
machine). The table goes to stdout and, as JSON, to DIR/../<name>-stages.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

# (stage name, the file that appears when it is done), in the order the demo runs them
STAGES = [
    ("SFT (data, training, save)", "sft/summary.json"),
    ("eval of the SFT policy", "loop/eval-start.json"),
    ("round 1: sampling + panel", "loop/round-1/feedback.json"),
    ("round 1: reward model", "loop/round-1/reward/summary.json"),
    ("round 1: PPO", "loop/round-1/rl/summary.json"),
    ("round 1: eval", "loop/round-1/eval.json"),
    ("round 2: sampling + panel", "loop/round-2/feedback.json"),
    ("round 2: reward model", "loop/round-2/reward/summary.json"),
    ("round 2: PPO", "loop/round-2/rl/summary.json"),
    ("round 2: eval", "loop/round-2/eval.json"),
    ("report", "summary.json"),
]


def process_cpu(pid: int) -> tuple[float, bool] | None:
    """(utime + stime + cutime + cstime of `pid` in seconds, still running), or None once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # fields[0] is the state (Z: exited, not yet reaped); utime..cstime are fields 14-17 of the full line
    return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK"), fields[0] != "Z"


def process_start(pid: int) -> float:
    """Wall-clock time (epoch seconds) at which `pid` started."""
    ticks = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])  # field 22: starttime
    uptime = float(Path("/proc/uptime").read_text().split()[0])
    return time.time() - uptime + ticks / os.sysconf("SC_CLK_TCK")


def watch(pid: int, out: Path, poll: float = 1.0) -> list[dict]:
    """Stage rows (name, cpu_s, wall_s, cpu_per_wall) of the demo `pid` writing to `out`."""
    start_wall, start_cpu = process_start(pid), 0.0  # from the process's own start, whenever we attach
    marks, last_cpu, running = {}, start_cpu, True
    while running:
        state = process_cpu(pid)
        if state is None:
            break
        last_cpu, running = state
        for _, marker in STAGES:
            if marker not in marks and (out / marker).is_file():
                marks[marker] = (time.time() - start_wall, last_cpu - start_cpu)
        time.sleep(poll)
    rows, prev = [], (0.0, 0.0)
    for name, marker in STAGES:
        if marker not in marks:
            continue
        wall, cpu = marks[marker]
        rows.append({"stage": name, "cpu_s": round(cpu - prev[1], 1), "wall_s": round(wall - prev[0], 1),
                     "cpu_per_wall": round((cpu - prev[1]) / max(wall - prev[0], 1e-9), 2)})
        prev = (wall, cpu)
    rows.append({"stage": "total (watched)", "cpu_s": round(last_cpu - start_cpu, 1),
                 "wall_s": round(time.time() - start_wall, 1), "cpu_per_wall": None})
    return rows


def print_rows(rows: list[dict]) -> None:
    print("| stage | CPU s | wall s | CPU/wall |\n|---|---|---|---|")
    for row in rows:
        print(f"| {row['stage']} | {row['cpu_s']} | {row['wall_s']} | {row['cpu_per_wall'] or ''} |")


def gold_table(folders: list[str]) -> None:
    """One row per finished demo: hallucination of SFT / round 1 / round 2, the ratio the demo promises
    (<= 1/3), VQA of SFT and the final policy, coverage, KL, CPU s and wall s from its summary.json."""
    print("| seed | halluc. SFT / r1 / r2 | r2 / SFT | VQA SFT -> r2 | coverage SFT -> r2 | KL | CPU s | wall s |")
    print("|---|---|---|---|---|---|---|---|")
    for folder in folders:
        s = json.loads((Path(folder) / "summary.json").read_text())
        halluc = [s["sft"]["hallucination_rate"]] + [row["hallucination_rate"] for row in s["rounds"]]
        print(f"| {s['seed']} | {' / '.join(f'{h:.3f}' for h in halluc)} | {halluc[-1] / halluc[0]:.2f} | "
              f"{s['sft']['vqa_accuracy']:.3f} -> {s['rlhf']['vqa_accuracy']:.3f} | "
              f"{s['sft']['coverage']:.3f} -> {s['rlhf']['coverage']:.3f} | {s['rlhf']['kl_to_ref']:.2f} | "
              f"{s.get('cpu_seconds', float('nan')):.0f} | {s['wall_seconds']:.0f} |")


def wall_split(folders: list[str]) -> None:
    """Wall seconds of each stage of finished demos, from the modification times of the stages' result files
    (demo.json is written first): no watcher needed, so it works for any demo folder."""
    names = ["demo started"] + [name for name, _ in STAGES]
    times = {folder: [(Path(folder) / marker).stat().st_mtime for marker in ["demo.json"] + [m for _, m in STAGES]]
             for folder in folders}
    print("| stage | " + " | ".join(folders) + " |\n|---|" + "---|" * len(folders))
    for index, name in enumerate(names[1:], start=1):
        print(f"| {name} | " + " | ".join(f"{t[index] - t[index - 1]:.0f}" for t in times.values()) + " |")
    print("| total | " + " | ".join(f"{t[-1] - t[0]:.0f}" for t in times.values()) + " |")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["run", "watch", "table", "split"])
    parser.add_argument("folders", nargs="*", help="table, split: finished demo folders")
    parser.add_argument("--out", default="", help="run, watch: the demo folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pid", type=int, default=0, help="watch: the running demo's process id")
    args = parser.parse_args()
    if args.mode in ("table", "split"):
        (gold_table if args.mode == "table" else wall_split)(args.folders)
        return
    out = Path(args.out)
    if args.mode == "run":
        demo = subprocess.Popen([sys.executable, "-m", "modalign.cli", "demo", "--seed", str(args.seed),
                                 "--out", str(out)])
        pid = demo.pid
    else:
        pid = args.pid
    rows = watch(pid, out)
    if args.mode == "run":
        demo.wait()
    print_rows(rows)
    (out.parent / f"{out.name}-stages.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
