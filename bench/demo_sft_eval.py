"""The demo's gold evaluation of an SFT run folder, without the rest of the demo.

    PYTHONPATH=src OMP_NUM_THREADS=1 python bench/demo_sft_eval.py RUN_DIR SEED

RUN_DIR is a `modalign sft` folder on ShapesWorld (its `model/` and `data/`); the numbers are those
the demo's loop reports for its start policy (`loop/eval-start.json`: 4 sampled answers per
held-out prompt), so an SFT setting can be judged (~15 CPU s) before a whole demo is spent on it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main() -> None:
    from modalign.recipes.demo import demo_loop_config
    from modalign.recipes.loop import evaluate_policy

    run, seed = Path(sys.argv[1]), int(sys.argv[2])
    cfg = demo_loop_config(run / "evalloop", str(run / "model"), run / "data", seed, False)
    metrics = evaluate_policy(cfg, cfg.policy, run / "eval-start")
    keys = ("hallucination_rate", "coverage", "vqa_accuracy", "image_vqa_accuracy", "audio_accuracy")
    print(json.dumps({key: round(metrics[key], 3) for key in keys}))


if __name__ == "__main__":
    main()
