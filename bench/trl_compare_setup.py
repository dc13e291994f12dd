"""Fixtures of bench/trl_compare.py: the data, the tiny Qwen2-VL checkpoints and the FLOP accounting.

Everything here runs in the parent process, once, before any timed run. The timed runs
(bench/trl_compare_jobs.py) only read the files written here:

    work/data/               ShapesWorld, images only (Qwen2-VL reads no audio), 64 train scenes
    work/pairs-prompt.jsonl  64 preference pairs in TRL's format: gold caption vs one-hallucination caption
                             (the prompt-heavy workload: the prompt is about 70% of each sequence)
    work/pairs-answer.jsonl  the same pairs with each answer said ANSWER_REPEATS times over (answer-heavy: the
                             prompt is under 30%; the hallucination is in the first copy, so cuts keep it)
    work/prompts.jsonl       the 64 caption prompts in TRL's format, with the scene for the rule reward
    work/model-<size>/       a random-weight Qwen2-VL of that size with its processor
"""

from __future__ import annotations

import json
import random
import shutil
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
SCENES = 64  # train scenes: one caption prompt and one preference pair each
ANSWER_REPEATS = 8  # the answer-heavy DPO workload: each caption said 8 times over (about 170 answer tokens)
WORKLOADS = ("prompt", "answer")  # prompt-heavy (today's), answer-heavy (prompt <= 30% of the tokens)


@dataclass(frozen=True)
class ModelSize:
    """Dimensions of one Qwen2-VL checkpoint (text decoder and vision tower)."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vision_width: int
    vision_layers: int
    vision_heads: int


SIZES: dict[str, ModelSize] = {
    # the brief's tiny model: hidden 64, two layers (vision tower as wide and as deep)
    "small": ModelSize(hidden=64, layers=2, heads=2, kv_heads=1, intermediate=128,
                       vision_width=64, vision_layers=2, vision_heads=2),
    # about 20 M parameters, nearly all in the decoder, so that matmuls dominate the step time
    "compute": ModelSize(hidden=512, layers=6, heads=8, kv_heads=2, intermediate=1536,
                         vision_width=128, vision_layers=2, vision_heads=2),
}


@dataclass(frozen=True)
class Fixtures:
    """Paths of the files the timed runs read."""

    work: Path
    data: Path
    pairs: dict[str, Path]  # workload -> pairs file
    prompts: Path
    models: dict[str, Path]


def build_fixtures(work: Path, sizes: list[str], seed: int = 0) -> Fixtures:
    """Dataset, preference pairs, prompts and one checkpoint per size under `work`."""
    sys.path.insert(0, str(ROOT / "tests"))
    import hf_tiny

    from modalign.data.dataset import read_examples
    from modalign.data.shapes import build_shapes_dataset

    for stale in ("data-both", "data"):  # a second run in the same --work folder builds its fixtures afresh
        shutil.rmtree(work / stale, ignore_errors=True)
    both = build_shapes_dataset(work / "data-both", n_train=SCENES, n_test=1, seed=seed)
    data = hf_tiny.media_only_dataset(both, work / "data", "image")
    captions = [e for e in read_examples(data, "train") if e.meta["task"] == "caption"]
    pairs = {workload: write_pairs(captions, data, work / f"pairs-{workload}.jsonl", seed,
                                   ANSWER_REPEATS if workload == "answer" else 1) for workload in WORKLOADS}
    prompts = write_prompts(captions, data, work / "prompts.jsonl")
    corpus = hf_tiny.shapes_corpus(data)
    models = {size: build_qwen2_vl(SIZES[size], corpus, work / f"model-{size}", seed) for size in sizes}
    return Fixtures(work=work, data=data, pairs=pairs, prompts=prompts, models=models)


def write_pairs(captions: list, data: Path, out: Path, seed: int, repeats: int = 1) -> Path:
    """One TRL preference row per caption example: chosen = gold caption, rejected = one hallucination,
    each said `repeats` times over (the same hallucination in every copy).

    The same file feeds both frameworks: modalign's `dpo` imports a TRL preference .jsonl into its
    feedback store, TRL reads it with `datasets`.
    """
    from modalign.data.shapes import noisy_caption
    from modalign.data.shapes.world import Scene

    rng = random.Random(f"trl-compare-pairs-{seed}")
    with out.open("w", encoding="utf-8") as handle:
        for example in captions:
            rejected, _ = noisy_caption(Scene.from_dict(example.meta["scene"]), rng)
            chosen, rejected = " ".join([example.meta["answer"]] * repeats), " ".join([rejected] * repeats)
            row = {"id": example.id, "prompt": [dict(m) for m in example.prompt_messages],
                   "chosen": [_assistant(chosen)], "rejected": [_assistant(rejected)],
                   "images": [str((data / ref.path).resolve()) for ref in example.media_of("image")]}
            handle.write(json.dumps(row) + "\n")
    return out


def write_prompts(captions: list, data: Path, out: Path) -> Path:
    """TRL's prompt-only rows (a plain-text user turn; TRL puts the image before the text, as modalign does)."""
    with out.open("w", encoding="utf-8") as handle:
        for example in captions:
            text = next(p["text"] for m in example.prompt_messages for p in m["content"] if p["type"] == "text")
            row = {"prompt": [{"role": "user", "content": text}],
                   "image": str((data / example.media_of("image")[0].path).resolve()),
                   "scene": json.dumps(example.meta["scene"])}
            handle.write(json.dumps(row) + "\n")
    return out


def _assistant(text: str) -> dict:
    return {"role": "assistant", "content": [{"type": "text", "text": text}]}


def build_qwen2_vl(size: ModelSize, corpus: list[str], folder: Path, seed: int) -> Path:
    """A random-weight Qwen2-VL of `size` with tests/hf_tiny.py's tokenizer, image processor and template."""
    import hf_tiny
    import torch
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    from modalign.models.hf import without_video

    torch.manual_seed(seed)
    tokenizer, images, ids = hf_tiny._qwen_vl_parts(corpus)
    head_dim = size.hidden // size.heads
    unit = head_dim // 16  # M-RoPE sections (time, height, width) 2:3:3, summing to head_dim / 2
    rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2 * unit, 3 * unit, 3 * unit]}
    text = dict(vocab_size=len(tokenizer), hidden_size=size.hidden, intermediate_size=size.intermediate,
                num_hidden_layers=size.layers, num_attention_heads=size.heads, num_key_value_heads=size.kv_heads,
                max_position_embeddings=512, pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id, rope_parameters=rope)
    vision = dict(depth=size.vision_layers, embed_dim=size.vision_width, hidden_size=size.hidden,
                  num_heads=size.vision_heads, mlp_ratio=2, patch_size=4, spatial_merge_size=2, temporal_patch_size=2)
    model = Qwen2VLForConditionalGeneration(Qwen2VLConfig(text_config=text, vision_config=vision, **ids))
    processor = without_video("Qwen2VLProcessor")(image_processor=images, tokenizer=tokenizer,
                                                  chat_template=hf_tiny.QWEN_CHAT_TEMPLATE)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    (folder / "bench_size.json").write_text(json.dumps(asdict(size)))
    return folder


# ---- FLOP accounting (the same count for both frameworks) -------------------------------------------


@dataclass(frozen=True)
class ModelShape:
    """What the FLOP count needs from a checkpoint.

    decoder_params: parameters used as matmul weights per text token (decoder layers and LM head,
        not the input embedding, which is a lookup)
    vision_params: parameters of the vision tower and merger, applied per image patch
    patches: patches per image seen by the vision tower
    vocab: rows of the LM head
    """

    total_params: int
    decoder_params: int
    vision_params: int
    patches: int
    vocab: int


def model_shape(folder: Path, fixtures: Fixtures) -> ModelShape:
    """Parameter counts of a saved checkpoint and the patches of one ShapesWorld image."""
    from PIL import Image
    from transformers import Qwen2VLForConditionalGeneration

    model = Qwen2VLForConditionalGeneration.from_pretrained(folder)
    embed = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    total = sum(p.numel() for p in model.parameters())
    vision = sum(p.numel() for p in model.model.visual.parameters())
    language = sum(p.numel() for p in model.model.language_model.parameters())
    decoder = language - embed.numel() + head.numel()  # a tied head is still one matmul per token
    image = Image.open(_first_image(fixtures.prompts)).convert("RGB")
    grid = _processor(folder).image_processor(images=[image], return_tensors="pt")["image_grid_thw"][0]
    return ModelShape(total, decoder, vision, int(grid.prod()), int(head.shape[0]))


def prompt_and_pair_lengths(folder: Path, pairs_file: Path, max_length: int) -> dict:
    """Tokens of the caption prompt and of every chosen and rejected sequence cut at `max_length` (keeping
    the start, as both frameworks do); how many sequences the cut shortens, how many pairs it leaves with
    chosen == rejected (they would teach nothing: must be 0), and the prompt's share of the tokens."""
    from PIL import Image

    processor = _processor(folder)
    rows = [json.loads(line) for line in pairs_file.read_text().splitlines()]
    end = processor.tokenizer.eos_token + "\n"

    def ids(prompt_text: str, answer: str, image) -> list[int]:
        return processor(text=[prompt_text + answer + end], images=[image], return_tensors="pt")["input_ids"][0].tolist()

    pairs, cut, identical = [], 0, 0
    for row in rows:
        image = Image.open(row["images"][0]).convert("RGB")
        prompt = processor.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=False)
        chosen = ids(prompt, row["chosen"][0]["content"][0]["text"], image)
        rejected = ids(prompt, row["rejected"][0]["content"][0]["text"], image)
        cut += (len(chosen) > max_length) + (len(rejected) > max_length)
        identical += chosen[:max_length] == rejected[:max_length]
        pairs.append((min(len(chosen), max_length), min(len(rejected), max_length)))
    image = Image.open(rows[0]["images"][0]).convert("RGB")
    prompt = processor.apply_chat_template(rows[0]["prompt"], add_generation_prompt=True, tokenize=False)
    prompt_tokens = int(processor(text=[prompt], images=[image], return_tensors="pt")["input_ids"].shape[1])
    mean_tokens = sum(c + r for c, r in pairs) / (2 * len(pairs))
    return {"prompt_tokens": prompt_tokens, "pair_tokens": pairs, "cut_sequences": cut, "identical_after_cut": identical,
            "prompt_share": prompt_tokens / mean_tokens}


def dpo_flops(shape: ModelShape, mean_pair_tokens: float, distinct_pairs: int, batch: int) -> tuple[float, float]:
    """Nominal model FLOPs of DPO as (before the steps, per step): the work the algorithm needs, the same for
    both frameworks (bench/trl_compare.py counts what each executes separately).

    Before: one reference forward (2 N per token) over each distinct pair. Per step: forward and
    backward (6 N per token) of the batch's chosen and rejected sequences. The image goes through
    the vision tower once per pair and pass. Attention-score FLOPs are left out (short sequences).
    A reference forward repeated every step is not model FLOPs: it is not counted.
    """
    pair_forward = 2 * shape.decoder_params * mean_pair_tokens + 2 * shape.vision_params * shape.patches
    return pair_forward * distinct_pairs, 3 * pair_forward * batch


def grpo_step_flops(shape: ModelShape, prompt_tokens: int, mean_answer_tokens: float, answers: int,
                    prompts: int) -> float:
    """Nominal model FLOPs of one GRPO step: per answer a sampling forward, a reference forward and a trained
    forward + backward over prompt + answer (2 + 2 + 6 N per token); the image forward once per prompt
    and pass (the vision tower is frozen in both frameworks). Attention-score FLOPs are left out."""
    tokens = prompt_tokens + mean_answer_tokens
    return 10 * shape.decoder_params * tokens * answers + 3 * 2 * shape.vision_params * shape.patches * prompts


def _processor(folder: Path):
    from modalign.models.hf import without_video

    return without_video("Qwen2VLProcessor").from_pretrained(str(folder))


def peak_shapes(size: ModelSize, vocab: int, rows: int = 512) -> list[list[int]]:
    """(m, k, n) matmul shapes for a run's peak: the decoder's MLP and LM-head matmuls at `rows` tokens, and a
    1024^3 square. The peak is the best of them, so an MFU against it is conservative (never flattering)."""
    return [[rows, size.hidden, size.intermediate], [rows, size.intermediate, size.hidden], [rows, size.hidden, vocab],
            [1024, 1024, 1024]]


def _first_image(prompts: Path) -> str:
    return json.loads(prompts.read_text().splitlines()[0])["image"]


def write_results(out: Path, report: dict, markdown: Callable[[dict], str], logs: Path) -> None:
    """OUT.json (every number) and OUT.md (the tables); prints the tables and where the logs are."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2))
    out.with_suffix(".md").write_text(markdown(report))
    print(markdown(report), f"({report['wall_s']:.0f} s; logs in {logs})")
