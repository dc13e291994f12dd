"""`modalign loop`: iterative online RLHF, read top to bottom.

Round r: answers sampled from the current policy (round 1: the start policy, usually SFT) ->
the pairs or groups sent for feedback (all, random, or those the reward model is least sure
of) -> judged by the simulated panel (ShapesWorld), by your Python judge (`judge=py:...`,
docs/plugins.md), by a model judge (`judge=model:...`, docs/ai-feedback.md), or by people through
`modalign annotate` (tasks pushed to the store's queue, the round waits for their judgments) ->
a reward model trained again on every judgment so far -> the RL method from the current policy
against it, KL to the start policy -> gold evaluation -> round r+1.

Bai et al. 2022, "Training a Helpful and Harmless Assistant with RLHF", sec. 4.5 (iterated
online RLHF: preference models retrained on the current policy's samples each round); Touvron
et al. 2023, Llama 2 sec. 3.2.3 (reward model and policy updated in rounds). Retraining the reward
model on the current policy's answers is what stops the policy exploiting it: on ShapesWorld a
reward model trained on SFT answers alone never saw true objects dropped, and PPO learned to drop
them.

Folder `out/`: `config.yaml`, `feedback.db` (every round's judgments; or the `store` you name, e.g. a
PostgreSQL database that `modalign annotate` serves), `store.json` (its judgments at the start), `eval-start.json`,
`round-r/` (`samples.jsonl`, `feedback.json`, `reward/`, `rl/`, `eval.json`, `round.json`), `rounds.jsonl`,
`summary.json`. Resume: rerun with the same settings (only `rounds` may change); finished
stages are read back, a killed RL run resumes from its last checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

from modalign.config import ConfigError, field_doc
from modalign.data.modalities import MODALITIES_HELP
from modalign.device import DEVICE_HELP, placed, resolve_device
from modalign.feedback.collect import SIMULATED
from modalign.feedback.judges.help_text import JUDGE_DISAGREEMENT_HELP, JUDGE_RANKING_HELP, JUDGE_TEMPLATE_HELP
from modalign.feedback.store_spec import STORE_HELP
from modalign.precision import PRECISION_HELP, Precision
from modalign.rl.monitors import MonitorConfig

METHODS = ("ppo", "grpo", "rloo", "reinforce", "a2c", "dpo")
SELECTIONS = ("all", "random", "margin", "ensemble", "top")


@dataclass
class LoopConfig:
    """Rounds of sample -> feedback -> reward model -> RL -> evaluate (`modalign loop`)."""

    out: str = field_doc("", "Run folder; empty means runs/loop-<time>. Rerunning on it resumes.")
    policy: str = field_doc("", "Start policy folder (usually SFT): round 1 samples from it; the KL reference.")
    data: str = field_doc("", "Dataset folder with the prompts and the held-out split.")
    split: str = field_doc("train", "Split the prompts come from.")
    task: str = field_doc("", "Only examples whose meta.task is this ('': all) are sampled for feedback and RL.")
    rounds: int = field_doc(3, "Rounds (the only field a rerun may change).")
    first_round_prompts: int = field_doc(0, "Prompts sampled in round 1 (0: prompts_per_round).")
    prompts_per_round: int = field_doc(300, "Prompts sampled per later round.")
    samples_per_prompt: int = field_doc(4, "Answers sampled per prompt from the current policy.")
    selection: str = field_doc("all", "all (each prompt's answers ranked), or pairs_per_round pairs judged pairwise: "
                                      "random, margin (the reward model's closest pairs), top (each prompt's best "
                                      "answer against the one the ensemble is least sure it beats) or ensemble (where "
                                      "bootstrap reward heads disagree most).")
    pairs_per_round: int = field_doc(0, "random/margin/ensemble/top: pairs sent for judgment per round.")
    ensemble_members: int = field_doc(5, "ensemble/top: bootstrap reward heads whose disagreement picks the pairs.")
    judge: str = field_doc("simulated", "simulated (the simulated panel; ShapesWorld data only, other data is refused "
                                        "up front), people (tasks for `annotators` in the store's queue; the round "
                                        "waits for their judgments), py:<module or file.py>:<fn> (your judge "
                                        "fn(example, completions) -> scores, see docs/plugins.md) or "
                                        "claims:<model folder or self> (claim-level verification by a model, "
                                        "self: the round's policy; docs/ai-feedback.md) or model:<folder or hub id> "
                                        "(a model judge, docs/ai-feedback.md).")
    judge_template: str = field_doc("", JUDGE_TEMPLATE_HELP)
    judge_disagreement: str = field_doc("tie", JUDGE_DISAGREEMENT_HELP)
    judge_ranking: str = field_doc("pairwise", "model judge, selection=all: " + JUDGE_RANKING_HELP)
    store: str = field_doc("", "Feedback store of every round's judgments ('': out/feedback.db): " + STORE_HELP
                               + ". people: the store `modalign annotate --store` serves.")
    annotators: str = field_doc("", "people: comma-separated annotator accounts the tasks are assigned to.")
    overlap: int = field_doc(1, "people: annotators per task.")
    wait_seconds: float = field_doc(86400.0, "people: longest wait for a round's judgments before stopping.")
    reward_steps: int = field_doc(2000, "Reward-model steps per round (trained again on every judgment so far).")
    method: str = field_doc("ppo", "RL method of each round: ppo, grpo, rloo, reinforce, a2c or dpo.")
    rl_steps: int = field_doc(60, "RL iterations per round (dpo: epochs are 1 over the pairs so far).")
    prompts_per_step: int = field_doc(16, "RL prompts per iteration.")
    rl_samples_per_prompt: int = field_doc(4, "RL answers per prompt.")
    lr: float = field_doc(1e-4, "Policy learning rate.")
    kl_coef: float = field_doc(0.1, "KL penalty to the start policy (online methods: to the round's start).")
    kl_budget: float = field_doc(0.0, "ppo and online methods: stop a round's RL once the mean KL to its reference "
                                      "passes it (0: off).")
    ptx_coef: float = field_doc(1.0, "ppo: PPO-ptx weight of the SFT loss on the tasks the prompts leave out.")
    critic_warmup: int = field_doc(0, "ppo: first RL iterations of a round that train only the (fresh) critic.")
    precision: Precision = field_doc("fp32", "RL stage: " + PRECISION_HELP)
    max_new_tokens: int = field_doc(40, "Longest answer, sampled and evaluated.")
    eval_split: str = field_doc("test", "Held-out split evaluated at the start and after every round.")
    eval_examples: int = field_doc(0, "Held-out examples evaluated (0: all).")
    eval_samples: int = field_doc(4, "Sampled answers per held-out prompt in evaluation.")
    seed: int = field_doc(0, "Seed of prompts, sampling, raters and training.")
    modalities: str = field_doc("", MODALITIES_HELP)
    device: str = field_doc("auto", DEVICE_HELP)
    monitors: MonitorConfig = field_doc(MonitorConfig(), "ppo and online methods: each round's reward-hacking "
                                                         "monitors and alarms (monitors.<key>, docs/monitors.md); a "
                                                         "fired alarm ends the loop after its round.")


def run_loop(cfg: LoopConfig) -> dict:
    """Run the rounds not done yet in `cfg.out`; returns the summary (also `summary.json`)."""
    from modalign import validate
    from modalign.data.dataset import split_path
    from modalign.dist import processes
    from modalign.feedback.collect import check_judge
    from modalign.feedback.store_spec import judgments_at_start, open_store
    from modalign.runs import default_run_dir, start_rounds_folder, write_json_atomic, write_jsonl_atomic
    from modalign.ui import console

    dist = processes()
    out = Path(cfg.out or default_run_dir("loop"))
    cfg = dataclasses.replace(cfg, out=str(out))
    # validated before the folder exists: settings, prompts, both splits' media, the policy
    check_loop_settings(cfg, dist.world)
    resolve_device(cfg.device)
    splits = validate.check_dataset(cfg.data, [cfg.split, cfg.eval_split], modalities=cfg.modalities)
    pool = validate.select_task(splits[cfg.split], cfg.task, split_path(cfg.data, cfg.split))
    check_judge(cfg.judge, pool)
    if cfg.judge.startswith("model:"):
        from modalign.feedback.judges.model_judge import check_model_judge, check_settings

        check_settings("ranking", cfg.judge_disagreement, cfg.judge_ranking)
        check_model_judge(cfg.judge, cfg.judge_template, cfg.judge_ranking,
                          task="ranking" if cfg.selection == "all" else "pairwise")
    validate.check_dataset_media(cfg.data, splits)
    validate.check_policy(cfg.policy)
    store = dist.main_first(lambda: open_store(cfg.store, out / "feedback.db"))  # before the folder: a bad URL
    new_run = not (out / "config.yaml").is_file()
    start_rounds_folder(cfg, out)
    at_start = dist.broadcast(judgments_at_start(out, store, new_run) if dist.is_main else None)
    console.print(f"[bold]loop[/] {cfg.rounds} rounds: {cfg.selection} feedback by {cfg.judge} -> reward model -> "
                  f"{cfg.method} -> {out}")
    start = cached_json(out / "eval-start.json", lambda: evaluate_policy(cfg, cfg.policy, out / "eval-start"))
    rows: list[dict] = []
    for r in range(1, cfg.rounds + 1):
        prior = at_start + sum(row["judgments"] for row in rows)
        row = cached_json(round_dir(cfg, r) / "round.json", lambda: run_round(cfg, r, store, prior), everyone=True)
        rows.append(row)
        if dist.is_main:
            write_jsonl_atomic(out / "rounds.jsonl", rows)
        print_round(row, cfg.rounds, start)
        if row.get("alarm"):  # the round's RL stopped on a reward-hacking alarm: no more rounds on this policy
            console.print(f"[yellow]loop stopped after round {r}: {row['alarm']['reason']}")
            break
    summary = {"stage": "loop", "start": start, "rounds": rows, "model": rows[-1]["model"],
               "eval": rows[-1]["eval"], "judgments": sum(row["judgments"] for row in rows),
               "feedback": store.display_url, "wall_seconds": round(sum(row["seconds"] for row in rows), 1)}
    if dist.is_main:
        write_json_atomic(out / "summary.json", summary)
    return summary


def run_round(cfg: LoopConfig, r: int, store, prior_judgments: int) -> dict:
    """One round's stages, each skipped when its output exists (resume); returns the round's row."""
    from modalign.recipes.reward import RewardConfig, run_reward

    started = time.time()
    folder = round_dir(cfg, r)
    policy = round_policy(cfg, r)
    feedback = cached_json(folder / "feedback.json",
                           lambda: collect_round_feedback(cfg, r, policy, store, prior_judgments))
    reward = cached_json(folder / "reward" / "summary.json", lambda: run_reward(RewardConfig(
        out=str(fresh(folder / "reward")), policy=cfg.policy, store=store.url,
        steps=cfg.reward_steps, seed=cfg.seed + r, modalities=cfg.modalities, device=cfg.device)), everyone=True)
    rl = cached_json(folder / "rl" / "summary.json",
                     lambda: run_rl(cfg, policy, reward["model"], folder / "rl", store.url), everyone=True)
    metrics = cached_json(folder / "eval.json", lambda: evaluate_policy(cfg, rl["model"], folder / "eval"))
    return {"round": r, "policy": policy, "judgments": feedback["judgments"], "feedback": feedback,
            "reward_heldout_accuracy": reward["heldout_accuracy"], "rl_steps": rl.get("steps"),
            "kl_to_ref": rl.get("eval", {}).get("kl_to_ref"), "model": rl["model"], "eval": metrics,
            **({"alarm": rl["alarm"]} if rl.get("alarm") else {}), "seconds": round(time.time() - started, 1)}


def collect_round_feedback(cfg: LoopConfig, r: int, policy: str, store, prior_judgments: int) -> dict:
    """Sample from the round's policy, select what to judge, judge it, store it; returns the round's stats."""
    from modalign.eval.generation import generate_answers
    from modalign.feedback.collect import (
        judge_with_function, judge_with_panel, panel_agreement, python_judge, write_feedback,
    )
    from modalign.feedback.judges.claims import is_claims, judge_with_claims
    from modalign.models.inputs import MediaStore
    from modalign.plugins import is_plugin
    from modalign.recipes.ppo import prompts_at
    from modalign.runs import write_jsonl_atomic
    from modalign.validate import load_checked_policy

    started, folder, k = time.time(), round_dir(cfg, r), cfg.samples_per_prompt
    folder.mkdir(parents=True, exist_ok=True)
    pool = prompt_pool(cfg)
    count = cfg.first_round_prompts if r == 1 and cfg.first_round_prompts else cfg.prompts_per_round
    prompts = prompts_at(pool, r - 1, min(count, len(pool)), cfg.seed)
    media = MediaStore(cfg.data)
    sampler = placed(load_checked_policy(policy), cfg.device)
    completions = generate_answers(sampler, media, prompts, max_new_tokens=cfg.max_new_tokens,
                                   temperature=1.0, seed=cfg.seed + 1000 * r, samples_per_example=k)
    write_jsonl_atomic(folder / "samples.jsonl", [c.to_dict() for c in completions])
    claims = round_claim_judge(cfg, policy, sampler, media, prompts) if is_claims(cfg.judge) else None
    judge = model_judge(cfg) if cfg.judge.startswith("model:") else None
    extra = {}
    if cfg.selection == "all" and cfg.judge == SIMULATED:
        feedback, _ = judge_with_panel(prompts, completions, k, cfg.seed + r)
    elif cfg.selection == "all" and is_plugin(cfg.judge):
        feedback, _ = judge_with_function(cfg.judge, python_judge(cfg.judge), prompts, completions, k)
    elif cfg.selection == "all" and claims is not None:
        feedback, _ = judge_with_claims(claims, prompts, completions, k)
    elif cfg.selection == "all" and judge is not None:
        from modalign.feedback.judges.model_judge import judge_round

        feedback, _, extra["judge_report"] = judge_round(judge, prompts, completions, k, seed=cfg.seed + r)
    else:
        feedback = judge_selected_pairs(cfg, r, prompts, completions, media, store, claims, judge, extra)
    # people's judgments are stored as they arrive; a killed run may have stored the others already
    if store.count_judgments() == prior_judgments and cfg.judge != "people":
        write_feedback(store, feedback, cfg.data)
    asked = {"claims_asked": claims.cache.asked, "claims_cached": claims.cache.hits} if claims else {}
    return {"round": r, "prompts": len(prompts), "judgments": store.count_judgments() - prior_judgments,
            **panel_agreement(feedback), **asked, **extra, "seconds": round(time.time() - started, 1)}


def round_claim_judge(cfg: LoopConfig, policy_path: str, policy, media, prompts):
    """The claim judge of a `claims:` loop: the round's policy for claims:self, else the named model;
    its answers are cached in `out/claims-cache.jsonl` (a resumed round asks nothing again)."""
    from modalign.feedback.judges.cache import ClaimCache
    from modalign.feedback.judges.claims import claim_judge

    return claim_judge(cfg.judge, prompts, media, policy, policy_path,
                       ClaimCache(Path(cfg.out) / "claims-cache.jsonl"), start=cfg.policy)


def model_judge(cfg: LoopConfig):
    """The round's model judge (`judge=model:...`, `feedback.judges.model_judge`) over the loop's data."""
    from modalign.feedback.judges.model_judge import load_model_judge

    return load_model_judge(cfg.judge, cfg.data, cfg.judge_template, cfg.judge_disagreement, cfg.judge_ranking,
                            task="ranking" if cfg.selection == "all" else "pairwise", device=cfg.device)


def prompt_pool(cfg: LoopConfig) -> list:
    """The examples the rounds draw their prompts from (the split, filtered by task)."""
    from modalign.data.dataset import read_examples

    return [e for e in read_examples(cfg.data, cfg.split, cfg.modalities)
            if not cfg.task or e.meta.get("task") == cfg.task]


def judge_selected_pairs(cfg: LoopConfig, r: int, prompts, completions, media, store, claims=None, judge=None,
                         extra=None):
    """Pairs chosen by the selection strategy, judged by the simulated panel, a Python judge, the claim judge
    `claims`, the model judge `judge` (its report goes to `extra`) or by people (waits)."""
    from modalign.feedback.select import candidate_pairs, judge_pairs_with_panel, select_pairs
    from modalign.plugins import is_plugin

    scores = None
    owners = [e for e in prompts for _ in range(cfg.samples_per_prompt)]
    if cfg.selection == "margin" and r > 1:  # round 1 has no judgments yet: its pairs are random
        from modalign.rl.rewards import place_reward_models, reward_source_from, score_texts

        source = reward_source_from(str(round_dir(cfg, r - 1) / "reward" / "model"))
        place_reward_models(source, resolve_device(cfg.device))
        scores = score_texts(source, owners, [c.text for c in completions], media).tolist()
    if cfg.selection in ("ensemble", "top") and r > 1:
        from modalign.reward.ensemble import bootstrap_ensemble_scores

        scores = bootstrap_ensemble_scores(cfg.policy, store, owners, completions, media, cfg.ensemble_members,
                                           seed=cfg.seed + r, device=resolve_device(cfg.device))
    grouped = candidate_pairs(prompts, completions, cfg.samples_per_prompt, scores,
                              against_top=cfg.selection == "top" and scores is not None)
    strategy = "random" if cfg.selection == "all" else cfg.selection
    count = cfg.pairs_per_round or sum(1 for pairs in grouped if pairs)
    chosen = select_pairs(grouped, count, strategy, cfg.seed + r)
    if cfg.judge == SIMULATED:
        return judge_pairs_with_panel(chosen, cfg.seed + r)
    if claims is not None:
        from modalign.feedback.judges.claims import judge_pairs_with_claims

        return judge_pairs_with_claims(claims, chosen)
    if judge is not None:
        from modalign.feedback.judges.model_judge import judge_round

        feedback, _, extra["judge_report"] = judge_round(judge, prompts, completions, cfg.samples_per_prompt,
                                                         pairs=chosen, seed=cfg.seed + r)
        return feedback
    if is_plugin(cfg.judge):
        from modalign.feedback.collect import judge_pairs_with_function, python_judge

        return judge_pairs_with_function(cfg.judge, python_judge(cfg.judge), chosen)
    from modalign.feedback.queue import judgments_from_people

    return judgments_from_people(store, chosen, cfg, r)


def run_rl(cfg: LoopConfig, policy: str, reward_model: str, folder: Path, store_url: str) -> dict:
    """The round's RL run from `policy` (dpo: on every judgment in `store_url`); a killed run resumes from its
    last checkpoint."""
    from modalign.runs import resumable

    resume = resumable(folder)
    common = dict(out=str(folder), policy=policy, data=cfg.data, task=cfg.task, eval_examples=1, seed=cfg.seed,
                  max_new_tokens=cfg.max_new_tokens, precision=cfg.precision, modalities=cfg.modalities,
                  device=cfg.device)
    if cfg.method == "ppo":
        from modalign.recipes.ppo import PPOConfig, run_ppo

        return run_ppo(PPOConfig(**common, reference=cfg.policy, reward_model=reward_model, steps=cfg.rl_steps,
                                 prompts_per_step=cfg.prompts_per_step, samples_per_prompt=cfg.rl_samples_per_prompt,
                                 lr=cfg.lr, kl_coef=cfg.kl_coef, kl_budget=cfg.kl_budget, ptx_coef=cfg.ptx_coef,
                                 critic_warmup=cfg.critic_warmup, monitors=cfg.monitors),
                       resume=resume)
    if cfg.method == "dpo":
        from modalign.recipes.dpo import DPOConfig, run_dpo

        return run_dpo(DPOConfig(**common, store=store_url, lr=cfg.lr), resume=resume)
    from modalign.recipes.online import OnlineConfig, run_online

    return run_online(OnlineConfig(**common, algorithm=cfg.method, reward_model=reward_model, steps=cfg.rl_steps,
                                   prompts_per_step=cfg.prompts_per_step, samples_per_prompt=cfg.rl_samples_per_prompt,
                                   lr=cfg.lr, kl_coef=cfg.kl_coef, kl_budget=cfg.kl_budget, monitors=cfg.monitors),
                      resume=resume)


def evaluate_policy(cfg: LoopConfig, policy: str, stem: Path) -> dict:
    """Gold metrics of `policy` on the held-out split, `eval_samples` answers per prompt."""
    from modalign.eval.generation import evaluate_split
    from modalign.validate import load_checked_policy

    return evaluate_split(placed(load_checked_policy(policy), cfg.device), cfg.data, cfg.eval_split, cfg.eval_examples,
                          cfg.max_new_tokens,
                          temperature=1.0, seed=cfg.seed, samples_path=stem.with_name(stem.name + "_samples.jsonl"),
                          samples_per_example=cfg.eval_samples, modalities=cfg.modalities)


def check_loop_settings(cfg: LoopConfig, world: int = 1) -> None:
    """Fail before any work on settings no round can run with (`world`: the number of processes)."""
    from modalign.plugins import is_plugin

    for name in ("policy", "data"):
        if not getattr(cfg, name):
            raise ConfigError(f"{name} is empty: the loop needs the start policy folder and the dataset folder")
    if cfg.method not in METHODS:
        raise ConfigError(f"method {cfg.method!r}: choose one of {', '.join(METHODS)}")
    if cfg.selection not in SELECTIONS:
        raise ConfigError(f"selection {cfg.selection!r}: choose one of {', '.join(SELECTIONS)}")
    from modalign.feedback.judges.claims import is_claims

    if (cfg.judge not in (SIMULATED, "people") and not is_plugin(cfg.judge) and not is_claims(cfg.judge)
            and not cfg.judge.startswith("model:")):
        raise ConfigError(f"judge {cfg.judge!r}: choose simulated, people, py:<module or file.py>:<function>, "
                          f"claims:<model folder or self> or model:<folder or hub id>")
    if cfg.judge == "people" and world > 1:
        raise ConfigError("judge=people runs in one process: the other processes would wait for people past the "
                          "process group's timeout; launch `modalign loop` without accelerate for people")
    if cfg.judge == "people" and not cfg.annotators.strip():
        raise ConfigError("judge=people needs annotators (comma-separated accounts made with modalign add-annotator)")
    for name, least in (("rounds", 1), ("prompts_per_round", 1), ("samples_per_prompt", 2), ("eval_samples", 1)):
        if getattr(cfg, name) < least:
            raise ConfigError(f"{name}={getattr(cfg, name)}: it must be at least {least}")


def round_dir(cfg: LoopConfig, r: int) -> Path:
    return Path(cfg.out) / f"round-{r}"


def round_policy(cfg: LoopConfig, r: int) -> str:
    """The policy round r starts from: the start policy, then each round's RL result."""
    return cfg.policy if r == 1 else json.loads((round_dir(cfg, r - 1) / "rl" / "summary.json").read_text())["model"]


def cached_json(path: Path, compute, everyone: bool = False) -> dict:
    """Read a finished stage's JSON; else compute it and (for stages that do not write their own) save it.

    With many processes the main process's view decides for all whether the stage is done;
    `everyone`: every process runs `compute` (a stage that runs on many processes: reward, RL,
    a whole round), else the main process alone (sampling, judging, evaluation) while the others
    wait. Either way every process gets the main process's result, and only it writes.
    """
    from modalign.dist import processes
    from modalign.runs import write_json_atomic

    dist = processes()
    if dist.broadcast(path.is_file()):
        return json.loads(path.read_text(encoding="utf-8"))
    result = dist.broadcast(compute() if everyone or dist.is_main else None)
    if dist.is_main and not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, result)
    dist.wait()
    return result


def fresh(folder: Path) -> Path:
    """A stage folder without a summary is a killed run that cannot resume (reward): start it again."""
    import shutil

    from modalign.dist import processes

    dist = processes()
    if dist.is_main:
        shutil.rmtree(folder, ignore_errors=True)
    dist.wait()
    return folder


def print_round(row: dict, rounds: int, start: dict) -> None:
    from modalign.ui import console

    shown = ("hallucination_rate", "coverage", "vqa_accuracy")
    before = " ".join(f"{k}={start[k]:.3f}" for k in shown if k in start)
    after = " ".join(f"{k}={row['eval'][k]:.3f}" for k in shown if k in row["eval"])
    console.print(f"[bold]round {row['round']}/{rounds}[/] {row['judgments']} judgments, reward model held-out "
                  f"accuracy {row['reward_heldout_accuracy']:.3f}, KL {row['kl_to_ref'] or 0:.3f}: {after} "
                  f"(start: {before}; {row['seconds']:.0f} s)")
