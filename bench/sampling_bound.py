"""How fast could modalign be against TRL if only its non-sampling work got faster? Per GRPO cell of a
`bench/trl_compare.py` result.

    python bench/sampling_bound.py bench/results/trl_compare_fixed_length.json

Both frameworks sample through the same `generate`, so modalign's steady step is at least its own sampling
time. Medians over the seeds of each cell: TRL's step, modalign's sampling, their quotient (the ratio
modalign would read with a free scoring and training phase), and the scoring + training time modalign
could spend and still read 1.5x (negative: not even a free one would do) beside what it spends now.
"""

from __future__ import annotations

import json
import statistics
import sys


def phase_medians(runs: list[dict], framework: str) -> tuple[float, float, float]:
    """(step, sampling, rest) seconds, medians over the seeds of one framework's runs of one cell."""
    rows = [r["metrics"] for r in runs if r["framework"] == framework]
    step = statistics.median(m["steady_step_s"] for m in rows)
    sampling = statistics.median(m["steady_step_s"] * m["sampling_share"] for m in rows)
    rest = statistics.median(m["steady_step_s"] * (1 - m["sampling_share"]) for m in rows)
    return step, sampling, rest


def main() -> None:
    result = json.loads(open(sys.argv[1]).read())
    runs = [r for r in result["runs"] if r["algorithm"] == "grpo"]
    cells = sorted({(r["size"], r["precision"], r["workload"]) for r in runs})
    print("| cell | TRL step s | sampling s (modalign / TRL) | bound: TRL step / modalign sampling "
          "| modalign scoring + training s: allowed for 1.5x / now (TRL) |")
    print("|---|---|---|---|---|")
    for cell in cells:
        of_cell = [r for r in runs if (r["size"], r["precision"], r["workload"]) == cell]
        trl_step, trl_sampling, trl_rest = phase_medians(of_cell, "trl")
        _, sampling, rest = phase_medians(of_cell, "modalign")
        print(f"| {'-'.join(cell)} | {trl_step:.3f} | {sampling:.3f} / {trl_sampling:.3f} | {trl_step / sampling:.2f}x "
              f"| {trl_step / 1.5 - sampling:.3f} / {rest:.3f} ({trl_rest:.3f}) |")


if __name__ == "__main__":
    main()
