"""`modalign demo`: the whole RLHF loop on ShapesWorld, no arguments needed.

SFT on captions of which a share hallucinate -> two rounds of: sample four answers per caption
prompt from the current policy -> three simulated annotators rank them into the feedback store ->
reward model on every judgment so far -> PPO (with PPO-ptx on the questions, KL to SFT) -> gold
evaluation of the SFT and final policies (never the reward model) -> report.html, summary.json.
`--resume DIR` continues a killed demo: finished stages are read back, a killed SFT or PPO run
resumes from its last checkpoint.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path


def run_demo(out: str | None = None, seed: int = 0, quick: bool = False, resume: str | None = None,
             store: str = "") -> dict:
    """The main job; `resume` continues a killed demo in its folder (finished stages are read back).

    `store`: where the judgments go ('': OUT/loop/feedback.db), a path or an SQLAlchemy URL (kept in
    demo.json, so a resumed demo uses the same).

    Under `accelerate launch` its SFT, reward models and PPO run on every process; the main process
    alone samples and judges feedback, evaluates and writes the report (`modalign loop`).
    """
    from modalign.dist import processes
    from modalign.recipes.loop import run_loop
    from modalign.runs import default_run_dir, write_json_atomic
    from modalign.ui import console

    started, cpu_started = time.time(), process_cpu_seconds()
    dist = processes()
    out_dir = Path(resume or out or default_run_dir("demo"))
    seed, quick, store = dist.broadcast(demo_settings(out_dir, seed, quick, resume is not None, store)
                                        if dist.is_main else None)
    console.print("[bold]modalign demo[/]: ShapesWorld -> SFT (noisy captions) -> 2 rounds of feedback -> reward model "
                  "-> PPO -> gold eval")

    # 1. SFT on captions of which a share hallucinate
    sft = run_demo_sft(out_dir, seed, quick)
    data_root = Path(sft["data"])

    # 2-5. two rounds of online RLHF (recipes/loop.py): the panel ranks the current policy's answers, the
    # reward model is trained again on every judgment so far, PPO continues from the current policy.
    loop = run_loop(dataclasses.replace(demo_loop_config(out_dir, sft["model"], data_root, seed, quick), store=store))

    # 6. gold numbers of the SFT and final policies (the loop evaluated both on the same held-out prompts)
    last = loop["rounds"][-1]
    summary = {
        "sft": loop["start"], "rlhf": {**loop["eval"], "kl_to_ref": last["kl_to_ref"]},
        "reward_model": {"heldout_accuracy": last["reward_heldout_accuracy"],
                         "by_round": [row["reward_heldout_accuracy"] for row in loop["rounds"]]},
        "annotators": loop["rounds"][0]["feedback"],
        "rounds": [{"round": row["round"], "judgments": row["judgments"], "ppo_steps": row["rl_steps"],
                    "kl_to_ref": row["kl_to_ref"], **{k: row["eval"].get(k) for k in SHOWN}} for row in loop["rounds"]],
        "seed": seed, "quick": quick, "wall_seconds": round(time.time() - started, 1),
        # CPU time of this process (and of any it waited for): on a shared machine wall time says little
        "cpu_seconds": round(process_cpu_seconds() - cpu_started, 1),
    }
    if dist.is_main:
        write_json_atomic(out_dir / "summary.json", summary)
        write_demo_report(out_dir, summary)
        print_summary(summary, out_dir)
    return summary


def process_cpu_seconds() -> float:
    """User + system CPU seconds of this process and its finished children."""
    import resource

    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


SHOWN = ("hallucination_rate", "coverage", "vqa_accuracy", "audio_accuracy", "bleu", "rouge_l")


def demo_settings(out_dir: Path, seed: int, quick: bool, resuming: bool, store: str = "") -> tuple[int, bool, str]:
    """`demo.json` keeps a demo's seed, size and store, so `--resume DIR` continues it as it was started."""
    import json

    saved = out_dir / "demo.json"
    if resuming:
        if not saved.is_file():
            raise FileNotFoundError(f"{out_dir} is not a demo folder (no demo.json): nothing to resume")
        settings = json.loads(saved.read_text())
        return settings["seed"], settings["quick"], settings.get("store", "")
    if saved.is_file():
        raise FileExistsError(f"{out_dir} already holds a demo: continue it with --resume {out_dir} or pick another --out")
    out_dir.mkdir(parents=True, exist_ok=True)
    saved.write_text(json.dumps({"seed": seed, "quick": quick, "store": store}))
    return seed, quick, store


def run_demo_sft(out_dir: Path, seed: int, quick: bool) -> dict:
    """SFT on ShapesWorld with caption noise; a finished SFT is read back, a killed one resumes."""
    import json

    from modalign.dist import processes
    from modalign.recipes.sft import SFTConfig, run_sft
    from modalign.runs import resumable

    dist = processes()
    folder = out_dir / "sft"
    if not dist.broadcast((folder / "summary.json").is_file()):
        # Ten epochs, not SFT's default of five: the image side needs them (measured:
        # 12 epochs cut noise-free caption hallucination from 0.43 to 0.03). Still fp32 with shuffled examples and
        # PPO 2 x 60 in fp32: bf16 SFT + bf16 PPO x 45 (452-513 s) and x 60 (509-522 s) each left one seed of three
        # above the 1/3 bar in the quiet window, and whole-scene or scene-chunk batches made a bad SFT likelier
        # (bench/results/demo_speed.md, Parts 3 and 4).
        cfg = SFTConfig(out=str(folder), seed=seed, eval_examples=1, epochs=10.0)
        if quick:  # a small model and world: the whole loop in about a minute
            cfg.shapes_train_scenes, cfg.shapes_test_scenes, cfg.epochs = 100, 10, 1.0
            cfg.hidden_size, cfg.num_layers, cfg.encoder_layers, cfg.vocab_size = 64, 2, 1, 300
        run_sft(cfg, resume=resumable(folder))
    # the main process's summary (it writes the file after the others have returned)
    summary = dist.broadcast(json.loads((folder / "summary.json").read_text()) if dist.is_main else None)
    return {"model": str(folder / "model"), "data": str(folder / "data"), **summary}


def demo_loop_config(out_dir: Path, sft_model: str, data_root: Path, seed: int, quick: bool):
    """The demo's two rounds.

    Round 1: the panel ranks 4 SFT answers for each of 1500 caption prompts; PPO 60 iterations.
    Round 2: it ranks the round-1 policy's answers to 500 prompts; the reward model is trained
    again on both rounds; PPO 60 more iterations, KL still to SFT. Measured on seed 2: one round
    of 75 iterations dropped true objects the reward model had never seen dropped (coverage
    0.94 -> 0.79, KL budget hit); the second round's reward model ranks those answers low
    and coverage came back to 0.97 with hallucination 0.074 -> 0.022.
    kl_coef 0.1: at 0.05 the KL ran away (seed 1: 0.3 -> 6-8 after 60 iterations).
    PPO-ptx on the questions keeps VQA, which the caption-only reward does not exercise. The prompts
    are the caption ones (task="caption"): the loop's default, all tasks, would change these results.
    """
    from modalign.recipes.loop import LoopConfig

    cfg = LoopConfig(out=str(out_dir / "loop"), policy=sft_model, data=str(data_root), task="caption", rounds=2,
                     first_round_prompts=1500, prompts_per_round=500, samples_per_prompt=4, selection="all",
                     reward_steps=3000, method="ppo", rl_steps=60, prompts_per_step=16, rl_samples_per_prompt=4,
                     lr=1e-4, kl_coef=0.1, kl_budget=1.5, ptx_coef=1.0, max_new_tokens=40, eval_samples=4, seed=seed)
    if quick:
        cfg.first_round_prompts, cfg.prompts_per_round, cfg.reward_steps, cfg.rl_steps = 24, 12, 20, 2
        cfg.prompts_per_step, cfg.max_new_tokens, cfg.eval_samples = 8, 24, 1
    return cfg


def collect_feedback(policy, media, prompts, data_root: Path, store_path: Path, seed: int,
                     samples_per_prompt: int = 4) -> dict:
    """Sample answers, store the distinct ones, let each simulated rater rank them; returns agreement stats.

    Identical answers are one candidate (ranking copies of one text would be noise). Agreement
    is Krippendorff's alpha over the pairwise orders the rankings imply, and `gold_accuracy`
    the share of those orders that agree with the ground truth.
    """
    from modalign.eval.generation import generate_answers
    from modalign.feedback.collect import judge_with_panel, panel_agreement, write_feedback
    from modalign.feedback.store_spec import open_store

    k = samples_per_prompt
    completions = generate_answers(policy, media, prompts, temperature=1.0, seed=seed, samples_per_example=k)
    feedback, _ = judge_with_panel(prompts, completions, k, seed)
    write_feedback(open_store(str(store_path)), feedback, data_root)
    return panel_agreement(feedback)


def write_demo_report(out_dir: Path, summary: dict) -> None:
    """report.html by the builder of `modalign report` (the demo folder is a run folder), plus the gold
    metrics by round."""
    from modalign.eval.run_report import write_runs_report

    write_runs_report([out_dir], out_dir / "report.html", title="modalign demo: RLHF on ShapesWorld",
                      extra_curves=[("Gold hallucination rate and coverage by round (0: SFT)", rounds_png(summary))])


def rounds_png(summary: dict) -> str:
    """Gold hallucination and coverage after each round, round 0 being SFT, as a base64 PNG."""
    from modalign.eval.report import series_png

    points = [summary["sft"]] + summary["rounds"]
    return series_png({key: [(r, p[key]) for r, p in enumerate(points)] for key in ("hallucination_rate", "coverage")},
                      "round", markers=True)


def print_summary(summary: dict, out_dir: Path) -> None:
    from rich.table import Table

    from modalign.ui import console

    table = Table(title="Held-out ShapesWorld, gold scorers")
    for column in ("metric", "SFT", "RLHF"):
        table.add_column(column, justify="right" if column != "metric" else "left")
    for key in SHOWN:
        table.add_row(key, f"{summary['sft'].get(key, float('nan')):.3f}", f"{summary['rlhf'].get(key, float('nan')):.3f}")
    table.add_row("kl_to_ref", "", f"{summary['rlhf']['kl_to_ref']:.3f}")
    console.print(table)
    console.print(f"reward model held-out accuracy {summary['reward_model']['heldout_accuracy']:.3f}; "
                  f"beside the simulated raters' agreement (Krippendorff's alpha) {summary['annotators']['agreement']:.3f} "
                  f"and their accuracy against the ground truth {summary['annotators']['gold_accuracy']:.3f}")
    for row in summary["rounds"]:
        console.print(f"round {row['round']}: {row['judgments']} judgments, {row['ppo_steps']} PPO iterations, "
                      f"hallucination {row['hallucination_rate']:.3f}, coverage {row['coverage']:.3f}, "
                      f"KL to SFT {row['kl_to_ref']:.3f}")
    console.print(f"report: {out_dir / 'report.html'}  ({summary['wall_seconds']:.0f} s, "
                  f"{summary['cpu_seconds']:.0f} CPU s)")
