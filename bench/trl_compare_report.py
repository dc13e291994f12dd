"""The tables of bench/trl_compare.py: per cell, medians over seeds, per-seed ratios and their spread."""

from __future__ import annotations

import statistics

FRAMEWORKS = ("modalign", "trl")
TARGET = 1.5  # issue 23: modalign >= 1.5x TRL in steady samples/s


def cell_key(run: dict) -> str:
    return f"{run['size']}-{run['precision']}-{run['workload']}-{run['algorithm']}"


def median_rows(rows: list[dict]) -> dict:
    """Per-metric median over the seeds of one cell and framework (numbers only)."""
    keys = [k for k, v in rows[0].items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return {key: statistics.median(r[key] for r in rows) for key in keys}


def summarise(runs: list[dict]) -> dict:
    """cell -> {modalign, trl: medians; ratios: per seed, modalign / TRL steady samples/s; contended runs}."""
    by_cell: dict = {}
    for run in runs:
        by_cell.setdefault(cell_key(run), []).append(run)
    summary = {}
    for key, cell_runs in by_cell.items():
        seeds = sorted({r["rep"] for r in cell_runs})
        entry = {f: median_rows([r["metrics"] for r in cell_runs if r["framework"] == f]) for f in FRAMEWORKS}
        for metric, name in (("steady_samples_per_s", "ratio"), ("steady_samples_per_cpu_s", "cpu_ratio")):
            ratios = seed_ratios(cell_runs, seeds, metric)
            entry.update({f"{name}s": ratios, name: statistics.median(ratios), f"{name}_min": min(ratios),
                          f"{name}_max": max(ratios)})
        entry.update(seeds=len(seeds), contended=[f"{r['framework']}-{r['rep']}" for r in cell_runs
                                                  if r["metrics"]["contended"]],
                     runs=len(cell_runs))
        summary[key] = entry
    return summary


def seed_ratios(runs: list[dict], seeds: list[int], metric: str) -> list[float]:
    """modalign / TRL of `metric` per seed (the two runs of one seed ran back to back)."""
    value = {(r["framework"], r["rep"]): r["metrics"][metric] for r in runs}
    return [value["modalign", s] / value["trl", s] for s in seeds if ("modalign", s) in value and ("trl", s) in value]


def pair(cell: dict, key: str, fmt: str, scale: float = 1.0) -> str:
    """'modalign / TRL' of one median metric."""
    return " / ".join(f"{cell[f][key] * scale:{fmt}}" if key in cell[f] else "-" for f in FRAMEWORKS)


def markdown(report: dict) -> str:
    """Machine line, the headline table, then setup, FLOPs, workload and contention tables."""
    machine, summary = report["machine"], report["summary"]
    rule = report["contention_rule"]
    lines = [
        "# modalign vs TRL (bench/trl_compare.py)", "",
        f"{machine['cpu']}, {machine['cores']} cores, {machine['threads']} torch threads per run; torch "
        f"{machine['torch']}, transformers {machine['transformers']}, TRL {machine['trl']}. 2048^3 matmul: fp32 "
        f"{machine['matmul']['fp32']['best_flops'] / 1e9:.0f}, bf16 {machine['matmul']['bf16']['best_flops'] / 1e9:.0f} "
        f"GFLOP/s. Up to {report['reps']} seed(s) per cell, frameworks alternating first; every run in its own "
        f"process; steps x {' / '.join(f'{x:g}' for x in scales(report))} of the defaults (Setup table: steps per run). Contention rule: a run with other processes "
        f"using more than {rule['max_other_load']:g} cores is repeated up to {rule['max_repeats']} time(s).", "",
        "## Steady samples/s (pairs for DPO, answers for GRPO)", "",
        "Wall: samples per wall second (what `make bench` targets on a quiet machine). CPU: samples per CPU "
        "second of the run's process (all threads; with 1 thread this is what a quiet machine would give, whatever "
        "the contention). Ratios are per seed (the two runs of a seed back to back), median [min, max].", "",
        "| cell | wall: modalign | wall: TRL | wall ratio | CPU: modalign | CPU: TRL | CPU ratio | >= 1.5x (wall / CPU) "
        "| contended runs |", "|---|---|---|---|---|---|---|---|---|",
    ]
    for key, cell in summary.items():
        contended = ", ".join(cell["contended"]) or "none"
        lines.append(f"| {key} | {cell['modalign']['steady_samples_per_s']:.2f} | {cell['trl']['steady_samples_per_s']:.2f} | "
                     f"{cell['ratio']:.2f} [{cell['ratio_min']:.2f}, {cell['ratio_max']:.2f}] ({cell['seeds']} seeds) | "
                     f"{cell['modalign']['steady_samples_per_cpu_s']:.2f} | {cell['trl']['steady_samples_per_cpu_s']:.2f} | "
                     f"{cell['cpu_ratio']:.2f} [{cell['cpu_ratio_min']:.2f}, {cell['cpu_ratio_max']:.2f}] | "
                     f"{'yes' if cell['ratio'] >= TARGET else 'no'} / {'yes' if cell['cpu_ratio'] >= TARGET else 'no'} | "
                     f"{len(cell['contended'])} of {cell['runs']}: {contended} |")
    not_run = [c for c in all_cells(report) if c not in summary]
    if not_run:
        lines += ["", f"Not run (not in this report): {', '.join(not_run)}."]
    lines += ["", "## Setup (medians; modalign / TRL)", "",
              "| cell | steps | start-up s (launch to framework call) | setup s (framework call to end of step 1) | "
              "of which reference pass s | setup share % (setup less reference pass, of the run) | steady step s | "
              "peak RSS MiB |", "|---|---|---|---|---|---|---|---|"]
    for key, cell in summary.items():
        lines.append(f"| {key} | {cell['modalign']['steps']:.0f} | {pair(cell, 'start_up_s', '.2f')} | "
                     f"{pair(cell, 'setup_s', '.2f')} | {pair(cell, 'reference_s', '.2f')} | "
                     f"{pair(cell, 'setup_share', '.1f', 100)} | {pair(cell, 'steady_step_s', '.4f')} | "
                     f"{pair(cell, 'peak_rss_mib', '.0f')} |")
    lines += ["", "## FLOPs per sample and MFU (medians; modalign / TRL)", "",
              "| cell | nominal MFLOP per sample | executed MFLOP per sample | run's peak GFLOP/s | MFU % (executed) |",
              "|---|---|---|---|---|"]
    for key, cell in summary.items():
        lines.append(f"| {key} | {pair(cell, 'nominal_flops_per_sample', '.1f', 1e-6)} | "
                     f"{pair(cell, 'executed_flops_per_sample', '.1f', 1e-6)} | {pair(cell, 'peak_flops', '.0f', 1e-9)} | "
                     f"{pair(cell, 'mfu', '.1f', 100)} |")
    lines += ["", "## Workloads", "", "| size | workload | DPO prompt share % | DPO sequences cut | DPO pairs with chosen == "
              "rejected after the cut |", "|---|---|---|---|---|"]
    for size, model in report["models"].items():
        for workload, numbers in model["workloads"].items():
            lines.append(f"| {size} ({model['total_params'] / 1e6:.1f} M) | {workload} | {100 * numbers['prompt_share']:.0f} | "
                         f"{numbers['cut_sequences']} | {numbers['identical_after_cut']} |")
    lines += ["", "| GRPO cell | mean answer tokens | prompt share % | generated tokens/s (steady) | sampling ms per "
              "token | sampling share of a step % |", "|---|---|---|---|---|---|"]
    for key, cell in summary.items():
        if key.endswith("grpo"):
            lines.append(f"| {key} | {pair(cell, 'mean_answer_tokens', '.1f')} | {pair(cell, 'prompt_share', '.0f', 100)} | "
                         f"{pair(cell, 'steady_tokens_per_s', '.0f')} | {pair(cell, 'sampling_ms_per_token', '.2f')} | "
                         f"{pair(cell, 'sampling_share', '.0f', 100)} |")
    lines += ["", "## Contention per run", "", "| run | others' load, cores (every attempt) | own CPU s / wall s | "
              "torch / OS threads | contended |", "|---|---|---|---|---|"]
    for run in report["runs"]:
        m = run["metrics"]
        lines.append(f"| {cell_key(run)}-{run['framework']}-{run['rep']} | "
                     f"{', '.join(f'{x:.2f}' for x in m['attempt_loads'])} | {m['cpu_per_wall']:.2f} | "
                     f"{m['threads']} / {m['os_threads']} | {'yes' if m['contended'] else 'no'} |")
    return "\n".join(lines + ["", *NOTES, GRPO_LENGTHS[bool(report.get("fixed_length"))]]) + "\n"


def scales(report: dict) -> list[float]:
    """The step scales of the report (several when it merges invocations)."""
    value = report["steps_scale"]
    return value if isinstance(value, list) else [value]


def all_cells(report: dict) -> list[str]:
    """Every cell of the full matrix (so the table names what did not run)."""
    return [f"{s}-{p}-{w}-{a}" for s, p in (("small", "fp32"), ("small", "bf16"), ("compute", "fp32"), ("compute", "bf16"))
            for w in ("prompt", "answer") for a in ("dpo", "grpo")]


NOTES = [
    "Notes:",
    "- Same data, model files, steps, batch sizes, lengths, learning rates, KL weights and reward; the same precision "
    "for both: fp32, or bf16 autocast with fp32 weights, gradients and optimizer state (TRL's `bf16=True`, modalign's "
    "`precision: bf16`); TRL's gradient checkpointing off, constant LR, no eval, no checkpoints, no reporting "
    "(modalign still writes metrics.jsonl and TensorBoard events: part of its recipes).",
    "- Trained parameters: DPO trains every parameter in both frameworks; GRPO trains the decoder and LM head in both "
    "(the vision tower is frozen: modalign's RL recipes freeze media encoders, and the TRL job freezes "
    "`model.model.visual` before handing the model to GRPOTrainer).",
    "- Steady = steps 2..N, every step (mean, not median). DPO: modalign computes reference log-probs once per pair "
    "before training, TRL every step (it refuses `precompute_ref_log_probs` for vision data); modalign's steady "
    "figure pays its reference pass once per epoch (reference seconds / 64 pairs added to each pair), which is "
    "what a one-epoch run pays. The setup share leaves the reference pass out for that reason.",
    "- Nominal FLOPs: the algorithm's work, the same count for both (6N per trained token, 2N per sampled and per "
    "reference token, DPO's reference once per pair per epoch, vision tower per patch; attention scores left out). "
    "Executed FLOPs: what each framework runs, from a separate run of the same cell (seed 0, a few steps) under "
    "torch's FlopCounterMode (matmuls, attention incl. the CPU SDPA kernels, forward and backward, every decoding "
    "step, padding); its executed / nominal ratio scales each timed run's nominal count. MFU = executed FLOP/s "
    "over the run's peak: the best of the model's matmul shapes and a 1024^3 square in the run's dtype, timed in "
    "the run's own process after training.",
    "- Contention: others' load = the machine's busy CPU seconds (/proc/stat) less the run's own, per wall second. "
    "own CPU / wall is the run's CPU seconds (all threads) per wall second from the framework call to its end.",
]


GRPO_LENGTHS = {
    False: "- GRPO answers come from a policy that is learning (a never-ending answer scores -1, so policies learn to "
           "stop): answer lengths differ between runs and frameworks; the GRPO table gives them and generated tokens/s.",
    True: "- GRPO at fixed length (--fixed-length): both frameworks block the end token before the last position "
          "(transformers' min_new_tokens = new_tokens - 1), so every answer is new_tokens long and a step's work does "
          "not follow what the policy learns; an answer still scores -1 unless its last token ends it.",
}


def merge(parts: list[str], out: str) -> None:
    """One report from several bench/trl_compare.py outputs (e.g. two invocations run side by side on
    different cells, or more seeds of a cell with --first-rep): their runs together, summarised again; the
    first part's machine and settings. A run of a later part replaces one of the same cell, framework and
    seed from an earlier part (a cell rerun after a code change)."""
    import json
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from trl_compare_setup import write_results

    reports = [json.loads(Path(p).read_text()) for p in parts]
    latest = {(cell_key(r), r["framework"], r["rep"]): r for rep in reports for r in rep["runs"]}
    report = dict(reports[0], runs=list(latest.values()),
                  steps_scale=sorted({x for rep in reports for x in scales(rep)}, reverse=True),
                  models={k: v for rep in reports for k, v in rep["models"].items()},
                  # parts may hold the same cells at other seeds (--first-rep): each cell once, seeds counted
                  cells=list(dict.fromkeys(c for rep in reports for c in rep["cells"])),
                  wall_s=sum(rep["wall_s"] for rep in reports),
                  merged_from=parts)
    report["summary"] = summarise(report["runs"])
    report["reps"] = max((cell["seeds"] for cell in report["summary"].values()), default=0)
    write_results(Path(out), report, markdown, Path(parts[0]).parent)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="merge bench/trl_compare.py outputs")
    parser.add_argument("parts", nargs="+", help="OUT.json files of bench/trl_compare.py")
    parser.add_argument("--out", required=True, help="writes OUT.json and OUT.md")
    args = parser.parse_args()
    merge(args.parts, args.out)
