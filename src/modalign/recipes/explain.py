"""`modalign explain`: why a reward model scored an answer so, or what a policy's answer rests on.

model (reward-model or policy folder) + examples (a dataset split, as eval takes) -> per example:
modality shares by ablation and integrated gradients, an image occlusion heatmap, an audio-time
curve, token credit -> OUT/attributions.json, OUT/figures/*.png, OUT/summary.json, OUT/report.html.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from modalign.config import ConfigError, field_doc

METHODS_DEFAULT = "ablation,ig,occlusion,audio,tokens"


@dataclass
class ExplainConfig:
    """Attributions of a reward model's scores or a policy's answers (`modalign explain`)."""

    model: str = field_doc("", "Reward-model folder (holds scalar_head.safetensors) or policy folder (required).")
    data: str = field_doc("", "Dataset folder (required), or 'shapes' to generate a ShapesWorld test split.")
    split: str = field_doc("test", "Split whose examples are explained.")
    task: str = field_doc("", "Only examples whose meta.task is this ('' : all).")
    max_examples: int = field_doc(8, "Explain at most this many examples (0: all).")
    answers: str = field_doc("", "Answers explained: '' the examples' reference answers, or a samples .jsonl "
                                 "(`modalign eval`'s samples.jsonl: example_id and text per line).")
    methods: str = field_doc(METHODS_DEFAULT, "Comma-separated: ablation (modality shares by ablation), ig "
                                              "(integrated gradients over media features and prompt embeddings), "
                                              "occlusion (image heatmap), audio (audio-time curve), tokens (answer "
                                              "token credit).")
    ablation_baseline: str = field_doc("blank", "Ablation baseline of the image and the audio: blank (a blank image, "
                                                "silence) or others (the image / clip of `background` other "
                                                "explained examples in turn, mean score: in distribution for a model "
                                                "never trained on silence).")
    background: int = field_doc(16, "Examples whose media serve as baseline with ablation_baseline=others and "
                                    "occlusion_fill=others (16: picked on ShapesWorld validation questions over 4 "
                                    "and on validation captions over 4 and 8, bench/explain_checks.py).")
    occlusion_fill: str = field_doc("mean", "What an occluded image cell shows: mean (the processor's mean colour, "
                                            "pixel_values 0), median (the image's median colour: its background "
                                            "when mostly flat) or others (the same cell of `background` other "
                                            "explained examples' images in turn, mean score: what the data puts "
                                            "there, so a claimed absent object is found too).")
    contrast: str = field_doc("", "Occlusion heatmap of f(answer) - f(reference answer) with 'reference' (why the "
                                  "answer scores differently from the reference: e.g. where a hallucination is), "
                                  "of f(answer) with ''.")
    grid: int = field_doc(3, "Occlusion heatmap: grid x grid cells over the image.")
    audio_windows: int = field_doc(10, "Audio-time curve: windows over the clip.")
    ig_steps: int = field_doc(16, "Integrated gradients: steps of the path integral (Gauss-Legendre).")
    head: str = field_doc("", "Reward model: the head explained ('' : the first).")
    token: int = field_doc(-1, "Policy: explain the log-probability of this answer token (0-based; -1: the whole "
                               "answer).")
    max_length: int = field_doc(256, "Longest sequence (media tokens included).")
    shapes_test_scenes: int = field_doc(20, "ShapesWorld scenes generated when data is 'shapes'.")
    seed: int = field_doc(0, "Seed of the generated data.")
    out: str = field_doc("", "Output folder; empty means runs/explain-<time>.")


def run_explain(cfg: ExplainConfig) -> dict:
    """Check, load, explain each example, write the run folder; returns the summary."""
    import torch

    from modalign.config import save_config
    from modalign.eval.explain.example import check_methods, explain_example, load_target
    from modalign.eval.explain.target import encode_subject
    from modalign.eval.generation import select_examples
    from modalign.models.inputs import MediaStore
    from modalign.runs import default_run_dir, write_json_atomic
    from modalign.ui import console, progress_bar

    started = time.time()
    methods = check_config(cfg)
    out = Path(cfg.out or default_run_dir("explain"))
    data_root = _data_root(cfg, out)
    examples = select_examples(data_root, cfg.split, cfg.task, cfg.max_examples)
    if not examples:
        raise ConfigError(f"explain: no examples in split {cfg.split!r} of {data_root}"
                          + (f" with task={cfg.task!r}" if cfg.task else ""))
    answers = read_answers(cfg.answers, examples)
    if cfg.occlusion_fill == "others" and "occlusion" in methods and len(examples) < 2:
        raise ConfigError("occlusion_fill=others fills a cell from other explained examples' images: explain at "
                          "least 2 examples (max_examples)")
    if cfg.contrast and any(e.answer is None for e in examples):
        missing = next(e.id for e in examples if e.answer is None)
        raise ConfigError(f"contrast=reference: record {missing!r} has no reference answer (final assistant message)")
    target, processor = load_target(cfg.model, cfg.head, cfg.token)
    check_methods(methods, processor, cfg.model)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    extractor = getattr(processor, "feature_extractor", None)
    media = MediaStore(data_root, sample_rate=int(getattr(extractor, "sampling_rate", 16000)))
    console.print(f"[bold]explain[/] {target.describe()} of {cfg.model} on {len(examples)} examples -> {out}")
    results = []
    torch.manual_seed(cfg.seed)
    explaining = time.time()
    subjects = [encode_subject(processor, media, example, answers[example.id], cfg.max_length,
                               target.media_token_ids()) for example in examples]
    needs_background = "others" in (cfg.ablation_baseline, cfg.occlusion_fill)
    with progress_bar("explain", total=len(examples)) as advance:
        for index, (example, subject) in enumerate(zip(examples, subjects)):
            begin = time.time()
            background = background_of(subjects, index, cfg.background) if needs_background else []
            others = background if cfg.ablation_baseline == "others" else []
            cells_from = background if cfg.occlusion_fill == "others" else []
            contrast = (encode_subject(processor, media, example, example.answer, cfg.max_length,
                                       target.media_token_ids()) if cfg.contrast else None)
            result = explain_example(target, subject, processor, methods, cfg.grid, cfg.audio_windows, cfg.ig_steps,
                                     others, contrast, cfg.occlusion_fill, cells_from)
            result.update(task=example.meta.get("task"), prompt=example.prompt_text,
                          seconds=round(time.time() - begin, 3))
            result["figures"] = write_figures(result, example, media, out / "figures")
            results.append(result)
            advance(1)
    write_json_atomic(out / "attributions.json", {"model": cfg.model, "target": target.describe(),
                                                  "methods": list(methods), "examples": results})
    summary = {"stage": "explain", "model": cfg.model, "data": str(data_root), "split": cfg.split,
               "target": target.describe(), "n_explained": len(results),
               # the whole per-example work: tokenizing, every method, the figures
               "seconds_per_example": round((time.time() - explaining) / len(results), 3),
               "mean_share": mean_shares(results), "wall_seconds": round(time.time() - started, 1)}
    write_json_atomic(out / "summary.json", summary)
    from modalign.eval.run_report import write_runs_report

    write_runs_report([out], out / "report.html", title=f"modalign explain: {Path(cfg.model).name}")
    console.print(f"{summary['seconds_per_example']:.2f} s per example; wrote {out / 'attributions.json'} and "
                  f"{out / 'report.html'}")
    return summary


def check_config(cfg: ExplainConfig) -> list[str]:
    """One clear error for a config that cannot work, before anything is loaded; returns the methods."""
    from modalign import validate
    from modalign.eval.explain.example import METHODS

    if not cfg.model:
        raise ConfigError("explain: no model given: pass --model FOLDER (a reward-model or policy folder)")
    if not cfg.data:
        raise ConfigError("explain: no data given: pass --data FOLDER (or --data shapes)")
    validate.check_policy(cfg.model, "model")
    methods = [m.strip() for m in cfg.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise ConfigError(f"methods={cfg.methods!r}: use a comma-separated subset of {','.join(METHODS)}")
    if cfg.occlusion_fill not in ("mean", "median", "others"):
        raise ConfigError(f"occlusion_fill={cfg.occlusion_fill!r}: use mean, median or others")
    if cfg.contrast not in ("", "reference"):
        raise ConfigError(f"contrast={cfg.contrast!r}: use reference or ''")
    if cfg.ablation_baseline not in ("blank", "others"):
        raise ConfigError(f"ablation_baseline={cfg.ablation_baseline!r}: use blank or others")
    for key in ("grid", "audio_windows", "ig_steps", "background"):
        if getattr(cfg, key) < 1:
            raise ConfigError(f"{key}={getattr(cfg, key)}: it must be at least 1")
    if cfg.answers and not Path(cfg.answers).is_file():
        raise ConfigError(f"answers: no samples file {cfg.answers}")
    return methods


def background_of(subjects: list, index: int, count: int) -> list:
    """Up to `count` subjects after `index` (cyclically) whose media differ from the subject's (the questions of
    one scene share its image and clip: as a baseline they would change nothing)."""
    import torch

    own = subjects[index]

    def differs(other) -> bool:
        return any(a is not None and b is not None and (a.shape != b.shape or not torch.equal(a, b))
                   for a, b in ((own.pixel_values, other.pixel_values), (own.input_values, other.input_values)))

    ordered = [subjects[(index + k) % len(subjects)] for k in range(1, len(subjects))]
    return [other for other in ordered if differs(other)][:count]


def _data_root(cfg: ExplainConfig, out: Path) -> Path:
    if cfg.data != "shapes":
        if not Path(cfg.data).is_dir():
            raise ConfigError(f"data: no dataset folder {cfg.data}")
        return Path(cfg.data)
    from modalign.data.shapes import build_shapes_dataset

    root = out / "data"
    if not (root / f"{cfg.split}.jsonl").is_file():
        build_shapes_dataset(root, n_train=1, n_test=cfg.shapes_test_scenes, seed=cfg.seed)
    return root


def read_answers(path: str, examples: list) -> dict[str, str]:
    """example id -> the answer explained: the reference, or the first answer to it in a samples file."""
    if not path:
        missing = [e.id for e in examples if e.answer is None]
        if missing:
            raise ConfigError(f"record {missing[0]!r} has no reference answer (a final assistant message): "
                              "pass answers=<samples.jsonl> to explain a policy's answers")
        return {e.id: e.answer for e in examples}
    answers: dict[str, str] = {}
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            answers.setdefault(str(row["example_id"]), str(row["text"]))
        except (json.JSONDecodeError, KeyError, TypeError):
            raise ConfigError(f"{path} line {number}: expected a JSON object with example_id and text") from None
    missing = [e.id for e in examples if e.id not in answers]
    if missing:
        raise ConfigError(f"{path} holds no answer to record {missing[0]!r} (and {len(missing) - 1} more)")
    return answers


def write_figures(result: dict, example, media, folder: Path) -> dict[str, str]:
    """The heatmap and audio-curve PNGs of one example; returns their paths relative to the run folder."""
    from modalign.eval.explain.figures import audio_curve_png, heatmap_png

    figures, stem = {}, _safe(example.id)
    if "occlusion" in result:
        path = heatmap_png(media.images(example)[0], result["occlusion"]["heatmap"], folder / f"{stem}_image.png",
                           f"{example.id}: occlusion")
        figures["occlusion"] = str(path.relative_to(folder.parent))
    if "audio" in result:
        wave = media.audio(example)[0]
        path = audio_curve_png(wave, result["audio"]["curve"], len(wave) / media.sample_rate, folder / f"{stem}_audio.png",
                               f"{example.id}: audio occlusion")
        figures["audio"] = str(path.relative_to(folder.parent))
    return figures


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def mean_shares(results: list[dict]) -> dict[str, dict[str, float]]:
    """Mean modality share per method and task: {"ablation/vqa_audio": {"audio": ..}, ...}."""
    totals: dict[str, dict[str, list[float]]] = {}
    for result in results:
        for method in ("ablation", "ig"):
            if method in result:
                group = totals.setdefault(f"{method}/{result.get('task') or 'all'}", {})
                for modality, share in result[method]["share"].items():
                    group.setdefault(modality, []).append(share)
    return {key: {m: sum(v) / len(v) for m, v in group.items()} for key, group in totals.items()}
