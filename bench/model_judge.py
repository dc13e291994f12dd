"""Issue 19's model-judge numbers on ShapesWorld: a trained SFT policy as the judge of its own sampled captions.

    .venv/bin/python bench/model_judge.py [--policy DIR --data DIR] [--prompts 40] [--work DIR]

Without --policy, builds a ShapesWorld dataset and trains a small SFT policy on it (the demo's
noisy captions, a smaller world and model so that it takes minutes on 2 cores). Then samples 4
answers per held-out caption prompt (temperature 1) and runs `modalign judge` (`recipes.judge.run_judge`)
over them with several judge settings:

    pairwise         the default pairwise template (options A / B), every pair in both orders, ties kept
    pairwise-drop    the same, position-inconsistent pairs dropped
    ranking-rating   rankings from the default rating template (options 1..5), one question per answer
    rating-yes-no    a rating template in the world's own words: "<question> <answer> is that right?"
                     with options no / yes (a 2-point rating), one question per answer

and reports per setting: gold accuracy (pairs whose ShapesWorld gold utilities differ; a tie counts
half), agreement with the simulated panel (share equal to its majority, Cohen's kappa), the share of
position-inconsistent pairs, judge forward passes per stored judgment, and wall/CPU seconds.
Writes bench/results/model_judge.json and .md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
YES_NO = "prompt: '{question} {answer} is that right?'\noptions: ['no', 'yes']\n"
SETTINGS = {
    "pairwise": dict(task="pairwise"),
    "pairwise-drop": dict(task="pairwise", judge_disagreement="drop"),
    "ranking-rating": dict(task="ranking", judge_ranking="rating"),
    "rating-yes-no": dict(task="ranking", judge_ranking="rating", judge_template="yes_no.yaml"),
    "trained-pairwise": dict(task="pairwise", judge="pairwise"),
    "trained-pairwise-drop": dict(task="pairwise", judge="pairwise", judge_disagreement="drop"),
    "trained-yes-no": dict(task="ranking", judge_ranking="rating", judge_template="yes_no.yaml", judge="yes-no"),
}
NOTES = [
    "Columns (`feedback/judges/report.py`):",
    "- gold_accuracy: on the answer pairs whose ShapesWorld gold utilities differ, the share the judge ordered "
    "right, a tie counting half (0.5: chance, or all ties).",
    "- panel_agreement / panel_kappa: the share of pairs where the judge equals the simulated panel's majority, "
    "and Cohen's kappa against it (the panel's raters judge from ground truth, with noise).",
    "- position_inconsistent_share: pairs whose two orders (x shown as A, then y shown as A) disagreed.",
    "- forwards_per_judgment: judge forward passes per stored judgment; the built-in model packs the options "
    "behind each prompt, so one forward per question: 2 per pairwise judgment (both orders), n per ranking of "
    "n answers from ratings, n(n-1) from pairs; a dropped pair costs its 2 without a judgment.",
    "- pairs: the answer pairs the stored verdicts order (a ranking of n answers orders n(n-1)/2).",
    "",
]
SHOWN = ("judgments", "pairs", "gold_accuracy", "panel_agreement", "panel_kappa", "position_inconsistent_share",
         "forwards_per_judgment", "wall_seconds", "cpu_seconds")


def train_policy(work: Path, seed: int) -> tuple[str, str]:
    """A small SFT policy on noisy ShapesWorld captions (the demo's recipe at a smaller size)."""
    from modalign.recipes.sft import SFTConfig, run_sft

    cfg = SFTConfig(out=str(work / "sft"), seed=seed, eval_examples=1, epochs=6.0, caption_noise=0.3)
    cfg.shapes_train_scenes, cfg.shapes_test_scenes = 400, 60
    cfg.hidden_size, cfg.num_layers, cfg.encoder_layers, cfg.vocab_size = 64, 2, 1, 300
    run_sft(cfg)
    return str(work / "sft" / "model"), str(work / "sft" / "data")


def judge_examples(data: str, scenes: int, variants: int, seed: int, kind: str = "pairwise") -> list:
    """A judge's own training data (LLaVA-Critic style, from the train split's ground truth): for each caption
    scene, the true caption against `variants` captions with exactly one hallucination each (`noisy_caption`).
    pairwise: in the default pairwise template, in both orders, the better one's letter as the answer;
    yes-no: each caption alone in the `YES_NO` template, answered yes (true) or no (hallucinated)."""
    import yaml
    import random

    from modalign.data.records import Example, assistant_turn, user_turn
    from modalign.data.shapes.language import caption, noisy_caption
    from modalign.data.shapes.world import Scene
    from modalign.eval.generation import select_examples
    from modalign.feedback.judges.templates import DEFAULTS

    rng, template, rows = random.Random(seed), DEFAULTS["pairwise"], []
    for example in select_examples(data, "train", "caption", scenes):
        scene = Scene.from_dict(example.meta["scene"])
        true = caption(scene)
        for variant in range(variants):
            wrong = noisy_caption(scene, rng)[0]
            for first, second, letter in ((true, wrong, "A"), (wrong, true, "B")):
                prompt = template.render(question=example.prompt_text, answer_a=first, answer_b=second)
                if kind == "yes-no":  # the caption shown first, alone: yes when it is the true one
                    prompt = yaml.safe_load(YES_NO)["prompt"].format(question=example.prompt_text, answer=first)
                    letter = "yes" if letter == "A" else "no"
                turn = user_turn(prompt, len(example.media_of("image")), len(example.media_of("audio")))
                rows.append(Example(f"{example.id}-judge-{variant}-{letter}", (turn, assistant_turn(letter)),
                                    example.media, {"task": "judge"}))
    return rows


def judge_folder(work: Path, kind: str) -> Path:
    return work / ("judge-sft" if kind == "pairwise" else f"judge-sft-{kind}")


def train_judge(policy: str, data: str, work: Path, scenes: int, variants: int, epochs: float, seed: int,
                kind: str = "pairwise") -> str:
    """The SFT policy fine-tuned on `judge_examples` (gold-labelled train captions; the judged answers are on
    held-out prompts): a judge that was taught the format it is asked in."""
    from modalign.data.dataset import write_examples
    from modalign.recipes.sft import SFTConfig, run_sft

    split = f"judge_train_{kind}".replace("-", "_")
    write_examples(data, split, judge_examples(data, scenes, variants, seed, kind))
    run_sft(SFTConfig(out=str(judge_folder(work, kind)), data=data, train_split=split, policy=policy, epochs=epochs,
                      max_length=384, warmup_steps=50, lr=1e-3, eval_examples=1, seed=seed))
    return str(judge_folder(work, kind) / "model")


def sample_captions(policy: str, data: str, prompts: int, path: Path, seed: int) -> int:
    """4 answers per held-out caption prompt, as `{example_id, text}` rows; returns the number of prompts."""
    from modalign.eval.generation import generate_answers, media_store
    from modalign.eval.generation import select_examples
    from modalign.validate import load_checked_policy

    loaded = load_checked_policy(policy)
    examples = select_examples(data, "test", "caption", prompts)
    answers = generate_answers(loaded, media_store(loaded, data), examples, max_new_tokens=40, temperature=1.0,
                               seed=seed, samples_per_example=4)
    path.write_text("".join(json.dumps(a.to_dict()) + "\n" for a in answers))
    return len(examples)


def judge_once(name: str, policy: str, data: str, samples: Path, work: Path, seed: int) -> dict:
    from modalign.recipes.judge import JudgeConfig, run_judge

    fields = {key: value for key, value in SETTINGS[name].items() if key != "judge"}
    if SETTINGS[name].get("judge"):
        policy = str(judge_folder(work, SETTINGS[name]["judge"]) / "model")
    if fields.get("judge_template"):
        fields["judge_template"] = str(work / fields["judge_template"])
    shutil.rmtree(work / f"judge-{name}", ignore_errors=True)  # a rerun of the setting replaces its run
    wall, cpu = time.time(), time.process_time()
    summary = run_judge(JudgeConfig(out=str(work / f"judge-{name}"), judge=f"model:{policy}", samples=str(samples),
                                    data=data, seed=seed, **fields))
    return {**summary["judge_report"], "examples": summary["examples"],
            "wall_seconds": round(time.time() - wall, 1), "cpu_seconds": round(time.process_time() - cpu, 1)}


def write_results(results: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "model_judge.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = ["# Model judges on ShapesWorld (bench/model_judge.py)", "",
             f"Judge: {results['judge']} (also the policy whose answers are judged). "
             f"{results['prompts']} held-out caption prompts x 4 sampled answers (temperature 1); "
             f"an example's distinct answers are judged together. torch threads: {results['threads']}.", "",
             "| setting | " + " | ".join(SHOWN) + " |", "|---" * (len(SHOWN) + 1) + "|"]
    for name, report in results["settings"].items():
        cells = [report.get(key) for key in SHOWN]
        lines.append(f"| {name} | " + " | ".join("-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)
                                                 for v in cells) + " |")
    lines += ["", "Reference: the simulated panel's own raters on these pairs: " + results["panel_note"], ""]
    for kind, trained in results.get("trained_judges", {}).items():
        how = ("the true caption against a caption with one hallucination, in the default pairwise template, in "
               "both orders, answered A or B" if kind == "pairwise" else
               "the true caption and captions with one hallucination, each alone in the yes/no template, answered "
               "yes or no")
        lines += [f"Trained {kind} judge (`trained-{kind}*`): the same SFT policy fine-tuned for {trained['epochs']:g} "
                  f"epochs on {trained['examples']} gold-labelled examples from {trained['scenes']} train scenes ({how}; "
                  f"{trained['cpu_seconds']:.0f} CPU s). The judged answers are the SFT policy's, on held-out prompts.",
                  ""]
    lines += NOTES + [line for line in results.get("reading", [])]
    (RESULTS / "model_judge.md").write_text("\n".join(lines) + "\n")


def panel_reference(samples: Path, data: str, seed: int) -> str:
    """How the simulated panel's majority does against gold on the same kind of pairs (context for the judge)."""
    from modalign.feedback.agreement import majority_vote
    from modalign.feedback.judges.report import gold_labels, pair_label, panel_labels
    from modalign.recipes.judge import dataset_examples, read_answers

    groups = read_answers(str(samples))
    examples = dataset_examples(data, "test", groups)
    keys = {pair_label(i, a.text, b.text)[0] for i, answers in groups.items()
            for n, a in enumerate(answers) for b in answers[n + 1:]}
    gold, panel = gold_labels(keys, examples), panel_labels(keys, examples, seed)
    decided = [k for k in keys if gold[k] in ("a", "b")]
    right = sum(majority_vote(list(panel[k].values())) == gold[k] for k in decided)
    return f"majority right on {right} of {len(decided)} gold-decided pairs ({right / max(1, len(decided)):.3f})."


def main() -> None:
    import torch

    parser = argparse.ArgumentParser()
    parser.add_argument("--policy", default="")
    parser.add_argument("--data", default="")
    parser.add_argument("--prompts", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", default="")
    parser.add_argument("--judge-scenes", type=int, default=400, help="train scenes the trained judge learns from")
    parser.add_argument("--judge-variants", type=int, default=3, help="hallucinated captions per scene")
    parser.add_argument("--judge-epochs", type=float, default=8.0)
    parser.add_argument("--trained", default="pairwise,yes-no", help="judges to train: pairwise, yes-no")
    parser.add_argument("--settings", default="", help="settings to run (default: all); others are kept from the "
                                                       "last results file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(args.work or tempfile.mkdtemp(prefix="model_judge_"))
    work.mkdir(parents=True, exist_ok=True)
    (work / "yes_no.yaml").write_text(YES_NO)
    policy, data = (args.policy, args.data) if args.policy else train_policy(work, args.seed)
    samples = work / "samples.jsonl"
    prompts = sample_captions(policy, data, args.prompts, samples, args.seed)
    results = {"judge": args.policy or "a small SFT policy (train_policy: 400 scenes, 6 epochs, hidden 64, 2 layers)",
               "prompts": prompts, "threads": args.threads, "panel_note": panel_reference(samples, data, args.seed)}
    trained, settings = {}, {}
    for kind in filter(None, args.trained.split(",")):
        started = time.process_time()
        train_judge(policy, data, work, args.judge_scenes, args.judge_variants, args.judge_epochs, args.seed, kind)
        trained[kind] = {"scenes": args.judge_scenes, "epochs": args.judge_epochs,
                         "examples": 2 * args.judge_scenes * args.judge_variants,
                         "cpu_seconds": round(time.process_time() - started, 1)}
    for name in (args.settings.split(",") if args.settings else SETTINGS):
        settings[name] = judge_once(name, policy, data, samples, work, args.seed)
        # --settings: the other settings' rows are kept from the results file as it is now
        previous = json.loads((RESULTS / "model_judge.json").read_text()) if args.settings else {}
        results["trained_judges"] = {**previous.get("trained_judges", {}), **trained}
        results["settings"] = {**previous.get("settings", {}), **settings}
        write_results(results)
    print((RESULTS / "model_judge.md").read_text())


if __name__ == "__main__":
    main()
