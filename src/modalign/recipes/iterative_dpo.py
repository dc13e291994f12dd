"""Online (iterative) DPO, read top to bottom: every round learns from the answers of the policy it trains.

Round r: its prompts (a seeded slice of the split, disjoint from the other rounds') -> answers
sampled from the policy of round r-1 (round 1: the SFT policy) -> a judge (the simulated
annotator panel on ShapesWorld, your Python judge `py:...` or a model judge `model:...` ranking each
prompt's answers, or a reward whose best and worst distinct answer per prompt make one pair)
-> the feedback stores -> `run_dpo` from that policy on that round's pairs only -> the policy
of round r+1.

Xu et al. 2023, "Some things are more CRINGE than others: iterative preference optimization
with the pairwise cringe loss" (iterative DPO: each iteration labels fresh samples of the current
model and trains on them); Xiong et al. 2024, "Iterative Preference Learning from Human Feedback:
Bridging Theory and Practice for RLHF under KL-Constraint" (online iterative DPO, best-vs-worst
of n answers under a reward). The reference of round r is the policy the round starts from (a
rolling reference), so each round's KL constraint binds to the previous round, not to the SFT
policy that Xiong et al.'s analysis keeps.

Folder `out/`: `feedback.db` (every round's examples, candidates and judgments), `round-r/`
(`feedback.db` with that round's alone, which DPO reads; `samples.jsonl`, every sampled answer
with its score; `feedback.json`; `dpo/`, the round's DPO run), `rounds.jsonl`, `summary.json`.

Resume: rerunning the same config on the same `out` continues. A round whose
`round-r/dpo/summary.json` exists is skipped; a round killed during DPO resumes that DPO run from
its last checkpoint; a round killed while collecting feedback samples it again (seeded, so the
same answers) and adds it to `out/feedback.db` only if that store does not hold it yet. Only
`rounds` may change between runs (more rounds continue from the last one's policy).
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

from modalign.config import ConfigError, field_doc
from modalign.data.modalities import MODALITIES_HELP
from modalign.device import DEVICE_HELP, placed, resolve_device
from modalign.data.records import Completion, Example
from modalign.feedback.collect import SIMULATED
from modalign.feedback.judges.help_text import JUDGE_DISAGREEMENT_HELP, JUDGE_RANKING_HELP, JUDGE_TEMPLATE_HELP
from modalign.feedback.store_spec import STORE_HELP
from modalign.recipes.dpo import RPO_ALPHA_HELP, check_rpo_alpha

if TYPE_CHECKING:
    from modalign.feedback.store import FeedbackStore
    from modalign.recipes.dpo import DPOConfig
    from modalign.rl.rewards import RewardSource


@dataclass
class IterativeDPOConfig:
    """Online / iterative DPO: sample from the current policy, judge, DPO, repeat (`modalign iterative-dpo`)."""

    out: str = field_doc("", "Run folder; empty means runs/iterative-dpo-<time>. Rerunning on it resumes.")
    policy: str = field_doc("", "The SFT policy folder: round 1 samples from it and starts from it.")
    data: str = field_doc("", "Dataset folder with the prompts (and the held-out split evaluated each round).")
    split: str = field_doc("train", "Split the prompts come from.")
    task: str = field_doc("", "Only examples whose meta.task is this ('': all), in sampling and evaluation.")
    rounds: int = field_doc(3, "Rounds of sample -> judge -> DPO (the only field a rerun may change).")
    prompts_per_round: int = field_doc(64, "Prompts per round; rounds never share prompts (unless prompt_reuse).")
    prompt_reuse: bool = field_doc(False, "Each round draws its prompts afresh from the whole split (a seeded "
                                          "sample per round, round 1 the same as without reuse), so a prompt can "
                                          "come back in a later round with the new policy's answers: more rounds or "
                                          "prompts per round than the split holds for disjoint rounds.")
    samples_per_prompt: int = field_doc(4, "Answers sampled per prompt from the current policy.")
    judge: str = field_doc(SIMULATED, "'simulated' (the simulated annotator panel ranks the answers from "
                                      "ShapesWorld ground truth; other data is refused up front), "
                                      "py:<module or file.py>:<fn> (your judge fn(example, completions) -> scores; "
                                      "its ranking of each prompt's answers is stored, see docs/plugins.md), or a "
                                      "reward: rule:<name>, a reward-model folder or a weighted sum (a py: reward: "
                                      "1*py:...); its best and worst distinct answer per prompt become one pair; or "
                                      "claims:<model folder or self> (claim-level verification, self: the round's "
                                      "policy; every pair of distinct answers judged, docs/ai-feedback.md); or "
                                      "model:<folder or hub id>, a model judge ranking each prompt's answers "
                                      "(docs/ai-feedback.md).")
    judge_template: str = field_doc("", JUDGE_TEMPLATE_HELP)
    judge_disagreement: str = field_doc("tie", JUDGE_DISAGREEMENT_HELP)
    judge_ranking: str = field_doc("pairwise", "model judge: " + JUDGE_RANKING_HELP)
    temperature: float = field_doc(1.0, "Sampling temperature of the answers judged.")
    max_new_tokens: int = field_doc(40, "Longest answer, sampled for feedback and in evaluation.")
    loss: str = field_doc("dpo", "Preference loss of each round: dpo, ipo or hinge (see modalign.rl.objectives).")
    beta: float = field_doc(0.1, "Strength of the implicit KL constraint to the round's starting policy.")
    label_smoothing: float = field_doc(0.0, "dpo only: share of flipped labels assumed (conservative DPO).")
    rpo_alpha: float = field_doc(0.0, RPO_ALPHA_HELP)
    epochs: float = field_doc(1.0, "Passes over each round's pairs.")
    batch_size: int = field_doc(16, "Pairs per step.")
    lr: float = field_doc(5e-5, "AdamW learning rate of each round.")
    max_length: int = field_doc(128, "Longest training sequence (media tokens included).")
    checkpoint_every: int = field_doc(50, "DPO steps between checkpoints within a round (0: only at the end).")
    store: str = field_doc("", "Feedback store that collects every round's judgments ('': out/feedback.db): "
                               + STORE_HELP + ". Each round's DPO reads the round's own round-r/feedback.db.")
    eval_split: str = field_doc("test", "Held-out split evaluated after every round.")
    eval_examples: int = field_doc(0, "Held-out examples evaluated after every round (0: all).")
    seed: int = field_doc(0, "Seed of the prompt slices, sampling, the simulated raters and DPO.")
    modalities: str = field_doc("", MODALITIES_HELP)
    device: str = field_doc("auto", DEVICE_HELP)


def run_iterative_dpo(cfg: IterativeDPOConfig) -> dict:
    """Run the rounds not done yet in `cfg.out`; returns the summary (also `summary.json`)."""
    from modalign import validate
    from modalign.dist import processes
    from modalign.feedback.collect import check_judge
    from modalign.feedback.judges.model_judge import is_model_judge, load_model_judge
    from modalign.feedback.store_spec import judgments_at_start, open_store
    from modalign.recipes.dpo import run_dpo
    from modalign.runs import default_run_dir, resumable, start_rounds_folder, write_json_atomic, write_jsonl_atomic
    from modalign.ui import console

    # Many processes: the main one samples and judges each round; DPO runs on all (`docs/scale.md`).
    dist = processes()
    out = Path(cfg.out or default_run_dir("iterative-dpo"))
    cfg = dataclasses.replace(cfg, out=str(out))
    # validated before the folder exists: settings, judge, prompts, both splits' media, the policy
    check_settings(cfg)
    device = resolve_device(cfg.device)
    splits = validate.check_dataset(cfg.data, [cfg.split, cfg.eval_split], cfg.task,  # each of cfg.task
                                    modalities=cfg.modalities)
    prompts = splits[cfg.split]
    check_judge(cfg.judge, prompts)
    judge = judge_from(cfg.judge) if not is_model_judge(cfg.judge) else load_model_judge(
        cfg.judge, cfg.data, cfg.judge_template, cfg.judge_disagreement, cfg.judge_ranking, device=cfg.device)
    if judge is not None and not is_model_judge(cfg.judge):
        from modalign.rl.rewards import place_reward_models

        place_reward_models(judge, device)  # a reward-model judge scores on the device
    validate.check_dataset_media(cfg.data, splits)
    validate.check_policy(cfg.policy)
    # disjoint rounds need every round's prompts at once; with reuse each round draws from the whole split
    needed, fix = ((cfg.prompts_per_round, "prompts_per_round = {n}: lower it") if cfg.prompt_reuse else
                   (cfg.rounds * cfg.prompts_per_round,
                    "rounds x prompts_per_round = {n}: lower one of them (or set prompt_reuse)"))
    if len(prompts) < needed:
        raise ConfigError(f"{cfg.data}/{cfg.split} has {len(prompts)} prompts of task {cfg.task!r}, fewer than "
                          + fix.format(n=needed))
    all_rounds = dist.main_first(lambda: open_store(cfg.store, out / "feedback.db"))  # before the folder: a bad URL
    new_run = not (out / "config.yaml").is_file()
    start_rounds_folder(cfg, out)
    at_start = judgments_at_start(out, all_rounds, new_run) if dist.is_main else 0
    console.print(f"[bold]iterative {cfg.loss}[/] {cfg.rounds} rounds x {cfg.prompts_per_round} prompts x "
                  f"{cfg.samples_per_prompt} answers, judge {cfg.judge} -> {out}")

    rows: list[dict] = []
    for r in range(1, cfg.rounds + 1):
        folder = round_dir(out, r)
        policy = cfg.policy if r == 1 else str(round_dir(out, r - 1) / "dpo" / "model")
        if dist.broadcast((folder / "dpo" / "summary.json").is_file()):
            row = round_row(_read_json(folder / "feedback.json"), _read_json(folder / "dpo" / "summary.json"))
            console.print(f"round {r}/{cfg.rounds}: done already ({folder / 'dpo' / 'summary.json'}), skipped")
        else:
            stats = dist.broadcast(collect_round(
                cfg, r, policy, round_prompts(prompts, r, cfg.prompts_per_round, cfg.seed, cfg.prompt_reuse), judge,
                all_rounds,
                prior_judgments=at_start + sum(row["judgments"] for row in rows)) if dist.is_main else None)
            dpo_dir = folder / "dpo"
            # killed during DPO: resume it
            row = round_row(stats, dist.broadcast(run_dpo(round_dpo_config(cfg, policy, folder),
                                                          resume=resumable(dpo_dir))))
            print_round(row, cfg.rounds)
        rows.append(row)
        if dist.is_main:
            write_jsonl_atomic(out / "rounds.jsonl", rows)

    summary = {"stage": f"iterative_{cfg.loss}", "rounds": rows, "model": rows[-1]["model"], "policy": cfg.policy,
               "judge": cfg.judge, "feedback": all_rounds.display_url,
               "judgments": sum(row["judgments"] for row in rows), "eval": rows[-1]["eval"],
               "wall_seconds": round(sum(row["seconds"] for row in rows), 1)}
    if dist.is_main:
        write_json_atomic(out / "summary.json", summary)
    console.print(f"final policy: {summary['model']}")
    return summary


def check_settings(cfg: IterativeDPOConfig) -> None:
    """Fail before any work on settings no round can run with."""
    for name in ("policy", "data"):
        if not getattr(cfg, name):
            raise ConfigError(f"{name} is empty: iterative DPO needs the SFT policy folder and the dataset folder")
    for name, least in (("rounds", 1), ("prompts_per_round", 1), ("samples_per_prompt", 2)):
        if getattr(cfg, name) < least:
            raise ConfigError(f"{name}={getattr(cfg, name)}: it must be at least {least}")
    check_rpo_alpha(cfg.rpo_alpha)


def judge_from(spec: str) -> "RewardSource | Callable | None":
    """None for the simulated panel, a `py:` judge's function, else the reward source of `spec`;
    a bad spec is a ConfigError naming it."""
    from modalign.feedback.collect import python_judge
    from modalign.plugins import PluginError, is_plugin
    from modalign.rl.rewards import reward_source_from

    from modalign.feedback.judges.claims import ClaimJudgeSpec, is_claims

    if spec == SIMULATED:
        return None
    if is_claims(spec):
        return ClaimJudgeSpec.parse(spec)  # the judge is built each round (claims:self judges with the round's policy)
    if is_plugin(spec):
        try:
            return python_judge(spec)
        except PluginError as err:
            raise PluginError(f"judge {err}") from None
    try:
        return reward_source_from(spec)
    except (ValueError, OSError) as err:
        raise ConfigError(f"judge {spec!r}: {err} (use '{SIMULATED}', py:<file.py>:<function>, rule:<name>, "
                          f"a reward-model folder or a weighted sum)") from None


def round_dir(out: Path, r: int) -> Path:
    return out / f"round-{r}"


def round_prompts(prompts: list[Example], r: int, count: int, seed: int, reuse: bool = False) -> list[Example]:
    """Round r's prompts: slice r of one seeded permutation, so rounds never share a prompt; with `reuse`,
    the first slice of a permutation of its own per round (round 1's is the same either way), so rounds
    draw independently from the whole split and may share prompts."""
    from modalign.recipes.ppo import prompts_at

    if reuse:
        return prompts_at(prompts, 0, count, seed + 1000 * (r - 1))
    return prompts_at(prompts, r - 1, count, seed)


def collect_round(cfg: IterativeDPOConfig, r: int, policy_path: str, prompts: list[Example],
                  judge: "RewardSource | Callable | None", all_rounds: "FeedbackStore", prior_judgments: int) -> dict:
    """Sample, judge, store in `round-r/feedback.db` and `out/feedback.db`; returns (and saves) the round's stats.

    `prior_judgments`: what `out/feedback.db` holds from the earlier rounds. Judgments are added
    all or nothing, so holding that plus this round's means a killed run stored them already.
    """
    from modalign.eval.generation import generate_answers
    from modalign.feedback.collect import judge_with_function, judge_with_panel, judge_with_reward, write_feedback
    from modalign.feedback.judges.cache import ClaimCache
    from modalign.feedback.judges.claims import ClaimJudgeSpec, claim_judge, judge_with_claims
    from modalign.feedback.judges.model_judge import is_model_judge, judge_round
    from modalign.feedback.store import FeedbackStore
    from modalign.models.inputs import MediaStore
    from modalign.plugins import is_plugin
    from modalign.runs import write_json_atomic
    from modalign.validate import load_checked_policy

    folder = round_dir(Path(cfg.out), r)
    if (folder / "feedback.json").is_file():
        return _read_json(folder / "feedback.json")
    started = time.time()
    folder.mkdir(parents=True, exist_ok=True)
    for suffix in ("", "-wal", "-shm"):  # a killed run's partial store: build it again
        Path(f"{folder / 'feedback.db'}{suffix}").unlink(missing_ok=True)
    media, k = MediaStore(cfg.data), cfg.samples_per_prompt
    sampler = placed(load_checked_policy(policy_path), cfg.device)
    completions = generate_answers(sampler, media, prompts, max_new_tokens=cfg.max_new_tokens,
                                   temperature=cfg.temperature, seed=cfg.seed + r, samples_per_example=k)
    judge_report = None
    if judge is None:
        feedback, scores = judge_with_panel(prompts, completions, k, cfg.seed + r)
    elif isinstance(judge, ClaimJudgeSpec):
        claims = claim_judge(cfg.judge, prompts, media, sampler, policy_path,
                             ClaimCache(Path(cfg.out) / "claims-cache.jsonl"), start=cfg.policy)
        feedback, scores = judge_with_claims(claims, prompts, completions, k)
    elif is_plugin(cfg.judge):
        feedback, scores = judge_with_function(cfg.judge, judge, prompts, completions, k)
    elif is_model_judge(cfg.judge):
        feedback, scores, judge_report = judge_round(judge, prompts, completions, k, seed=cfg.seed + r)
    else:
        feedback, scores = judge_with_reward(judge, cfg.judge, prompts, completions, k, media)
    write_scored_samples(folder / "samples.jsonl", completions, scores)
    if not feedback.examples or (feedback.ties and all(feedback.ties)):  # a tie teaches DPO nothing
        raise ConfigError(f"round {r}: judge {cfg.judge!r} decided no pair among {len(prompts)} prompts x {k} "
                          f"answers (all identical or tied, see {folder / 'samples.jsonl'}); raise "
                          f"samples_per_prompt or prompts_per_round")
    write_feedback(FeedbackStore.sqlite(folder / "feedback.db"), feedback, cfg.data)
    held = all_rounds.count_judgments()
    if held == prior_judgments:
        write_feedback(all_rounds, feedback, cfg.data)
    elif held != prior_judgments + feedback.judgments:
        raise ValueError(f"{all_rounds.display_url} holds {held} judgments, expected {prior_judgments} from rounds before "
                         f"{r} (or {prior_judgments + feedback.judgments} with round {r}'s): it was changed outside "
                         f"this run; use another out")
    stats = {"round": r, "policy": policy_path, "prompts": len(prompts), "judged_prompts": len(feedback.examples),
             "candidates": sum(map(len, feedback.groups)), "judgments": feedback.judgments,
             "sample_score_mean": sum(scores) / len(scores), "score": "gold" if judge is None else cfg.judge,
             "seconds": round(time.time() - started, 1), **({"judge_report": judge_report} if judge_report else {})}
    write_json_atomic(folder / "feedback.json", stats)
    return stats


def round_dpo_config(cfg: IterativeDPOConfig, policy_path: str, folder: Path) -> "DPOConfig":
    """DPO from the round's starting policy (its reference too) on the round's store alone."""
    from modalign.recipes.dpo import DPOConfig

    return DPOConfig(out=str(folder / "dpo"), policy=policy_path, store=str(folder / "feedback.db"), loss=cfg.loss,
                     beta=cfg.beta, label_smoothing=cfg.label_smoothing, rpo_alpha=cfg.rpo_alpha,
                     epochs=cfg.epochs,
                     batch_size=cfg.batch_size, lr=cfg.lr, max_length=cfg.max_length,
                     checkpoint_every=cfg.checkpoint_every, data=cfg.data, eval_split=cfg.eval_split,
                     eval_examples=cfg.eval_examples, task=cfg.task, max_new_tokens=cfg.max_new_tokens,
                     seed=cfg.seed, modalities=cfg.modalities, device=cfg.device)


def round_row(stats: dict, dpo: dict) -> dict:
    """One line of rounds.jsonl from the round's feedback stats and its DPO summary."""
    return {"round": stats["round"], "policy": stats["policy"], "prompts": stats["prompts"],
            "judgments": stats["judgments"], "pairs": dpo["pairs"], "sample_score_mean": stats["sample_score_mean"],
            "score": stats["score"], "dpo_steps": dpo["steps"], "model": dpo["model"], "eval": dpo["eval"],
            "seconds": round(stats["seconds"] + dpo["wall_seconds"], 1),
            **({"judge_report": stats["judge_report"]} if "judge_report" in stats else {})}


def print_round(row: dict, rounds: int) -> None:
    from modalign.ui import console

    shown = ("hallucination_rate", "coverage", "vqa_accuracy", "audio_accuracy")
    metrics = " ".join(f"{k}={row['eval'][k]:.3f}" for k in shown if k in row["eval"])
    console.print(f"[bold]round {row['round']}/{rounds}[/] {row['pairs']} pairs from {row['prompts']} prompts, "
                  f"sampled {row['score']} score {row['sample_score_mean']:.3f} -> eval {metrics or '-'} "
                  f"({row['seconds']:.0f} s)")


def write_scored_samples(path: Path, completions: Sequence[Completion], scores: Sequence[float]) -> None:
    """Every sampled answer of the round with the judge's (or the gold) score, one JSON line each."""
    from modalign.runs import write_jsonl_atomic

    write_jsonl_atomic(path, [{"example_id": c.example_id, "text": c.text, "score": s}
                              for c, s in zip(completions, scores)])


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))
