"""Must-show numbers of `modalign explain` (issue 20) on ShapesWorld -> bench/results/explain.md/.json.

1. a small SFT backbone on clean ShapesWorld (`sft` recipe, or `--policy` + `--data`: an existing backbone and the
   dataset it was trained on), then a reward model trained with the `reward` recipe on simulated-panel rankings:
   per train example the reference answer and 3 wrong ones (captions with one hallucination from
   `data/shapes/language.noisy_caption`, questions with other answers the same question has in the split), ranked
   by the default simulated panel; `--backbone-lr` > 0 trains it end to end;
2. test captions with ONE hallucinated object (kinds extra_object: an object that is not there, and
   wrong_colour: a present object with the wrong colour): is the occlusion heatmap's top cell the
   hallucinated object's cell? Objects sit in one of 3 columns, their centre always in the middle row
   of a 3 x 3 grid (render.py: vertical jitter of +-15 % of the side), so the cell is (1, column);
   "top" is the cell that lowers the score most (most negative f(x) - f(occluded)), and by |value|; cells filled
   grey, with the background, or from the data (`occlusion_fill=others`: the same cell of K other scenes'
   images, Zintgraf et al. 2017), with and without the contrast to the reference caption;
3. test audio-fact and image-fact questions with their reference answers: does the audio's share
   exceed the image's (and the reverse), by ablation and by integrated gradients;
4. `modalign explain` (every method) seconds per example on the built-in model.

Settings are picked on a validation split and reported on a disjoint test split: the test scenes
before `--val-scenes` are validation, the rest test (the SFT run's test split, never trained on).

    PYTHONPATH=src python bench/explain_checks.py [--work /tmp/explain_bench] [--policy M --data D]
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
    parser.add_argument("--policy", default="", help="an existing backbone folder (with --data: its dataset)")
    parser.add_argument("--data", default="", help="the dataset folder the --policy backbone was trained on")
    parser.add_argument("--scenes", type=int, default=1000, help="train scenes of the SFT run")
    parser.add_argument("--test-scenes", type=int, default=300, help="test scenes of the SFT run")
    parser.add_argument("--val-scenes", type=int, default=100, help="test scenes before this one are validation")
    parser.add_argument("--epochs", type=float, default=12.0)
    parser.add_argument("--hidden", type=int, default=96)
    parser.add_argument("--encoder-layers", type=int, default=2)
    parser.add_argument("--reward-examples", type=int, default=5000, help="train examples ranked for the reward model")
    parser.add_argument("--reward-steps", type=int, default=2000)
    parser.add_argument("--backbone-lr", type=float, default=0.0, help="> 0: the reward model trains end to end")
    parser.add_argument("--cases", type=int, default=80, help="test captions per hallucination kind")
    parser.add_argument("--val-cases", type=int, default=60, help="validation captions per hallucination kind")
    parser.add_argument("--questions", type=int, default=100, help="test questions per kind (audio, image)")
    parser.add_argument("--val-questions", type=int, default=60)
    parser.add_argument("--only", default="", help="compute only these of validation,test,timing (cached in --work, "
                                                   "so processes may share the work); a run without it reports")
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if args.policy:
        model, data, sft_info = Path(args.policy), Path(args.data), {"parameters": None, "train_seconds": None}
    else:
        sft = Path(args.sft) if args.sft else train_sft(work / "sft", args)
        model, data, sft_info = sft / "model", sft / "data", sft_numbers(sft)
    reward = train_reward(work, model, data, args)
    results = {"sft": sft_info, "reward": reward, "args": vars(args)}
    rm = Path(reward["model"])
    splits = {"validation": lambda e: scene_index(e) < args.val_scenes,
              "test": lambda e: scene_index(e) >= args.val_scenes}
    counts = {"validation": (args.val_cases, args.val_questions), "test": (args.cases, args.questions)}
    pieces = {split: (lambda split=split: {
        "hallucination": hallucination_check(rm, data, counts[split][0], splits[split]),
        "questions": question_check(rm, data, counts[split][1], splits[split])}) for split in splits}
    pieces["timing"] = lambda: explain_timing(rm, data, work / "explain_run")
    pieces["others_cli"] = lambda: others_cli_run(rm, data, work / "explain_others")
    for split in splits:  # fill `others` on the same cases as the fills above (their cached piece)
        pieces[f"others_{split}"] = (lambda split=split: others_fill_check(
            rm, data, cached(work, split, pieces[split])["hallucination"]["cases"], splits[split]))
    if args.only:  # compute (and cache) these pieces only: separate processes may share the work
        for name in args.only.split(","):
            cached(work, name, pieces[name])
        return
    done = {name: cached(work, name, compute) for name, compute in pieces.items()}
    for key in ("hallucination", "questions"):
        results[key] = {split: done[split][key] for split in splits}
    results["timing"] = done["timing"]
    results["others_fill"] = {split: done[f"others_{split}"] for split in splits}
    results["others_fill"]["validation"].pop("cases")
    results["others_fill"]["cli"] = done["others_cli"]
    results["picked"] = pick_settings(results)
    results["others_fill"]["heatmap_pngs"] = save_heatmaps(results, data)
    keep = ("example_id", "caption", "cell", "rm_prefers_reference", results["picked"]["occlusion_others"]["setting"])
    for items in results["others_fill"]["test"]["cases"].values():  # the picked setting's heatmaps only
        items[:] = [{key: item[key] for key in keep} for item in items]
    results["hallucination"]["validation"].pop("cases")  # per-case heatmaps of the test split only
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "explain.json").write_text(json.dumps(_rounded(results), indent=1))
    (RESULTS / "explain.md").write_text(markdown(results, args))
    print((RESULTS / "explain.md").read_text())


def _rounded(value):
    """`value` with every float to 5 significant digits (the JSON stays readable)."""
    if isinstance(value, float):
        return float(f"{value:.5g}")
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value


def cached(work: Path, name: str, compute) -> dict:
    """work/<name>.json, computed once."""
    path = work / f"{name}.json"
    if not path.is_file():
        path.write_text(json.dumps(compute()))
    return json.loads(path.read_text())


def scene_index(example) -> int:
    """ShapesWorld ids are <split>-<scene>-<task>: the scene number."""
    return int(example.id.split("-")[1])


def train_sft(folder: Path, args) -> Path:
    from modalign.recipes.sft import SFTConfig, run_sft

    if not (folder / "summary.json").is_file():
        run_sft(SFTConfig(out=str(folder), shapes_train_scenes=args.scenes, shapes_test_scenes=args.test_scenes,
                          caption_noise=0.0, hidden_size=args.hidden, num_layers=2, encoder_layers=args.encoder_layers,
                          vocab_size=300, epochs=args.epochs, eval_examples=100, threads=1))
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


def train_reward(work: Path, model: Path, data: Path, args) -> dict:
    """Panel rankings of reference vs wrong answers on the train split -> the `reward` recipe."""
    from modalign.recipes.reward import RewardConfig, run_reward

    folder, store_path = work / "reward", work / "feedback.db"
    if (folder / "summary.json").is_file():  # a reward model trained before (on this store)
        summary = json.loads((folder / "summary.json").read_text())
    else:
        if not store_path.is_file():
            write_rankings(store_path, data, args.reward_examples)
        summary = run_reward(RewardConfig(out=str(folder), policy=str(model), store=str(store_path),
                                          steps=args.reward_steps, backbone_lr=args.backbone_lr))
    return {**summary, "heldout_panel_gold_agreement": panel_gold_agreement(store_path)}


def write_rankings(store_path: Path, data: Path, count: int) -> None:
    """The simulated panel's rankings of the reference and 3 wrong answers of `count` train examples."""
    from modalign.data.dataset import read_examples
    from modalign.data.records import Completion
    from modalign.feedback.collect import judge_with_panel, write_feedback
    from modalign.feedback.store import FeedbackStore

    examples = read_examples(data, "train")
    by_question, rng = wrong_answers(examples), random.Random(0)
    k = 4
    prompts, completions = [], []
    for example in examples[:count]:
        texts = candidates(example, rng, by_question, k)
        texts += [texts[0]] * (k - len(texts))  # duplicates are one candidate to the panel
        prompts.append(example)
        completions += [Completion(example.id, text, "explain-bench") for text in texts]
    feedback, _ = judge_with_panel(prompts, completions, k, seed=0)
    write_feedback(FeedbackStore.sqlite(store_path), feedback, str(data))


def panel_gold_agreement(store_path: Path) -> dict:
    """Held-out majority pairs (not ties) of the panel against ShapesWorld gold utility: the share whose two answers
    are equally good by gold (e.g. two wrong answers: a coin flip for any reward model), and among the others the
    share whose chosen answer is the better one (what a reward model fitting the gold scores on them)."""
    from modalign.feedback.simulated import gold_utility
    from modalign.feedback.store import FeedbackStore
    from modalign.recipes.reward import RewardConfig, _is_heldout

    store, fraction = FeedbackStore.sqlite(store_path), RewardConfig.heldout_fraction
    pairs = [p for p in store.preference_pairs(1) if not p.tie and _is_heldout(p.example_id, fraction)]
    examples = {p.example_id: store.get_example(p.example_id) for p in pairs}
    gaps = [gold_utility(examples[p.example_id], p.chosen.text) - gold_utility(examples[p.example_id], p.rejected.text)
            for p in pairs]
    decided = [g for g in gaps if g != 0]
    return {"gold_equal_share": 1 - len(decided) / max(1, len(gaps)),
            "panel_right_where_gold_differs": sum(g > 0 for g in decided) / max(1, len(decided))}


def hallucinated_caption(example, kind: str, rng: random.Random) -> tuple[str, list[int]] | None:
    """The example's caption with ONE hallucinated object of `kind`, and that object's [row, column] cell
    (None: an extra object needs an empty place)."""
    from modalign.data.shapes.language import object_phrase
    from modalign.data.shapes.world import COLOURS, POSITIONS, SHAPES, SIZES, Obj, Scene

    scene = Scene.from_dict(example.meta["scene"])
    objects = list(scene.objects)
    if kind == "extra_object":
        empty = [p for p in POSITIONS if scene.at(p) is None]
        if not empty:
            return None
        position = rng.choice(empty)
        absent = [s for s in SHAPES if s not in {o.shape for o in objects}] or list(SHAPES)
        objects.append(Obj(rng.choice(absent), rng.choice(COLOURS), rng.choice(SIZES), position))
        objects.sort(key=lambda o: POSITIONS.index(o.position))
    else:
        i = rng.randrange(len(objects))
        old = objects[i]
        position = old.position
        objects[i] = Obj(old.shape, rng.choice([c for c in COLOURS if c != old.colour]), old.size, position)
    text = ", ".join(object_phrase(o) for o in objects) + "." + example.answer[example.answer.index(".") + 1:]
    return text, [1, POSITIONS.index(position)]


def hallucination_check(rm: Path, data: Path, count: int, in_split) -> dict:
    """Occlusion top cell vs the hallucinated object's cell, for `count` captions per kind with one hallucinated
    object (every caption of the split gives one of each kind it can)."""
    import torch

    from modalign.data.dataset import read_examples
    from modalign.eval.explain import encode_subject, image_occlusion, load_target
    from modalign.models.inputs import MediaStore

    target, processor = load_target(rm)
    media = MediaStore(data)
    rng = random.Random(1)
    rows: dict[str, list[dict]] = {"extra_object": [], "wrong_colour": []}
    captions = [e for e in read_examples(data, "test") if e.meta.get("task") == "caption" and in_split(e)]
    seconds = 0.0
    for example in captions:
        for kind in rows:
            made = hallucinated_caption(example, kind, rng)
            if made is None or len(rows[kind]) >= count:
                continue
            text, cell = made
            subject = encode_subject(processor, media, example, text, media_token_ids=target.media_token_ids())
            reference = encode_subject(processor, media, example, example.answer,
                                       media_token_ids=target.media_token_ids())
            with torch.no_grad():
                gap = float(target(reference.input_ids, reference.answer_mask, **reference.media())
                            - target(subject.input_ids, subject.answer_mask, **subject.media()))
            row = {"example_id": example.id, "caption": text, "cell": cell, "rm_prefers_reference": gap > 0}
            for fill, settings in FILLS.items():
                begin = time.process_time()
                heat = image_occlusion(target, subject, grid=3, fill=settings["fill"],
                                       contrast=reference if settings["contrast"] else None)
                seconds += time.process_time() - begin
                row[fill] = {"heatmap": heat["heatmap"], "most_negative_hit": heat["most_negative_cell"] == cell,
                             "abs_top_hit": heat["top_cell"] == cell,
                             "column_hit": heat["most_negative_cell"][1] == cell[1]}
            rows[kind].append(row)
    out = {}
    for kind, items in list(rows.items()) + [("all", rows["extra_object"] + rows["wrong_colour"])]:
        detected = [item for item in items if item["rm_prefers_reference"]]  # the reward model sees the hallucination
        out[kind] = {fill: {"n": len(items), **{key: _rate([item[fill] for item in items], key)
                                                 for key in ("most_negative_hit", "abs_top_hit", "column_hit")},
                            "n_detected": len(detected),
                            **{f"{key}_detected": _rate([item[fill] for item in detected], key)
                               for key in ("most_negative_hit", "abs_top_hit")}}
                     for fill in FILLS}
        out[kind]["rm_prefers_reference"] = _rate(items, "rm_prefers_reference")
    n_heatmaps = len(FILLS) * sum(map(len, rows.values()))
    out["cpu_seconds_per_heatmap"] = round(seconds / max(1, n_heatmaps), 4)
    out["cases"] = rows
    return out


# fill `others` (Zintgraf et al. 2017): each cell replaced by the same cell of K other scenes' images in turn, mean
# score; the K are the explained set's next scenes (`explain`'s `background_of`: one draw for all cells, "joint")
# or K scenes drawn per cell from every other scene of the split ("independent")
OTHERS_K = (4, 8, 16)
OTHERS_SAMPLING = ("joint", "independent")


def others_fill_check(rm: Path, data: Path, cases: dict[str, list[dict]], in_split) -> dict:
    """The same hallucinated captions as `hallucination_check` (its cached cases) with fill `others`: per case the
    heatmaps of the caption and of the reference against each of 16 other images (K = 4, 8 are the first K of
    them; the contrastive heatmap is their difference, f being linear in the occluded rows)."""
    import torch

    from modalign.data.dataset import read_examples
    from modalign.eval.explain import encode_subject, image_occlusion, load_target
    from modalign.models.inputs import MediaStore
    from modalign.recipes.explain import background_of

    target, processor = load_target(rm)
    media, ids = MediaStore(data), target.media_token_ids()
    captions = [e for e in read_examples(data, "test") if e.meta.get("task") == "caption" and in_split(e)]
    by_id = {e.id: e for e in captions}
    scenes = [encode_subject(processor, media, e, e.answer, media_token_ids=ids) for e in captions]
    rng, seconds, heatmaps = torch.Generator().manual_seed(0), 0.0, 0
    rows: dict[str, list[dict]] = {}
    for kind, items in cases.items():
        rows[kind] = []
        for case in items:
            example = by_id[case["example_id"]]
            index = captions.index(example)
            subject = encode_subject(processor, media, example, case["caption"], media_token_ids=ids)
            pools = {"joint": background_of(scenes, index, max(OTHERS_K)),
                     "independent": independent_draws(scenes, index, max(OTHERS_K), rng)}
            row = {key: case[key] for key in ("example_id", "caption", "cell", "rm_prefers_reference")}
            for sampling, others in pools.items():
                begin = time.process_time()
                heats = [torch.tensor(image_occlusion(target, s, 3, fill="others", others=others,
                                                      keep_samples=True)["sample_heatmaps"])
                         for s in (subject, scenes[index])]  # (K, 3, 3) of the caption, of the reference
                seconds, heatmaps = seconds + time.process_time() - begin, heatmaps + 2
                for k in OTHERS_K:
                    own, reference = heats[0][:k].mean(0), heats[1][:k].mean(0)
                    for contrast, heat in (("", own), (", contrast", own - reference)):
                        row[f"others {k} {sampling}{contrast}"] = cell_hits(heat, case["cell"])
            rows[kind].append(row)
    settings = [key for key in rows["extra_object"][0] if key.startswith("others")]
    out = rates(rows, settings)
    out["cpu_seconds_per_heatmap_16"] = round(seconds / max(1, heatmaps), 4)
    out["cpu_seconds_contrastive_heatmap"] = others_timing(target, processor, media, captions, scenes)
    out["cases"] = rows
    return out


def others_cli_run(rm: Path, data: Path, out: Path, count: int = 17) -> dict:
    """`modalign explain` (occlusion only, occlusion_fill=others background=16 contrast=reference) on the first
    `count` captions of the split, each with one hallucinated object (alternately extra object and wrong colour):
    seconds per example of the product path, and whether its heatmaps' most negative cell is that object's."""
    import shutil

    from modalign.data.dataset import read_examples

    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    rng, cells, lines = random.Random(2), {}, []
    captions = [e for e in read_examples(data, "test") if e.meta.get("task") == "caption"][:count]
    for index, example in enumerate(captions):
        kind = ("extra_object", "wrong_colour")[index % 2]
        text, cell = hallucinated_caption(example, kind, rng) or hallucinated_caption(example, "wrong_colour", rng)
        cells[example.id] = cell
        lines.append(json.dumps({"example_id": example.id, "text": text}))
    (out / "answers.jsonl").write_text("\n".join(lines) + "\n")
    settings = {"methods": "occlusion", "task": "caption", "max_examples": count, "occlusion_fill": "others",
                "background": 16, "contrast": "reference", "answers": str(out / "answers.jsonl")}
    command = [sys.executable, "-m", "modalign.cli", "explain", "--model", str(rm), "--data", str(data),
               "--out", str(out / "run"), *[part for k, v in settings.items() for part in ("--set", f"{k}={v}")]]
    cpu = _children_cpu()
    subprocess.run(command, check=True, capture_output=True)
    cpu = _children_cpu() - cpu
    summary = json.loads((out / "run" / "summary.json").read_text())
    explained = json.loads((out / "run" / "attributions.json").read_text())["examples"]
    hits = [e["occlusion"]["most_negative_cell"] == cells[e["example_id"]] for e in explained]
    return {"settings": settings, "examples": len(explained), "seconds_per_example": summary["seconds_per_example"],
            "command_cpu_seconds": round(cpu, 1), "most_negative_hit": sum(hits) / len(hits),
            "baseline": explained[0]["occlusion"]["baseline"]}


def save_heatmaps(results: dict, data: Path, per_kind: int = 2) -> list[str]:
    """PNGs of the picked fill-from-data heatmap for the first `per_kind` test misses and the first hit of each
    kind -> bench/results/explain_heatmaps/ (paths relative to bench/results)."""
    from modalign.data.dataset import read_examples
    from modalign.eval.explain.figures import heatmap_png
    from modalign.models.inputs import MediaStore

    name = results["picked"]["occlusion_others"]["setting"]
    rule = results["picked"]["occlusion_others"]["rule"]
    examples, media = {e.id: e for e in read_examples(data, "test")}, MediaStore(data)
    folder, written = RESULTS / "explain_heatmaps", []
    for kind, items in results["others_fill"]["test"]["cases"].items():
        misses = [item for item in items if not item[name][rule]][:per_kind]
        hits = [item for item in items if item[name][rule]][:1]
        for item, verdict in [(m, "miss") for m in misses] + [(h, "hit") for h in hits]:
            path = folder / f"{kind}_{verdict}_{item['example_id']}.png"
            heatmap_png(media.images(examples[item["example_id"]])[0], item[name]["heatmap"], path,
                        f"{kind} {verdict}: object in cell {tuple(item['cell'])}")
            written.append(str(path.relative_to(RESULTS)))
    return written


def others_timing(target, processor, media, captions: list, scenes: list, count: int = 10) -> dict[str, float]:
    """Process CPU seconds of one contrastive heatmap with fill `others` (what `explain` computes with
    occlusion_fill=others contrast=reference), per K, over `count` captions of the split."""
    from modalign.eval.explain import encode_subject, image_occlusion
    from modalign.recipes.explain import background_of

    out = {}
    for k in OTHERS_K:
        begin = time.process_time()
        for index, example in enumerate(captions[:count]):
            subject = encode_subject(processor, media, example, example.answer + " a",
                                     media_token_ids=target.media_token_ids())
            image_occlusion(target, subject, 3, fill="others", others=background_of(scenes, index, k),
                            contrast=scenes[index])
        out[str(k)] = round((time.process_time() - begin) / count, 4)
    return out


def independent_draws(scenes: list, index: int, count: int, rng) -> list:
    """`count` composite subjects whose image's cell c is the same cell of a scene drawn for c alone from every
    other scene of the split (3 x 3 cells of a 48 x 48 image: no overlap)."""
    import dataclasses

    import torch

    images = torch.stack([s.pixel_values[0] for i, s in enumerate(scenes) if i != index])  # (S, C, H, W)
    side = images.shape[-1] // 3
    composite = torch.empty(count, *images.shape[1:])
    for row in range(3):
        for column in range(3):
            drawn = torch.randperm(len(images), generator=rng)[:count]
            window = (slice(None), slice(None), slice(row * side, (row + 1) * side),
                      slice(column * side, (column + 1) * side))
            composite[window] = images[drawn][window]
    return [dataclasses.replace(scenes[index], pixel_values=image[None]) for image in composite]


def cell_hits(heat, cell: list[int]) -> dict:
    """Is the most negative cell / the largest |value| cell the hallucinated one; is the most negative in its
    column."""
    flat = heat.flatten()
    negative, top = divmod(int(flat.argmin()), 3), divmod(int(flat.abs().argmax()), 3)
    return {"heatmap": heat.tolist(), "most_negative_hit": list(negative) == cell, "abs_top_hit": list(top) == cell,
            "column_hit": negative[1] == cell[1]}


def rates(rows: dict[str, list[dict]], settings: list[str]) -> dict:
    """Hit rates per kind (and all) and setting, over all cases and where the RM prefers the reference."""
    out = {}
    for kind, items in list(rows.items()) + [("all", [i for items in rows.values() for i in items])]:
        detected = [item for item in items if item["rm_prefers_reference"]]
        out[kind] = {name: {"n": len(items), **{key: _rate([item[name] for item in items], key)
                                                  for key in ("most_negative_hit", "abs_top_hit", "column_hit")},
                            "n_detected": len(detected),
                            **{f"{key}_detected": _rate([item[name] for item in detected], key)
                               for key in ("most_negative_hit", "abs_top_hit")}}
                     for name in settings}
    return out


# occluded cells show the processor's mean colour or the image's median one (regions.IMAGE_BASELINES); contrast:
# the heatmap of f(caption) - f(reference caption)
FILLS = {"mean": {"fill": "mean", "contrast": False}, "median": {"fill": "median", "contrast": False},
         "mean, contrast": {"fill": "mean", "contrast": True}, "median, contrast": {"fill": "median", "contrast": True}}


def _rate(items: list[dict], key: str) -> float:
    return sum(item[key] for item in items) / max(1, len(items))


QUESTION_METHODS = ("ablation", "ablation_others", "ablation_others16", "ig")


def question_check(rm: Path, data: Path, count: int, in_split) -> dict:
    """Audio vs image share (ablation and integrated gradients) of the RM's score of reference answers; "RM right":
    the reference scores above every other answer the question has in the split."""
    import torch

    from modalign.data.dataset import read_examples
    from modalign.eval.explain import ablation, encode_subject, integrated_gradients, load_target
    from modalign.models.inputs import MediaStore
    from modalign.recipes.explain import background_of

    target, processor = load_target(rm)
    media, pad = MediaStore(data), processor.tokenizer.pad_token_id
    test = read_examples(data, "test")
    by_question = wrong_answers(test)
    out = {}
    for task, more, less in (("vqa_audio", "audio", "image"), ("vqa_image", "image", "audio")):
        examples = [e for e in test if e.meta.get("task") == task and in_split(e)][:count]
        hits = {m: [] for m in QUESTION_METHODS}
        shares = {m: defaultdict(list) for m in QUESTION_METHODS}
        seconds = defaultdict(float)
        subjects = [encode_subject(processor, media, example, example.answer, media_token_ids=target.media_token_ids())
                    for example in examples]
        right = [rm_right(target, processor, media, example, subject, by_question)
                 for example, subject in zip(examples, subjects)]
        for index, subject in enumerate(subjects):
            others = background_of(subjects, index, 16)  # the media of other scenes, as `explain` picks them
            for method, call in (("ablation", lambda: ablation(target, subject, pad)),
                                 ("ablation_others", lambda: ablation(target, subject, pad, others[:4])),
                                 ("ablation_others16", lambda: ablation(target, subject, pad, others)),
                                 ("ig", lambda: integrated_gradients(target, subject, pad))):
                begin = time.process_time()
                result = call()
                seconds[method] += time.process_time() - begin
                hits[method].append(result["share"][more] > result["share"][less])
                for modality, value in result["share"].items():
                    shares[method][modality].append(value)
        n_right = sum(right)
        with torch.no_grad():
            out[task] = {"n": len(examples), "claim": f"{more} share > {less} share", "n_rm_right": n_right,
                         "rm_right": n_right / max(1, len(examples)),
                         **{f"{m}_hit": sum(h) / max(1, len(h)) for m, h in hits.items()},
                         **{f"{m}_hit_rm_right": sum(x for x, ok in zip(h, right) if ok) / max(1, n_right)
                            for m, h in hits.items()},
                         **{f"{m}_mean_share": {k: sum(v) / len(v) for k, v in s.items()} for m, s in shares.items()},
                         **{f"{m}_cpu_seconds": round(seconds[m] / max(1, len(examples)), 4) for m in QUESTION_METHODS}}
    return out


def rm_right(target, processor, media, example, subject, by_question: dict[str, list[str]]) -> bool:
    """Does the reward model score the reference answer above every other answer of the question?"""
    import torch

    from modalign.eval.explain import encode_subject

    wrong = [a for a in by_question.get(example.prompt_text, []) if a != example.answer]
    with torch.no_grad():
        own = float(target(subject.input_ids, subject.answer_mask, **subject.media()))
        for answer in wrong:
            other = encode_subject(processor, media, example, answer, media_token_ids=target.media_token_ids())
            if float(target(other.input_ids, other.answer_mask, **other.media())) >= own:
                return False
    return True


def pick_settings(results: dict) -> dict:
    """The occlusion setting (fill, contrast, top-cell rule) with the best hit rate over all validation captions,
    and the modality method with the best worse-of-both-claims rate on validation questions."""
    val = results["hallucination"]["validation"]["all"]
    occlusion = max(((fill, rule) for fill in FILLS for rule in ("most_negative_hit", "abs_top_hit")),
                    key=lambda pair: val[pair[0]][pair[1]])
    questions = results["questions"]["validation"]
    modality = max(QUESTION_METHODS, key=lambda m: min(questions[t][f"{m}_hit"] for t in questions))
    others = results["others_fill"]["validation"]["all"]  # settings in order: joint first, smaller K first (ties)
    from_data = max(((name, rule) for name in others for rule in ("most_negative_hit", "abs_top_hit")),
                    key=lambda pair: others[pair[0]][pair[1]])
    return {"occlusion": {"fill": occlusion[0], "rule": occlusion[1]}, "modality": modality,
            "occlusion_others": {"setting": from_data[0], "rule": from_data[1]}}


def others_markdown(results: dict, rule_name: dict[str, str]) -> list[str]:
    """The fill-from-the-data subsection: the pick, then every setting on validation and test."""
    o, picked = results["others_fill"], results["picked"]["occlusion_others"]
    name, rule = picked["setting"], picked["rule"]
    test, timing = o["test"], o["test"]["cpu_seconds_contrastive_heatmap"]
    lines = ["### Fill from the data (`occlusion_fill=others`)", "",
             f"**Picked on validation: `{name}`, {rule_name[rule]}. Test: "
             + ", ".join(f"{k} {test[k][name][rule]:.0%} (n={test[k][name]['n']})"
                         for k in ("extra_object", "wrong_colour", "all"))
             + f"; where the reward model prefers the reference: {test['all'][name][rule + '_detected']:.0%} "
               f"(n={test['all'][name]['n_detected']}).**", "",
             "Each occluded cell is replaced by the same cell of K other scenes' images in turn and the value is "
             "f(x) - mean_k f(x with other k's cell) (prediction difference analysis, Zintgraf et al. 2017, ICLR). "
             "Joint: the K are the next K scenes of the split for every cell (what `explain` does with "
             "`occlusion_fill=others background=K`); independent: each cell draws its own K from every other "
             "scene of the split. K = 4 and 8 are the first 4 and 8 of the same 16 draws. Contrast: the heatmap of "
             "f(caption) - f(reference caption) (`contrast=reference`). Process CPU per contrastive heatmap (what "
             "`explain` computes, 3 x 3 cells): " + ", ".join(f"K={k} {v:.2f} s" for k, v in timing.items())
             + f"; one plain heatmap with K=16 {test['cpu_seconds_per_heatmap_16']:.2f} s (a 3 x 3 heatmap with "
               f"the mean fill: 0.05 s). n = {o['validation']['all'][name]['n']} validation and "
               f"{test['all'][name]['n']} test captions (those of the fills below).", "",
             "| setting | validation all: most negative / abs top | test extra_object | test wrong_colour | test all "
             "| test all where the RM prefers the reference (n) | test all: the object's column |",
             "|---|---|---|---|---|---|---|"]
    for setting, row in o["validation"]["all"].items():
        pair = lambda r: f"{r['most_negative_hit']:.3f} / {r['abs_top_hit']:.3f}"  # noqa: E731
        t = test["all"][setting]
        lines.append(f"| {setting} | {pair(row)} | {pair(test['extra_object'][setting])} | "
                     f"{pair(test['wrong_colour'][setting])} | {pair(t)} | {t['most_negative_hit_detected']:.3f} / "
                     f"{t['abs_top_hit_detected']:.3f} ({t['n_detected']}) | {t['column_hit']:.3f} |")
    cli = o["cli"]
    sets = ", ".join(f"{k}={v}" for k, v in cli["settings"].items() if k != "answers")
    lines += ["", f"Through `modalign explain` ({sets}, answers: the first {cli['examples']} test captions with one "
              "hallucinated object each): "
              f"{cli['seconds_per_example']:.2f} s per example (wall, contended machine), {cli['command_cpu_seconds']} "
              f"s CPU for the whole command (loading included); the most negative cell is the object's in "
              f"{cli['most_negative_hit']:.0%} of these {cli['examples']} (validation scenes: a check of the product "
              "path, not a result).", "", misses_summary(test["cases"], name, rule, Path(results["args"]["data"])), "",
              "Heatmaps of the picked setting (red: supports the score, blue: lowers it), first misses and first hit "
              "per kind: " + ", ".join(f"[{Path(p).stem}]({p})" for p in o["heatmap_pngs"]) + "."]
    return lines


def misses_summary(cases: dict[str, list[dict]], name: str, rule: str, data: Path) -> str:
    """Where the picked heatmap's top cell lands when it misses: the middle row (the row objects sit in), a cell
    empty in the scene, and is the object's cell the runner-up."""
    from modalign.data.dataset import read_examples
    from modalign.data.shapes.world import POSITIONS, Scene

    scenes = {e.id: Scene.from_dict(e.meta["scene"]) for e in read_examples(data, "test") if "scene" in e.meta}
    key = (lambda v: -v) if rule == "most_negative_hit" else abs
    parts = []
    for kind, items in cases.items():
        misses = [item for item in items if not item[name][rule]]
        middle = empty = second = 0
        for item in misses:
            flat = [v for row in item[name]["heatmap"] for v in row]
            order = sorted(range(9), key=lambda i: key(flat[i]), reverse=True)
            middle += order[0] // 3 == 1
            empty += order[0] // 3 == 1 and scenes[item["example_id"]].at(POSITIONS[order[0] % 3]) is None
            second += order[1] == 3 * item["cell"][0] + item["cell"][1]
        parts.append(f"{kind}: {len(misses)} misses, the top cell in the middle row in {middle} (a cell empty in the "
                     f"scene in {empty}), the object's cell second in {second}")
    return "Misses on test (picked setting): " + "; ".join(parts) + "."


def explain_timing(rm: Path, data: Path, out: Path) -> dict:
    """`modalign explain` with every method on 12 test examples, in its own process (the CLI's path)."""
    import shutil

    shutil.rmtree(out, ignore_errors=True)
    command = [sys.executable, "-m", "modalign.cli", "explain", "--model", str(rm), "--data", str(data),
               "--out", str(out),
               "--set", "max_examples=12"]
    started, cpu = time.time(), _children_cpu()
    subprocess.run(command, check=True, capture_output=True)
    summary = json.loads((out / "summary.json").read_text())
    return {"examples": summary["n_explained"], "seconds_per_example": summary["seconds_per_example"],
            "command_wall_seconds": round(time.time() - started, 1),
            "command_cpu_seconds": round(_children_cpu() - cpu, 1), "methods": "ablation,ig,occlusion,audio,tokens"}


def _children_cpu() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def markdown(results: dict, args) -> str:
    h, q, t, r, picked = (results["hallucination"], results["questions"], results["timing"], results["reward"],
                          results["picked"])
    sft, g = results["sft"], results["reward"]["heldout_panel_gold_agreement"]
    backbone = (f"built-in model ({sft['parameters']} parameters) SFT on {args.scenes} clean ShapesWorld scenes "
                f"({sft['train_seconds']} s)" if sft.get("parameters") else
                f"the built-in model `{args.policy}` (SFT on the clean ShapesWorld train split of `{args.data}`)")
    training = (f"end to end (backbone lr {args.backbone_lr:g}, head lr 3e-3)" if args.backbone_lr else
                "frozen backbone, head on cached features")
    test_h, val_h = h["test"], h["validation"]
    fill, rule = picked["occlusion"]["fill"], picked["occlusion"]["rule"]
    rule_name = {"most_negative_hit": "most negative cell", "abs_top_hit": "top cell by |value|"}
    lines = ["# modalign explain: must-show checks (bench/explain_checks.py)", "",
             f"Backbone: {backbone}. Reward model: the `reward` recipe ({training}, likelihood feature, "
             f"{args.reward_steps} steps) on {r['train_pairs']} simulated-panel pairs from {args.reward_examples} "
             "train "
             f"examples; held-out pair accuracy {r['heldout_accuracy']:.3f} (train {r['train_accuracy']:.3f}) on the "
             f"panel's noisy labels: {g['gold_equal_share']:.0%} of those pairs hold two answers equally good by gold "
             f"utility (a coin flip for any model), and where gold differs the panel picks the better one in "
             f"{g['panel_right_where_gold_differs']:.0%}.", "",
             f"Validation: test scenes < {args.val_scenes}; test: test scenes >= {args.val_scenes} (disjoint; neither "
             "trained on). Settings are picked on validation, numbers below the pick are test.", "",
             "## Occlusion top cell = the hallucinated object's cell (3 x 3 grid, chance 1/9)", "",
             *others_markdown(results, rule_name), "",
             "### Grey and background fills (the earlier settings)", "",
             f"**Picked on validation: fill `{fill}`, {rule_name[rule]}. Test: "
             + ", ".join(f"{k} {test_h[k][fill][rule]:.0%} (n={test_h[k][fill]['n']})"
                         for k in ("extra_object", "wrong_colour", "all"))
             + f"; where the reward model prefers the reference: {test_h['all'][fill][rule + '_detected']:.0%} "
               f"(n={test_h['all'][fill]['n_detected']}).**", "",
             "Occluded cells show the processor's mean colour (`mean`, grey) or the image's median colour (`median`, "
             "the background). Most negative cell: the cell whose occlusion raises the score most (most negative "
             "f(x) - f(occluded): the region that lowers the score); top cell by |value|: the largest |f(x) - "
             "f(occluded)|; right column: the most negative cell is in the hallucinated object's column. Contrast: "
             "the heatmap of f(caption) - f(reference caption) (`contrast=reference`).", "",
             "The reward model scores the reference caption above the hallucinated one in "
             + ", ".join(f"{test_h[k]['rm_prefers_reference']:.0%} ({k})" for k in ("extra_object", "wrong_colour"))
             + " of the test cases (validation: "
             + ", ".join(f"{val_h[k]['rm_prefers_reference']:.0%}" for k in ("extra_object", "wrong_colour"))
             + ").", "",
             "| split | caption | fill | n | most negative cell | top cell by abs value | right column | most negative "
             "/ abs top, where the RM prefers the reference (n) |",
             "|---|---|---|---|---|---|---|---|"]
    for split in ("validation", "test"):
        for kind in ("extra_object", "wrong_colour", "all"):
            for name in FILLS:
                row = h[split][kind][name]
                lines.append(f"| {split} | {kind} | {name} | {row['n']} | {row['most_negative_hit']:.3f} | "
                             f"{row['abs_top_hit']:.3f} | {row['column_hit']:.3f} | "
                             f"{row['most_negative_hit_detected']:.3f} / {row['abs_top_hit_detected']:.3f} "
                             f"({row['n_detected']}) |")
    method = picked["modality"]
    method_name = {"ablation": "ablation (blank / silent)", "ablation_others": "ablation, 4 others",
                   "ablation_others16": "ablation, 16 others", "ig": "integrated gradients"}
    test_q = q["test"]
    lines += ["", "## Modality shares of the reward model's score of reference answers", "",
              f"**Picked on validation: {method_name[method]}. Test: "
              + "; ".join(f"{row['claim']} for {task} in {row[method + '_hit']:.0%} of {row['n']} "
                          f"({row[method + '_hit_rm_right']:.0%} of the {row['n_rm_right']} the RM gets right)"
                          for task, row in test_q.items()) + ".**", "",
              "Share of questions where the claim holds, by method (ablation: blank image / silent audio / masked "
              "text; ablation, others: the image / clip of 4 or 16 other questions of the split in turn, mean score "
              "(`background`); IG: "
              "integrated gradients from the blank / silent / masked baseline). RM right: the reward model scores "
              "the reference above every other answer the question has in the split; the rate over those questions "
              "follows in brackets.", "",
              "| split | questions | n | RM right | claim | ablation | ablation, 4 others | ablation, 16 others | "
              "integrated gradients |",
              "|---|---|---|---|---|---|---|---|---|"]
    for split in ("validation", "test"):
        for task, row in q[split].items():
            cells = " | ".join(f"{row[m + '_hit']:.3f} ({row[m + '_hit_rm_right']:.3f})" for m in QUESTION_METHODS)
            lines.append(f"| {split} | {task} | {row['n']} | {row['rm_right']:.2f} | {row['claim']} | {cells} |")
    lines += ["", "| test questions | mean shares: ablation | ablation, 4 others | ablation, 16 others | "
              "integrated gradients |", "|---|---|---|---|---|"]
    fmt = lambda s: ", ".join(f"{k} {v:.2f}" for k, v in s.items())  # noqa: E731
    for task, row in test_q.items():
        lines.append(f"| {task} | " + " | ".join(fmt(row[m + "_mean_share"]) for m in QUESTION_METHODS) + " |")
    per_method = ", ".join(f"{method_name[m]} {test_q['vqa_image'][m + '_cpu_seconds']:.3f} s"
                           for m in QUESTION_METHODS)
    lines += ["", "## Time", "",
              f"`modalign explain` with every method ({t['methods']}) on the built-in reward model: "
              f"{t['seconds_per_example']:.2f} s per example (wall) over {t['examples']} test examples "
              f"({t['command_wall_seconds']} s wall, {t['command_cpu_seconds']} s CPU for the whole command, loading "
              f"included), on a 2-core machine shared with other jobs. "
              f"Process CPU time per example and method in the checks above: {per_method}; one occlusion heatmap "
              f"{test_h['cpu_seconds_per_heatmap']:.3f} s (a contrastive one twice the forwards).", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
