"""Supervised fine-tuning of a multimodal policy, read top to bottom.

data -> tokenize once -> AdamW with warmup + cosine -> checkpoints -> held-out gold metrics.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from modalign.config import field_doc
from modalign.data.modalities import MODALITIES_HELP
from modalign.device import DEVICE_HELP, model_device, resolve_device
from modalign.memory import GRADIENT_CHECKPOINTING_HELP, enable_gradient_checkpointing
from modalign.precision import PRECISION_HELP, Precision


@dataclass
class SFTConfig:
    """Supervised fine-tuning (`modalign sft`)."""

    out: str = field_doc("", "Run folder; empty means runs/sft-<time>.")
    data: str = field_doc("shapes", "'shapes' to generate ShapesWorld into the run folder, or a dataset folder.")
    train_split: str = field_doc("train", "Split trained on.")
    eval_split: str = field_doc("test", "Held-out split for the final metrics.")
    shapes_train_scenes: int = field_doc(1500, "ShapesWorld scenes in the train split (each gives 5 examples).")
    shapes_test_scenes: int = field_doc(100, "ShapesWorld scenes in the test split.")
    caption_noise: float = field_doc(0.3, "Share of ShapesWorld train captions that hallucinate (as web captions do).")
    policy: str = field_doc("tinyvlm", "'tinyvlm' for a new built-in model, or a saved folder / hub id.")
    fusion: str = field_doc("concat", "Built-in model fusion: concat, cross_attention or weighted_sum.")
    hidden_size: int = field_doc(128, "Built-in model: decoder width.")
    num_layers: int = field_doc(4, "Built-in model: decoder layers.")
    num_heads: int = field_doc(4, "Built-in model: attention heads.")
    encoder_layers: int = field_doc(2, "Built-in model: layers of the image and of the audio encoder.")
    vocab_size: int = field_doc(512, "Built-in model: BPE vocabulary trained on the dataset's text.")
    epochs: float = field_doc(5.0, "Passes over the train split (used when max_steps is 0).")
    max_steps: int = field_doc(0, "Optimizer steps; 0 means derive from epochs.")
    batch_size: int = field_doc(32, "Examples per step.")
    lr: float = field_doc(1e-3, "Peak AdamW learning rate.")
    media_lr_scale: float = field_doc(1.0, "Learning-rate multiplier of the image and audio encoders.")
    weight_decay: float = field_doc(0.01, "AdamW weight decay.")
    # 300, not 50: with 50 the built-in model's image side stalled on one seed in three
    # (ShapesWorld caption hallucination 0.44 vs 0.07-0.10); with 300 three seeds gave 0.067-0.084.
    warmup_steps: int = field_doc(300, "Linear warmup steps before the cosine decay.")
    max_grad_norm: float = field_doc(1.0, "Gradient clipping norm.")
    max_length: int = field_doc(128, "Longest sequence (media tokens included); answers are cut, media never.")
    log_every: int = field_doc(20, "Steps between metric lines.")
    checkpoint_every: int = field_doc(200, "Steps between checkpoints (0: only at the end).")
    eval_examples: int = field_doc(0, "Held-out examples evaluated at the end (0: all).")
    eval_temperature: float = field_doc(0.0, "Temperature of the final evaluation: 0 greedy (for accuracy), > 0 "
                                             "sampled (the summary says which).")
    max_new_tokens: int = field_doc(40, "Longest generated answer in evaluation.")
    precision: Precision = field_doc("fp32", PRECISION_HELP)
    group_by_media: bool = field_doc(False, "Batches of whole groups of examples that share their media files (a "
                                            "ShapesWorld scene's five examples); the built-in model then encodes each "
                                            "image and clip once per batch (a Hugging Face model encodes every copy); "
                                            "off: examples shuffled one by one.")
    media_group_size: int = field_doc(0, "With group_by_media: each epoch a group's examples are shuffled and cut into "
                                         "chunks of at most this many, and the chunks are shuffled (more distinct "
                                         "media per batch than whole groups, fewer encodings than none); 0: whole "
                                         "groups.")
    gradient_checkpointing: bool = field_doc(False, GRADIENT_CHECKPOINTING_HELP)
    seed: int = field_doc(0, "Seed of data generation, initialisation, data order and sampling.")
    threads: int = field_doc(0, "torch CPU threads (0: torch's default).")
    image_size: int = field_doc(48, "Built-in model: image side in pixels (a multiple of its 16-pixel patches). Images "
                                    "of any size are resized to it by the processor (more pixels: more image tokens).")
    audio_seconds: float = field_doc(1.0, "Built-in model: audio window in seconds; shorter clips are padded with "
                                          "silence, longer ones see audio_overflow (checked over both splits before "
                                          "training). More seconds: more audio tokens.")
    audio_overflow: str = field_doc("error", "Built-in model, clips longer than audio_seconds: error (named record and "
                                             "file, before training) or truncate (the clip's end is dropped, here and "
                                             "in every later stage that uses the model).")
    tokenizer_corpus: str = field_doc("train", "Built-in model: text the BPE vocabulary is trained on: 'train' (the "
                                               "train split), 'train+test' (both splits; the test answers' words get "
                                               "tokens too) or a text file path (one document per line).")
    modalities: str = field_doc("", MODALITIES_HELP)
    device: str = field_doc("auto", DEVICE_HELP)


def run_sft(cfg: SFTConfig, resume: str | None = None, train_examples: list | None = None) -> dict:
    """Train, save `model/`, evaluate on the held-out split, write `summary.json`; returns the summary."""
    from modalign import validate
    from modalign.dist import processes
    from modalign.models.inputs import MediaStore, collate_sft, encode_sft_example
    from modalign.precision import autocast
    from modalign.runs import RunDir, default_run_dir, set_rng_state
    from modalign.ui import console, progress_bar

    started = time.time()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.media_group_size < 0:
        from modalign.config import ConfigError

        raise ConfigError(f"media_group_size={cfg.media_group_size}: use 0 (whole groups) or a positive chunk size")
    dist = processes()
    # validated before the run folder exists: the folder, the policy, both splits and their media
    out = Path(resume) if resume else validate.check_new_run(cfg.out or default_run_dir("sft"), dist)
    device = resolve_device(cfg.device)
    if cfg.policy == "tinyvlm":
        validate.check_fusion(cfg.fusion)
    else:
        validate.check_policy(cfg.policy)
    data_root = dist.main_first(lambda: prepare_data(cfg, out))  # ShapesWorld is generated once
    splits = validate.check_dataset(data_root, [cfg.train_split, cfg.eval_split], modalities=cfg.modalities,
                                    answers=[cfg.train_split] if train_examples is None else [])
    train = train_examples if train_examples is not None else splits[cfg.train_split]
    audio_seconds = validate.check_dataset_media(data_root, splits)
    policy = make_policy(cfg, tokenizer_corpus(cfg, data_root, train))
    validate.check_audio_window(audio_seconds, policy.processor,
                                "built-in model" if cfg.policy == "tinyvlm" else f"policy {cfg.policy}")
    media = MediaStore(data_root, sample_rate=_sample_rate(policy))
    policy.model.to(device)  # before the self-check, which runs on the run's device
    checked = validate.check_fast_path(policy, train, media)  # before encoding: a fall-back changes the processor
    encoded = [encode_sft_example(policy.processor, media, e, cfg.max_length) for e in train]
    run = RunDir.open(out, dist.is_main) if resume else RunDir.create(out, cfg, dist.is_main)
    run.write_json("self_check.json", checked)
    console.print(f"[bold]sft[/] {len(train)} examples, {policy.num_parameters / 1e6:.2f} M parameters -> {run.path}")

    steps_per_epoch = max(1, len(encoded) // cfg.batch_size)
    total_steps = cfg.max_steps or math.ceil(cfg.epochs * steps_per_epoch)
    optimizer, scheduler = make_optimizer(policy.model, cfg, total_steps)  # the scheduler steps once per step
    enable_gradient_checkpointing(policy.model, cfg.gradient_checkpointing)
    model, optimizer = dist.prepare(policy.model, optimizer)
    step = 0
    if resume and run.latest_checkpoint() is not None:
        state = run.load_checkpoint(run.latest_checkpoint())
        dist.load_model_state(policy.model, state["model"])
        dist.load_optimizer_state(policy.model, optimizer, state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"], dist.rank)
        step = state["step"]
        console.print(f"resumed at step {step}")
    if resume:
        run.rewind(step)  # steps logged after the last checkpoint are redone

    policy.model.train()
    pad_id = policy.processor.tokenizer.pad_token_id
    groups = media_groups(train) if cfg.group_by_media else None
    loss_value = None
    with progress_bar("sft", total=total_steps, completed=step) as advance:
        while step < total_steps:
            # the global batch, then this process's rows of it
            rows = dist.shard(batch_at(encoded, step, cfg.batch_size, steps_per_epoch, cfg.seed, groups,
                                       cfg.media_group_size),
                              "batch_size")
            batch = collate_sft(rows, pad_id, model_device(policy.model))
            tick = time.time()
            # mean over this process's answer tokens, rescaled so DDP's average is the mean over all of them
            with autocast(cfg.precision, policy.model):  # forward only: backward and the step run outside
                loss = model(**batch).loss * dist.token_share(batch["labels"] != -100)
            optimizer.zero_grad(set_to_none=True)
            dist.backward(loss)
            grad_norm = dist.clip_grad_norm(policy.model, cfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            step += 1
            loss_value = dist.mean(loss.detach())  # the mean over every process's tokens
            advance(1, loss=loss_value)
            if step % cfg.log_every == 0 or step == total_steps:
                tokens = dist.sum(batch["attention_mask"].sum())
                run.log(step, {"train/loss": loss_value, "train/grad_norm": float(grad_norm),
                               "train/lr": scheduler.get_last_lr()[0],
                               "train/tokens_per_s": float(tokens) / (time.time() - tick)})
            if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < total_steps:
                run.save_checkpoint({"model": dist.model_state(policy.model),
                                     "optimizer": dist.optimizer_state(policy.model, optimizer),
                                     "scheduler": scheduler.state_dict(), "rng": dist.rng_states(),
                                     "step": step}, step)

    policy.model = dist.whole(model)  # FSDP: the gathered weights, for the main process to save and evaluate
    if not dist.is_main:  # the main process saves, evaluates and writes the summary
        run.close()
        return {"stage": "sft", "steps": step, "model": str(run.path / "model")}
    policy.name = str(run.path / "model")
    policy.save(run.path / "model")
    train_seconds = time.time() - started
    metrics = evaluate_policy(policy, data_root, cfg, run)
    summary = {"stage": "sft", "steps": step, "train_seconds": round(train_seconds, 1), "final_loss": loss_value,
               "processes": dist.world,
               "parameters": policy.num_parameters, "model": str(run.path / "model"), "eval": metrics,
               "wall_seconds": round(time.time() - started, 1)}
    run.write_summary(summary)
    run.close()
    return summary


def prepare_data(cfg: SFTConfig, run_path: Path) -> Path:
    """The dataset folder: generated ShapesWorld inside the run, or the user's folder."""
    if cfg.data != "shapes":
        return Path(cfg.data)
    from modalign.data.shapes import build_shapes_dataset

    root = run_path / "data"
    if not (root / f"{cfg.train_split}.jsonl").is_file():
        build_shapes_dataset(root, n_train=cfg.shapes_train_scenes, n_test=cfg.shapes_test_scenes,
                             seed=cfg.seed, caption_noise=cfg.caption_noise)
    return root


def make_policy(cfg: SFTConfig, corpus: list[str]):
    """The policy to train: a saved one, or a new built-in model sized by the config (`check_builtin_sizes`)."""
    from modalign.models.policy import create_tinyvlm
    from modalign.validate import load_checked_policy

    if cfg.policy != "tinyvlm":
        return load_checked_policy(cfg.policy)
    check_builtin_sizes(cfg)
    return create_tinyvlm(
        corpus, vocab_size=cfg.vocab_size, seed=cfg.seed, fusion=cfg.fusion, hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads, intermediate_size=4 * cfg.hidden_size,
        vision_layers=cfg.encoder_layers, audio_layers=cfg.encoder_layers,
        vision_hidden_size=cfg.hidden_size, audio_hidden_size=cfg.hidden_size,
        image_size=cfg.image_size, audio_seconds=cfg.audio_seconds, audio_overflow=cfg.audio_overflow,
    )


def check_builtin_sizes(cfg: SFTConfig) -> None:
    """The built-in model's size fields, checked before it is built (ConfigError naming the key)."""
    from modalign.config import ConfigError
    from modalign.models.tinyvlm.configuration import AUDIO_OVERFLOWS

    patch = 16  # TinyVLMConfig's patch_size
    if cfg.image_size < patch or cfg.image_size % patch:
        raise ConfigError(f"image_size={cfg.image_size}: the built-in model needs a multiple of its {patch}-pixel "
                          f"patches (e.g. 32, 48, 64)")
    if not cfg.audio_seconds > 0:
        raise ConfigError(f"audio_seconds={cfg.audio_seconds}: it must be positive")
    if cfg.audio_overflow not in AUDIO_OVERFLOWS:
        raise ConfigError(f"audio_overflow={cfg.audio_overflow!r}: choose one of {', '.join(AUDIO_OVERFLOWS)}")


def tokenizer_corpus(cfg: SFTConfig, data_root: str | Path, train: list) -> list[str]:
    """The texts the built-in model's BPE is trained on (`tokenizer_corpus`); unused for a saved policy."""
    from modalign.config import ConfigError
    from modalign.data.dataset import read_examples

    if cfg.policy != "tinyvlm":
        return []
    if cfg.tokenizer_corpus == "train":
        return [text for e in train for text in _texts(e)]
    if cfg.tokenizer_corpus == "train+test":
        return [text for e in [*train, *read_examples(data_root, cfg.eval_split, cfg.modalities)] for text in _texts(e)]
    path = Path(cfg.tokenizer_corpus)
    if not path.is_file():
        raise ConfigError(f"tokenizer_corpus={cfg.tokenizer_corpus!r}: write train, train+test or the path of a "
                          f"text file (no file {path})")
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not lines:
        raise ConfigError(f"tokenizer_corpus={cfg.tokenizer_corpus!r}: the file holds no text")
    return lines


def make_optimizer(model: torch.nn.Module, cfg: SFTConfig, total_steps: int):
    """AdamW with warmup + cosine; the media encoders may get their own rate (`media_lr_scale`)."""
    from transformers import get_cosine_schedule_with_warmup

    encoders = getattr(model, "media_encoder_modules", lambda: [])()
    media_ids = {id(p) for module in encoders for p in module.parameters()}
    groups = []
    for is_media in (False, True):
        lr = cfg.lr * (cfg.media_lr_scale if is_media else 1.0)
        named = [p for p in model.parameters() if p.requires_grad and (id(p) in media_ids) == is_media]
        groups += [{"params": [p for p in named if p.ndim >= 2], "weight_decay": cfg.weight_decay, "lr": lr},
                   {"params": [p for p in named if p.ndim < 2], "weight_decay": 0.0, "lr": lr}]
    # fused AdamW: one kernel per step instead of a loop over tensors, as in the RL recipes (a float-level
    # change; measured on the demo's SFT, bench/results/demo_speed.md)
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr, fused=True)
    scheduler = get_cosine_schedule_with_warmup(optimizer, min(cfg.warmup_steps, total_steps // 2), total_steps)
    return optimizer, scheduler


def batch_at(items: list, step: int, batch_size: int, steps_per_epoch: int, seed: int,
             groups: list[list[int]] | None = None, group_size: int = 0) -> list:
    """The batch of a global step: a seeded permutation per epoch, so resume needs only the step.

    `groups` (lists of item indices, e.g. `media_groups`): the groups are permuted instead and each
    stays together, so a batch holds whole groups (and the group cut at its end continues the next).
    `group_size` > 0: each group's items are first shuffled and cut into chunks of at most that many,
    which are permuted instead (a new cut every epoch).
    """
    epoch, index = divmod(step, steps_per_epoch)
    rng = random.Random(seed * 100_003 + epoch)
    if groups is None:
        order = list(range(len(items)))
        rng.shuffle(order)
    else:
        chunks = list(groups) if not group_size else [chunk for group in groups
                                                       for chunk in _chunks(group, group_size, rng)]
        rng.shuffle(chunks)
        order = [i for chunk in chunks for i in chunk]
    return [items[i] for i in order[index * batch_size : (index + 1) * batch_size]]


def _chunks(group: list[int], size: int, rng: random.Random) -> list[list[int]]:
    """`group`'s items in a random order, cut into runs of at most `size`."""
    members = list(group)
    rng.shuffle(members)
    return [members[start : start + size] for start in range(0, len(members), size)]


def media_groups(examples: list) -> list[list[int]]:
    """Indices of the examples that share their media files (a ShapesWorld scene's five), in first-seen order;
    examples without media are groups of one."""
    groups: dict[object, list[int]] = {}
    for i, example in enumerate(examples):
        paths = tuple(ref.path for ref in example.media)
        groups.setdefault(paths or ("", i), []).append(i)
    return list(groups.values())


def evaluate_policy(policy, data_root: Path, cfg: SFTConfig, run) -> dict:
    from modalign.eval.generation import evaluate_split

    return evaluate_split(policy, data_root, cfg.eval_split, cfg.eval_examples, cfg.max_new_tokens,
                          cfg.eval_temperature, cfg.seed, run.path / "samples" / "eval.jsonl",
                          modalities=cfg.modalities)


def _texts(example) -> list[str]:
    from modalign.data.records import message_text

    return [message_text(m) for m in example.messages]


def _sample_rate(policy) -> int:
    extractor = getattr(policy.processor, "feature_extractor", None)
    return int(getattr(extractor, "sampling_rate", 16000))
