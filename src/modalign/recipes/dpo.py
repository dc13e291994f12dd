"""Direct preference optimisation from the feedback store, read top to bottom.

store -> majority preference pairs (ties left out) -> tokenize once -> reference log-probs
once (cached, the reference never changes) -> the registered preference loss (dpo, ipo,
hinge; cDPO by label smoothing) -> checkpoints -> gold evaluation.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from modalign.config import field_doc
from modalign.data.modalities import MODALITIES_HELP
from modalign.device import DEVICE_HELP
from modalign.memory import GRADIENT_CHECKPOINTING_HELP, enable_gradient_checkpointing
from modalign.precision import PRECISION_HELP, Precision

RPO_ALPHA_HELP = ("RPO (Pang et al. 2024): weight of the chosen answer's negative log-likelihood per token added "
                  "to the preference loss (0: off; ~1 in the paper).")


@dataclass
class DPOConfig:
    """DPO / IPO / cDPO / hinge from preference pairs (`modalign dpo`)."""

    out: str = field_doc("", "Run folder; empty means runs/dpo-<time>.")
    policy: str = field_doc("", "The SFT policy folder (also the frozen reference).")
    store: str = field_doc("", "Feedback store (SQLAlchemy URL or SQLite path) or a TRL preference .jsonl.")
    loss: str = field_doc("dpo", "Preference loss: dpo, ipo or hinge (see modalign.rl.objectives).")
    beta: float = field_doc(0.1, "Strength of the implicit KL constraint.")
    label_smoothing: float = field_doc(0.0, "dpo only: share of flipped labels assumed (conservative DPO).")
    rpo_alpha: float = field_doc(0.0, RPO_ALPHA_HELP)
    min_votes: int = field_doc(1, "Pairs with fewer judgments are left out.")
    epochs: float = field_doc(1.0, "Passes over the pairs.")
    batch_size: int = field_doc(16, "Pairs per step.")
    lr: float = field_doc(5e-5, "AdamW learning rate.")
    max_length: int = field_doc(128, "Longest sequence (media tokens included).")
    checkpoint_every: int = field_doc(50, "Steps between checkpoints (0: only at the end).")
    data: str = field_doc("", "Dataset folder for the final gold evaluation ('' to skip it).")
    eval_split: str = field_doc("test", "Held-out split evaluated at the end.")
    eval_examples: int = field_doc(0, "Held-out examples evaluated (0: all).")
    task: str = field_doc("", "Evaluate only examples whose meta.task is this ('': all).")
    max_new_tokens: int = field_doc(40, "Longest generated answer in evaluation.")
    precision: Precision = field_doc("fp32", PRECISION_HELP)
    gradient_checkpointing: bool = field_doc(False, GRADIENT_CHECKPOINTING_HELP)
    seed: int = field_doc(0, "Seed of the pair order and evaluation sampling.")
    modalities: str = field_doc("", MODALITIES_HELP)
    device: str = field_doc("auto", DEVICE_HELP)


def run_dpo(cfg: DPOConfig, resume: str | None = None) -> dict:
    """Train on the store's pairs; save `model/`; evaluate; write `summary.json`."""
    from modalign import validate
    from modalign.dist import processes
    from modalign.device import resolve_device
    from modalign.errors import UserError
    from modalign.precision import autocast
    from modalign.recipes.reward import check_store_fast_path, encode_store_pairs, open_store
    from modalign.recipes.sft import batch_at
    from modalign.rl.objectives import get_preference_loss, rpo_nll
    from modalign.runs import RunDir, default_run_dir, set_rng_state
    from modalign.ui import console, progress_bar

    started = time.time()
    dist = processes()
    loss_fn = validate.registered(get_preference_loss, cfg.loss, "loss")
    hparams = {"beta": cfg.beta} | ({"label_smoothing": cfg.label_smoothing} if cfg.loss == "dpo" else {})
    check_rpo_alpha(cfg.rpo_alpha)
    # validated before the run folder exists: the folder, the store's pairs, the evaluation data, the policy
    out = Path(resume) if resume else validate.check_new_run(cfg.out or default_run_dir("dpo"), dist)
    device = resolve_device(cfg.device)
    validate.check_store(cfg.store, cfg.min_votes, decided=True)
    splits = validate.check_dataset(cfg.data, [cfg.eval_split], cfg.task, modalities=cfg.modalities) if cfg.data else {}
    audio_seconds = validate.check_dataset_media(cfg.data, splits)
    policy = validate.load_checked_policy(cfg.policy)
    validate.check_audio_window(audio_seconds, policy.processor)
    policy.model.to(device)
    run = RunDir.open(out, dist.is_main) if resume else RunDir.create(out, cfg, dist.is_main)
    raw, pad = policy.model, policy.processor.tokenizer.pad_token_id
    store = dist.main_first(lambda: open_store(cfg.store, run.path))  # a TRL file is imported once
    run.write_json("self_check.json", check_store_fast_path(store, policy, cfg.min_votes))
    pairs = [p for p in encode_store_pairs(store, policy.processor, cfg.min_votes, cfg.max_length,
                                                    cfg.modalities) if not p.tie]
    if not pairs:
        raise UserError(f"feedback store {cfg.store} holds no decided preference pairs for {cfg.loss}")
    console.print(f"[bold]{cfg.loss}[/] {len(pairs)} pairs -> {run.path}")
    # (P, 2): the SFT policy is the reference; each process scores its share of the pairs
    with autocast(cfg.precision, raw):
        reference = dist.gather_rows(lambda rows: sequence_logprobs_all(raw, [pairs[i] for i in rows], pad,
                                                                           cfg.batch_size),
                                     len(pairs))
    steps = max(1, math.ceil(cfg.epochs * len(pairs) / cfg.batch_size))
    # fused AdamW: one kernel per step instead of a loop over tensors (transformers' Trainer default too)
    enable_gradient_checkpointing(raw, cfg.gradient_checkpointing)
    model, optimizer = dist.prepare(raw, torch.optim.AdamW([p for p in raw.parameters() if p.requires_grad],
                                                           lr=cfg.lr, fused=True))
    step = 0
    if resume and run.latest_checkpoint() is not None:
        state = run.load_checkpoint(run.latest_checkpoint())
        dist.load_model_state(raw, state["model"])
        dist.load_optimizer_state(raw, optimizer, state["optimizer"])
        set_rng_state(state["rng"], dist.rank)
        step = state["step"]
    if resume:
        run.rewind(step)
    raw.train()
    with progress_bar(cfg.loss, total=steps, completed=step) as advance:
        while step < steps:
            # the global batch, then this process's rows of it (DDP averages the processes' gradients)
            rows = dist.shard(batch_at(list(range(len(pairs))), step, cfg.batch_size,
                                       max(1, len(pairs) // cfg.batch_size), cfg.seed), "batch_size")
            with autocast(cfg.precision, raw):  # forward only: backward and the step run outside
                chosen, rejected = pair_logprobs(model, [pairs[i] for i in rows], pad)
            out = loss_fn(chosen, rejected, reference[rows, 0], reference[rows, 1], **hparams)
            loss_value = out.loss
            if cfg.rpo_alpha:  # RPO: the chosen answers' NLL per token too
                loss_value = loss_value + rpo_nll(chosen, answer_tokens([pairs[i] for i in rows], chosen.device),
                                                  cfg.rpo_alpha)
            optimizer.zero_grad(set_to_none=True)
            dist.backward(loss_value)
            dist.clip_grad_norm(raw, 1.0)
            optimizer.step()
            step += 1
            margins = out.chosen_rewards - out.rejected_rewards
            loss = dist.mean(out.loss.detach())
            run.log(step, {f"{cfg.loss}/loss": loss, f"{cfg.loss}/reward_margin": dist.mean(margins.mean()),
                           f"{cfg.loss}/reward_accuracy": dist.mean((margins > 0).float().mean())})
            advance(1, loss=loss)
            if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < steps:
                run.save_checkpoint({"model": dist.model_state(raw), "optimizer": dist.optimizer_state(raw, optimizer),
                                     "rng": dist.rng_states(), "step": step}, step)
    summary = {"stage": cfg.loss, "steps": step, "pairs": len(pairs), "model": str(run.path / "model")}
    policy.model = dist.whole(model)  # FSDP: the gathered weights, for the main process to save and evaluate
    if not dist.is_main:
        return summary
    policy.name = str(run.path / "model")
    policy.save(run.path / "model")
    summary |= {"processes": dist.world, "eval": _evaluate(policy, cfg, run),
                "wall_seconds": round(time.time() - started, 1)}
    run.write_summary(summary)
    run.close()
    return summary


def check_rpo_alpha(alpha: float) -> None:
    """RPO's weight is a non-negative number (0: plain preference loss)."""
    from modalign.config import ConfigError

    if not alpha >= 0:
        raise ConfigError(f"rpo_alpha={alpha}: it must be 0 (off) or positive, the weight of the chosen answer's NLL")


def answer_tokens(batch: Sequence, device: torch.device) -> torch.Tensor:
    """(B,) the chosen answers' lengths in tokens (what `pair_logprobs` sums over)."""
    return torch.tensor([len(p.chosen.input_ids) - p.chosen.prompt_length for p in batch], dtype=torch.float32,
                        device=device)


def pair_logprobs(model, batch: Sequence, pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed answer log-probs (B,) of the chosen and the rejected answers; the shared prompt runs once per pair."""
    from modalign.reward.train import pair_answer_logprobs

    return pair_answer_logprobs(model, batch, pad_token_id)


@torch.no_grad()
def sequence_logprobs_all(model, pairs: Sequence, pad_token_id: int, batch_size: int = 8) -> torch.Tensor:
    """(P, 2) chosen and rejected log-probs of every pair under `model` in eval mode.

    DPO passes its training batch size: bigger no-grad batches were slower, not faster (measured on the
    bench's tiny Qwen2-VL, 2 threads, 64 answer-heavy pairs of ~400 tokens: 20.4 s wall in batches of 64,
    12.2 s of 16, 10.0 s of 4 at 19.3 M; 0.52 / 0.34 / 0.32 s at 0.3 M): each batch pads to its longest
    pair, and its activations and logits outgrow the caches.
    """
    was_training = model.training
    model.eval()
    parts = [torch.stack(pair_logprobs(model, pairs[i : i + batch_size], pad_token_id), 1)
             for i in range(0, len(pairs), batch_size)]
    model.train(was_training)
    return torch.cat(parts)


def _evaluate(policy, cfg: DPOConfig, run) -> dict:
    if not cfg.data:
        return {}
    from modalign.eval.generation import evaluate_split

    return evaluate_split(policy, cfg.data, cfg.eval_split, cfg.eval_examples, cfg.max_new_tokens, 0.0, cfg.seed,
                          run.path / "samples" / "eval.jsonl", cfg.task, modalities=cfg.modalities)
