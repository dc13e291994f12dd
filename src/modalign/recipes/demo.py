"""`modalign demo`: the main job with no arguments.

Today it runs the SFT stage on ShapesWorld (with caption noise, so the model starts
out hallucinating as a web-trained model does) and reports gold metrics. The RLHF
stages (feedback, reward model, PPO) will extend this same loop.
"""

from __future__ import annotations

import time
from pathlib import Path


def run_demo(out: str | None = None, seed: int = 0, quick: bool = False) -> dict:
    from rich.table import Table

    from modalign.recipes.sft import SFTConfig, run_sft
    from modalign.runs import default_run_dir
    from modalign.ui import console

    started = time.time()
    out_dir = Path(out or default_run_dir("demo"))
    console.print(
        "[bold]modalign demo[/]: ShapesWorld -> SFT with caption noise -> gold evaluation.\n"
        "The RLHF stages (feedback store, reward model, PPO) are not built yet; this demo runs the SFT stage."
    )
    cfg = SFTConfig(out=str(out_dir / "sft"), seed=seed)
    if quick:
        cfg.shapes_train_scenes, cfg.shapes_test_scenes, cfg.epochs = 200, 20, 1.0
    summary = run_sft(cfg)
    table = Table(title="SFT policy on held-out ShapesWorld scenes")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in ("vqa_accuracy", "audio_accuracy", "hallucination_rate", "coverage", "bleu", "rouge_l"):
        if key in summary["eval"]:
            table.add_row(key, f"{summary['eval'][key]:.3f}")
    console.print(table)
    console.print(f"run folder: {out_dir}  ({time.time() - started:.0f} s)")
    return summary
