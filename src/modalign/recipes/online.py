"""Critic-free and actor-critic online RL on the PPO rollout core: GRPO, RLOO, REINFORCE, A2C.

Read top to bottom: prompts -> G answers each (KV cache, media encoded once per prompt)
-> reward source -> advantages (group-relative, leave-one-out, moving baseline or critic)
-> the registered objective (`modalign.rl.objectives`) -> log, checkpoint, evaluate.
A new method is a new objective and advantage rule, not a new trainer.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from modalign.config import field_doc
from modalign.data.modalities import MODALITIES_HELP
from modalign.device import DEVICE_HELP, model_device, resolve_device
from modalign.memory import GRADIENT_CHECKPOINTING_HELP, enable_gradient_checkpointing
from modalign.precision import PRECISION_HELP, Precision
from modalign.rl.monitors import MonitorConfig

ALGORITHMS = ("grpo", "rloo", "reinforce", "a2c")


@dataclass
class OnlineConfig:
    """GRPO / RLOO / REINFORCE / A2C (`modalign grpo|rloo|reinforce|a2c`)."""

    out: str = field_doc("", "Run folder; empty means runs/<algorithm>-<time>.")
    algorithm: str = field_doc("grpo", "grpo, rloo, reinforce or a2c: how scores become advantages.")
    objective: str = field_doc("", "A registered objective to use instead of the algorithm's own (see docs).")
    policy: str = field_doc("", "The policy to start from, usually the SFT folder (also the frozen reference unless "
                                "`reference` is set).")
    reference: str = field_doc("", "Frozen KL reference policy folder ('': the policy itself), e.g. SFT when a "
                                   "later round starts from the last policy.")
    reward_model: str = field_doc("", "Reward: a reward-model folder, rule:<name>, py:<file.py>:<function> (your "
                                      "own, docs/plugins.md) or a weighted sum of those.")
    data: str = field_doc("", "Dataset folder with the prompts.")
    split: str = field_doc("train", "Split the prompts come from.")
    task: str = field_doc("", "Only examples whose meta.task is this ('': all), in training and evaluation.")
    eval_split: str = field_doc("test", "Held-out split evaluated at the end.")
    eval_examples: int = field_doc(0, "Held-out examples evaluated (0: all).")
    steps: int = field_doc(40, "Iterations (rollout + update).")
    prompts_per_step: int = field_doc(8, "Prompts sampled per iteration.")
    samples_per_prompt: int = field_doc(4, "Answers per prompt (the group size G).")
    max_new_tokens: int = field_doc(40, "Longest sampled answer.")
    min_new_tokens: int = field_doc(0, "Shortest sampled answer: the end-of-turn token is blocked before it "
                                       "(transformers' min_new_tokens). max_new_tokens - 1 gives every answer the "
                                       "same length, as a fixed-work benchmark needs.")
    temperature: float = field_doc(1.0, "Sampling temperature of rollouts.")
    lr: float = field_doc(2e-5, "Policy learning rate.")
    critic_lr: float = field_doc(1e-4, "Critic learning rate (a2c).")
    update_epochs: int = field_doc(1, "Passes over each rollout (grpo may reuse it; a2c and reinforce use 1).")
    minibatch_size: int = field_doc(32, "Answers per gradient step.")
    clip: float = field_doc(0.2, "Ratio clip epsilon (grpo, and rloo when update_epochs > 1).")
    kl_coef: float = field_doc(0.04, "KL-to-reference weight: k3 in the grpo loss, k1 reward penalty otherwise.")
    kl_budget: float = field_doc(0.0, "Stop early once the KL to the reference, mean of the last 5 iterations, "
                                      "exceeds this (0: never).")
    grpo_normalization: str = field_doc("sequence", "grpo: 'sequence' (paper) or 'token' (DAPO) averaging.")
    grpo_scale: bool = field_doc(True, "grpo: divide by the group std (False: Dr. GRPO).")
    baseline_decay: float = field_doc(0.9, "reinforce: decay of the moving-average baseline.")
    value_coef: float = field_doc(0.5, "a2c: weight of the value loss.")
    entropy_coef: float = field_doc(0.0, "a2c: weight of the entropy bonus.")
    unfinished_penalty: float = field_doc(-1.0, "Score given to answers that never end.")
    precision: Precision = field_doc("fp32", PRECISION_HELP)
    gradient_checkpointing: bool = field_doc(False, GRADIENT_CHECKPOINTING_HELP)
    checkpoint_every: int = field_doc(10, "Iterations between checkpoints.")
    eval_temperature: float = field_doc(0.0, "Temperature of the final evaluation: 0 greedy (for accuracy), > 0 "
                                             "sampled (the summary says which).")
    seed: int = field_doc(0, "Seed of prompt order and sampling.")
    modalities: str = field_doc("", MODALITIES_HELP)
    device: str = field_doc("auto", DEVICE_HELP)
    monitors: MonitorConfig = field_doc(MonitorConfig(), "Reward-hacking monitors and alarms (monitors.<key>, "
                                                         "docs/monitors.md).")


def run_online(cfg: OnlineConfig, resume: str | None = None, reward_source=None) -> dict:
    """Train; save `model/`; evaluate with the gold scorers; write `summary.json`."""
    from modalign import validate
    from modalign.config import ConfigError
    from modalign.dist import processes
    from modalign.eval.generation import evaluate_split
    from modalign.models.inputs import MediaStore, prompt_batch
    from modalign.models.policy import kl_reference
    from modalign.precision import autocast
    from modalign.recipes.ppo import KLBudget, mean_kl_to_reference, prompts_at
    from modalign.reward.model import ScalarHeadModel
    from modalign.rl.rewards import bind_judges
    from modalign.rl.monitors import IterationBatch, alarm_summary, build_monitor
    from modalign.rl.objectives import get_objective
    from modalign.rl.rewards import place_reward_models
    from modalign.rl.rollout import decode_answers, sample_answers
    from modalign.runs import RunDir, default_run_dir, set_rng_state
    from modalign.ui import console, progress_bar

    if cfg.algorithm not in ALGORITHMS:
        raise ConfigError(f"algorithm {cfg.algorithm!r}: choose one of {', '.join(ALGORITHMS)}")
    if not 0 <= cfg.min_new_tokens <= cfg.max_new_tokens:
        raise ConfigError(f"min_new_tokens={cfg.min_new_tokens}: use 0 to {cfg.max_new_tokens} (max_new_tokens)")
    started = time.time()
    dist = processes()
    # validated before the run folder exists: the folder, the prompts, both splits' media, the reward, the policy
    out = Path(resume) if resume else validate.check_new_run(cfg.out or default_run_dir(cfg.algorithm), dist)
    device = resolve_device(cfg.device)
    if cfg.objective:
        validate.registered(get_objective, cfg.objective, "objective")
    splits = validate.check_dataset(cfg.data, [cfg.split, cfg.eval_split], cfg.task,  # each of cfg.task
                                    modalities=cfg.modalities)
    prompts_all = splits[cfg.split]
    audio_seconds = validate.check_dataset_media(cfg.data, splits)
    reward = reward_source or validate.check_reward(cfg.reward_model, prompts_all)
    monitor = build_monitor(cfg.monitors, prompts_all, MediaStore(cfg.data), dist)
    torch.manual_seed(cfg.seed)
    media_store = MediaStore(cfg.data)
    policy, checked = validate.load_policy_for(cfg.policy, prompts_all, media_store, audio_seconds, device)
    bind_judges(reward, policy, media_store)  # judge:claims:... rewards judge with this policy / these media
    raw, tokenizer = policy.model.to(device), policy.processor.tokenizer  # raw: sampling and no-grad passes
    reference = kl_reference(raw, cfg.reference, device)  # checked (its folder, its vocabulary) before the run's
    run = RunDir.open(out, dist.is_main) if resume else RunDir.create(out, cfg, dist.is_main)
    run.write_json("self_check.json", checked)
    place_reward_models(reward, device)
    monitor.place(device)  # held-out reward models score where the rollout is
    raw_critic = ScalarHeadModel(copy.deepcopy(raw)) if cfg.algorithm == "a2c" else None
    frozen = raw.media_encoder_modules() + (raw_critic.backbone.media_encoder_modules() if raw_critic else [])
    for module in frozen:
        module.requires_grad_(False)  # cached media features stay valid for the whole update
    if dist.many:
        torch.manual_seed(cfg.seed + 100_003 * dist.rank)  # the processes sample different answers
    # fused AdamW: the same update in one kernel per step (6x faster on a CPU than the per-tensor loop);
    # transformers' Trainer (and so TRL) defaults to it too
    enable_gradient_checkpointing(raw, cfg.gradient_checkpointing)
    model, policy_opt = dist.prepare(raw, torch.optim.AdamW([p for p in raw.parameters() if p.requires_grad],
                                                            lr=cfg.lr, fused=True))
    optimizers, critic = {"policy": policy_opt}, None
    if raw_critic is not None:
        critic, optimizers["critic"] = dist.prepare(raw_critic, torch.optim.AdamW(
            [p for p in raw_critic.parameters() if p.requires_grad], lr=cfg.critic_lr, fused=True))
    state = {"step": 0, "baseline": 0.0}
    if resume and run.latest_checkpoint() is not None:
        saved = run.load_checkpoint(run.latest_checkpoint())
        dist.load_model_state(raw, saved["policy"])
        if raw_critic is not None:
            dist.load_model_state(raw_critic, saved["critic"])
        for name, optimizer in optimizers.items():
            dist.load_optimizer_state(raw if name == "policy" else raw_critic, optimizer, saved["optimizers"][name])
        set_rng_state(saved["rng"], dist.rank)
        state = saved["state"]
        if saved.get("monitor"):
            monitor.load_state_dict(saved["monitor"])
        console.print(f"resumed at step {state['step']}")
    if resume:
        run.rewind(state["step"])
    kl_budget = KLBudget(run, cfg.kl_budget, dist, f"{cfg.algorithm}/kl_to_ref")

    with progress_bar(cfg.algorithm, total=cfg.steps, completed=state["step"]) as advance:
        while state["step"] < cfg.steps:
            # this process's share of the iteration's prompts (each prompt's group stays in one process)
            examples = dist.shard(prompts_at(prompts_all, state["step"], cfg.prompts_per_step, cfg.seed),
                                  "prompts_per_step")
            prompts = prompt_batch(policy.processor, media_store, examples, model_device(raw))
            raw.eval()
            # FSDP: the weights gathered once for the whole sampling (processes decode different numbers of steps)
            with dist.gathered(model), autocast(cfg.precision, raw):
                samples = sample_answers(raw, prompts, cfg.samples_per_prompt, cfg.max_new_tokens, cfg.temperature,
                                         tokenizer.eos_token_id, tokenizer.pad_token_id, cfg.min_new_tokens)
            owners = [e for e in examples for _ in range(cfg.samples_per_prompt)]
            answers = decode_answers(tokenizer, samples)
            with torch.no_grad():
                scores = reward(owners, answers, samples, prompts).float()
                finished = (samples.responses == tokenizer.eos_token_id).any(1)
                scores = torch.where(finished, scores, torch.full_like(scores, cfg.unfinished_penalty))
            stats = update_policy(cfg, model, reference, critic, optimizers, samples, scores, state, dist)
            entropy = stats.pop("sampled_entropy")
            state["step"] += 1
            components = {f"reward/{k}": v for k, v in getattr(reward, "last_components", {}).items()}
            components |= monitor.observe(state["step"], IterationBatch(
                owners, answers, scores, samples.response_mask.sum(1), finished, entropy, stats["kl_to_ref"]))
            if monitor.fired:
                components[f"alarm/{monitor.fired.name}"] = 1.0
            run.log(state["step"], {f"{cfg.algorithm}/{k}": v for k, v in stats.items()} | components)
            advance(1, reward=stats["reward_mean"], kl=stats["kl_to_ref"])
            if kl_budget.passed(stats["kl_to_ref"], state["step"], cfg.steps):
                break
            every = cfg.checkpoint_every and state["step"] % cfg.checkpoint_every == 0 and state["step"] < cfg.steps
            if every or monitor.fired:
                run.save_checkpoint({"policy": dist.model_state(raw),
                                     "critic": dist.model_state(raw_critic) if raw_critic else None,
                                     "optimizers": {k: dist.optimizer_state(raw if k == "policy" else raw_critic, o)
                                                    for k, o in optimizers.items()},
                                     "rng": dist.rng_states(), "state": dict(state),
                                     "monitor": monitor.state_dict()}, state["step"])
            if monitor.stop(cfg.steps):
                break

    policy.model = dist.whole(model)  # FSDP: the gathered weights, for the main process to save and evaluate
    if not dist.is_main:  # the main process saves, evaluates and writes the summary
        run.close()
        return {"stage": cfg.algorithm, "steps": state["step"], "model": str(run.path / "model")}
    policy.name = str(run.path / "model")
    policy.save(run.path / "model")
    metrics = evaluate_split(policy, cfg.data, cfg.eval_split, cfg.eval_examples, cfg.max_new_tokens,
                             cfg.eval_temperature, cfg.seed, run.path / "samples" / "eval.jsonl", cfg.task,
                             modalities=cfg.modalities)
    metrics["kl_to_ref"] = mean_kl_to_reference(run, key=f"{cfg.algorithm}/kl_to_ref")
    summary = {"stage": cfg.algorithm, "steps": state["step"],
               "stopped_at_kl_budget": state["step"] < cfg.steps and not monitor.fired, **alarm_summary(monitor.fired),
               "processes": dist.world, "kl_estimator": "k3, mean over answer tokens",
               "model": str(run.path / "model"), "eval": metrics,
               "wall_seconds": round(time.time() - started, 1)}
    run.write_summary(summary)
    run.close()
    return summary


def update_policy(cfg: OnlineConfig, model, reference, critic, optimizers, samples, scores, state, dist=None) -> dict:
    """Advantages for the algorithm, then its registered objective over minibatches; returns log stats.

    With N processes (`dist`), each holds whole prompt groups and `minibatch_size / N` rows of each
    global minibatch; token-averaged objectives are scaled by `token_share` so that DDP's average
    of the gradients is the global token mean (sequence-averaged ones need nothing: every process
    holds as many answers).
    """
    from modalign.dist import processes
    from modalign.precision import autocast
    from modalign.rl.advantages import gae
    from modalign.rl.monitors import sampled_entropy
    from modalign.rl.objectives import (ObjectiveInputs, baseline_advantages, broadcast_to_tokens,
                                        group_relative_advantages, leave_one_out_advantages)
    from modalign.rl.ppo import critic_values, subset, token_rewards
    from modalign.rl.rollout import response_logprobs

    dist = dist or processes()
    mask = samples.response_mask.float()
    epochs = 1 if cfg.algorithm in ("a2c", "reinforce") else cfg.update_epochs
    # One epoch of one minibatch: pi_old is the policy about to be trained, so the training forward
    # (with grad) gives the old log-probs too (ratio exactly 1, the same gradient): no extra pass.
    local_minibatch = dist.share(cfg.minibatch_size, "minibatch_size")
    single_pass = epochs == 1 and local_minibatch >= mask.shape[0]
    current = _forward(cfg, model, critic, samples) if single_pass else None
    with torch.no_grad():
        with autocast(cfg.precision, reference):
            old_logprobs = current[0].detach() if single_pass else response_logprobs(model, samples, cfg.temperature)
            ref_logprobs = response_logprobs(reference, samples, cfg.temperature)
        kl = ((old_logprobs - ref_logprobs) * mask).sum(1)  # (N,) k1 per answer
        values = returns = None
        if cfg.algorithm == "grpo":  # the KL is in the loss (k3), not in the reward
            advantages = broadcast_to_tokens(group_relative_advantages(scores, cfg.samples_per_prompt,
                                                                       cfg.grpo_scale), mask)
        elif cfg.algorithm == "rloo":
            advantages = broadcast_to_tokens(leave_one_out_advantages(scores - cfg.kl_coef * kl,
                                                                      cfg.samples_per_prompt), mask)
        elif cfg.algorithm == "reinforce":
            shaped = scores - cfg.kl_coef * kl
            advantages = broadcast_to_tokens(baseline_advantages(shaped, state["baseline"]), mask)
            state["baseline"] = (cfg.baseline_decay * state["baseline"]
                                 + (1 - cfg.baseline_decay) * dist.mean(shaped.mean()))  # every process's answers
        else:  # a2c: n-step returns of the KL-shaped token rewards against the critic (lambda = 1)
            rewards, _ = token_rewards(scores, old_logprobs, ref_logprobs, mask, cfg.kl_coef)
            with autocast(cfg.precision, reference):
                values = current[2].detach() if single_pass else critic_values(critic, samples)
            advantages, returns = gae(rewards, values, mask, 1.0, 1.0)
    objective, hparams = _objective(cfg)
    logged: list[dict] = []
    for _ in range(epochs):
        for rows in torch.randperm(mask.shape[0]).split(local_minibatch):
            logprobs, logits, values = (
                (None if t is None else t[rows] for t in current) if single_pass
                else _forward(cfg, model, critic, subset(samples, rows)))
            batch = ObjectiveInputs(
                logprobs=logprobs, old_logprobs=old_logprobs[rows], advantages=advantages[rows], mask=mask[rows],
                ref_logprobs=ref_logprobs[rows], values=values,
                returns=returns[rows] if returns is not None else None,
                entropy=_entropy(logits) if cfg.entropy_coef else None,
            )
            out = objective(batch, **hparams)
            share = dist.token_share(mask[rows]) if _token_averaged(cfg) else 1.0
            for optimizer in optimizers.values():
                optimizer.zero_grad(set_to_none=True)
            dist.backward(out.loss * share)
            for name, optimizer in optimizers.items():
                dist.clip_grad_norm(model if name == "policy" else critic, 1.0)
                optimizer.step()
            # kept on the device: read once per update for the log, not once per minibatch
            logged.append({k: v.detach() if torch.is_tensor(v) else v for k, v in out.stats.items()}
                          | {"loss": out.loss.detach()})
    stats = {k: dist.mean(sum(d[k] for d in logged) / len(logged)) for k in logged[0]}
    stats.update(reward_mean=dist.mean(scores.mean()), reward_std=dist.std(scores),
                 kl_to_ref=dist.mean(kl.mean()), answer_length=dist.mean(mask.sum(1).mean()),
                 sampled_entropy=dist.mean(sampled_entropy(old_logprobs, mask)))  # for the monitors
    return stats


def _token_averaged(cfg: OnlineConfig) -> bool:
    """Whether the objective averages over tokens (else over answers; a user's own objective: assumed answers)."""
    name = cfg.objective or cfg.algorithm
    return name in ("reinforce", "a2c") or (name == "grpo" and cfg.grpo_normalization == "token")


def _forward(cfg: OnlineConfig, model, critic, samples) -> tuple:
    """The policy's log-probs (N, T) with grad, its logits (N, T, V) when the entropy is needed, and the
    critic's values (N, T) when there is a critic (else None); forward only, under `cfg.precision`."""
    from modalign.precision import autocast
    from modalign.rl.ppo import critic_values
    from modalign.rl.rollout import response_logprobs

    with autocast(cfg.precision, model):
        if cfg.entropy_coef:
            logprobs, logits = response_logprobs(model, samples, cfg.temperature, with_logits=True)
        else:
            logprobs, logits = response_logprobs(model, samples, cfg.temperature), None
        return logprobs, logits, (critic_values(critic, samples) if critic is not None else None)


def _objective(cfg: OnlineConfig):
    from modalign.rl.objectives import get_objective

    hparams = {
        "grpo": {"clip": cfg.clip, "beta": cfg.kl_coef, "normalization": cfg.grpo_normalization},
        "rloo": {"clip": cfg.clip if cfg.update_epochs > 1 else None},
        "reinforce": {},
        "a2c": {"value_coef": cfg.value_coef, "entropy_coef": cfg.entropy_coef},
    }[cfg.algorithm]
    if cfg.objective and cfg.objective != cfg.algorithm:
        return get_objective(cfg.objective), {}  # a user's registered loss, with its defaults
    return get_objective(cfg.algorithm), hparams


def _entropy(logits: torch.Tensor) -> torch.Tensor:
    from modalign.rl.losses import entropy_from_logits

    return entropy_from_logits(logits.masked_fill(torch.isinf(logits), -1e9))
