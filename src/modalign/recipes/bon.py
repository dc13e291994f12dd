"""Best-of-N rejection sampling, read top to bottom.

prompts -> N answers each from the policy (media encoded once per prompt) -> score every
answer with the reward (model, rule or composite) -> keep the best per prompt -> SFT on the
winners from the same policy (Touvron et al. 2023, Llama 2 sec. 3.2.3; Dong et al. 2023, RAFT).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace

from modalign.config import field_doc
from modalign.device import DEVICE_HELP, placed, resolve_device


@dataclass
class BoNConfig:
    """Best-of-N sampling with a reward, then SFT on the winners (`modalign bon`)."""

    out: str = field_doc("", "Run folder; empty means runs/bon-<time>.")
    policy: str = field_doc("", "Policy folder to sample from and fine-tune.")
    reward_model: str = field_doc("", "Reward: a reward-model folder, rule:<name>, py:<file.py>:<function> (your "
                                      "own, docs/plugins.md) or a weighted sum of those.")
    data: str = field_doc("", "Dataset folder with the prompts.")
    split: str = field_doc("train", "Split the prompts come from.")
    task: str = field_doc("", "Only examples whose meta.task is this ('': all).")
    prompts: int = field_doc(0, "Prompts used (0: all).")
    n: int = field_doc(8, "Answers sampled per prompt.")
    temperature: float = field_doc(1.0, "Sampling temperature.")
    max_new_tokens: int = field_doc(40, "Longest sampled answer.")
    epochs: float = field_doc(2.0, "SFT passes over the winners.")
    lr: float = field_doc(1e-4, "SFT learning rate.")
    batch_size: int = field_doc(32, "SFT examples per step.")
    eval_examples: int = field_doc(0, "Held-out examples evaluated at the end (0: all).")
    seed: int = field_doc(0, "Seed of sampling and training.")
    device: str = field_doc("auto", DEVICE_HELP)


def run_bon(cfg: BoNConfig) -> dict:
    """Sample, select, fine-tune; `winners.jsonl` keeps every prompt's best answer and its score.

    With many processes each samples and scores its share of the prompts (prompts rank, rank + N,
    ...; the same seed in each, so the answers differ from a one-process run's), the winners are
    gathered in prompt order, and the SFT runs on all processes.
    """
    import torch

    from modalign import validate
    from modalign.config import ConfigError
    from modalign.data.dataset import split_path
    from modalign.dist import processes
    from modalign.recipes.sft import SFTConfig, run_sft
    from modalign.rl.rewards import place_reward_models
    from modalign.runs import RunDir, default_run_dir
    from modalign.ui import console

    started = time.time()
    dist = processes()
    # validated before the run folder exists: the folder, the prompts and their media, the reward, the policy
    # (the SFT on the winners checks its own data, the test split with its media, before it starts)
    out = validate.check_new_run(cfg.out or default_run_dir("bon"), dist)
    device = resolve_device(cfg.device)
    examples = validate.select_task(validate.read_split(cfg.data, cfg.split), cfg.task, split_path(cfg.data, cfg.split))
    examples = examples[: cfg.prompts] if cfg.prompts else examples
    if len(examples) < dist.world:
        raise ConfigError(f"{len(examples)} prompts do not split over {dist.world} processes (prompts)")
    validate.check_media(cfg.data, examples, split_path(cfg.data, cfg.split))
    reward = validate.check_reward(cfg.reward_model, examples)
    place_reward_models(reward, device)
    validate.check_policy(cfg.policy)
    run = RunDir.create(out, cfg, dist.is_main)
    results = dist.unshard(_sample_and_score(cfg, examples[dist.rank :: dist.world], reward), len(examples))
    winners = [winner for winner, _ in results]
    grouped = torch.stack([scores for _, scores in results])  # (prompts, N)
    if dist.is_main:
        with (run.path / "winners.jsonl").open("w", encoding="utf-8") as handle:
            for example, index in zip(winners, range(len(examples))):
                handle.write(json.dumps({"example_id": example.id, "answer": example.answer,
                                         "score": float(grouped[index].max()),
                                         "mean_score": float(grouped[index].mean())}) + "\n")
    console.print(f"[bold]bon[/] best of {cfg.n}: mean score {float(grouped.mean()):.3f} -> "
                  f"winners {float(grouped.max(1).values.mean()):.3f}")
    sft = run_sft(SFTConfig(out=str(run.path / "sft"), data=cfg.data, policy=cfg.policy, epochs=cfg.epochs,
                            lr=cfg.lr, batch_size=cfg.batch_size, warmup_steps=0, eval_examples=cfg.eval_examples,
                            seed=cfg.seed, checkpoint_every=0, device=cfg.device), train_examples=winners)
    summary = {"stage": "bon", "prompts": len(examples), "n": cfg.n, "sample_score_mean": float(grouped.mean()),
               "winner_score_mean": float(grouped.max(1).values.mean()), "model": sft["model"],
               "eval": sft.get("eval", {}), "wall_seconds": round(time.time() - started, 1)}
    run.write_summary(summary)
    run.close()
    return summary


def _sample_and_score(cfg: BoNConfig, examples: list, reward) -> list[tuple]:
    """Per example: a copy with its best answer, and the scores of its N answers (N,)."""
    from modalign.eval.generation import generate_answers
    from modalign.models.inputs import MediaStore
    from modalign.rl.rewards import score_texts
    from modalign.validate import load_checked_policy

    media = MediaStore(cfg.data)
    completions = generate_answers(placed(load_checked_policy(cfg.policy), cfg.device), media, examples,
                                   max_new_tokens=cfg.max_new_tokens,
                                   temperature=cfg.temperature, seed=cfg.seed, samples_per_example=cfg.n)
    owners = [e for e in examples for _ in range(cfg.n)]
    scores = score_texts(reward, owners, [c.text for c in completions], media)
    grouped = scores.view(len(examples), cfg.n)  # (prompts, N)
    best = grouped.argmax(1)
    return [(with_answer(e, completions[i * cfg.n + int(best[i])].text), grouped[i]) for i, e in enumerate(examples)]


def with_answer(example, answer: str):
    """A copy of `example` whose final assistant message is `answer`."""
    from modalign.data.records import assistant_turn

    messages = [m for m in example.messages if m["role"] != "assistant"] + [assistant_turn(answer)]
    return replace(example, messages=messages)
