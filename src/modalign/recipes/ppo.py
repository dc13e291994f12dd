"""PPO with a critic against a reward model, read top to bottom.

per step: sample G answers per prompt (media encoded once) -> old, reference and critic
passes on the cached media -> reward-model scores + per-token KL -> GAE -> PPO epochs.
The media encoders are frozen so that the cached features stay valid for every pass.
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


@dataclass
class PPOConfig:
    """PPO with a critic (`modalign ppo`)."""

    out: str = field_doc("", "Run folder; empty means runs/ppo-<time>.")
    policy: str = field_doc("", "Policy to start from, usually the SFT folder (also the critic's start and the reference).")
    reference: str = field_doc("", "Frozen KL reference policy folder ('': the policy itself), e.g. SFT in a later round.")
    reward_model: str = field_doc("", "Reward: a reward-model folder, rule:<name>, py:<file.py>:<function> (your "
                                      "own, docs/plugins.md) or a weighted sum of those.")
    data: str = field_doc("", "Dataset folder with the prompts.")
    split: str = field_doc("train", "Split the prompts come from.")
    task: str = field_doc("", "Only examples whose meta.task is this ('': all), in training and evaluation.")
    eval_split: str = field_doc("test", "Held-out split evaluated at the end.")
    eval_examples: int = field_doc(0, "Held-out examples evaluated (0: all).")
    steps: int = field_doc(40, "PPO iterations (rollout + update).")
    prompts_per_step: int = field_doc(16, "Prompts sampled per iteration.")
    samples_per_prompt: int = field_doc(2, "Answers sampled per prompt.")
    max_new_tokens: int = field_doc(40, "Longest sampled answer.")
    temperature: float = field_doc(1.0, "Sampling temperature of rollouts.")
    lr: float = field_doc(2e-5, "Policy learning rate.")
    critic_lr: float = field_doc(1e-4, "Critic learning rate.")
    critic_warmup: int = field_doc(0, "First iterations that train only the critic: the policy waits for advantages "
                                      "from values better than a fresh head's noise.")
    ppo_epochs: int = field_doc(2, "Passes over each rollout.")
    minibatch_size: int = field_doc(16, "Answers per gradient step.")
    clip: float = field_doc(0.2, "PPO ratio clip epsilon.")
    value_clip: float = field_doc(0.2, "Value clip epsilon.")
    value_coef: float = field_doc(0.5, "Weight of the value loss.")
    entropy_coef: float = field_doc(0.0, "Weight of the entropy bonus.")
    kl_coef: float = field_doc(0.05, "Initial KL penalty beta.")
    kl_target: float = field_doc(0.0, "Target KL per answer for the adaptive controller (0: fixed beta).")
    kl_horizon: int = field_doc(10_000, "Adaptive controller horizon in answers (smaller adapts faster).")
    kl_budget: float = field_doc(0.0, "Stop early once the KL to the reference, mean of the last 5 iterations, "
                                      "exceeds this (0: never).")
    gamma: float = field_doc(1.0, "Discount.")
    lam: float = field_doc(0.95, "GAE lambda.")
    unfinished_penalty: float = field_doc(-1.0, "Score given to answers that never end (no end-of-turn token).")
    dense_reward: bool = field_doc(True, "Spread a reward model's score over the tokens that earned it, when it can.")
    ptx_coef: float = field_doc(0.0, "Weight of the SFT loss on reference answers mixed into every policy update (PPO-ptx).")
    ptx_tasks: str = field_doc("", "Comma-separated meta.task values of the PPO-ptx examples ('': every task but "
                                   "`task`, or every example when `task` is '').")
    precision: Precision = field_doc("fp32", PRECISION_HELP)
    gradient_checkpointing: bool = field_doc(False, GRADIENT_CHECKPOINTING_HELP)
    max_bad_steps: int = field_doc(3, "Consecutive non-finite steps before the run stops.")
    checkpoint_every: int = field_doc(10, "Iterations between checkpoints.")
    eval_temperature: float = field_doc(0.0, "Temperature of the final evaluation: 0 greedy (for accuracy), > 0 "
                                             "sampled (the summary says which).")
    seed: int = field_doc(0, "Seed of prompt order and sampling.")
    modalities: str = field_doc("", MODALITIES_HELP)
    device: str = field_doc("auto", DEVICE_HELP)
    monitors: MonitorConfig = field_doc(MonitorConfig(), "Reward-hacking monitors and alarms (monitors.<key>, "
                                                         "docs/monitors.md).")


def run_ppo(cfg: PPOConfig, resume: str | None = None, reward_source=None) -> dict:
    """Train; save `model/` and `critic/`; evaluate; write `summary.json`. Returns the summary."""
    from modalign import validate
    from modalign.data.dataset import split_path
    from modalign.dist import processes
    from modalign.models.inputs import MediaStore, prompt_batch
    from modalign.models.policy import kl_reference
    from modalign.precision import autocast
    from modalign.reward.model import ScalarHeadModel
    from modalign.rl.rewards import bind_judges
    from modalign.rl.advantages import gae, whiten
    from modalign.rl.kl import AdaptiveKLController, FixedKLController, kl_k3_per_answer
    from modalign.rl.monitors import IterationBatch, alarm_summary, build_monitor, sampled_entropy
    from modalign.rl.ppo import critic_values, explained_variance, token_rewards
    from modalign.rl.rewards import place_reward_models
    from modalign.rl.rollout import decode_answers, response_logprobs, sample_answers
    from modalign.runs import RunDir, default_run_dir, set_rng_state
    from modalign.ui import console, progress_bar

    started = time.time()
    dist = processes()
    # validated before the run folder exists: the folder, the prompts, both splits' media, the reward, the policy
    out = Path(resume) if resume else validate.check_new_run(cfg.out or default_run_dir("ppo"), dist)
    device = resolve_device(cfg.device)
    splits = validate.check_dataset(cfg.data, [cfg.split, cfg.eval_split], modalities=cfg.modalities)
    prompts_all = validate.select_task(splits[cfg.split], cfg.task, split_path(cfg.data, cfg.split))
    validate.select_task(splits[cfg.eval_split], cfg.task, split_path(cfg.data, cfg.eval_split))
    ptx_examples = ptx_pool(splits[cfg.split], cfg) if cfg.ptx_coef else []
    validate.check_answers(ptx_examples, split_path(cfg.data, cfg.split), needed_by="PPO-ptx (ptx_coef > 0)")
    audio_seconds = validate.check_dataset_media(cfg.data, splits)
    reward = reward_source or validate.check_reward(cfg.reward_model, prompts_all)
    monitor = build_monitor(cfg.monitors, prompts_all, MediaStore(cfg.data), dist)
    torch.manual_seed(cfg.seed)
    media_store = MediaStore(cfg.data)
    policy, checked = validate.load_policy_for(cfg.policy, prompts_all, media_store, audio_seconds, device)
    bind_judges(reward, policy, media_store)  # judge:claims:... rewards judge with this policy / these media
    raw, processor = policy.model.to(device), policy.processor  # raw: sampling and no-grad passes; model: updates
    reference = kl_reference(raw, cfg.reference, device)  # checked (its folder, its vocabulary) before the run's
    run = RunDir.open(out, dist.is_main) if resume else RunDir.create(out, cfg, dist.is_main)
    run.write_json("self_check.json", checked)
    place_reward_models(reward, device)
    monitor.place(device)  # held-out reward models score where the rollout is
    raw_critic = ScalarHeadModel(copy.deepcopy(raw))
    for module in raw.media_encoder_modules() + raw_critic.backbone.media_encoder_modules():
        module.requires_grad_(False)
    if dist.many:
        torch.manual_seed(cfg.seed + 100_003 * dist.rank)  # the processes sample different answers
    tokenizer = processor.tokenizer
    # fused AdamW: one kernel per step instead of a loop over tensors (transformers' Trainer default too)
    enable_gradient_checkpointing(raw, cfg.gradient_checkpointing)
    model, policy_opt = dist.prepare(raw, torch.optim.AdamW([p for p in raw.parameters() if p.requires_grad],
                                                            lr=cfg.lr, fused=True))
    critic, critic_opt = dist.prepare(raw_critic, torch.optim.AdamW(
        [p for p in raw_critic.parameters() if p.requires_grad], lr=cfg.critic_lr, fused=True))
    kl_ctl = (AdaptiveKLController(cfg.kl_coef, cfg.kl_target, cfg.kl_horizon) if cfg.kl_target
              else FixedKLController(cfg.kl_coef))
    step, bad_steps = 0, 0
    if resume and run.latest_checkpoint() is not None:
        state = run.load_checkpoint(run.latest_checkpoint())
        dist.load_model_state(raw, state["policy"])
        dist.load_model_state(raw_critic, state["critic"])
        dist.load_optimizer_state(raw, policy_opt, state["policy_opt"])
        dist.load_optimizer_state(raw_critic, critic_opt, state["critic_opt"])
        kl_ctl.load_state_dict(state["kl"])
        set_rng_state(state["rng"], dist.rank)
        step = state["step"]
        if state.get("monitor"):
            monitor.load_state_dict(state["monitor"])
        console.print(f"resumed at step {step}")
    if resume:
        run.rewind(step)  # steps logged after the last checkpoint are redone
    kl_budget = KLBudget(run, cfg.kl_budget, dist)

    with progress_bar("ppo", total=cfg.steps, completed=step) as advance:
        while step < cfg.steps:
            # this process's share of the iteration's prompts
            examples = dist.shard(prompts_at(prompts_all, step, cfg.prompts_per_step, cfg.seed), "prompts_per_step")
            prompts = prompt_batch(processor, media_store, examples, model_device(raw))
            # 1. rollout: answers sampled with the KV cache, media encoded once per prompt
            raw.eval()
            # FSDP: the weights gathered once for the whole sampling (processes decode different numbers of steps)
            with dist.gathered(model), autocast(cfg.precision, raw):
                samples = sample_answers(raw, prompts, cfg.samples_per_prompt, cfg.max_new_tokens, cfg.temperature,
                                         tokenizer.eos_token_id, tokenizer.pad_token_id)
            sampled_examples = [e for e in examples for _ in range(cfg.samples_per_prompt)]
            answers = decode_answers(tokenizer, samples)
            mask = samples.response_mask.float()
            with torch.no_grad():
                # 2. old-policy, reference and critic passes reuse samples.media
                with autocast(cfg.precision, raw), dist.gathered(model), dist.gathered(critic):
                    old_logprobs = response_logprobs(raw, samples, cfg.temperature)
                    ref_logprobs = response_logprobs(reference, samples, cfg.temperature)
                    old_values = critic_values(raw_critic, samples)
                finished = (samples.responses == tokenizer.eos_token_id).any(1)
                penalty = torch.full(finished.shape, cfg.unfinished_penalty, device=finished.device)
                if cfg.dense_reward and hasattr(reward, "token_rewards"):
                    # the reward model's score spread over the tokens that earned it (sums to the score)
                    dense = reward.token_rewards(sampled_examples, answers, samples, prompts).float()
                    dense = dense * mask * finished[:, None]
                    rewards, _ = token_rewards(torch.where(finished, 0.0, penalty), old_logprobs, ref_logprobs,
                                               mask, kl_ctl.value)
                    rewards = rewards + dense
                    scores = torch.where(finished, dense.sum(1), penalty)
                else:
                    scores = reward(sampled_examples, answers, samples, prompts).float()
                    scores = torch.where(finished, scores, penalty)
                    rewards, _ = token_rewards(scores, old_logprobs, ref_logprobs, mask, kl_ctl.value)
                advantages, returns = gae(rewards, old_values, mask, cfg.gamma, cfg.lam)
                advantages = whiten(advantages, mask, total=dist.sum)  # over the whole global rollout
            if not dist.all_true(_finite(scores, old_logprobs, old_values)):
                bad_steps = _skip(run, step, [e.id for e in examples], bad_steps, cfg.max_bad_steps)
                step += 1
                continue
            # 3. PPO epochs over shuffled minibatches
            ptx = None
            if ptx_examples:  # PPO-ptx batches by a global index, so resume replays the same ones
                ptx = lambda i, count, step=step: ptx_batch_loss(  # noqa: E731 - minibatch i of count this step
                    model, processor, media_store, ptx_examples, (step * count + i) * dist.world + dist.rank, cfg,
                    dist.share(cfg.minibatch_size, "minibatch_size"))
            stats, ptx_losses, skipped = ppo_update(model, critic, policy_opt, critic_opt, samples, old_logprobs,
                                                    old_values, advantages, returns, cfg, dist, ptx,
                                                    train_policy=step >= cfg.critic_warmup)
            if skipped:
                bad_steps = _skip(run, step, [e.id for e in examples], bad_steps, cfg.max_bad_steps)
                step += 1
                continue
            bad_steps = 0
            # logged and budgeted as k3 (never negative); the reward above is penalised by k1 (Ziegler et al.)
            kl_per_answer = dist.mean(kl_k3_per_answer(old_logprobs, ref_logprobs, mask).mean())  # same count per process
            kl_ctl.update(kl_per_answer, samples.sequences.shape[0] * dist.world)
            step += 1
            metrics = {
                "ppo/reward_mean": dist.mean(scores.mean()), "ppo/reward_std": dist.std(scores),
                "ppo/kl_to_ref": kl_per_answer, "ppo/kl_coef": kl_ctl.value,
                "ppo/answer_length": dist.mean(mask.sum(1).mean()),
                "ppo/explained_variance": dist.mean(explained_variance(old_values, returns, mask)),
                **{f"ppo/{k}": dist.mean(torch.stack([getattr(s, k) for s in stats]).mean())
                   for k in ("policy_loss", "value_loss", "entropy", "approx_kl", "clip_fraction")},
            }
            if ptx_losses:
                metrics["ppo/ptx_loss"] = dist.mean(torch.stack(ptx_losses).mean())
            metrics |= {f"reward/{k}": v for k, v in getattr(reward, "last_components", {}).items()}
            metrics |= monitor.observe(step, IterationBatch(
                sampled_examples, answers, scores, mask.sum(1), finished,
                dist.mean(sampled_entropy(old_logprobs, mask)), kl_per_answer))
            if monitor.fired:
                metrics[f"alarm/{monitor.fired.name}"] = 1.0
            run.log(step, metrics)
            advance(1, reward=metrics["ppo/reward_mean"], kl=kl_per_answer)
            if kl_budget.passed(kl_per_answer, step, cfg.steps):
                break
            if monitor.fired or cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < cfg.steps:
                run.save_checkpoint({"policy": dist.model_state(raw), "critic": dist.model_state(raw_critic),
                                     "policy_opt": dist.optimizer_state(raw, policy_opt),
                                     "critic_opt": dist.optimizer_state(raw_critic, critic_opt),
                                     "kl": kl_ctl.state_dict(), "rng": dist.rng_states(), "step": step,
                                     "monitor": monitor.state_dict()},
                                    step)
            if monitor.stop(cfg.steps):
                break

    # FSDP: the gathered weights, for the main process to save and evaluate
    policy.model, raw_critic = dist.whole(model), dist.whole(critic)
    if not dist.is_main:  # the main process saves, evaluates and writes the summary
        run.close()
        return {"stage": "ppo", "steps": step, "model": str(run.path / "model")}
    policy.name = str(run.path / "model")
    policy.save(run.path / "model")
    raw_critic.save(run.path / "critic", processor)
    from modalign.eval.generation import evaluate_split

    metrics = evaluate_split(policy, cfg.data, cfg.eval_split, cfg.eval_examples, cfg.max_new_tokens,
                             cfg.eval_temperature, cfg.seed, run.path / "samples" / "eval.jsonl", cfg.task,
                             modalities=cfg.modalities)
    metrics["kl_to_ref"] = mean_kl_to_reference(run)
    summary = {"stage": "ppo", "steps": step, "stopped_at_kl_budget": step < cfg.steps and not monitor.fired,
               **alarm_summary(monitor.fired), "processes": dist.world,
               "model": str(run.path / "model"), "eval": metrics, "kl_estimator": "k3, summed over each answer",
               "wall_seconds": round(time.time() - started, 1)}
    run.write_summary(summary)
    run.close()
    return summary


def ppo_update(model, critic, policy_opt, critic_opt, samples, old_logprobs: torch.Tensor, old_values: torch.Tensor,
               advantages: torch.Tensor, returns: torch.Tensor, cfg: PPOConfig, dist, ptx=None,
               train_policy: bool = True) -> tuple[list, list, bool]:
    """`ppo_epochs` passes over shuffled minibatches of this process's rollout rows.

    Returns (PPOStats per minibatch, PPO-ptx losses, skipped). A global minibatch of
    `minibatch_size` answers is `minibatch_size / N` rows in each of N processes; each token-mean
    loss is scaled by `token_share`, so the gradient DDP averages is that of the mean over every
    token of the global minibatch. A non-finite loss in any process skips the step in all.
    `ptx(index, count)`: the PPO-ptx loss mixed into minibatch `index` of the `count` this step.
    `train_policy=False` (critic warm-up): only the value loss, and the policy does not move.
    """
    from modalign.precision import autocast
    from modalign.rl.ppo import critic_minibatch_loss, ppo_minibatch_loss, subset

    per_process = dist.share(cfg.minibatch_size, "minibatch_size")
    stats, ptx_losses = [], []
    minibatches = [rows for _ in range(cfg.ppo_epochs)
                   for rows in torch.randperm(samples.sequences.shape[0]).split(per_process)]
    for index, rows in enumerate(minibatches):
        with autocast(cfg.precision, model):  # forward only: backward and the step run outside
            if train_policy:
                out = ppo_minibatch_loss(model, critic, subset(samples, rows), old_logprobs[rows], old_values[rows],
                                         advantages[rows], returns[rows], cfg.temperature, cfg.clip,
                                         cfg.value_clip, cfg.value_coef, cfg.entropy_coef)
            else:
                out = critic_minibatch_loss(critic, subset(samples, rows), old_values[rows], returns[rows],
                                            cfg.value_clip, cfg.value_coef)
            ptx_loss = ptx(index, len(minibatches)) if ptx is not None and train_policy else None
        loss = out.loss * dist.token_share(samples.response_mask[rows])
        if ptx_loss is not None:
            ptx_losses.append(ptx_loss.detach())
            loss = loss + cfg.ptx_coef * ptx_loss
        if not dist.all_true(bool(torch.isfinite(loss))):
            return stats, ptx_losses, True
        policy_opt.zero_grad(set_to_none=True)
        critic_opt.zero_grad(set_to_none=True)
        dist.backward(loss)
        dist.clip_grad_norm(model, 1.0)
        dist.clip_grad_norm(critic, 1.0)
        policy_opt.step()
        critic_opt.step()
        stats.append(out)
    return stats, ptx_losses, False


class KLBudget:
    """Stops a run once the mean KL to the reference of the last 5 iterations passes `budget` (0: never).

    Past a KL budget the gold reward falls while the proxy still rises (Gao et al. 2023, "Scaling
    laws for reward model overoptimization"): the run stops with this policy. The log is read once,
    for a resumed run's iterations before its checkpoint; each iteration then adds its own KL.
    """

    def __init__(self, run, budget: float, dist, key: str = "ppo/kl_to_ref", last: int = 5) -> None:
        import collections

        self.budget, self.dist = budget, dist
        logged = recent_kl_values(run, last, key) if budget and dist.is_main else []
        self.recent = collections.deque(dist.broadcast(logged), maxlen=last)

    def passed(self, kl: float, step: int, steps: int) -> bool:
        """Add this iteration's KL; True (on every process alike) once the recent mean passes the budget."""
        if not self.budget:
            return False
        import math

        from modalign.ui import console

        if math.isfinite(float(kl)):  # the log keeps a non-finite value as null, which the seeding skips too
            self.recent.append(float(kl))
        mean = sum(self.recent) / max(1, len(self.recent))
        if not self.dist.broadcast(mean > self.budget):  # the main process's decision, so none is left waiting
            return False
        console.print(f"[yellow]KL to the reference {mean:.2f} > kl_budget {self.budget}: "
                      f"stopping at step {step}/{steps}")
        return True


def recent_kl_values(run, last: int = 5, key: str = "ppo/kl_to_ref") -> list[float]:
    """The KL to the reference per answer of the last logged iterations."""
    import json

    log = run.path / "metrics.jsonl"
    if not log.is_file():  # a new run has logged nothing yet
        return []
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    return [line[key] for line in lines if line.get(key) is not None][-last:]


def mean_kl_to_reference(run, last: int = 5, key: str = "ppo/kl_to_ref") -> float:
    """Mean KL to the reference per answer over the last logged iterations."""
    values = recent_kl_values(run, last, key)
    return sum(values) / max(1, len(values))


def ptx_pool(examples: list, cfg: PPOConfig) -> list:
    """The PPO-ptx examples: the split's examples of `ptx_tasks`, or of every task the RL prompts leave out.

    InstructGPT (Ouyang et al. 2022, eq. 2) adds gamma * E_{x~D_pretrain}[log pi(x)] to the PPO
    objective so that skills the reward does not exercise (here: the questions when PPO runs on
    captions) do not regress; the noisy captions themselves are left out by default.
    """
    wanted = {t.strip() for t in cfg.ptx_tasks.split(",") if t.strip()}
    pool = [e for e in examples if (e.meta.get("task") in wanted if wanted else e.meta.get("task") != cfg.task)]
    if not pool:
        from modalign.config import ConfigError

        raise ConfigError(f"ptx_coef={cfg.ptx_coef} but {cfg.data}/{cfg.split} has no examples of tasks "
                          f"{sorted(wanted) or 'other than ' + repr(cfg.task)} (ptx_tasks)")
    return pool


def ptx_batch_loss(model, processor, media_store, pool: list, index: int, cfg: PPOConfig,
                   size: int | None = None) -> torch.Tensor:
    """Mean token NLL of the reference answers of the `index`-th PPO-ptx batch (media encoders stay frozen)."""
    from modalign.models.inputs import collate_sft, encode_sft_example
    from modalign.recipes.sft import batch_at

    size = size or cfg.minibatch_size
    examples = batch_at(pool, index, size, max(1, len(pool) // size), cfg.seed)
    encoded = [encode_sft_example(processor, media_store, e, 128 + cfg.max_new_tokens) for e in examples]
    return model(**collate_sft(encoded, processor.tokenizer.pad_token_id, model_device(model))).loss


def prompts_at(examples: list, step: int, count: int, seed: int) -> list:
    """The prompts of an iteration: a seeded permutation per pass, so resume needs only the step."""
    import random

    per_pass = max(1, len(examples) // count)
    epoch, index = divmod(step, per_pass)
    order = list(range(len(examples)))
    random.Random(seed * 7919 + epoch).shuffle(order)
    return [examples[i] for i in order[index * count : (index + 1) * count]]


def _finite(*tensors: torch.Tensor) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in tensors)


def _skip(run, step: int, example_ids: list[str], bad_steps: int, max_bad_steps: int) -> int:
    """Log a skipped step; stop with a clear error after `max_bad_steps` in a row."""
    from modalign.ui import console

    bad_steps += 1
    run.log(step + 1, {"ppo/skipped_step": 1.0})
    if run.main:
        import json

        with (run.path / "skipped_steps.jsonl").open("a", encoding="utf-8") as handle:
            handle.write(json.dumps({"step": step + 1, "example_ids": example_ids}) + "\n")
    console.print(f"[yellow]step {step + 1}: non-finite loss or reward, skipped ({', '.join(example_ids[:4])} ...)")
    if bad_steps >= max_bad_steps:
        raise RuntimeError(
            f"PPO stopped: {bad_steps} steps in a row had a non-finite loss or reward "
            f"(see {run.path / 'skipped_steps.jsonl'}); checkpoints in {run.path / 'checkpoints'} are intact"
        )
    return bad_steps
