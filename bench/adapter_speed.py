"""Issue 18's speed must-show: modalign's fast-path speed BEFORE vs AFTER the generic adapter.

    PYTHONPATH=src .venv/bin/python bench/adapter_speed.py [--reps 3] [--sizes small,compute] [--threads 1]
        [--before /work/wt-before/src] [--work DIR]

BEFORE is the code before issue 18 (a read-only worktree's `src`, default /work/wt-before/src,
commit 96fc334), AFTER is this worktree's `src` (the generic adapter, the six families as registered
fast paths, and the recipes' load-time self-check). Both run the same harness: bench/trl_compare.py's
fixtures (built once, with the AFTER code) and its `modalign_dpo` / `modalign_grpo` jobs from
bench/trl_compare_jobs.py on the random-weight Qwen2-VL checkpoints (a fast-path family), fp32.
Only PYTHONPATH differs between the two.

Every run is a fresh process (this script re-invoked with `--child`), BEFORE and AFTER alternating
which goes first per repetition. Per run the child records, besides the job's own clocks:
`modalign.__file__` (which code ran), process CPU time at every step end (`time.process_time()`,
all threads; less sensitive to other processes' load than wall time), the wall-clock interval of the
self-check (`models.hf.self_check.self_check`, AFTER only) and the run's self_check.json. Reported per
(size, algorithm, version): median over repetitions of the steady step time (median step-to-step
interval), CPU seconds per step (median step-to-step CPU), run samples/s (framework call to last
step), time to the first step end, the self-check's share of it, and min-max spreads.
Writes bench/results/adapter_speed.json and .md.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
VERSIONS = ("before", "after")
SETUP_PROFILE = cProfile.Profile(time.process_time)  # CPU time (other jobs load the machine); child: from the end of the imports to the first step's end (`--profile`)
PER_STEP = {"dpo": 4, "grpo": 8}  # samples per step: DPO pairs (batch 4), GRPO answers (2 prompts x 4)


# ---- child: one timed job in its own process ----------------------------------------------------------


def clock_cpu_steps(profile: str = "") -> list[float]:
    """Record the process CPU time (all threads) at each recipe step end (`RunDir.log`, as the job's wall clock).

    `profile`: a path stem; cProfile then writes STEM-setup.pstats (the imports' end to the first step's end,
    with `clock_imports`) and STEM-steady.pstats (the first step's end to the last step's).
    """
    from modalign import runs

    cpu: list[float] = []
    log = runs.RunDir.log
    steady = cProfile.Profile(time.process_time) if profile else None

    def timed_log(self, step: int, metrics) -> None:
        if profile:
            (steady if cpu else SETUP_PROFILE).disable()
            if not cpu:
                SETUP_PROFILE.dump_stats(f"{profile}-setup.pstats")
        cpu.append(time.process_time())
        log(self, step, metrics)
        if steady:
            steady.dump_stats(f"{profile}-steady.pstats")  # rewritten each step: the file holds the steps so far
            steady.enable()

    runs.RunDir.log = timed_log
    return cpu


def clock_self_check() -> list[tuple[float, float, float]]:
    """(wall start, wall end, CPU seconds) of each load-time self-check (AFTER only; BEFORE has no such module)."""
    try:
        from modalign.models.hf import self_check as module
    except ImportError:
        return []
    intervals: list[tuple[float, float, float]] = []
    check = module.self_check

    def timed(*args, **kwargs):
        started, cpu = time.time(), time.process_time()
        try:
            return check(*args, **kwargs)
        finally:
            intervals.append((started, time.time(), time.process_time() - cpu))

    module.self_check = timed
    return intervals


def clock_imports(jobs, profile: bool = False) -> list[float]:
    """Process CPU time when the job's framework imports end (right before its wall clock `t0` starts);
    `profile`: start the setup profile there."""
    after_imports: list[float] = []
    import_all = jobs.import_all

    def timed(modules):
        seconds = import_all(modules)
        after_imports.append(time.process_time())
        if profile:
            SETUP_PROFILE.enable()
        return seconds

    jobs.import_all = timed
    return after_imports


def child(spec: dict) -> None:
    """Run one trl_compare job with CPU and self-check clocks; print its JSON result (last line)."""
    sys.path.insert(0, str(BENCH))
    import modalign
    import trl_compare_jobs as jobs

    print(f"modalign imported from {modalign.__file__}", flush=True)
    cpu, checks = clock_cpu_steps(spec.get("profile", "")), clock_self_check()  # installed first: the job's wall clock wraps this one
    cpu_t0 = clock_imports(jobs, bool(spec.get("profile")))
    result = jobs.JOBS[spec["job"]](spec)
    check_file = Path(spec["out"]) / "self_check.json"
    result.update(modalign_file=modalign.__file__, cpu_t0=cpu_t0[-1], step_cpu=cpu, self_check=checks,
                  self_check_record=json.loads(check_file.read_text()) if check_file.is_file() else None,
                  peak_rss_mib=jobs.peak_rss_mib(), finished=time.time())
    print(json.dumps(result))


# ---- parent: fixtures, alternating runs, summary ------------------------------------------------------


def run_child(spec: dict, src: Path, threads: int, log: Path) -> dict:
    """One job in a fresh process with `src` first on PYTHONPATH; checks that `src` is what it imported."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false",
               HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TQDM_DISABLE="1",
               PYTHONPATH=str(src))
    done = subprocess.run([sys.executable, __file__, "--child", json.dumps(dict(spec, threads=threads))], env=env,
                          capture_output=True, text=True, cwd=ROOT)
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(done.stdout + "\n--- stderr ---\n" + done.stderr)
    if done.returncode:
        raise SystemExit(f"{log.stem} failed (log {log}):\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if not Path(result["modalign_file"]).resolve().is_relative_to(src.resolve()):
        raise SystemExit(f"{log.stem} imported modalign from {result['modalign_file']}, not from {src}")
    return result


def run_metrics(result: dict, algorithm: str) -> dict:
    """Steady step (wall, CPU), run throughput, time to the first step and the self-check of one run."""
    ends, cpu, t0 = result["step_ends"], result["step_cpu"], result["t0"]
    steps = len(ends)
    self_check_s = sum(end - start for start, end, _ in result["self_check"])
    row = {"steps": steps, "steady_step_s": statistics.median(b - a for a, b in zip(ends, ends[1:])),
           "cpu_step_s": statistics.median(b - a for a, b in zip(cpu, cpu[1:])),
           "cpu_steps_mean_s": (cpu[-1] - cpu[0]) / (steps - 1),
           "samples_per_s": steps * PER_STEP[algorithm] / (ends[-1] - t0),
           "to_first_step_s": ends[0] - t0, "self_check_s": self_check_s,
           "setup_without_check_s": ends[0] - t0 - self_check_s, "cpu_to_first_step_s": cpu[0] - result["cpu_t0"],
           "cpu_self_check_s": sum(c for _, _, c in result["self_check"]), "peak_rss_mib": result["peak_rss_mib"]}
    if algorithm == "grpo":
        row["answer_tokens"] = sum(result["generated_tokens"]) / (steps * PER_STEP[algorithm])
    return row


def spec_of(algorithm: str, size: str, rep: int, fixtures, out: Path) -> dict:
    from trl_compare import training_spec

    return training_spec("modalign", algorithm, size, "fp32", rep, fixtures, out)


def run_all(args: argparse.Namespace, fixtures, logs: Path) -> list[dict]:
    """Every (repetition, size, algorithm, version) run; which version goes first flips each repetition."""
    import shutil

    srcs = {"before": Path(args.before), "after": ROOT / "src"}
    runs, started = [], time.time()
    for rep in range(args.reps):
        for size in args.sizes.split(","):
            for algorithm in args.algorithms.split(","):
                for version in VERSIONS if rep % 2 == 0 else VERSIONS[::-1]:
                    name = f"{size}-{algorithm}-{version}-{rep}"
                    out = fixtures.work / "runs" / name
                    result = run_child(spec_of(algorithm, size, rep, fixtures, out), srcs[version], args.threads,
                                       logs / f"{name}.log")
                    shutil.rmtree(out, ignore_errors=True)
                    metrics = run_metrics(result, algorithm)
                    runs.append({"size": size, "algorithm": algorithm, "version": version, "rep": rep,
                                 "modalign_file": result["modalign_file"], "self_check": result["self_check_record"],
                                 "metrics": metrics, "load_1min": os.getloadavg()[0]})
                    print(f"{name}: step {metrics['steady_step_s'] * 1000:.1f} ms, cpu/step "
                          f"{metrics['cpu_step_s'] * 1000:.1f} ms, {metrics['samples_per_s']:.2f} samples/s, first step "
                          f"{metrics['to_first_step_s']:.2f} s (self-check {metrics['self_check_s']:.2f} s), load "
                          f"{os.getloadavg()[0]:.1f} ({time.time() - started:.0f} s)", flush=True)
    return runs


def summarise(runs: list[dict]) -> dict:
    """(size, algorithm) -> version -> metric -> {median, min, max}; plus AFTER / BEFORE of the medians."""
    cells: dict = {}
    for run in runs:
        cells.setdefault(f"{run['size']} {run['algorithm']}", {}).setdefault(run["version"], []).append(run["metrics"])
    summary = {}
    for case, by_version in cells.items():
        stats = {v: {k: {"median": statistics.median(r[k] for r in rows), "min": min(r[k] for r in rows),
                         "max": max(r[k] for r in rows)} for k in rows[0]} for v, rows in by_version.items()}
        ratio = {k: stats["after"][k]["median"] / stats["before"][k]["median"]
                 for k in stats["after"] if stats["before"][k]["median"]}
        summary[case] = dict(stats, ratio=ratio)
    return summary


TABLE = (  # key, label, scale, format
    ("steady_step_s", "steady step ms (median step)", 1000, ".1f"),
    ("cpu_step_s", "CPU ms per step (median step)", 1000, ".1f"),
    ("samples_per_s", "samples/s (run: recipe call to last step)", 1, ".2f"),
    ("to_first_step_s", "recipe call to first step end s", 1, ".2f"),
    ("self_check_s", "  of which the self-check s", 1, ".2f"),
    ("setup_without_check_s", "  the rest (load, validate, encode, reference, step 1) s", 1, ".2f"),
    ("cpu_to_first_step_s", "CPU s, recipe call to first step end", 1, ".2f"),
    ("cpu_self_check_s", "  of which the self-check CPU s", 1, ".2f"),
    ("answer_tokens", "mean answer tokens (GRPO: same work?)", 1, ".1f"),
    ("peak_rss_mib", "peak RSS MiB", 1, ".0f"),
)


NOTES = [
    "Notes:",
    "- Same harness for both versions: bench/trl_compare.py's fixtures (built once, with the AFTER code) and "
    "bench/trl_compare_jobs.py's `modalign_dpo` / `modalign_grpo` jobs (DPO: 64 pairs, batch 4, max length 64, 30 "
    "steps; GRPO: 2 prompts x 4 answers, 16 new tokens (compute: 64), 10 steps); repetition r uses seed r for both "
    "versions, so both do the same work (GRPO: the same answer lengths, row 'mean answer tokens').",
    "- Each run's log prints `modalign.__file__`; the parent refuses a run whose modalign did not come from that "
    "version's src.",
    "- Steady step = median interval between consecutive step ends (RunDir.log); CPU per step = the same over "
    "`time.process_time()` (the process's CPU, all threads). Setup = recipe call (after the imports) to the end of "
    "the first step; it holds model loading, validation, the self-check (AFTER only, timed apart), encoding, DPO's "
    "reference log-probs and the first step.",
    "- The machine (2 cores) was shared with other helpers' jobs: wall times (steady step, samples/s, setup) carry "
    "their load; CPU seconds are the fairer comparison.",
]


def markdown(report: dict) -> str:
    """The table: per case and metric, median [min-max] of BEFORE and AFTER and the ratio of medians."""
    lines = ["# Fast-path speed before vs after the generic adapter (bench/adapter_speed.py)", "",
             f"`{report['command']}`", "",
             f"BEFORE = {report['before']} (commit 96fc334), AFTER = {report['after']}. Qwen2-VL (a fast-path "
             f"family), fp32, {report['threads']} torch thread(s), {report['reps']} repetitions per version, "
             f"versions alternating, each run its own process. Medians [min-max] over repetitions; ratio = AFTER / "
             f"BEFORE of the medians. 1-min load average during the runs: {report['load']['min']:.1f}-"
             f"{report['load']['max']:.1f} (2 cores shared with other jobs).", "",
             "| case | metric | BEFORE | AFTER | AFTER / BEFORE |", "|---|---|---|---|---|"]
    for case, cell in report["summary"].items():
        for key, label, scale, fmt in TABLE:
            if key not in cell["after"]:
                continue
            b, a = cell["before"][key], cell["after"][key]
            ratio = f"{cell['ratio'][key]:.3f}" if key in cell["ratio"] else "-"
            lines.append(f"| {case} | {label} | {b['median'] * scale:{fmt}} [{b['min'] * scale:{fmt}}-"
                         f"{b['max'] * scale:{fmt}}] | {a['median'] * scale:{fmt}} [{a['min'] * scale:{fmt}}-"
                         f"{a['max'] * scale:{fmt}}] | {ratio} |")
    return "\n".join(lines + ["", *report["notes"], self_check_note(report["runs"])]) + "\n"


def self_check_note(runs: list[dict]) -> str:
    """What the AFTER runs' self_check.json said (the fast path must have stayed on for the comparison to hold)."""
    seen = sorted({f"{r['self_check']['self_check']['path']} (max |log-prob difference| "
                   f"{r['self_check']['self_check']['max_abs_diff']:.2g})" for r in runs if r["version"] == "after"})
    files = sorted({str(Path(r["modalign_file"]).parents[1]) + f" ({r['version']})" for r in runs})
    return f"- AFTER's self_check.json in every run: {'; '.join(seen)}. modalign imported from: {', '.join(files)}."


def profile_case(args: argparse.Namespace, fixtures, logs: Path) -> str:
    """cProfile of one (size, algorithm), BEFORE and AFTER, setup and steady-state steps apart: markdown tables of
    the functions whose own time differs most (paths relative to each version's src)."""
    size, algorithm = args.profile.split(",")
    srcs = {"before": Path(args.before), "after": ROOT / "src"}
    stems, steps = {}, {}
    logs.mkdir(parents=True, exist_ok=True)
    for version, src in srcs.items():
        stems[version] = logs / f"profile-{size}-{algorithm}-{version}"
        spec = dict(spec_of(algorithm, size, 0, fixtures, fixtures.work / "runs" / f"profile-{version}"),
                    profile=str(stems[version]))
        result = run_child(spec, src, args.threads, stems[version].with_suffix(".log"))
        steps[version] = len(result["step_ends"]) - 1  # profiled in steady state: step 2 to the last
    tables = [profile_table(f"{size} {algorithm}, setup (imports' end to first step's end), own time per run",
                            {v: own_times(f"{stems[v]}-setup.pstats", srcs[v], 1) for v in srcs}),
              profile_table(f"{size} {algorithm}, steady-state steps, own time per step",
                            {v: own_times(f"{stems[v]}-steady.pstats", srcs[v], steps[v]) for v in srcs})]
    return "\n".join(tables)


def own_times(stats_file: str, src: Path, divide: int) -> dict[str, float]:
    """Function ("file:name", file relative to src or site-packages) -> own seconds / `divide`."""
    import pstats

    times: dict[str, float] = {}
    for (file, _, name), (_, _, own, _, _) in pstats.Stats(stats_file).stats.items():
        key = f"{_short(file, src)}:{name}"
        times[key] = times.get(key, 0.0) + own / divide
    return times


def profile_table(title: str, times: dict[str, dict[str, float]]) -> str:
    """The 15 functions whose own time differs most between BEFORE and AFTER, ms."""
    before, after = times["before"], times["after"]
    rows = sorted(set(before) | set(after), key=lambda k: -abs(after.get(k, 0.0) - before.get(k, 0.0)))[:15]
    lines = [f"Profile (cProfile) {title}, ms; total {sum(before.values()) * 1000:.1f} BEFORE, "
             f"{sum(after.values()) * 1000:.1f} AFTER (CPU time, profiler overhead included).", "",
             "| function | BEFORE | AFTER | difference |", "|---|---|---|---|"]
    for key in rows:
        b, a = before.get(key, 0.0) * 1000, after.get(key, 0.0) * 1000
        lines.append(f"| `{key}` | {b:.2f} | {a:.2f} | {a - b:+.2f} |")
    return "\n".join(lines) + "\n"


def _short(file: str, src: Path) -> str:
    """A profiled file named alike in both versions: relative to the version's src or to site-packages."""
    if file.startswith(str(src)):
        return file[len(str(src)) + 1:]
    return file.split("site-packages/")[-1]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--child", default="", help=argparse.SUPPRESS)
    parser.add_argument("--reps", type=int, default=3, help="repetitions per version, size and algorithm")
    parser.add_argument("--sizes", default="small,compute")
    parser.add_argument("--algorithms", default="dpo,grpo")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of every run")
    parser.add_argument("--before", default="/work/wt-before/src", help="the BEFORE code's src folder")
    parser.add_argument("--profile", default="", help="SIZE,ALGORITHM: only profile one case, BEFORE and AFTER")
    parser.add_argument("--render", action="store_true", help="only rewrite OUT.md from OUT.json")
    parser.add_argument("--work", default="", help="folder for fixtures and logs (default: a temp folder)")
    parser.add_argument("--out", default=str(BENCH / "results" / "adapter_speed"), help="writes OUT.json and OUT.md")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.child:
        child(json.loads(args.child))
        return
    if args.render:
        report = json.loads(Path(args.out).with_suffix(".json").read_text())
        Path(args.out).with_suffix(".md").write_text(markdown(dict(report, notes=NOTES)))
        return
    sys.path.insert(0, str(BENCH))
    from trl_compare_setup import build_fixtures

    work = Path(args.work or tempfile.mkdtemp(prefix="adapter_speed-"))
    started = time.time()
    fixtures = build_fixtures(work, args.sizes.split(","))
    if args.profile:
        table = profile_case(args, fixtures, work / "logs")
        (work / "logs" / "profile.md").write_text(table)  # pasted into the results by hand, with the judgement
        print(table)
        return
    runs = run_all(args, fixtures, work / "logs")
    loads = [r["load_1min"] for r in runs]
    report = {"command": " ".join(["PYTHONPATH=src", ".venv/bin/python", "bench/adapter_speed.py", *sys.argv[1:]]),
              "before": args.before, "after": str(ROOT / "src"), "threads": args.threads, "reps": args.reps,
              "load": {"min": min(loads), "max": max(loads)}, "summary": summarise(runs), "runs": runs,
              "notes": NOTES, "wall_s": time.time() - started, "logs": str(work / "logs")}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2))
    out.with_suffix(".md").write_text(markdown(report))
    print(markdown(report), f"({report['wall_s']:.0f} s; logs in {work / 'logs'})")


if __name__ == "__main__":
    main()
