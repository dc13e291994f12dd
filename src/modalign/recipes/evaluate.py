"""Evaluation of a saved policy (`modalign eval`): gold metrics where the data has ground truth, BLEU/ROUGE-L."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from modalign.config import field_doc
from modalign.data.modalities import MODALITIES_HELP


@dataclass
class EvalConfig:
    """Evaluate a policy on a dataset split (`modalign eval`)."""

    policy: str = field_doc("", "Saved policy folder or hub id.")
    data: str = field_doc("shapes", "'shapes' to generate a ShapesWorld test split, or a dataset folder.")
    split: str = field_doc("test", "Split to evaluate.")
    out: str = field_doc("", "Output folder; empty means runs/eval-<time>.")
    shapes_test_scenes: int = field_doc(100, "ShapesWorld scenes generated when data is 'shapes'.")
    max_examples: int = field_doc(0, "Evaluate at most this many examples (0: all).")
    batch_size: int = field_doc(64, "Prompts per generate call.")
    max_new_tokens: int = field_doc(40, "Longest generated answer.")
    temperature: float = field_doc(1.0, "Sampling temperature (0: greedy).")
    seed: int = field_doc(0, "Seed of the generated data and of sampling.")
    modalities: str = field_doc("", MODALITIES_HELP)


def run_eval(cfg: EvalConfig) -> dict:
    """Generate answers, score them, write `OUT/summary.json` and `OUT/samples.jsonl`.

    Under `accelerate launch` each process generates for its share of the examples; the main
    process writes (`eval.generation.evaluate_split`).
    """
    from modalign.dist import processes
    from modalign.eval.generation import evaluate_split
    from modalign.models.policy import load_policy
    from modalign.runs import default_run_dir, write_json_atomic
    from modalign.ui import console

    if not cfg.policy:
        raise ValueError("eval: --policy is required (a saved policy folder or hub id)")
    started = time.time()
    dist = processes()
    out = Path(cfg.out or default_run_dir("eval"))
    out.mkdir(parents=True, exist_ok=True)
    data_root = dist.main_first(lambda: _data_root(cfg, out))  # ShapesWorld is generated once
    metrics = evaluate_split(load_policy(cfg.policy), data_root, cfg.split, cfg.max_examples, cfg.max_new_tokens,
                             cfg.temperature, cfg.seed, out / "samples.jsonl" if dist.is_main else None,
                             batch_size=cfg.batch_size, dist=dist, modalities=cfg.modalities)
    summary = {"stage": "eval", "policy": cfg.policy, "data": str(data_root), "split": cfg.split,
               "processes": dist.world, "metrics": metrics, "wall_seconds": round(time.time() - started, 1)}
    if dist.is_main:
        write_json_atomic(out / "summary.json", summary)
    for key, value in metrics.items():
        console.print(f"  {key:<28} {value:.4g}")
    return summary


def _data_root(cfg: EvalConfig, out: Path) -> Path:
    if cfg.data != "shapes":
        return Path(cfg.data)
    from modalign.data.shapes import build_shapes_dataset

    root = out / "data"
    if not (root / f"{cfg.split}.jsonl").is_file():
        # Train split unused here: a single scene keeps generation cheap.
        build_shapes_dataset(root, n_train=1, n_test=cfg.shapes_test_scenes, seed=cfg.seed, caption_noise=0.0)
    return root
