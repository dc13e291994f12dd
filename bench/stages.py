"""Issue 7's modalign-only measurements, on bench/trl_compare.py's fixtures and GRPO settings.

    .venv/bin/python bench/stages.py [--reps 3] [--sizes small,compute] [--threads 2] [--work DIR]

Per model size (the tiny Qwen2-VL checkpoints of bench/trl_compare_setup.py), each run in its own
process (`--job`, so that peak RSS is the run's own):

    ppo      PPO with a critic on the GRPO settings of trl_compare (2 prompts x 4 answers, the same
             answer length, 10 steps, lr 2e-5, KL 0.04, clip 0.2, rule:shapes_gold), one epoch of one
             minibatch per rollout, as GRPO does: samples/s, generated tokens/s, peak RSS
    grpo     trl_compare's modalign GRPO run again, here for its stage shares
    cache    rollout tokens/s with the media and prompt cache (each prompt's image encoded once and
             the prompt run once for its 4 answers: `rl.rollout.sample_answers`) and without it (every
             answer's prompt processed, encoded and run on its own, as generate does with pixel values)

and, for ppo and grpo, the share of each stage in a step (wall clock, summed over the steps after
the first): sampling, old-policy pass, reference pass, critic pass (PPO's old values), reward,
update (forward, backward and optimiser step), other (prompt batches, decoding, logging).
Writes bench/results/stages.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from trl_compare import GRPO, NEW_TOKENS  # noqa: E402
from trl_compare_setup import ROOT, build_fixtures, write_results  # noqa: E402

RESULTS = ROOT / "bench" / "results"
STAGES = ("sampling", "old_policy", "reference", "critic", "reward", "update", "other")
CACHE_REPEATS = 5  # timed rollouts per way, after one warm-up


# ---- stage clock (in the child process) -------------------------------------------------------------


class StageClock:
    """Exclusive wall time per stage: a wrapped call's time minus the wrapped calls inside it."""

    def __init__(self) -> None:
        self.seconds = {stage: 0.0 for stage in STAGES}
        self._stack: list[list] = []  # [stage, time spent in nested wrapped calls]

    def wrap(self, fn, stage_of):
        """`fn` timed under the stage `stage_of(*args)` names (None: not timed)."""

        def timed(*args, **kwargs):
            stage = stage_of(*args)
            if stage is None:
                return fn(*args, **kwargs)
            self._stack.append([stage, 0.0])
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - started
                _, nested = self._stack.pop()
                self.seconds[stage] += elapsed - nested
                if self._stack:
                    self._stack[-1][1] += elapsed

        return timed


def install_clock(clock: StageClock, algorithm: str) -> None:
    """Wrap the recipe's stage functions (looked up by module attribute when the recipe runs)."""
    import torch

    from modalign.recipes import online, ppo
    from modalign.rl import ppo as rl_ppo
    from modalign.rl import rollout

    def scoring(model, *args):  # response_logprobs: with grad it is part of the update
        if torch.is_grad_enabled():
            return None
        trainable = any(p.requires_grad for p in getattr(model, "parameters", lambda: [])())
        return "old_policy" if trainable else "reference"

    rollout.sample_answers = clock.wrap(rollout.sample_answers, lambda *a: "sampling")
    rollout.response_logprobs = clock.wrap(rollout.response_logprobs, scoring)
    rl_ppo.critic_values = clock.wrap(rl_ppo.critic_values, lambda *a: None if torch.is_grad_enabled() else "critic")
    if algorithm == "ppo":
        ppo.ppo_update = clock.wrap(ppo.ppo_update, lambda *a: "update")
    else:
        online.update_policy = clock.wrap(online.update_policy, lambda *a: "update")


class ClockedReward:
    """A reward source whose calls count as the reward stage; its other attributes are the source's."""

    def __init__(self, source, clock: StageClock) -> None:
        self._source, self._call = source, clock.wrap(source, lambda *args: "reward")

    def __call__(self, *args, **kwargs):
        return self._call(*args, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self._source, name)


def clocked_reward(clock: StageClock) -> ClockedReward:
    from modalign.rl.rewards import reward_source_from

    return ClockedReward(reward_source_from("rule:shapes_gold"), clock)


def step_clock() -> tuple[list[float], list[dict]]:
    """Wall time at each step's end (the recipe's `RunDir.log`), and the stage seconds at that time."""
    from modalign import runs

    ends: list[float] = []
    snapshots: list[dict] = []
    log = runs.RunDir.log

    def timed_log(self, step, metrics):
        ends.append(time.time())
        snapshots.append(dict(CLOCK.seconds))
        log(self, step, metrics)

    runs.RunDir.log = timed_log
    return ends, snapshots


CLOCK = StageClock()


def rl_job(spec: dict) -> dict:
    """GRPO (run_online) or PPO with a critic (run_ppo) on trl_compare's GRPO settings, stages clocked."""
    import torch

    torch.set_num_threads(spec["threads"])
    from modalign.recipes.online import OnlineConfig, run_online
    from modalign.recipes.ppo import PPOConfig, run_ppo

    from trl_compare_jobs import generated_tokens, modalign_rl_fields

    algorithm = spec["algorithm"]
    install_clock(CLOCK, algorithm)
    ends, snapshots = step_clock()
    common = modalign_rl_fields(spec)
    t0 = time.time()
    if algorithm == "ppo":
        run_ppo(PPOConfig(ppo_epochs=1, **common), reward_source=clocked_reward(CLOCK))
    else:
        run_online(OnlineConfig(algorithm="grpo", **common), reward_source=clocked_reward(CLOCK))
    return {"t0": t0, "step_ends": ends, "stage_snapshots": snapshots,
            "generated_tokens": generated_tokens(spec, algorithm)}


def cache_job(spec: dict) -> dict:
    """Rollout tokens/s with and without the media-feature cache, alternating, same seeds."""
    import torch

    torch.set_num_threads(spec["threads"])
    from modalign.data.dataset import read_examples
    from modalign.models.inputs import MediaStore, prompt_batch
    from modalign.models.policy import load_policy
    from modalign.rl.rollout import answer_mask, sample_answers

    s = spec["settings"]
    policy = load_policy(spec["model"])
    model, processor, tokenizer = policy.model.eval(), policy.processor, policy.processor.tokenizer
    media = MediaStore(spec["data"])
    captions = [e for e in read_examples(spec["data"], "train") if e.meta.get("task") == "caption"]
    group = s["samples"]

    def cached(examples):  # modalign's rollout: each image encoded once and each prompt run once for its answers
        samples = sample_answers(model, prompt_batch(processor, media, examples), group, s["new_tokens"], 1.0,
                                 tokenizer.eos_token_id, tokenizer.pad_token_id)
        return int(samples.response_mask.sum())

    @torch.no_grad()
    def uncached(examples):  # every answer's prompt processed and its image encoded on its own
        batch = prompt_batch(processor, media, [e for e in examples for _ in range(group)])
        sequences = model.generate(**batch, max_new_tokens=s["new_tokens"], do_sample=True, temperature=1.0,
                                   top_k=None, top_p=None, eos_token_id=tokenizer.eos_token_id,
                                   pad_token_id=tokenizer.pad_token_id, use_cache=True)
        return int(answer_mask(sequences[:, batch["input_ids"].shape[1]:], tokenizer.eos_token_id).sum())

    timings: dict[str, list[tuple[float, int]]] = {"cached": [], "uncached": []}
    for repeat in range(CACHE_REPEATS + 1):
        examples = captions[repeat * s["prompts"] : (repeat + 1) * s["prompts"]]
        for name, fn in (("cached", cached), ("uncached", uncached))[:: 1 if repeat % 2 else -1]:
            torch.manual_seed(repeat)
            started = time.perf_counter()
            tokens = fn(examples)
            if repeat:  # the first round warms up
                timings[name].append((time.perf_counter() - started, tokens))
    return {"timings": timings}


def child_main(spec: dict) -> None:
    from trl_compare_jobs import import_all, peak_rss_mib

    import_all(("torch", "transformers"))
    result = (cache_job if spec["job"] == "cache" else rl_job)(spec)
    print(json.dumps(dict(result, peak_rss_mib=peak_rss_mib(), finished=time.time())))


# ---- parent -----------------------------------------------------------------------------------------


def run_child(spec: dict, threads: int, logs: Path, name: str) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false",
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TQDM_DISABLE="1", PYTHONPATH=str(ROOT / "src"))
    done = subprocess.run([sys.executable, __file__, "--job", json.dumps(dict(spec, threads=threads))], env=env,
                          capture_output=True, text=True, cwd=ROOT)
    logs.mkdir(parents=True, exist_ok=True)
    (logs / f"{name}.log").write_text(done.stdout + "\n--- stderr ---\n" + done.stderr)
    if done.returncode:
        raise SystemExit(f"{name} failed (log {logs / name}.log):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def rl_metrics(result: dict, settings: dict) -> dict:
    """Throughput over the run and the steady state, and the stage shares of the steps after the first."""
    ends, t0, answers = result["step_ends"], result["t0"], settings["prompts"] * settings["samples"]
    run_s, tokens = ends[-1] - t0, result["generated_tokens"]
    step_s = statistics.median(b - a for a, b in zip(ends, ends[1:]))
    first, last = result["stage_snapshots"][0], result["stage_snapshots"][-1]
    stages = {k: last[k] - first[k] for k in STAGES if k != "other"}
    stages["other"] = max(0.0, (ends[-1] - ends[0]) - sum(stages.values()))
    total = sum(stages.values())
    return {"samples_per_s": len(ends) * answers / run_s, "steady_samples_per_s": answers / step_s,
            "tokens_per_s": sum(tokens) / run_s, "mean_answer_tokens": sum(tokens) / (len(ends) * answers),
            "peak_rss_mib": result["peak_rss_mib"], "stage_share": {k: v / total for k, v in stages.items()}}


def cache_metrics(result: dict) -> dict:
    out = {}
    for name, rows in result["timings"].items():
        out[f"{name}_tokens_per_s"] = sum(t for _, t in rows) / sum(s for s, _ in rows)
    out["cache_speedup"] = out["cached_tokens_per_s"] / out["uncached_tokens_per_s"]
    return out


def median_of(rows: list[dict]) -> dict:
    out = {}
    for key, value in rows[0].items():
        out[key] = median_of([r[key] for r in rows]) if isinstance(value, dict) else statistics.median(
            r[key] for r in rows)
    return out


def measure(sizes: list[str], reps: int, threads: int, work: Path) -> dict:
    fixtures = build_fixtures(work, sizes)
    logs, summary = work / "logs", {}
    for size in sizes:
        settings = dict(GRPO, new_tokens=NEW_TOKENS[size])
        spec = {"model": str(fixtures.models[size]), "data": str(fixtures.data), "settings": settings}
        cells: dict[str, list[dict]] = {"ppo": [], "grpo": [], "cache": []}
        for rep in range(reps):
            for job in ("ppo", "grpo"):
                out = work / "runs" / f"{size}-{job}-{rep}"
                result = run_child(dict(spec, job="rl", algorithm=job, out=str(out)), threads, logs,
                                   f"{size}-{job}-{rep}")
                shutil.rmtree(out, ignore_errors=True)
                cells[job].append(rl_metrics(result, settings))
            cache = run_child(dict(spec, job="cache"), threads, logs, f"{size}-cache-{rep}")
            cells["cache"].append(cache_metrics(cache))
            print(f"{size} rep {rep}: " + ", ".join(f"{k} {v[-1].get('samples_per_s', v[-1].get('cache_speedup')):.2f}"
                                                    for k, v in cells.items()), flush=True)
        summary[size] = {job: median_of(rows) for job, rows in cells.items()}
    return summary


def markdown(report: dict) -> str:
    lines = ["# modalign stages (bench/stages.py)", "",
             f"{report['threads']} torch threads; medians of {report['reps']} run(s) per size, each in its own "
             "process. "
             "GRPO settings of bench/trl_compare.py (2 prompts x 4 answers, 10 steps); PPO with a critic on the same "
             "settings, one epoch of one minibatch per rollout.", "",
             "| size | run | samples/s (run) | samples/s (steady) | generated tokens/s | mean answer tokens "
             "| peak RSS MiB |",
             "|---|---|---|---|---|---|---|"]
    for size, cell in report["summary"].items():
        for job in ("ppo", "grpo"):
            m = cell[job]
            lines.append(f"| {size} | {job} | {m['samples_per_s']:.2f} | {m['steady_samples_per_s']:.2f} | "
                         f"{m['tokens_per_s']:.1f} | {m['mean_answer_tokens']:.1f} | {m['peak_rss_mib']:.0f} |")
    lines += ["", "Share of each stage in a step (steps 2..10, wall clock):", "",
              "| size | run | " + " | ".join(STAGES) + " |", "|---|---|" + "---|" * len(STAGES)]
    for size, cell in report["summary"].items():
        for job in ("ppo", "grpo"):
            share = cell[job]["stage_share"]
            lines.append(f"| {size} | {job} | " + " | ".join(f"{100 * share[k]:.1f} %" for k in STAGES) + " |")
    lines += ["", "Rollout (prompt batch, media encoding, sampling) with and without the media and prompt cache:", "",
              "| size | tokens/s with cache | tokens/s without | speed-up |", "|---|---|---|---|"]
    for size, cell in report["summary"].items():
        c = cell["cache"]
        lines.append(f"| {size} | {c['cached_tokens_per_s']:.1f} | {c['uncached_tokens_per_s']:.1f} | "
                     f"{c['cache_speedup']:.2f} |")
    lines += ["", "Notes:", "- Stages: sampling = `sample_answers` (media encoding and generate); old_policy / "
              "reference = no-grad `response_logprobs` of the policy / the frozen reference (GRPO with one epoch of "
              "one "
              "minibatch takes the old log-probs from its training forward, so it has none); critic = PPO's no-grad "
              "values; reward = the rule reward; update = the rest of `update_policy` / `ppo_update`; other = the rest "
              "of the step.",
              "- With the cache (`rl.rollout.sample_answers`) each prompt's image is encoded once and the prompt runs "
              "through the decoder once for its 4 answers, which continue from its KV cache (`models.prompt_cache`). "
              "Without it every answer's prompt goes through the processor, the vision tower and the decoder on its "
              "own. The vision towers here are small (0.16 M and 0.8 M parameters over 64 patches per image)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--job", default="", help=argparse.SUPPRESS)  # child mode: one measurement
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--sizes", default="small,compute")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", default="", help="folder for fixtures and logs (default: a temp folder)")
    parser.add_argument("--out", default=str(RESULTS / "stages"), help="writes OUT.json and OUT.md")
    args = parser.parse_args()
    if args.job:
        child_main(json.loads(args.job))
        return
    started, work = time.time(), Path(args.work or tempfile.mkdtemp(prefix="stages-"))
    summary = measure([s for s in args.sizes.split(",") if s], args.reps, args.threads, work)
    report = {"reps": args.reps, "threads": args.threads, "settings": dict(GRPO, new_tokens=NEW_TOKENS),
              "summary": summary, "wall_s": time.time() - started}
    write_results(Path(args.out), report, markdown, work / "logs")


if __name__ == "__main__":
    main()
