"""Issue 19's experiment: self-alignment by claim verification (RLAIF-V style) vs the simulated panel.

    PYTHONPATH=src .venv/bin/python bench/ai_feedback.py --sft runs/sft [--seeds 0,1,2] [--work DIR]
    (or one process per seed, --seeds 1 --out /tmp/s1 ..., then --merge /tmp/s0.json,/tmp/s1.json,...)

From one SFT policy (`--sft`: an SFT run folder with model/ and data/, ShapesWorld), per seed:

    claims   iterative DPO with a `claims:self...` judge (default `STEADY`): each round the round's policy
             samples answers to caption prompts and the policy verifies them claim by claim
             (`feedback.judges.claims`; `shapes+count` splitter: each stated fact asked as ShapesWorld's
             VQA asks it, plus the number of objects described; `self=start`: the policy as the run
             started judges); no gold or simulated feedback at any point (the gold scorers only evaluate)
    panel    the same iterative DPO with `judge=simulated` (the simulated panel ranks the answers
             from ShapesWorld ground truth), side by side

and the SFT policy itself. Each policy is evaluated with the gold scorers on the whole held-out split
at temperature 1, `--eval-samples` (32) answers per caption and `--vqa-samples` (16) per question, with one
sampling seed for every policy and run (`--eval-seed`; the SFT policy is measured once, kept in --work).
Standard errors: per-caption bootstrap (`bootstrap_se`: the test captions resampled with all their answers);
a change vs the SFT policy is a paired bootstrap over the same captions (`change_with_se`), a VQA change the
paired per-question SE (`vqa_change_with_se`).
Also measured: wall and process CPU time of each run (training + its judge; the final evaluation
apart), the judgments each run stored, the claim judge's cost (questions asked, forward passes), and
its precision / recall against the gold truth of every distinct claim it judged.

Pair study (`--pair-study SPEC,SPEC,...`, nothing trained): the SFT policy samples `--samples` answers to
`--prompts` train captions, each claim-judge spec judges them as the loop would (its score and pair
selection), and every decided pair is checked against the gold utilities: the share the judge got right,
the hallucination rate of chosen vs rejected answers, and the judge's verdict on every distinct claim of the
sampled answers against gold (precision / recall, per kind of claim). Cheap (seconds of CPU per spec): measure a judge
option here before a training run. `--judge-model` makes another policy (a trained round's) judge and
sample instead of the SFT one.

`--measure label=folder,...` measures policies trained before the same way (nothing trained).

Writes bench/results/ai_feedback.md and .json (the pair study and --measure: into their `--out`).
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
# the self-judge of the note: count claim, soft score, best-vs-worst pairs, the start policy judging every round
STEADY = "claims:self?splitter=shapes+count&score=soft&pairs=best-worst&self=start"
RUN_SETTINGS = ("rounds", "prompts", "samples", "lr", "beta", "epochs", "label_smoothing", "prompt_reuse", "rpo_alpha")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sft", required=True, help="SFT run folder (model/ and data/)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--work", default="/tmp/ai_feedback")
    parser.add_argument("--judges", default=f"{STEADY},simulated")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--prompts", type=int, default=500, help="caption prompts per round")
    parser.add_argument("--samples", type=int, default=8, help="answers per prompt")
    parser.add_argument("--lr", type=float, default=2e-5)
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--label-smoothing", type=float, default=0.0, help="conservative DPO: share of flipped "
                                                                           "labels assumed")
    parser.add_argument("--prompt-reuse", action="store_true", help="each round draws its prompts afresh from the "
                                                                    "whole split (IterativeDPOConfig.prompt_reuse)")
    parser.add_argument("--rpo-alpha", type=float, default=0.0, help="RPO: weight of the chosen answer's "
                                                                     "length-normalised NLL added to DPO")
    parser.add_argument("--eval-samples", type=int, default=32, help="sampled answers per test caption")
    parser.add_argument("--vqa-samples", type=int, default=16, help="sampled answers per test question")
    parser.add_argument("--eval-seed", type=int, default=0, help="sampling seed of every evaluation (all policies, "
                                                                 "all seeds: the SFT policy is measured once)")
    parser.add_argument("--out", default=str(RESULTS / "ai_feedback"))
    parser.add_argument("--pair-study", default="", help="comma-separated claims specs: measure their pairs "
                                                         "against gold on SFT samples (nothing trained)")
    parser.add_argument("--judge-model", default="", help="pair study: the policy that samples and judges "
                                                          "(default the SFT one)")
    parser.add_argument("--measure", default="", help="comma-separated label=model folder: measure these trained "
                                                      "policies with the evaluation above against the SFT one "
                                                      "(nothing trained)")
    parser.add_argument("--merge", default="", help="comma-separated result .json files (one per seed, run in "
                                                    "parallel) to combine into --out; nothing is run")
    args = parser.parse_args()
    if args.merge:
        parts = [json.loads(Path(path).read_text()) for path in args.merge.split(",")]
        merged = {"settings": {**parts[0]["settings"], "judges": args.judges}, "seeds": {}}
        for part in parts:  # a seed's judges may come from several files; pair studies are kept as they are
            if "specs" in part:
                merged.setdefault("pair_study", []).append(part)
                continue
            for seed, row in part["seeds"].items():
                for judge, result in row.items():  # a run's settings stay with its row
                    if judge != "sft":
                        result.setdefault("settings", {k: part["settings"].get(k, 0.0) for k in RUN_SETTINGS})
                merged["seeds"].setdefault(seed, {}).update(row)
        merged["settings"]["seeds"] = ",".join(merged["seeds"])
        write(merged, Path(args.out))
        return

    import torch

    torch.set_num_threads(1)
    if args.measure:
        measured = {"sft": sft_eval(args, Path(args.sft), Path(args.work))}
        for item in args.measure.split(","):
            label, _, folder = item.partition("=")
            measured[label] = evaluate(Path(folder), Path(args.sft) / "data", args.eval_seed, args.eval_samples,
                                       args.vqa_samples) | {"model": folder}
        Path(args.out).with_suffix(".json").write_text(json.dumps({"measured": measured}, indent=2))
        print(measured_table(measured))
        return
    if args.pair_study:
        study = pair_study(Path(args.sft), args.judge_model, args.pair_study.split(","), args.prompts, args.samples)
        Path(args.out).with_suffix(".json").write_text(json.dumps(study, indent=2))
        print(study_table(study))
        return
    sft, work = Path(args.sft), Path(args.work)
    results: dict = {"settings": vars(args), "seeds": {}}
    for seed in [int(s) for s in args.seeds.split(",")]:
        row = {"sft": sft_eval(args, sft, work)}
        for judge in args.judges.split(","):
            # the folder name keeps only word characters: a spec's `?`/`&` would end a sqlite:/// URL early
            folder = re.sub(r"[^\w.-]+", "-", judge)
            row[judge] = run_one(args, sft, work / f"seed{seed}-{folder}", judge, seed)
            print(seed, judge, json.dumps(row[judge]), flush=True)
        results["seeds"][str(seed)] = row
        write(results, Path(args.out))
    write(results, Path(args.out))


def sft_eval(args, sft: Path, work: Path) -> dict:
    """The SFT policy's evaluation, measured once per (samples, seed) and kept in `work`."""
    saved = work / f"sft-eval-{args.eval_samples}x{args.vqa_samples}-seed{args.eval_seed}.json"
    if not saved.is_file():
        work.mkdir(parents=True, exist_ok=True)
        saved.write_text(json.dumps(evaluate(sft / "model", sft / "data", args.eval_seed, args.eval_samples,
                                             args.vqa_samples)))
    return json.loads(saved.read_text())


def run_one(args, sft: Path, out: Path, judge: str, seed: int) -> dict:
    """One iterative-DPO run (timed) and the gold evaluation of its final policy."""
    import shutil

    from modalign.recipes.iterative_dpo import IterativeDPOConfig, run_iterative_dpo

    shutil.rmtree(out, ignore_errors=True)
    cfg = IterativeDPOConfig(out=str(out), policy=str(sft / "model"), data=str(sft / "data"), task="caption",
                             rounds=args.rounds, prompts_per_round=args.prompts, samples_per_prompt=args.samples,
                             judge=judge, lr=args.lr, beta=args.beta, epochs=args.epochs, eval_examples=4,
                             label_smoothing=args.label_smoothing, prompt_reuse=args.prompt_reuse,
                             **({"rpo_alpha": args.rpo_alpha} if args.rpo_alpha else {}),
                             checkpoint_every=0, seed=seed)
    wall, cpu = time.time(), time.process_time()
    summary = run_iterative_dpo(cfg)
    wall, cpu = time.time() - wall, time.process_time() - cpu
    row = {"eval": evaluate(Path(summary["model"]), sft / "data", args.eval_seed, args.eval_samples, args.vqa_samples),
           "judgments": summary["judgments"], "pairs": sum(r["pairs"] for r in summary["rounds"]),
           "wall_seconds": round(wall, 1), "cpu_seconds": round(cpu, 1),
           "settings": {k: getattr(args, k) for k in RUN_SETTINGS},
           "pair_gold_accuracy": [pair_accuracy(out / f"round-{r}" / "feedback.db", sft / "data")
                                  for r in range(1, args.rounds + 1)]}
    if judge.startswith("claims:"):
        row["claim_judge"] = claim_judge_quality(out, sft / "data")
    return row


def pair_accuracy(store_path: Path, data: Path) -> dict:
    """A round's decided stored pairs against the gold utilities: the share where the chosen answer is the
    better one (of the pairs whose gold utilities differ), and the chosen / rejected hallucination rates."""
    from modalign.data.dataset import read_examples
    from modalign.data.shapes.scorers import answer_facts
    from modalign.feedback.simulated import gold_utility
    from modalign.feedback.store import FeedbackStore

    examples = {e.id: e for e in read_examples(data, "train")}
    right = decided = 0
    facts = {"chosen": [0, 0], "rejected": [0, 0]}  # hallucinated, mentions
    for pair in FeedbackStore.sqlite(store_path).preference_pairs():
        if pair.tie:
            continue
        example = examples[pair.example_id]
        chosen, rejected = gold_utility(example, pair.chosen.text), gold_utility(example, pair.rejected.text)
        decided += chosen != rejected
        right += chosen > rejected
        for side, text in (("chosen", pair.chosen.text), ("rejected", pair.rejected.text)):
            found = answer_facts(example, text)
            facts[side][0] += found["hallucinated"]
            facts[side][1] += found["mentions"]
    return {"right": round(right / max(1, decided), 3), "gold_decided": decided,
            **{f"hallucination_{side}": round(h / max(1, m), 3) for side, (h, m) in facts.items()}}


def pair_study(sft: Path, judge_model: str, specs: list[str], prompts: int, samples: int) -> dict:
    """Each claims spec's pairs on one set of sampled answers, against gold (see the module docstring)."""
    from modalign.data.dataset import read_examples
    from modalign.eval.generation import generate_answers
    from modalign.feedback.judges.cache import ClaimCache
    from modalign.feedback.judges.claims import claim_judge, judge_with_claims
    from modalign.data.shapes.scorers import answer_facts
    from modalign.feedback.simulated import gold_utility
    from modalign.models.inputs import MediaStore
    from modalign.models.policy import load_policy

    model = judge_model or str(sft / "model")
    policy, data = load_policy(model), sft / "data"
    captions = [e for e in read_examples(data, "train") if e.meta["task"] == "caption"][-prompts:]
    media = MediaStore(data)
    completions = generate_answers(policy, media, captions, max_new_tokens=40, temperature=1.0, seed=1,
                                   samples_per_example=samples)
    cache, rows = ClaimCache(), {}
    for spec in specs:
        cpu = time.process_time()
        judge = claim_judge(spec, captions, media, policy, model, cache, start=str(sft / "model"))
        feedback, _ = judge_with_claims(judge, captions, completions, samples)
        right = decided = 0
        facts = {"chosen": [0, 0], "rejected": [0, 0]}
        for example, (a, b), tie in zip(feedback.examples, feedback.groups, feedback.ties):
            if tie:
                continue
            good, bad = gold_utility(example, a.text), gold_utility(example, b.text)
            decided += 1
            right += good > bad
            for side, text in (("chosen", a.text), ("rejected", b.text)):
                found = answer_facts(example, text)
                facts[side][0] += found["hallucinated"]
                facts[side][1] += found["mentions"]
        rows[spec] = {"pairs": decided, "right": round(right / max(1, decided), 3),
                      **{f"hallucination_{side}": round(h / max(1, m), 3) for side, (h, m) in facts.items()},
                      "cpu_seconds": round(time.process_time() - cpu, 1),
                      "claim_judge": study_claim_quality(judge, captions, completions, samples)}
        print(spec, rows[spec], flush=True)
    return {"model": model, "prompts": prompts, "samples": samples, "specs": rows}


def study_claim_quality(judge, captions, completions, samples: int) -> dict:
    """The judge's verdicts on every distinct claim of the study's answers (not only the paired ones) against
    gold, overall and per kind (the asks are cached: this costs no forward pass)."""
    from modalign.data.shapes.world import Scene

    owners = [e for e in captions for _ in range(samples)]
    seen: dict[tuple, tuple[bool, bool]] = {}
    for example, verification in zip(owners, judge.verify(owners, [c.text for c in completions])):
        scene = Scene.from_dict(example.meta["scene"])
        for claim in verification.to_dict()["claims"]:
            key = (example.id, claim["question"] or claim["claim"], claim["expected"])
            seen[key] = (claim["verified"], gold_claim(scene, claim))
    by_kind: dict[str, list] = {}
    for (_, question, _), verdicts in seen.items():
        by_kind.setdefault(claim_kind(question), []).append(verdicts)
    return {**verdict_quality(list(seen.values())),
            "by_kind": {kind: verdict_quality(v) for kind, v in sorted(by_kind.items())}}


def study_table(study: dict) -> str:
    lines = [f"Pair study: {study['model']}, {study['prompts']} train captions x {study['samples']} answers",
             "", "| judge | decided pairs | chosen is better (gold) | hallucination chosen | rejected |",
             "|---|---|---|---|---|"]
    for spec, r in study["specs"].items():
        lines.append(f"| `{spec}` | {r['pairs']} | {r['right']:.3f} | {r['hallucination_chosen']:.3f} | "
                     f"{r['hallucination_rejected']:.3f} |")
    graded = {spec: r["claim_judge"] for spec, r in study["specs"].items() if "claim_judge" in r}
    if graded:  # every distinct claim of the sampled answers, judged, against gold
        kinds = sorted({kind for q in graded.values() for kind in q["by_kind"]})
        lines += ["", "Its claim verdicts against gold (every distinct claim of the sampled answers): verified precision "
                      "/ recall, refuted precision / recall; per kind the refuted precision (refutations that are "
                      "real hallucinations, of how many)", "",
                  "| judge | claims | verified P / R | refuted P / R | " + " | ".join(kinds) + " |",
                  "|---|---|---|---|" + "---|" * len(kinds)]
        for spec, q in graded.items():
            per_kind = [q["by_kind"].get(kind) for kind in kinds]
            lines.append(f"| `{spec}` | {q['claims']} | {q['verified_precision']:.3f} / {q['verified_recall']:.3f} | "
                         f"{q['refuted_precision']:.3f} / {q['refuted_recall']:.3f} | " + " | ".join(
                             f"{k['refuted_precision']:.2f} ({k['refuted']})" if k else "-" for k in per_kind) + " |")
    return "\n".join(lines) + "\n"



def evaluate(model: Path, data: Path, seed: int, samples: int, vqa_samples: int = 0) -> dict:
    """Gold metrics of a policy on the whole test split at temperature 1: `samples` answers per caption,
    `vqa_samples` (default the same) per question; with each caption's hallucinated and mentioned fact counts
    (`per_caption`) and the bootstrap standard errors of the rates (`standard_error`)."""
    from modalign.data.shapes.scorers import answer_facts
    from modalign.eval.generation import generate_split, select_examples
    from modalign.eval.metrics import score_completions
    from modalign.models.policy import load_policy

    policy, metrics, completions = load_policy(model), {}, {}
    for task, k in (("caption", samples), ("vqa", vqa_samples or samples)):
        examples = [e for e in select_examples(data, "test") if (e.meta["task"] == "caption") == (task == "caption")]
        answers = generate_split(policy, data, examples, 40, 1.0, seed, samples_per_example=k)
        repeated = [e for e in examples for _ in range(k)]
        metrics.update({key: v for key, v in score_completions(repeated, answers, breakdown=False).items()
                        if key in SHOWN})
        completions[task] = (repeated, answers, k)
    repeated, answers, k = completions["caption"]
    facts = [answer_facts(e, c.text) for e, c in zip(repeated, answers)]
    per_caption = [[sum(f["hallucinated"] for f in facts[i : i + k]), sum(f["mentions"] for f in facts[i : i + k])]
                   for i in range(0, len(facts), k)]
    repeated, answers, k = completions["vqa"]
    from modalign.data.shapes.scorers import normalize_answer

    right = [normalize_answer(c.text) == normalize_answer(str(e.meta["answer"])) for e, c in zip(repeated, answers)]
    per_question = [sum(right[i : i + k]) / k for i in range(0, len(right), k)]
    row = {key: round(metrics[key], 4) for key in SHOWN}
    row["samples"] = {"caption": samples, "vqa": vqa_samples or samples, "seed": seed}
    row["per_caption"], row["per_question"] = per_caption, per_question
    row["standard_error"] = {"hallucination_rate": round(bootstrap_se([per_caption], lambda h: ratio(h[0])), 4),
                             "vqa_accuracy": round(statistics.pstdev(per_question) / len(per_question) ** 0.5, 4)}
    return row


def ratio(counts: list) -> float:
    """Hallucinated facts over mentioned facts, summed over the captions `counts` ([hallucinated, mentions] each)."""
    return sum(h for h, _ in counts) / max(1, sum(m for _, m in counts))


def bootstrap_se(per_caption: list[list], statistic, draws: int = 2000) -> float:
    """Standard error of `statistic` by the per-caption bootstrap: the test captions are resampled with
    replacement (each with all its sampled answers, the same captions for every policy in `per_caption`,
    so a change between two policies is a paired bootstrap), `draws` times, seed 0."""
    import random

    rng, n = random.Random(0), len(per_caption[0])
    values = []
    for _ in range(draws):
        picked = [rng.randrange(n) for _ in range(n)]
        values.append(statistic([[counts[i] for i in picked] for counts in per_caption]))
    return statistics.pstdev(values)


def vqa_change_with_se(sft: dict, final: dict) -> tuple[float, float]:
    """VQA accuracy change in points, final minus SFT, and its paired standard error over the test questions."""
    differences = [100 * (b - a) for a, b in zip(sft["per_question"], final["per_question"])]
    return statistics.mean(differences), statistics.pstdev(differences) / len(differences) ** 0.5


def change_with_se(sft: dict, final: dict) -> tuple[float, float]:
    """Relative change of the hallucination rate, final vs SFT, and its paired per-caption bootstrap SE."""
    change = ratio(final["per_caption"]) / ratio(sft["per_caption"]) - 1
    return change, bootstrap_se([sft["per_caption"], final["per_caption"]], lambda h: ratio(h[1]) / ratio(h[0]) - 1)


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
    by_kind: dict[str, list] = {}
    for (_, _, question, _), verdicts in seen.items():
        by_kind.setdefault(claim_kind(question), []).append(verdicts)
    return {**verdict_quality(pairs), "by_kind": {kind: verdict_quality(v) for kind, v in sorted(by_kind.items())},
            "questions_asked": sum(1 for _ in (out / "claims-cache.jsonl").open())
            if (out / "claims-cache.jsonl").is_file() else 0}


def claim_kind(question: str) -> str:
    """What a `shapes`-splitter question asks about: shape_at, colour_at, size, exists, count, beeps, pitch."""
    for start, kind in (("what shape is", "shape_at"), ("what colour is the shape", "colour_at"),
                        ("what size", "size"), ("how many shapes", "count"), ("how many beeps", "beeps"),
                        ("are the beeps", "pitch"), ("what colour is the", "colour_of")):
        if question.startswith(start):
            return kind
    return "exists"


def verdict_quality(pairs: list[tuple[bool, bool]]) -> dict:
    """Precision / recall of (judge verified, gold true) verdicts, for the verified and the refuted side."""
    tp = sum(v and g for v, g in pairs)
    refuted_false = sum((not v) and (not g) for v, g in pairs)
    return {"claims": len(pairs), "true_claims": sum(g for _, g in pairs), "refuted": sum(not v for v, _ in pairs),
            "verified_precision": round(tp / max(1, sum(v for v, _ in pairs)), 4),
            "verified_recall": round(tp / max(1, sum(g for _, g in pairs)), 4),
            "refuted_precision": round(refuted_false / max(1, sum(not v for v, _ in pairs)), 4),
            "refuted_recall": round(refuted_false / max(1, sum(not g for _, g in pairs)), 4)}


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


def measured_table(measured: dict) -> str:
    """Policies trained before, measured now against the SFT policy (`--measure`)."""
    sft, lines = measured["sft"], ["| policy | hallucination +- SE | change vs SFT +- SE | coverage | VQA | "
                                   "VQA change (points) +- SE |", "|---|---|---|---|---|---|"]
    for label, e in measured.items():
        change, se = change_with_se(sft, e)
        vqa, vqa_se = vqa_change_with_se(sft, e)
        lines.append(f"| {label} | {e['hallucination_rate']:.4f} +- {e['standard_error']['hallucination_rate']:.4f} | "
                     f"{100 * change:+.0f}% +- {100 * se:.0f} | {e['coverage']:.3f} | {e['vqa_accuracy']:.3f} | "
                     f"{vqa:+.1f} +- {vqa_se:.1f} |")
    return "\n".join(lines) + "\n"


def run_size(settings: dict) -> str:
    """rounds x prompts x answers, with the training options that differ from the note's steady run."""
    size = "x".join(str(settings[k]) for k in ("rounds", "prompts", "samples"))
    extras = [name for name, on in (("reuse", settings.get("prompt_reuse")),
                                    (f"rpo {settings.get('rpo_alpha')}", settings.get("rpo_alpha"))) if on]
    return " ".join([size, *extras])


def precise_table(results: dict) -> list[str]:
    """Per seed and run: the hallucination rate +- its per-caption bootstrap SE, the change vs the SFT policy
    +- its paired bootstrap SE, coverage, VQA and its change +- paired SE (points), cost."""
    lines = ["| seed | policy | rounds x prompts x answers | hallucination +- SE | change vs SFT +- SE | coverage | "
             "VQA | VQA change (points) +- SE | judgments | pairs | CPU s | wall s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for seed, row in results["seeds"].items():
        sft = row["sft"]
        lines.append(f"| {seed} | SFT | - | {sft['hallucination_rate']:.4f} +- "
                     f"{sft['standard_error']['hallucination_rate']:.4f} | - | {sft['coverage']:.3f} | "
                     f"{sft['vqa_accuracy']:.3f} | - | - | - | - | - |")
        for judge, r in row.items():
            if judge == "sft":
                continue
            e = r["eval"]
            change, se = change_with_se(sft, e)
            vqa, vqa_se = vqa_change_with_se(sft, e)
            size = run_size(r["settings"])
            lines.append(f"| {seed} | `{judge}` | {size} | {e['hallucination_rate']:.4f} +- "
                         f"{e['standard_error']['hallucination_rate']:.4f} | {100 * change:+.0f}% +- {100 * se:.0f} | "
                         f"{e['coverage']:.3f} | {e['vqa_accuracy']:.3f} | {vqa:+.1f} +- {vqa_se:.1f} | "
                         f"{r['judgments']} | {r['pairs']} | {r['cpu_seconds']:.0f} | {r['wall_seconds']:.0f} |")
    return lines


def table(results: dict) -> str:
    seeds = results["seeds"]
    judges = results["settings"]["judges"].split(",")
    if all("per_caption" in row["sft"] for row in seeds.values()):
        return "\n".join(precise_table(results) + pair_and_claim_tables(results, judges)) + "\n"
    lines = ["| seed | policy | rounds x prompts x answers | hallucination | coverage | VQA | judgments | pairs | "
             "wall s | CPU s |", "|---|---|---|---|---|---|---|---|---|---|"]
    for seed, row in seeds.items():
        lines.append(f"| {seed} | SFT | - | " + " | ".join(f"{row['sft'][k]:.3f}" for k in SHOWN) + " | - | - | - | - |")
        for judge in judges:
            if judge in row:
                r = row[judge]
                size = run_size(r["settings"]) if "settings" in r else "-"
                lines.append(f"| {seed} | `{judge}` | {size} | " + " | ".join(f"{r['eval'][k]:.3f}" for k in SHOWN) +
                             f" | {r['judgments']} | {r['pairs']} | {r['wall_seconds']:.0f} | {r['cpu_seconds']:.0f} |")
    lines += ["", "| judge | hallucination (mean) | change vs SFT (per seed) | coverage change (points) | "
                  "VQA change (points) | judgments (mean) |", "|---|---|---|---|---|---|"]
    for judge in judges:
        done = [row for row in seeds.values() if judge in row]
        if not done:
            continue
        sft = statistics.mean(r["sft"]["hallucination_rate"] for r in done)
        after = statistics.mean(r[judge]["eval"]["hallucination_rate"] for r in done)
        per_seed = ", ".join(f"{100 * (r[judge]['eval']['hallucination_rate'] / r['sft']['hallucination_rate'] - 1):+.0f}%"
                             for r in done)
        points = {k: ", ".join(f"{100 * (r[judge]['eval'][k] - r['sft'][k]):+.1f}" for r in done)
                  for k in ("coverage", "vqa_accuracy")}
        lines.append(f"| `{judge}` | {sft:.3f} -> {after:.3f} | {100 * (after - sft) / max(sft, 1e-9):+.0f}% "
                     f"({per_seed}) | {points['coverage']} | {points['vqa_accuracy']} | "
                     f"{statistics.mean(r[judge]['judgments'] for r in done):.0f} |")
    return "\n".join(lines + pair_and_claim_tables(results, judges)) + "\n"


def pair_and_claim_tables(results: dict, judges: list[str]) -> list[str]:
    """The stored pairs against gold per round, the claim judge's precision / recall, the pair studies."""
    seeds, lines = results["seeds"], []
    accuracy = [(seed, j, row[j]["pair_gold_accuracy"]) for seed, row in seeds.items() for j in judges
                if j in row and "pair_gold_accuracy" in row[j]]
    if accuracy:
        most = max(len(per_round) for _, _, per_round in accuracy)
        lines += ["", "Stored decided pairs against gold, per round: the share whose chosen answer is the better one "
                      "(hallucination rate of chosen / rejected answers)", "",
                  "| seed | judge | " + " | ".join(f"round {r + 1}" for r in range(most)) + " |",
                  "|---|---|" + "---|" * most]
        for seed, j, per_round in accuracy:
            lines.append(f"| {seed} | `{j}` | " + " | ".join(
                f"{a['right']:.2f} ({a['hallucination_chosen']:.3f} / {a['hallucination_rejected']:.3f})"
                for a in per_round) + " |")
    quality = [row[j]["claim_judge"] for row in seeds.values() for j in judges if j in row and "claim_judge" in row[j]]
    if quality:
        lines += ["", "| seed | judge | claims judged | true | verified precision | verified recall | refuted precision "
                      "| refuted recall | questions asked |", "|---|---|---|---|---|---|---|---|---|"]
        for seed, row in seeds.items():
            for j in judges:
                q = row.get(j, {}).get("claim_judge")
                if q:
                    lines.append(f"| {seed} | `{j}` | {q['claims']} | {q['true_claims']} | {q['verified_precision']:.3f} | "
                                 f"{q['verified_recall']:.3f} | {q['refuted_precision']:.3f} | "
                                 f"{q['refuted_recall']:.3f} | {q['questions_asked']} |")
    kinds = [(seed, j, row[j]["claim_judge"]["by_kind"]) for seed, row in seeds.items() for j in judges
             if j in row and "by_kind" in row[j].get("claim_judge", {})]
    if kinds:
        lines += ["", "The claim judge per kind of claim (distinct claims judged; refuted precision: the share of its "
                      "refutations that are real hallucinations)", "",
                  "| seed | judge | kind | claims | false | verified precision | verified recall | refuted precision | "
                  "refuted recall |", "|---|---|---|---|---|---|---|---|---|"]
        for seed, j, by_kind in kinds:
            for kind, q in by_kind.items():
                lines.append(f"| {seed} | `{j}` | {kind} | {q['claims']} | {q['claims'] - q['true_claims']} | "
                             f"{q['verified_precision']:.2f} | {q['verified_recall']:.2f} | "
                             f"{q['refuted_precision']:.2f} | {q['refuted_recall']:.2f} |")
    for study in results.get("pair_study", []):
        lines += ["", study_table(study)]
    return lines


if __name__ == "__main__":
    main()
