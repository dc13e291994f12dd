"""Issue 7: the same DPO and GRPO work with modalign and with TRL, timed in one run.

    .venv/bin/python bench/trl_compare.py [--quick] [--reps 5] [--sizes small,compute] [--threads 2]

Needs TRL in the venv (`.venv/bin/pip install trl`; not a modalign dependency). Builds, once:
a ShapesWorld dataset (64 train scenes, images only), 64 preference pairs (gold caption vs a
caption with one hallucination), and a random-weight Qwen2-VL per size (tests/hf_tiny.py's
tokenizer and processor): `small` is hidden 64 with 2 layers, `compute` about 20 M parameters.

Then, alternating which framework goes first, `--reps` times each (one fresh process per run,
so that peak RSS and start-up are the run's own):

    DPO    64 pairs, batch 4, max length 64, 30 steps, beta 0.1, lr 5e-5
           modalign: recipes.dpo.run_dpo on the pairs file;  TRL: DPOTrainer with the Qwen2-VL processor
    GRPO   2 prompts x 4 answers, 16 new tokens (compute size: 64), 10 steps, KL 0.04, clip 0.2, lr 2e-5,
           ShapesWorld gold reward (-1 for an answer that never ends)
           modalign: recipes.online.run_online with rule:shapes_gold;  TRL: GRPOTrainer with the same rule

and reports medians over the repetitions: samples per second (pairs for DPO, answers for GRPO)
over the run (from the framework call to the last step) and in steady state (median step
time), generated tokens per second, peak RSS, time from process start to the first step,
start-up (importing the framework), and model FLOPs utilisation against this machine's
measured fp32 matmul throughput. Writes bench/results/trl_compare.json and .md.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from trl_compare_setup import (ROOT, SIZES, Fixtures, ModelShape, build_fixtures, dpo_flops,  # noqa: E402
                               grpo_step_flops, model_shape, prompt_and_pair_lengths, write_results)

JOBS = Path(__file__).resolve().parent / "trl_compare_jobs.py"
RESULTS = ROOT / "bench" / "results"
FRAMEWORKS = ("modalign", "trl")
ALGORITHMS = ("dpo", "grpo")
DPO = dict(steps=30, batch_size=4, max_length=64, lr=5e-5, beta=0.1, seed=0)
GRPO = dict(steps=10, prompts=2, samples=4, lr=2e-5, beta=0.04, clip=0.2, seed=0)
NEW_TOKENS = {"small": 16, "compute": 64}


def settings(algorithm: str, size: str, precision: str = "fp32", rep: int = 0) -> dict:
    """The run settings of one algorithm at one model size and precision (identical for both frameworks).

    Repetition `rep` runs with seed + rep: GRPO's answer lengths depend on which sampled answers end early
    (the policy learns to stop), so the medians are over several seeds, not one seed replayed.
    """
    base = DPO if algorithm == "dpo" else dict(GRPO, new_tokens=NEW_TOKENS[size])
    return dict(base, seed=base["seed"] + rep, precision=precision)


def case_label(size: str, precision: str) -> str:
    """The summary key of a (size, precision) case: the size alone for fp32."""
    return size if precision == "fp32" else f"{size} {precision}"


def run_job(spec: dict, threads: int, logs: Path, name: str) -> dict:
    """Run one job in a fresh process; its JSON result plus the parent's wall clock at launch."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false",
               HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TQDM_DISABLE="1",
               PYTHONPATH=str(ROOT / "src"))
    launched = time.time()
    done = subprocess.run([sys.executable, str(JOBS), json.dumps(dict(spec, threads=threads))], env=env,
                          capture_output=True, text=True, cwd=ROOT)
    logs.mkdir(parents=True, exist_ok=True)
    (logs / f"{name}.log").write_text(done.stdout + "\n--- stderr ---\n" + done.stderr)
    if done.returncode:
        raise SystemExit(f"{name} failed (log {logs / name}.log):\n{done.stderr[-3000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]), launched=launched)


def training_spec(framework: str, algorithm: str, size: str, precision: str, rep: int, fixtures: Fixtures,
                  out: Path) -> dict:
    """The job spec of one training run (the child reads only these paths and settings)."""
    return {"job": f"{framework}_{algorithm}", "model": str(fixtures.models[size]), "pairs": str(fixtures.pairs),
            "prompts": str(fixtures.prompts), "data": str(fixtures.data), "out": str(out),
            "settings": settings(algorithm, size, precision, rep)}


def run_metrics(result: dict, algorithm: str, size: str, shape: ModelShape, lengths: dict, peak_flops: float) -> dict:
    """Throughput, memory, latency and MFU (against `peak_flops` of the run's precision) of one run."""
    s = settings(algorithm, size)
    ends, t0 = result["step_ends"], result["t0"]
    steps = len(ends)
    if steps != s["steps"]:
        raise SystemExit(f"{result['job']}: {steps} steps timed, {s['steps']} configured")
    run_s = ends[-1] - t0
    step_s = statistics.median(b - a for a, b in zip(ends, ends[1:]))
    per_step = s["batch_size"] if algorithm == "dpo" else s["prompts"] * s["samples"]
    row = {"steps": steps, "run_s": run_s, "steady_step_s": step_s, "samples_per_s": steps * per_step / run_s,
           "steady_samples_per_s": per_step / step_s, "peak_rss_mib": result["peak_rss_mib"],
           "first_step_s": ends[0] - result["launched"], "process_s": result["finished"] - result["launched"]}
    if algorithm == "dpo":
        before, per_step_flops = dpo_flops(shape, statistics.mean(c + r for c, r in lengths["pair_tokens"]),
                                           len(lengths["pair_tokens"]), per_step)
    else:
        tokens = result["generated_tokens"]
        mean_answer = sum(tokens) / (steps * per_step)
        sampling_s = sum(end - start for start, end in result["sampling"] if end <= ends[-1])  # not after the run
        row.update(generated_tokens=sum(tokens), mean_answer_tokens=mean_answer, tokens_per_s=sum(tokens) / run_s,
                   steady_tokens_per_s=statistics.mean(tokens) / step_s, sampling_s_per_step=sampling_s / steps,
                   sampling_ms_per_token=1000 * sampling_s / sum(tokens), rest_s_per_step=(run_s - sampling_s) / steps)
        before, per_step_flops = 0.0, grpo_step_flops(shape, lengths["prompt_tokens"], mean_answer, per_step,
                                                      s["prompts"])
    flops = before + steps * per_step_flops
    row.update(model_flops=flops, mfu=flops / run_s / peak_flops, steady_mfu=per_step_flops / step_s / peak_flops)
    return row


def median_rows(rows: list[dict]) -> dict:
    """Per-metric median over the repetitions of one (size, algorithm, framework)."""
    return {key: statistics.median(r[key] for r in rows) for key in rows[0] if isinstance(rows[0][key], (int, float))}


def summarise(runs: list[dict]) -> dict:
    """case (size, or size and precision) -> algorithm -> {modalign, trl, ratio (modalign / TRL)} of medians."""
    summary: dict = {}
    for run in runs:
        summary.setdefault(case_label(run["size"], run["precision"]), {}).setdefault(run["algorithm"], {}).setdefault(run["framework"], []).append(
            run["metrics"])
    for by_algorithm in summary.values():
        for cell in by_algorithm.values():
            for framework in FRAMEWORKS:
                cell[framework] = median_rows(cell[framework])
            cell["ratio"] = {k: cell["modalign"][k] / cell["trl"][k] for k in cell["modalign"] if cell["trl"].get(k)}
    return summary


TABLE_METRICS = (  # (key, label, scale, format)
    ("samples_per_s", "samples/s (run: framework call to last step)", 1, ".2f"),
    ("steady_samples_per_s", "samples/s (steady: median step)", 1, ".2f"),
    ("mean_answer_tokens", "mean answer length (tokens)", 1, ".1f"),
    ("tokens_per_s", "generated tokens/s (run)", 1, ".1f"),
    ("steady_tokens_per_s", "generated tokens/s (steady)", 1, ".1f"),
    ("sampling_s_per_step", "sampling s per step (generate calls)", 1, ".3f"),
    ("sampling_ms_per_token", "sampling ms per generated token", 1, ".2f"),
    ("rest_s_per_step", "rest of the run s per step (run minus sampling)", 1, ".3f"),
    ("peak_rss_mib", "peak RSS MiB", 1, ".0f"),
    ("first_step_s", "process start to first step s", 1, ".2f"),
    ("mfu", "MFU % (run)", 100, ".3f"),
    ("steady_mfu", "MFU % (steady)", 100, ".3f"),
)


def markdown(report: dict) -> str:
    """The results as markdown: machine, start-up, then one row per size, algorithm and metric."""
    machine = report["machine"]
    lines = [
        "# modalign vs TRL (bench/trl_compare.py)", "",
        f"{machine['cpu']}, {machine['threads']} torch threads; torch {machine['torch']}, transformers "
        f"{machine['transformers']}, TRL {machine['trl']}. Matmul ({machine['matmul']['n']}^3), the MFU "
        f"denominator: fp32 {machine['matmul']['best_flops'] / 1e9:.1f} GFLOP/s"
        f"{bf16_peak(machine)}. Medians of "
        f"{report['reps']} repetition(s), frameworks alternating; every run in its own process.", "",
        *startup_table(report["startup"]), "",
        "| size | algorithm | metric | modalign | TRL | modalign / TRL |", "|---|---|---|---|---|---|",
    ]
    for case, by_algorithm in report["summary"].items():
        size, _, precision = case.partition(" ")
        params = report["models"][size]["total_params"] / 1e6
        for algorithm, cell in by_algorithm.items():
            for key, label, scale, fmt in TABLE_METRICS:
                if key not in cell["modalign"]:
                    continue
                lines.append(f"| {size} ({params:.1f} M){' ' + precision if precision else ''} | {algorithm} | {label} | "
                             f"{cell['modalign'][key] * scale:{fmt}} | {cell['trl'][key] * scale:{fmt}} | "
                             f"{cell['ratio'][key]:.2f} |")
    return "\n".join(lines + ["", *report["notes"]]) + "\n"


def bf16_peak(machine: dict) -> str:
    bf16 = machine.get("matmul_bf16")
    return f", bf16 {bf16['best_flops'] / 1e9:.1f} GFLOP/s" if bf16 else ""


def startup_table(startup: dict) -> list[str]:
    """Import times (own process each, medians) and what each framework adds to torch + transformers."""
    base = startup["base"]["import_s"]
    rows = [("import the framework s", "import_s", 0.0, ".2f"),
            ("interpreter start + imports s", "process_s", 0.0, ".2f"),
            (f"imports beyond torch + transformers ({base:.2f} s) s", "import_s", base, ".2f"),
            ("peak RSS after imports MiB", "peak_rss_mib", 0.0, ".0f")]
    lines = ["| start-up | modalign | TRL | modalign / TRL |", "|---|---|---|---|"]
    for label, key, minus, fmt in rows:
        ours, theirs = startup["modalign"][key] - minus, startup["trl"][key] - minus
        lines.append(f"| {label} | {ours:{fmt}} | {theirs:{fmt}} | {ours / theirs:.2f} |")
    return lines


NOTES = [
    "Notes:",
    "- Same data, model files, steps, batch sizes, lengths, learning rates, KL weights and reward; the same "
    "precision for both: fp32 (TRL's bf16 default switched off), or, in the rows marked bf16, bf16 autocast with "
    "fp32 weights, gradients and optimizer state (TRL's `bf16=True`, modalign's `precision: bf16`); TRL's "
    "gradient checkpointing off, constant LR, no eval, no checkpoints, no reporting (modalign still writes "
    "metrics.jsonl and TensorBoard events: that is part of its recipes). bf16 rows count MFU against the bf16 "
    "matmul peak.",
    "- DPO reference log-probs: modalign computes them once per pair before training; TRL recomputes them every step "
    "(TRL refuses `precompute_ref_log_probs=True` for vision datasets). modalign also encodes each pair's image once "
    "for chosen and rejected, and runs the shared prompt once per pair with both answers packed behind it "
    "(`reward.train.pair_answer_logprobs`: each answer reads the prompt and itself, at its own positions; the same "
    "log-probs); TRL encodes the image twice, runs the prompt twice and processes images in the collator every step.",
    "- GRPO: both sample with the KV cache, score with the same rule, and use the sequence-mean GRPO loss "
    "(TRL loss_type='grpo', modalign grpo_normalization='sequence'). modalign freezes the vision tower during RL "
    "(TRL trains it), takes the old log-probs from the training forward (one epoch of one minibatch: pi_old is the "
    "policy being trained; TRL does the same), and scores each prompt's 4 answers (reference and training passes) in "
    "one packed row behind one copy of the prompt (`models.shared_prefix`).",
    "- TRL's processor: Qwen2VLProcessor without its video processor (transformers builds that only with "
    "torchvision, which this venv lacks); TRL's reward function imports modalign's pure-Python ShapesWorld scorer.",
    "- MFU counts the same model FLOPs for both (bench/trl_compare_setup.py: 6N per trained token, 2N per "
    "sampled token and per reference token, DPO's reference once per pair, attention scores left out; N = decoder "
    "and LM-head parameters, plus the vision tower per patch) over the run, or one step's FLOPs over the median "
    "step. Work a framework repeats (TRL's per-step DPO reference) is not counted; work a framework skips is still "
    "counted (modalign runs a shared prompt once per pair or group, but the count has it once per answer), so MFU "
    "here is useful work per second against the machine's peak and can pass what the hardware executes.",
    "- DPO at max length 64: the prompt takes 55 tokens (16 of them image tokens; the tiny BPE has a 400-token vocabulary), so "
    "both frameworks cut every chosen and rejected answer to its first 9 tokens (keep the start, as both do).",
    "- GRPO answers are sampled from a policy that is learning (a never-ending answer scores -1, so policies learn to "
    "stop): answer lengths differ between runs and frameworks, so compare GRPO by tokens/s and MFU, not samples/s. "
    "Repetition r runs with seed r for both frameworks (DPO and GRPO), so the medians are over seeds: with one seed "
    "replayed, one lucky early stop decided a whole row.",
    "- GRPO sampling = the time inside `transformers`' `GenerationMixin.generate`, which both frameworks call "
    "(modalign with the media features filled in, TRL with pixel values); the rest = run time minus sampling "
    "(model loading, reference and training passes, reward, optimizer, logging), per step.",
]


def machine_info(threads: int, matmul: dict) -> dict:
    import torch
    import transformers
    import trl

    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                    if line.startswith("model name")), cpu)
    return {"cpu": cpu, "cores": os.cpu_count(), "threads": threads, "torch": torch.__version__,
            "transformers": transformers.__version__, "trl": trl.__version__, "python": platform.python_version(),
            "matmul": matmul}


def measure_startup(reps: int, threads: int, logs: Path) -> dict:
    """Median import time and interpreter-to-imported wall time per framework (alternating), and of
    torch + transformers alone ("base")."""
    rows: dict[str, list[dict]] = {f: [] for f in (*FRAMEWORKS, "base")}
    for rep in range(reps):
        for framework in (*(FRAMEWORKS if rep % 2 == 0 else FRAMEWORKS[::-1]), "base"):
            result = run_job({"job": f"import_{framework}"}, threads, logs, f"import-{framework}-{rep}")
            process_s = result["finished"] - result["launched"]
            rows[framework].append({"import_s": result["import_s"], "process_s": process_s,
                                    "peak_rss_mib": result["peak_rss_mib"]})
    return {framework: median_rows(r) for framework, r in rows.items()}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=5, help="repetitions per framework, size and algorithm")
    parser.add_argument("--quick", action="store_true", help="one repetition")
    parser.add_argument("--sizes", default="small,compute", help=f"comma-separated subset of {','.join(SIZES)}")
    parser.add_argument("--algorithms", default=",".join(ALGORITHMS))
    parser.add_argument("--bf16-sizes", default="small,compute",
                        help="sizes also run with bf16 autocast (both frameworks); '' for none")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of every timed run")
    parser.add_argument("--work", default="", help="folder for fixtures and run logs (default: a temp folder)")
    parser.add_argument("--out", default=str(RESULTS / "trl_compare"), help="writes OUT.json and OUT.md")
    return parser.parse_args()


def run_training(reps: int, cases: list[tuple[str, str]], algorithms: list[str], fixtures: Fixtures, context: dict,
                 threads: int, logs: Path) -> list[dict]:
    """Every (repetition, (size, precision), algorithm, framework) run, the frameworks' order flipping each
    repetition."""
    runs, started = [], time.time()
    for rep in range(reps):
        for size, precision in cases:
            for algorithm in algorithms:
                for framework in FRAMEWORKS if rep % 2 == 0 else FRAMEWORKS[::-1]:
                    name = f"{size}-{precision}-{algorithm}-{framework}-{rep}"
                    folder = fixtures.work / "runs" / name
                    spec = training_spec(framework, algorithm, size, precision, rep, fixtures, folder)
                    result = run_job(spec, threads, logs, name)
                    shutil.rmtree(folder, ignore_errors=True)  # saved models of every run add up (GBs); logs stay
                    metrics = run_metrics(result, algorithm, size, context["shapes"][size], context["lengths"][size],
                                          context["peak_flops"][precision])
                    runs.append({"size": size, "precision": precision, "algorithm": algorithm, "framework": framework,
                                 "rep": rep, "metrics": metrics, "raw": result})
                    print(f"{name}: {metrics['samples_per_s']:.2f} samples/s run, "
                          f"{metrics['steady_samples_per_s']:.2f} steady, {metrics['peak_rss_mib']:.0f} MiB "
                          f"({time.time() - started:.0f} s)", flush=True)
    return runs


def model_rows(sizes: list[str], context: dict) -> dict:
    """Per size: parameter counts, dimensions and the token counts the FLOP figures use."""
    return {size: {**asdict(context["shapes"][size]), "dims": asdict(SIZES[size]),
                   "prompt_tokens": context["lengths"][size]["prompt_tokens"],
                   "mean_pair_tokens": statistics.mean(c + r for c, r in context["lengths"][size]["pair_tokens"])}
            for size in sizes}


def main() -> None:
    args = parse_args()
    if importlib.util.find_spec("trl") is None:
        raise SystemExit("TRL is not installed: .venv/bin/pip install trl")
    reps, sizes = (1 if args.quick else args.reps), [s for s in args.sizes.split(",") if s]
    algorithms = [a for a in args.algorithms.split(",") if a]
    work = Path(args.work or tempfile.mkdtemp(prefix="trl_compare-"))
    logs, started = work / "logs", time.time()

    cases = [(size, "fp32") for size in sizes] + [(size, "bf16") for size in args.bf16_sizes.split(",") if size in sizes]
    fixtures = build_fixtures(work, sizes)
    matmul = run_job({"job": "matmul"}, args.threads, logs, "matmul")
    matmul_bf16 = run_job({"job": "matmul", "dtype": "bfloat16"}, args.threads, logs, "matmul-bf16")
    context = {"shapes": {size: model_shape(fixtures.models[size], fixtures) for size in sizes},
               "lengths": {size: prompt_and_pair_lengths(fixtures.models[size], fixtures, DPO["max_length"])
                           for size in sizes},
               "peak_flops": {"fp32": matmul["best_flops"], "bf16": matmul_bf16["best_flops"]}}
    startup = measure_startup(max(reps, 3), args.threads, logs)
    print(f"fixtures in {work}; matmul {matmul['best_flops'] / 1e9:.1f} GFLOP/s; start-up {startup}", flush=True)
    runs = run_training(reps, cases, algorithms, fixtures, context, args.threads, logs)

    report = {"reps": reps, "machine": dict(machine_info(args.threads, matmul), matmul_bf16=matmul_bf16),
              "startup": startup,
              "settings": {"dpo": DPO, "grpo": GRPO, "grpo_new_tokens": NEW_TOKENS},
              "models": model_rows(sizes, context), "summary": summarise(runs), "runs": runs, "notes": NOTES,
              "wall_s": time.time() - started}
    write_results(Path(args.out), report, markdown, logs)


if __name__ == "__main__":
    main()
