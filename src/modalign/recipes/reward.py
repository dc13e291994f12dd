"""Reward-model training from the feedback store, read top to bottom.

store -> majority preference pairs -> held-out split by example -> Bradley-Terry on the
policy backbone (media encoded once per pair) -> held-out accuracy -> normaliser -> save.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from modalign.config import field_doc
from modalign.data.modalities import MODALITIES_HELP
from modalign.device import DEVICE_HELP


@dataclass
class RewardConfig:
    """Reward model from pairwise and ranking judgments (`modalign reward`)."""

    out: str = field_doc("", "Run folder; empty means runs/reward-<time>.")
    policy: str = field_doc("", "Backbone to start from (usually the SFT policy folder).")
    store: str = field_doc("", "Feedback store (SQLAlchemy URL or SQLite path) or a TRL preference .jsonl.")
    min_votes: int = field_doc(1, "Pairs with fewer judgments are left out.")
    heldout_fraction: float = field_doc(0.15, "Share of examples held out for accuracy.")
    steps: int = field_doc(2000, "Optimizer steps (a frozen backbone trains on cached features: 2000 take seconds).")
    batch_size: int = field_doc(16, "Pairs per step.")
    lr: float = field_doc(3e-3, "AdamW learning rate of the scalar head (and the likelihood weight).")
    backbone_lr: float = field_doc(0.0, "Learning rate of the backbone; 0 freezes it (measured best on ShapesWorld).")
    max_length: int = field_doc(128, "Longest sequence (media tokens included).")
    likelihood_feature: bool = field_doc(True, "Add w * mean log p(answer) under the backbone to the score.")
    seed: int = field_doc(0, "Seed of the pair order.")
    modalities: str = field_doc("", MODALITIES_HELP)
    device: str = field_doc("auto", DEVICE_HELP)


def open_store(location: str, run_path: Path | None = None):
    """A feedback store by SQLAlchemy URL, SQLite path or a folder holding `feedback.db` (`modalign import`).

    A TRL preference JSONL is imported into `run_path/feedback.db` once (a resumed run reuses it):
    its rows only - the media stay where they are, relative paths read from the file's folder,
    never copied into the run.
    """
    from modalign.feedback import store_spec
    from modalign.feedback.store import FeedbackStore

    if store_spec.is_url(location) or not location.endswith(".jsonl"):
        return store_spec.open_store(location, must_exist=True)
    from modalign.feedback.trl_import import import_trl_preferences

    if run_path is None:
        raise ValueError(f"{location}: a TRL preference file needs a run folder to import it into")
    if not Path(location).is_file():
        raise FileNotFoundError(f"TRL preference file {location} does not exist")
    store = FeedbackStore.sqlite(run_path / "feedback.db")
    if not store.count_judgments():
        import_trl_preferences(store, location, None, annotator=f"import:{Path(location).name}")
    return store


def run_reward(cfg: RewardConfig) -> dict:
    """Train and save `model/` (ScalarHeadModel); returns the summary with held-out accuracy."""
    from modalign import validate
    from modalign.config import ConfigError
    from modalign.device import resolve_device
    from modalign.dist import processes
    from modalign.reward.model import ScalarHeadModel
    from modalign.runs import RunDir, default_run_dir
    from modalign.ui import console, progress_bar

    started = time.time()
    dist = processes()
    if dist.many and cfg.backbone_lr:
        raise ConfigError("reward: backbone_lr > 0 trains in one process; with many processes only the frozen "
                          "backbone's features are split over them")
    # validated before the run folder exists: the folder, the store's pairs, the backbone
    out = validate.check_new_run(cfg.out or default_run_dir("reward"), dist)
    device = resolve_device(cfg.device)
    validate.check_store(cfg.store, cfg.min_votes)
    policy = validate.load_checked_policy(cfg.policy)
    run = RunDir.create(out, cfg, dist.is_main)
    store = dist.main_first(lambda: open_store(cfg.store, run.path))  # a TRL file is imported once
    pad = policy.processor.tokenizer.pad_token_id
    policy.model.to(device)  # the self-check runs on the run's device
    run.write_json("self_check.json", check_store_fast_path(store, policy, cfg.min_votes))
    encoded = encode_store_pairs(store, policy.processor, cfg.min_votes, cfg.max_length, cfg.modalities)
    heldout = [p for p in encoded if _is_heldout(p.chosen.example_id, cfg.heldout_fraction)]
    train = [p for p in encoded if not _is_heldout(p.chosen.example_id, cfg.heldout_fraction)]
    model = ScalarHeadModel(policy.model, likelihood_feature=cfg.likelihood_feature).to(device)
    if not cfg.backbone_lr:
        model.backbone.requires_grad_(False)
    console.print(f"[bold]reward[/] {len(train)} train pairs, {len(heldout)} held-out pairs -> {run.path}")
    with progress_bar("reward", total=cfg.steps) as advance:
        def on_step(step: int, loss: float) -> None:
            advance(1, loss=loss)
            if (step + 1) % 20 == 0:
                run.log(step + 1, {"reward/loss": loss})

        torch.manual_seed(cfg.seed)
        fit = fit_end_to_end if cfg.backbone_lr else fit_on_features
        accuracy, train_accuracy = fit(model, train, heldout, pad, cfg, on_step, dist)
    summary = {"stage": "reward", "processes": dist.world, "model": str(run.path / "model"),
               "train_pairs": len(train), "heldout_pairs": len(heldout), "heldout_accuracy": accuracy,
               "train_accuracy": train_accuracy, "wall_seconds": round(time.time() - started, 1)}
    if dist.is_main:  # every process holds the same head; the main one saves it
        model.save(run.path / "model", policy.processor)
    run.write_summary(summary)
    run.close()
    return summary


def fit_end_to_end(model, train: list, heldout: list, pad: int, cfg: RewardConfig, on_step,
                   dist=None) -> tuple[float, float]:
    """Backbone and head trained together; returns (held-out, train) pairwise accuracy; fits the normaliser."""
    from modalign.reward.train import fit_normalizer, pairwise_accuracy, train_reward_model

    train_reward_model(model, train, pad, cfg.steps, cfg.batch_size, cfg.backbone_lr, cfg.seed, on_step, head_lr=cfg.lr)
    fit_normalizer(model, train, pad)
    return (pairwise_accuracy(model, heldout, pad) if heldout else float("nan")), pairwise_accuracy(model, train, pad)


def fit_on_features(model, train: list, heldout: list, pad: int, cfg: RewardConfig, on_step,
                    dist=None) -> tuple[float, float]:
    """Frozen backbone: one pass per distinct answer, then the head trains on the cached features.

    With many processes (`dist`) the backbone passes are split over them; the head, seconds of
    work, trains on the gathered features in every process alike (same features, same seed).
    """
    from modalign.reward.train import feature_accuracy, fit_normalizer_on_features, pair_features, train_head_on_features

    train_features = pair_features(model, train, pad, dist=dist)
    train_head_on_features(model, train_features, cfg.steps, cfg.batch_size, cfg.lr, cfg.seed, on_step)
    fit_normalizer_on_features(model, train_features)
    heldout_accuracy = (feature_accuracy(model, pair_features(model, heldout, pad, dist=dist)) if heldout
                        else float("nan"))
    return heldout_accuracy, feature_accuracy(model, train_features)


def encode_store_pairs(store, processor, min_votes: int, max_length: int, modalities: str = "") -> list:
    """The store's majority preference pairs, tokenized with their media (one MediaStore per dataset root).

    `modalities`: keep only those media kinds of every example (`data.modalities.keep_modalities`).
    """
    from modalign.data.modalities import keep_modalities, parse_modalities
    from modalign.models.inputs import MediaStore
    from modalign.errors import UserError
    from modalign.reward.train import PreferencePair, encode_pairs

    stored = store.preference_pairs(min_votes)
    if not stored:
        raise UserError(f"feedback store {store.url} holds no pairwise or ranking judgments")
    media: dict[str, MediaStore] = {}
    examples: dict[str, tuple] = {}  # a ranking of k answers gives k(k-1)/2 pairs of one example: read it once
    kinds = parse_modalities(modalities)
    encoded = []
    for pair in stored:
        if pair.example_id not in examples:
            example = keep_modalities(store.get_example(pair.example_id), kinds)
            examples[pair.example_id] = (example, store.example_root(pair.example_id) or ".")
        example, root = examples[pair.example_id]
        media.setdefault(root, MediaStore(root))
        encoded += encode_pairs(processor, media[root],
                                [PreferencePair(example, pair.chosen.text, pair.rejected.text, pair.tie, pair.margin)],
                                max_length)
    return encoded


def check_store_fast_path(store, policy, min_votes: int) -> dict:
    """`validate.check_fast_path` on the examples of the store's first two pairs (before they are encoded)."""
    from modalign.models.inputs import MediaStore
    from modalign.validate import check_fast_path

    pairs = store.preference_pairs(min_votes)[:2]
    root = (store.example_root(pairs[0].example_id) or ".") if pairs else "."
    examples = [store.get_example(p.example_id) for p in pairs if (store.example_root(p.example_id) or ".") == root]
    return check_fast_path(policy, examples, MediaStore(root))


def _is_heldout(example_id: str, fraction: float) -> bool:
    """Stable split by example id, so every pair of one example lands on the same side."""
    digest = int(hashlib.sha256(example_id.encode()).hexdigest()[:8], 16)
    return digest / 0xFFFFFFFF < fraction
