"""Must-show numbers of `modalign explain` (issue 20) on ShapesWorld -> bench/results/explain.md/.json.

1. a small SFT backbone on clean ShapesWorld (`sft` recipe), then a reward model trained with the
   `reward` recipe on simulated-panel rankings: per train example the reference answer and 3 wrong
   ones (captions with one hallucination from `data/shapes/language.noisy_caption`, questions with
   other answers the same question has in the split), ranked by the default simulated panel;
2. test captions with ONE hallucinated object (kinds extra_object: an object that is not there, and
   wrong_colour: a present object with the wrong colour): is the occlusion heatmap's top cell the
   hallucinated object's cell? Objects sit in one of 3 columns, their centre always in the middle row
   of a 3 x 3 grid (render.py: vertical jitter of +-15 % of the side), so the cell is (1, column);
   "top" is the cell that lowers the score most (most negative f(x) - f(occluded)), and by |value|;
3. test audio-fact and image-fact questions with their reference answers: does the audio's share
   exceed the image's (and the reverse), by ablation and by integrated gradients;
4. `modalign explain` (every method) seconds per example on the built-in model.

    PYTHONPATH=src python bench/explain_checks.py [--work /tmp/explain_bench] [--scenes 600]
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="/tmp/explain_bench")
    parser.add_argument("--sft", default="", help="an existing SFT run folder (its model/ and data/) to reuse")
    parser.add_argument("--scenes", type=int, default=1000, help="train scenes of the SFT run")
    parser.add_argument("--epochs", type=float, default=12.0)
    parser.add_argument("--hidden", type=int, default=96)
    parser.add_argument("--encoder-layers", type=int, default=2)
    parser.add_argument("--reward-examples", type=int, default=2500, help="train examples ranked for the reward model")
    parser.add_argument("--test-captions", type=int, default=60)
    parser.add_argument("--test-questions", type=int, default=60)
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    started = time.time()
    sft = Path(args.sft) if args.sft else train_sft(work / "sft", args)
    model, data = sft / "model", sft / "data"
    reward = train_reward(work, model, data, args.reward_examples)
    results = {"sft": sft_numbers(sft), "reward": reward}
    rm = Path(reward["model"])
    results["hallucination"] = hallucination_check(rm, data, args.test_captions)
    results["questions"] = question_check(rm, data, args.test_questions)
    results["timing"] = explain_timing(rm, data, work / "explain_run")
    results["wall_seconds"] = round(time.time() - started, 1)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "explain.json").write_text(json.dumps(results, indent=2))
    (RESULTS / "explain.md").write_text(markdown(results, args))
    print((RESULTS / "explain.md").read_text())


def train_sft(folder: Path, args) -> Path:
    from modalign.recipes.sft import SFTConfig, run_sft

    if not (folder / "summary.json").is_file():
        run_sft(SFTConfig(out=str(folder), shapes_train_scenes=args.scenes, shapes_test_scenes=60, caption_noise=0.0,
                          hidden_size=args.hidden, num_layers=2, encoder_layers=args.encoder_layers, vocab_size=300,
                          epochs=args.epochs, eval_examples=100, threads=1))
    return folder


def sft_numbers(sft: Path) -> dict:
    summary = json.loads((sft / "summary.json").read_text())
    keys = ("hallucination_rate", "coverage", "image_vqa_accuracy", "audio_accuracy")
    return {"parameters": summary.get("parameters"), "train_seconds": summary.get("train_seconds"),
            **{k: summary["eval"].get(k) for k in keys}}


def wrong_answers(examples) -> dict[str, list[str]]:
    """question text -> every answer it has in the split (the wrong ones for an example are the others)."""
    answers: dict[str, set] = defaultdict(set)
    for example in examples:
        if example.meta.get("task") != "caption":
            answers[example.prompt_text].add(str(example.meta["answer"]))
    return {question: sorted(values) for question, values in answers.items()}


def candidates(example, rng: random.Random, by_question: dict[str, list[str]], k: int = 4) -> list[str]:
    """The reference and up to k-1 wrong answers: noisy captions, or the question's other answers."""
    from modalign.data.shapes import noisy_caption
    from modalign.data.shapes.world import Scene

    reference = example.answer
    if example.meta.get("task") == "caption":
        scene = Scene.from_dict(example.meta["scene"])
        wrong = {noisy_caption(scene, rng)[0] for _ in range(3 * k)} - {reference}
    else:
        wrong = set(by_question.get(example.prompt_text, [])) - {reference}
    return [reference, *rng.sample(sorted(wrong), min(k - 1, len(wrong)))]


def train_reward(work: Path, model: Path, data: Path, count: int) -> dict:
    """Panel rankings of reference vs wrong answers on the train split -> the `reward` recipe."""
    from modalign.data.dataset import read_examples
    from modalign.data.records import Completion
    from modalign.feedback.collect import judge_with_panel, write_feedback
    from modalign.feedback.store import FeedbackStore
    from modalign.recipes.reward import RewardConfig, run_reward

    folder = work / "reward"
    if (folder / "summary.json").is_file():
        return json.loads((folder / "summary.json").read_text())
    examples = read_examples(data, "train")
    by_question, rng = wrong_answers(examples), random.Random(0)
    examples = examples[:count]
    k = 4
    prompts, completions = [], []
    for example in examples:
        texts = candidates(example, rng, by_question, k)
        texts += [texts[0]] * (k - len(texts))  # duplicates are one candidate to the panel
        prompts.append(example)
        completions += [Completion(example.id, text, "explain-bench") for text in texts]
    feedback, _ = judge_with_panel(prompts, completions, k, seed=0)
    store_path = work / "feedback.db"
    store_path.unlink(missing_ok=True)
    write_feedback(FeedbackStore.sqlite(store_path), feedback, str(data))
    return run_reward(RewardConfig(out=str(folder), policy=str(model), store=str(store_path), steps=2000))


def hallucination_check(rm: Path, data: Path, count: int) -> dict:
    """Occlusion top cell vs the hallucinated object's cell, for test captions with one hallucinated object."""
    import torch

    from modalign.data.dataset import read_examples
    from modalign.data.shapes.language import object_phrase
    from modalign.data.shapes.world import COLOURS, POSITIONS, SHAPES, SIZES, Obj, Scene
    from modalign.eval.explain import encode_subject, image_occlusion, load_target
    from modalign.models.inputs import MediaStore

    target, processor = load_target(rm)
    media = MediaStore(data)
    rng = random.Random(1)
    rows: dict[str, list[dict]] = {"extra_object": [], "wrong_colour": []}
    captions = [e for e in read_examples(data, "test") if e.meta.get("task") == "caption"]
    for index in range(count):
        example = captions[index % len(captions)]
        scene = Scene.from_dict(example.meta["scene"])
        kind = "extra_object" if index % 2 == 0 and len(scene.objects) < 3 else "wrong_colour"
        objects = list(scene.objects)
        if kind == "extra_object":
            position = rng.choice([p for p in POSITIONS if scene.at(p) is None])
            absent = [s for s in SHAPES if s not in {o.shape for o in objects}] or list(SHAPES)
            objects.append(Obj(rng.choice(absent), rng.choice(COLOURS), rng.choice(SIZES), position))
            objects.sort(key=lambda o: POSITIONS.index(o.position))
        else:
            i = rng.randrange(len(objects))
            old = objects[i]
            position = old.position
            objects[i] = Obj(old.shape, rng.choice([c for c in COLOURS if c != old.colour]), old.size, position)
        text = ", ".join(object_phrase(o) for o in objects) + "." + example.answer[example.answer.index(".") + 1:]
        subject = encode_subject(processor, media, example, text, media_token_ids=target.media_token_ids())
        reference = encode_subject(processor, media, example, example.answer, media_token_ids=target.media_token_ids())
        cell = [1, POSITIONS.index(position)]
        with torch.no_grad():
            gap = float(target(reference.input_ids, reference.answer_mask, **reference.media())
                        - target(subject.input_ids, subject.answer_mask, **subject.media()))
        row = {"example_id": example.id, "caption": text, "cell": cell, "rm_prefers_reference": gap > 0}
        for fill, settings in FILLS.items():
            heat = image_occlusion(target, subject, grid=3, fill=settings["fill"],
                                   contrast=reference if settings["contrast"] else None)
            row[fill] = {"heatmap": heat["heatmap"], "most_negative_hit": heat["most_negative_cell"] == cell,
                         "abs_top_hit": heat["top_cell"] == cell, "column_hit": heat["most_negative_cell"][1] == cell[1]}
        rows[kind].append(row)
    out = {}
    for kind, items in list(rows.items()) + [("all", rows["extra_object"] + rows["wrong_colour"])]:
        detected = [item for item in items if item["rm_prefers_reference"]]  # the reward model sees the hallucination
        out[kind] = {fill: {"n": len(items), **{f"{key}": _rate([item[fill] for item in items], key)
                                                 for key in ("most_negative_hit", "abs_top_hit", "column_hit")},
                            "n_detected": len(detected),
                            "most_negative_hit_detected": _rate([item[fill] for item in detected], "most_negative_hit")}
                     for fill in FILLS}
        out[kind]["rm_prefers_reference"] = _rate(items, "rm_prefers_reference")
    out["cases"] = rows
    return out


# occluded cells show the processor's mean colour or the image's median one (regions.IMAGE_BASELINES); contrast:
# the heatmap of f(caption) - f(reference caption)
FILLS = {"mean": {"fill": "mean", "contrast": False}, "median": {"fill": "median", "contrast": False},
         "mean, contrast": {"fill": "mean", "contrast": True}}


def _rate(items: list[dict], key: str) -> float:
    return sum(item[key] for item in items) / max(1, len(items))


def question_check(rm: Path, data: Path, count: int) -> dict:
    """Audio vs image share (ablation and integrated gradients) of the RM's score of reference answers."""
    from modalign.data.dataset import read_examples
    from modalign.eval.explain import ablation, encode_subject, integrated_gradients, load_target
    from modalign.models.inputs import MediaStore
    from modalign.recipes.explain import background_of

    target, processor = load_target(rm)
    media, pad = MediaStore(data), processor.tokenizer.pad_token_id
    out = {}
    for task, more, less in (("vqa_audio", "audio", "image"), ("vqa_image", "image", "audio")):
        examples = [e for e in read_examples(data, "test") if e.meta.get("task") == task][:count]
        methods = ("ablation", "ablation_others", "ig")
        hits = {m: [] for m in methods}
        shares = {m: defaultdict(list) for m in methods}
        subjects = [encode_subject(processor, media, example, example.answer, media_token_ids=target.media_token_ids())
                    for example in examples]
        for index, subject in enumerate(subjects):
            others = background_of(subjects, index, 4)  # the media of 4 other scenes, as `explain` picks them
            for method, result in (("ablation", ablation(target, subject, pad)),
                                   ("ablation_others", ablation(target, subject, pad, others)),
                                   ("ig", integrated_gradients(target, subject, pad))):
                hits[method].append(result["share"][more] > result["share"][less])
                for modality, value in result["share"].items():
                    shares[method][modality].append(value)
        out[task] = {"n": len(examples), "claim": f"{more} share > {less} share",
                     **{f"{m}_hit": sum(h) / max(1, len(h)) for m, h in hits.items()},
                     **{f"{m}_mean_share": {k: sum(v) / len(v) for k, v in s.items()} for m, s in shares.items()}}
    return out


def explain_timing(rm: Path, data: Path, out: Path) -> dict:
    """`modalign explain` with every method on 12 test examples, in its own process (the CLI's path)."""
    import shutil

    shutil.rmtree(out, ignore_errors=True)
    command = [sys.executable, "-m", "modalign.cli", "explain", "--model", str(rm), "--data", str(data), "--out", str(out),
               "--set", "max_examples=12"]
    started = time.time()
    subprocess.run(command, check=True, capture_output=True)
    summary = json.loads((out / "summary.json").read_text())
    return {"examples": summary["n_explained"], "seconds_per_example": summary["seconds_per_example"],
            "command_wall_seconds": round(time.time() - started, 1), "methods": "ablation,ig,occlusion,audio,tokens"}


def markdown(results: dict, args) -> str:
    h, q, t, r = results["hallucination"], results["questions"], results["timing"], results["reward"]
    lines = ["# modalign explain: must-show checks (bench/explain_checks.py)", "",
             f"Backbone: built-in model ({results['sft']['parameters']} parameters) SFT on {args.scenes} clean "
             f"ShapesWorld scenes ({results['sft']['train_seconds']} s); reward model: the `reward` recipe (frozen "
             f"backbone, likelihood feature) on {r['train_pairs']} simulated-panel pairs, held-out pair accuracy "
             f"{r['heldout_accuracy']:.3f}.", "",
             "## Occlusion top cell = the hallucinated object's cell (3 x 3 grid, chance 1/9)", "",
             "Occluded cells show the processor's mean colour (`mean`, grey) or the image's median colour (`median`, "
             "the background). Top cell: the cell whose occlusion raises the score most (most negative "
             "f(x) - f(occluded): the region that lowers the score), or the largest |value|; right column: the "
             "most negative cell is in the hallucinated object's column.", "",
             "Contrast: the heatmap of f(caption) - f(reference caption) (`image_occlusion(contrast=...)`). The reward "
             "model scores the reference caption above the hallucinated one in "
             + ", ".join(f"{h[k]['rm_prefers_reference']:.0%} ({k})" for k in ("extra_object", "wrong_colour"))
             + " of the cases.", "",
             "| caption | fill | n | most negative cell | top cell by abs value | right column | most negative cell, "
             "where the reward model prefers the reference (n) |",
             "|---|---|---|---|---|---|---|"]
    for kind in ("extra_object", "wrong_colour", "all"):
        for fill, row in h[kind].items():
            if fill == "rm_prefers_reference":
                continue
            lines.append(f"| {kind} | {fill} | {row['n']} | {row['most_negative_hit']:.3f} | {row['abs_top_hit']:.3f} | "
                         f"{row['column_hit']:.3f} | {row['most_negative_hit_detected']:.3f} ({row['n_detected']}) |")
    lines += ["", "## Modality shares of the reward model's score of reference answers", "",
              "Share of questions where the claim holds, by method (ablation: blank image / silent audio / masked "
              "text; ablation, others: the image / clip of 4 other test questions in turn; IG: integrated gradients "
              "from the blank / silent / masked baseline), then the mean shares.", "",
              "| questions | n | claim | ablation | ablation, others | integrated gradients |",
              "|---|---|---|---|---|---|"]
    fmt = lambda s: ", ".join(f"{k} {v:.2f}" for k, v in s.items())  # noqa: E731
    for task, row in q.items():
        lines.append(f"| {task} | {row['n']} | {row['claim']} | {row['ablation_hit']:.3f} | "
                     f"{row['ablation_others_hit']:.3f} | {row['ig_hit']:.3f} |")
    lines += ["", "| questions | mean shares: ablation | ablation, others | integrated gradients |", "|---|---|---|---|"]
    for task, row in q.items():
        lines.append(f"| {task} | {fmt(row['ablation_mean_share'])} | {fmt(row['ablation_others_mean_share'])} | "
                     f"{fmt(row['ig_mean_share'])} |")
    lines += ["", "## Time", "",
              f"`modalign explain` with every method ({t['methods']}) on the built-in reward model: "
              f"{t['seconds_per_example']:.2f} s per example over {t['examples']} test examples "
              f"({t['command_wall_seconds']} s for the whole command, loading included), on a shared 2-core machine.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
