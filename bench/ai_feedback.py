"""Issue 19's experiment: self-alignment by claim verification (RLAIF-V style) vs the simulated panel.

    PYTHONPATH=src .venv/bin/python bench/ai_feedback.py --sft runs/sft [--seeds 0,1,2] [--work DIR]
    (or one process per seed, --seeds 1 --out /tmp/s1 ..., then --merge /tmp/s0.json,/tmp/s1.json,...)

From one SFT policy (`--sft`: an SFT run folder with model/ and data/, ShapesWorld), per seed:

    claims   iterative DPO with `judge=claims:self`: each round the round's policy samples answers to
             caption prompts and verifies its own answers claim by claim (`feedback.judges.claims`,
             the `shapes` splitter: each stated fact asked as ShapesWorld's VQA asks it); no gold
             or simulated feedback at any point (the gold scorers only evaluate)
    panel    the same iterative DPO with `judge=simulated` (the simulated panel ranks the answers
             from ShapesWorld ground truth), side by side

and the SFT policy itself. Each policy is evaluated with the gold scorers on the whole held-out split
(captions and questions) at temperature 1, `--eval-samples` answers per prompt, the same seed for all.
Also measured: wall and process CPU time of each run (training + its judge; the final evaluation
apart), the judgments each run stored, the claim judge's cost (questions asked, forward passes), and
its precision / recall against the gold truth of every distinct claim it judged.

Writes bench/results/ai_feedback.md and .json.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
SHOWN = ("hallucination_rate", "coverage", "vqa_accuracy")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sft", required=True, help="SFT run folder (model/ and data/)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--work", default="/tmp/ai_feedback")
    parser.add_argument("--judges", default="claims:self,simulated")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--prompts", type=int, default=128, help="caption prompts per round")
    parser.add_argument("--samples", type=int, default=4, help="answers per prompt")
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--eval-samples", type=int, default=2)
    parser.add_argument("--out", default=str(RESULTS / "ai_feedback"))
    parser.add_argument("--merge", default="", help="comma-separated result .json files (one per seed, run in "
                                                    "parallel) to combine into --out; nothing is run")
    args = parser.parse_args()
    if args.merge:
        parts = [json.loads(Path(path).read_text()) for path in args.merge.split(",")]
        merged = {"settings": {**parts[0]["settings"], "judges": args.judges}, "seeds": {}}
        for part in parts:  # a seed's judges may come from several files
            for seed, row in part["seeds"].items():
                merged["seeds"].setdefault(seed, {}).update(row)
        merged["settings"]["seeds"] = ",".join(merged["seeds"])
        write(merged, Path(args.out))
        return

    import torch

    torch.set_num_threads(1)
    sft, work = Path(args.sft), Path(args.work)
    results: dict = {"settings": vars(args), "seeds": {}}
    for seed in [int(s) for s in args.seeds.split(",")]:
        row = {"sft": evaluate(sft / "model", sft / "data", seed, args.eval_samples)}
        for judge in args.judges.split(","):
            # the folder name keeps only word characters: a spec's `?`/`&` would end a sqlite:/// URL early
            folder = re.sub(r"[^\w.-]+", "-", judge)
            row[judge] = run_one(args, sft, work / f"seed{seed}-{folder}", judge, seed)
            print(seed, judge, json.dumps(row[judge]), flush=True)
        results["seeds"][str(seed)] = row
        write(results, Path(args.out))
    write(results, Path(args.out))


def run_one(args, sft: Path, out: Path, judge: str, seed: int) -> dict:
    """One iterative-DPO run (timed) and the gold evaluation of its final policy."""
    import shutil

    from modalign.recipes.iterative_dpo import IterativeDPOConfig, run_iterative_dpo

    shutil.rmtree(out, ignore_errors=True)
    cfg = IterativeDPOConfig(out=str(out), policy=str(sft / "model"), data=str(sft / "data"), task="caption",
                             rounds=args.rounds, prompts_per_round=args.prompts, samples_per_prompt=args.samples,
                             judge=judge, lr=args.lr, beta=args.beta, epochs=args.epochs, eval_examples=4,
                             checkpoint_every=0, seed=seed)
    wall, cpu = time.time(), time.process_time()
    summary = run_iterative_dpo(cfg)
    wall, cpu = time.time() - wall, time.process_time() - cpu
    row = {"eval": evaluate(Path(summary["model"]), sft / "data", seed, args.eval_samples),
           "judgments": summary["judgments"], "pairs": sum(r["pairs"] for r in summary["rounds"]),
           "wall_seconds": round(wall, 1), "cpu_seconds": round(cpu, 1)}
    if judge.startswith("claims:"):
        row["claim_judge"] = claim_judge_quality(out, sft / "data")
    return row


def evaluate(model: Path, data: Path, seed: int, samples: int) -> dict:
    from modalign.eval.generation import evaluate_split
    from modalign.models.policy import load_policy

    metrics = evaluate_split(load_policy(model), data, "test", 0, 40, temperature=1.0, seed=seed,
                             samples_per_example=samples)
    return {k: round(metrics[k], 4) for k in SHOWN}


def claim_judge_quality(out: Path, data: Path) -> dict:
    """Precision / recall of the judge's verdicts against the gold truth of each distinct claim it judged
    (from the provenance stored with every judgment), and its cost."""
    from modalign.data.dataset import read_examples
    from modalign.data.shapes.world import Scene
    from modalign.feedback.store import FeedbackStore

    examples = {e.id: e for e in read_examples(data, "train")}
    store = FeedbackStore.sqlite(out / "feedback.db")
    seen: dict[tuple, tuple[bool, bool]] = {}  # (judge, example, question, expected) -> (judge verified, gold true)
    for judgment in store.judgments():
        scene = Scene.from_dict(examples[judgment.example_id].meta["scene"])
        for answer in judgment.provenance["answers"]:
            for claim in answer["claims"]:
                key = (judgment.provenance["judge"], judgment.example_id, claim["question"] or claim["claim"],
                       claim["expected"])
                seen[key] = (claim["verified"], gold_claim(scene, claim))
    pairs = list(seen.values())
    tp = sum(v and g for v, g in pairs)
    refuted_false = sum((not v) and (not g) for v, g in pairs)
    cache_lines = sum(1 for _ in (out / "claims-cache.jsonl").open()) if (out / "claims-cache.jsonl").is_file() else 0
    return {"claims": len(pairs), "true_claims": sum(g for _, g in pairs),
            "verified_precision": round(tp / max(1, sum(v for v, _ in pairs)), 4),
            "verified_recall": round(tp / max(1, sum(g for _, g in pairs)), 4),
            "refuted_precision": round(refuted_false / max(1, sum(not v for v, _ in pairs)), 4),
            "refuted_recall": round(refuted_false / max(1, sum(not g for _, g in pairs)), 4),
            "questions_asked": cache_lines}


def gold_claim(scene, claim: dict) -> bool:
    """Whether a `shapes`-splitter claim is true of the scene: the gold answer to its question is the expected one."""
    from modalign.data.shapes.language import where
    from modalign.data.shapes.world import NUMBER_WORDS, POSITIONS

    question, expected = claim["question"], claim["expected"]
    for position in POSITIONS:
        obj = scene.at(position)
        if question == f"what shape is {where(position)}?":
            return (obj.shape if obj else "nothing") == expected
        if question == f"what colour is the shape {where(position)}?":
            return obj is not None and obj.colour == expected
    if question == "how many shapes are there?":  # the `shapes+count` splitter's claim
        return NUMBER_WORDS[len(scene.objects)] == expected
    if question == "how many beeps are there?":
        return NUMBER_WORDS[scene.beeps] == expected
    if question == "are the beeps high or low?":
        return scene.pitch == expected
    if question.startswith("what size is the "):
        shape = question.removeprefix("what size is the ").rstrip("?")
        return any(o.size == expected for o in scene.with_shape(shape))
    if question.startswith("is there a "):
        colour, shape = question.removeprefix("is there a ").rstrip("?").split()
        return any(o.colour == colour for o in scene.with_shape(shape))
    shape = claim["claim"].removeprefix("there is a ")  # the template's existence claim
    return bool(scene.with_shape(shape))


def write(results: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(results, indent=2))
    out.with_suffix(".md").write_text(table(results))


def table(results: dict) -> str:
    seeds = results["seeds"]
    judges = results["settings"]["judges"].split(",")
    lines = ["| seed | policy | hallucination | coverage | VQA | judgments | pairs | wall s | CPU s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for seed, row in seeds.items():
        lines.append(f"| {seed} | SFT | " + " | ".join(f"{row['sft'][k]:.3f}" for k in SHOWN) + " | - | - | - | - |")
        for judge in judges:
            if judge in row:
                r = row[judge]
                lines.append(f"| {seed} | {judge} | " + " | ".join(f"{r['eval'][k]:.3f}" for k in SHOWN) +
                             f" | {r['judgments']} | {r['pairs']} | {r['wall_seconds']:.0f} | {r['cpu_seconds']:.0f} |")
    lines += ["", "| judge | hallucination (mean) | change vs SFT | VQA change (points) | judgments (mean) |",
              "|---|---|---|---|---|"]
    for judge in judges:
        done = [row for row in seeds.values() if judge in row]
        if not done:
            continue
        sft = statistics.mean(r["sft"]["hallucination_rate"] for r in done)
        after = statistics.mean(r[judge]["eval"]["hallucination_rate"] for r in done)
        vqa = statistics.mean(100 * (r[judge]["eval"]["vqa_accuracy"] - r["sft"]["vqa_accuracy"]) for r in done)
        lines.append(f"| {judge} | {sft:.3f} -> {after:.3f} | {100 * (after - sft) / max(sft, 1e-9):+.0f}% | "
                     f"{vqa:+.1f} | {statistics.mean(r[judge]['judgments'] for r in done):.0f} |")
    quality = [row[j]["claim_judge"] for row in seeds.values() for j in judges if j in row and "claim_judge" in row[j]]
    if quality:
        lines += ["", "| seed | judge | claims judged | true | verified precision | verified recall | refuted precision "
                      "| refuted recall | questions asked |", "|---|---|---|---|---|---|---|---|---|"]
        for seed, row in seeds.items():
            for j in judges:
                q = row.get(j, {}).get("claim_judge")
                if q:
                    lines.append(f"| {seed} | {j} | {q['claims']} | {q['true_claims']} | {q['verified_precision']:.3f} | "
                                 f"{q['verified_recall']:.3f} | {q['refuted_precision']:.3f} | "
                                 f"{q['refuted_recall']:.3f} | {q['questions_asked']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
