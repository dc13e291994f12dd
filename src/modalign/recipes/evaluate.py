"""Evaluation of a saved policy (`modalign eval`) on any dataset.

Answer accuracy (exact match, VQA-normalised) where records have `meta.answer`, BLEU/ROUGE-L
against the reference answer, per task and per modality; gold metrics on ShapesWorld data;
optionally the KL to a reference policy and the win rate against a second policy under a judge.
Greedy by default; when answers are sampled the summary says so.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from modalign.config import ConfigError, field_doc
from modalign.data.modalities import MODALITIES_HELP
from modalign.device import DEVICE_HELP


@dataclass
class EvalConfig:
    """Evaluate a policy on a dataset split (`modalign eval`)."""

    policy: str = field_doc("", "Saved policy folder or hub id (required).")
    data: str = field_doc("", "Dataset folder (required), or 'shapes' to generate a ShapesWorld test split.")
    split: str = field_doc("test", "Split to evaluate.")
    task: str = field_doc("", "Only examples whose meta.task is this ('' : all).")
    out: str = field_doc("", "Output folder; empty means runs/eval-<time>.")
    shapes_test_scenes: int = field_doc(100, "ShapesWorld scenes generated when data is 'shapes'.")
    max_examples: int = field_doc(0, "Evaluate at most this many examples (0: all).")
    batch_size: int = field_doc(64, "Prompts per generate call.")
    max_new_tokens: int = field_doc(40, "Longest generated answer.")
    temperature: float = field_doc(0.0, "0: greedy answers (for accuracy); > 0: sampled at this temperature.")
    samples_per_prompt: int = field_doc(1, "Sampled answers per prompt (needs temperature > 0); metrics average them.")
    seed: int = field_doc(0, "Seed of the generated data and of sampling.")
    reference: str = field_doc("", "Reference policy folder: report the exact KL of the policy to it ('' : none).")
    compare: str = field_doc("", "Policy B folder: both answer the same prompts and `judge` scores them (win rate).")
    judge: str = field_doc("", "Judge of the win rate: a reward-model folder, rule:<name>, py:<file_or_module>:<fn>, "
                               "or a weighted sum of those.")
    modalities: str = field_doc("", MODALITIES_HELP)
    device: str = field_doc("auto", DEVICE_HELP)


def run_eval(cfg: EvalConfig) -> dict:
    """Check the config and data, generate answers, score them; writes `OUT/config.yaml`, `OUT/summary.json`,
    `OUT/samples.jsonl` (and `OUT/samples_compare.jsonl` with `compare`).

    Under `accelerate launch` each process generates for its share of the examples; the main
    process scores and writes (`eval.generation.generate_split`).
    """
    from modalign.config import save_config
    from modalign.device import resolve_device
    from modalign.dist import processes
    from modalign.eval.generation import generate_split, write_samples
    from modalign.eval.metrics import score_completions
    from modalign.rl.rewards import place_reward_models
    from modalign import validate
    from modalign.runs import default_run_dir, write_json_atomic

    started = time.time()
    how = check_config(cfg)
    device = resolve_device(cfg.device)
    judge = validate.check_reward(cfg.judge, key="judge") if cfg.compare else None
    dist = processes()
    out = Path(cfg.out or default_run_dir("eval"))
    data_root = dist.main_first(lambda: data_root_of(cfg, out))  # ShapesWorld is generated once
    examples = eval_examples(cfg, data_root)  # zero examples is an error before any generation
    if dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
    policy = validate.load_checked_policy(cfg.policy)
    policy.model.to(device)
    if judge is not None:
        place_reward_models(judge, device)
    k = cfg.samples_per_prompt

    def answer(model, label: str) -> list:  # both policies answer the same prompts with the same seed
        return generate_split(model, data_root, examples, cfg.max_new_tokens, cfg.temperature, cfg.seed,
                              cfg.batch_size, k, dist, label)

    completions = answer(policy, "eval")
    other = validate.load_checked_policy(cfg.compare, "compare") if cfg.compare else None
    if other is not None:
        other.model.to(device)
    other_completions = answer(other, "eval B") if other is not None else None
    summary = {"stage": "eval", "policy": cfg.policy, "data": str(data_root), "split": cfg.split, "task": cfg.task,
               "processes": dist.world, "decoding": how}
    if not dist.is_main:
        # stay in the process group until the main process has scored and written: a process that exits while
        # another still holds the gloo group aborts ("terminate called without an active exception")
        dist.wait()
        return summary
    repeated = [e for e in examples for _ in range(k)]  # completions come in this order
    write_samples(out / "samples.jsonl", repeated, completions)
    metrics = {**score_completions(repeated, completions), **how}
    if cfg.reference:
        metrics |= reference_kl(policy, cfg.reference, data_root, repeated, completions, cfg.batch_size)
        summary["kl_estimator"] = _kl_estimator()
    summary["metrics"] = metrics
    if other is not None:
        write_samples(out / "samples_compare.jsonl", repeated, other_completions)
        summary["compare"] = {"policy": cfg.compare, "judge": cfg.judge}
        summary["metrics_compare"] = {**score_completions(repeated, other_completions), **how}
        summary["win_rate"] = judge_win_rate(judge, policy, data_root, repeated, completions, other_completions)
    summary["wall_seconds"] = round(time.time() - started, 1)
    write_json_atomic(out / "summary.json", summary)
    print_eval(summary, out)
    dist.wait()
    return summary


def check_config(cfg: EvalConfig) -> dict:
    """One clear error for a config that cannot work, before anything is loaded; returns the decoding."""
    from modalign import validate
    from modalign.eval.generation import decoding

    if not cfg.policy:
        raise ConfigError("eval: no policy given: pass --policy FOLDER (or --set policy=FOLDER)")
    if not cfg.data:
        raise ConfigError("eval: no data given: pass --data FOLDER (a dataset folder; --data shapes generates a "
                          "ShapesWorld test split)")
    if cfg.samples_per_prompt < 1:
        raise ConfigError(f"samples_per_prompt={cfg.samples_per_prompt}: it must be at least 1")
    if bool(cfg.compare) != bool(cfg.judge):
        raise ConfigError("compare and judge go together: compare=POLICY_B judge=<reward model | rule:... | py:...> "
                          "(the judge scores both policies' answers)")
    for key in ("policy", "reference", "compare"):
        if getattr(cfg, key):
            validate.check_policy(getattr(cfg, key), key)  # a mistyped folder, not the hub's network error
    return decoding(cfg.temperature, cfg.samples_per_prompt)


def data_root_of(cfg: EvalConfig, out: Path) -> Path:
    """The dataset folder; ShapesWorld only when asked for by name (`data=shapes`), generated into `out/data`."""
    if cfg.data != "shapes":
        root = Path(cfg.data)
        if not root.is_dir():
            raise ConfigError(f"data: no dataset folder {root}")
        return root
    from modalign.data.shapes import build_shapes_dataset

    root = out / "data"
    if not (root / f"{cfg.split}.jsonl").is_file():
        # Train split unused here: a single scene keeps generation cheap.
        build_shapes_dataset(root, n_train=1, n_test=cfg.shapes_test_scenes, seed=cfg.seed, caption_noise=0.0)
    return root


def eval_examples(cfg: EvalConfig, data_root: Path) -> list:
    """The examples to evaluate; none left is an error naming the split and filter."""
    from modalign.data.dataset import split_path
    from modalign.eval.generation import select_examples

    examples = select_examples(data_root, cfg.split, cfg.task, cfg.max_examples, cfg.modalities)
    if not examples:
        tasks = sorted({str(e.meta.get("task")) for e in select_examples(data_root, cfg.split) if e.meta.get("task")})
        known = f"tasks in it: {', '.join(tasks)}" if tasks else "its records have no meta.task"
        raise ConfigError(f"eval: no examples to evaluate in {split_path(data_root, cfg.split)}"
                          + (f" with task={cfg.task!r} ({known})" if cfg.task else " (the split is empty)"))
    return examples


def judge_win_rate(judge, policy, data_root: Path, examples: list, answers_a: list, answers_b: list) -> dict:
    """The judge scores A's and B's answer to each prompt; identical answers tie (`eval.win_rate`)."""
    from modalign.eval.generation import media_store
    from modalign.eval.win_rate import win_rate
    from modalign.rl.rewards import score_texts

    media = media_store(policy, data_root)
    texts_a, texts_b = [c.text for c in answers_a], [c.text for c in answers_b]
    scores_a, scores_b = score_texts(judge, examples, texts_a, media), score_texts(judge, examples, texts_b, media)
    return {**win_rate(scores_a, scores_b, [a == b for a, b in zip(texts_a, texts_b)]),
            "judge_score_a": float(scores_a.float().mean()), "judge_score_b": float(scores_b.float().mean())}


def reference_kl(policy, reference: str, data_root: Path, examples: list, completions: list, batch_size: int) -> dict:
    """Exact KL of the policy to the `reference` policy on the policy's answers (`eval.divergence`)."""
    from modalign import validate
    from modalign.eval.divergence import answer_kl
    from modalign.eval.generation import media_store

    from modalign.device import model_device

    reference_model = validate.load_checked_policy(reference, "reference").model.to(model_device(policy.model))
    return answer_kl(policy, reference_model, media_store(policy, data_root), examples,
                     [c.text for c in completions], batch_size=max(1, batch_size // 4))


def _kl_estimator() -> str:
    from modalign.eval.divergence import KL_ESTIMATOR

    return KL_ESTIMATOR


def print_eval(summary: dict, out: Path) -> None:
    """The overall metrics, then a table per breakdown, then the win rate."""
    from rich.table import Table

    from modalign.eval.metrics import breakdown_table, overall
    from modalign.ui import console

    how = summary["decoding"]
    console.print("greedy answers" if how["greedy"] else
                  f"sampled answers: temperature {how['temperature']}, {int(how['samples_per_prompt'])} per prompt")
    for key, value in overall(summary["metrics"]).items():
        console.print(f"  {key:<28} {value:.4g}")
    for kind in ("task", "modality"):
        rows = breakdown_table(summary["metrics"], kind)
        columns = [c for c in ("n_examples", "exact_match", "normalized_accuracy", "bleu", "rouge_l")
                   if any(c in row for row in rows.values())]
        table = Table(title=f"by {kind}")
        for column in [kind, *columns]:
            table.add_column(column, justify="left" if column == kind else "right")
        for group, row in rows.items():
            table.add_row(group, *[f"{row[c]:.4g}" if c in row else "" for c in columns])
        console.print(table)
    if "win_rate" in summary:
        w = summary["win_rate"]
        console.print(f"A vs B ({summary['compare']['judge']}): win {w['win_rate']:.3f} +- {w['win_rate_se']:.3f}, "
                      f"tie {w['tie_rate']:.3f}, loss {w['loss_rate']:.3f} over {int(w['n_prompts'])} answers")
    console.print(f"wrote {out / 'summary.json'}")
