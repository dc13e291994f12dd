"""Run by tests/test_multiprocess.py under `accelerate launch`: one update on a fixed rollout.

    mp_ppo_update.py MODEL DATA OUT.pt [ppo|grpo]

Every process samples the same global rollout (same seed), then updates on its rows only
(`Processes.shard`; GRPO: whole prompt groups); the main process saves the weights to OUT.pt.
ppo: `recipes.ppo.ppo_update` with a critic; grpo: `recipes.online.update_policy` with token
averaging (DAPO), 2 epochs.
"""

from __future__ import annotations

import copy
import dataclasses
import sys

import torch

from modalign.data.dataset import read_examples
from modalign.dist import processes
from modalign.models.inputs import MediaStore, prompt_batch
from modalign.models.policy import frozen_reference, load_policy
from modalign.recipes.online import OnlineConfig, update_policy
from modalign.recipes.ppo import PPOConfig, ppo_update
from modalign.reward.model import ScalarHeadModel
from modalign.rl.advantages import gae, whiten
from modalign.rl.ppo import critic_values, subset, token_rewards
from modalign.rl.rollout import response_logprobs, sample_answers


def main(model_dir: str, data_dir: str, out: str, method: str = "ppo") -> None:
    dist = processes()
    torch.manual_seed(0)
    policy = load_policy(model_dir)
    raw, tokenizer = policy.model, policy.processor.tokenizer
    raw_critic = ScalarHeadModel(copy.deepcopy(raw))
    for module in raw.media_encoder_modules() + raw_critic.backbone.media_encoder_modules():
        module.requires_grad_(False)
    examples = [e for e in read_examples(data_dir, "train") if e.meta["task"] == "caption"][:4]
    prompts = prompt_batch(policy.processor, MediaStore(data_dir), examples)
    raw.eval()
    samples = sample_answers(raw, prompts, 2, 12, 1.0, tokenizer.eos_token_id, tokenizer.pad_token_id)  # (8, T)
    # answers of unequal length (the tiny model rarely ends one): odd rows cut to 3, 5, 7, 9 tokens
    lengths = torch.tensor([12, 3, 12, 5, 12, 7, 12, 9])[:, None]
    cut = samples.response_mask & (torch.arange(samples.response_mask.shape[1])[None] < lengths)
    samples = dataclasses.replace(samples, response_mask=cut)
    mask = samples.response_mask.float()
    with torch.no_grad():
        old_logprobs = response_logprobs(raw, samples)
        old_values = critic_values(raw_critic, samples)
        rewards, _ = token_rewards(torch.linspace(-1.0, 1.0, 8), old_logprobs, old_logprobs, mask, 0.0)
        advantages, returns = gae(rewards, old_values, mask)
        advantages = whiten(advantages, mask)
    if method == "grpo":
        rows = torch.tensor([row for prompt in dist.shard(range(4)) for row in (2 * prompt, 2 * prompt + 1)])
    else:
        rows = torch.tensor(dist.shard(range(8)))  # uneven token counts per process: token_share matters
    print(f"process {dist.rank}: {int(mask[rows].sum())} of {int(mask.sum())} answer tokens", flush=True)
    if method == "grpo":
        grpo_update(raw, samples, rows, dist)
    else:
        ppo_update_on(raw, raw_critic, samples, rows, old_logprobs, old_values, advantages, returns, dist)
    weights = {"policy": dist.model_state(raw), "critic": dist.model_state(raw_critic)}  # FSDP: gathered
    if dist.is_main:
        torch.save(weights, out)


def ppo_update_on(raw, raw_critic, samples, rows, old_logprobs, old_values, advantages, returns, dist) -> None:
    cfg = PPOConfig(minibatch_size=8, ppo_epochs=2, lr=1e-3, critic_lr=1e-3)
    model, policy_opt = dist.prepare(raw, torch.optim.AdamW([p for p in raw.parameters() if p.requires_grad],
                                                            lr=cfg.lr))
    critic, critic_opt = dist.prepare(raw_critic, torch.optim.AdamW(
        [p for p in raw_critic.parameters() if p.requires_grad], lr=cfg.critic_lr))
    raw.train()
    _, _, skipped = ppo_update(model, critic, policy_opt, critic_opt, subset(samples, rows), old_logprobs[rows],
                               old_values[rows], advantages[rows], returns[rows], cfg, dist)
    assert not skipped


def grpo_update(raw, samples, rows, dist) -> None:
    cfg = OnlineConfig(algorithm="grpo", grpo_normalization="token", update_epochs=2, minibatch_size=8,
                       samples_per_prompt=2, lr=1e-3, kl_coef=0.04)
    reference = frozen_reference(raw)
    model, optimizer = dist.prepare(raw, torch.optim.AdamW([p for p in raw.parameters() if p.requires_grad],
                                                           lr=cfg.lr))
    raw.train()
    scores = torch.tensor([1.0, -1.0, 0.5, 0.0, -0.5, 1.0, 0.2, 0.8])
    update_policy(cfg, model, reference, None, {"policy": optimizer}, subset(samples, rows), scores[rows],
                  {"step": 0, "baseline": 0.0}, dist)


if __name__ == "__main__":
    main(*sys.argv[1:5])
