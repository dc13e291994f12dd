"""One timed job of bench/trl_compare.py, run in its own process (so that its peak RSS is its own).

    .venv/bin/python bench/trl_compare_jobs.py '<spec as JSON>'

Prints one JSON line with wall-clock times (time.time(), comparable with the parent's clock),
per-step end times, generated tokens and the peak RSS. The jobs:

    modalign_dpo / trl_dpo     DPO on the preference pairs (modalign's `run_dpo`, TRL's `DPOTrainer`)
    modalign_grpo / trl_grpo   GRPO with the ShapesWorld gold rule (modalign's `run_online`, TRL's `GRPOTrainer`)
    import_modalign / import_trl   start-up: import the modules a run of that framework loads
    import_base                torch + transformers alone (what both frameworks import anyway)
    matmul                     this machine's fp32 (or bf16) matmul throughput (the MFU denominator)

Each training job imports its framework first (the modules listed below, the same set the import
job times), then starts its clock `t0`; model loading, data preparation, reference log-probs and
the steps all fall inside the clock.
"""

from __future__ import annotations

import importlib
import json
import resource
import sys
import time
from pathlib import Path
from typing import Any, Callable

# What a modalign DPO / GRPO run imports, most of it lazily inside the recipe (modalign keeps `import
# modalign` free of torch); timed together as modalign's start-up. TensorBoard: every run logs to it.
MODALIGN_MODULES = (
    "torch", "transformers", "torch.utils.tensorboard",
    "modalign.recipes.dpo", "modalign.recipes.online", "modalign.recipes.ppo", "modalign.recipes.reward",
    "modalign.recipes.sft", "modalign.models.policy", "modalign.models.hf", "modalign.models.inputs",
    "modalign.reward.train", "modalign.reward.model", "modalign.rl.objectives", "modalign.rl.rewards",
    "modalign.rl.rollout", "modalign.rl.ppo", "modalign.rl.advantages", "modalign.runs", "modalign.ui",
    "modalign.eval.generation", "modalign.feedback.trl_import", "modalign.feedback.simulated",
)
# What a TRL DPO / GRPO script imports: `from trl import DPOTrainer, GRPOTrainer` (+ `datasets` for the data).
TRL_MODULES = ("torch", "transformers", "datasets", "trl", "trl.trainer.dpo_trainer", "trl.trainer.grpo_trainer")
# What both share: the framework's own start-up is its import time minus this.
BASE_MODULES = ("torch", "transformers")


def import_all(modules: tuple[str, ...]) -> float:
    """Import `modules` in order; seconds taken."""
    started = time.perf_counter()
    for name in modules:
        importlib.import_module(name)
    return time.perf_counter() - started


def set_threads(spec: dict) -> None:
    """torch's intra-op threads for this job (the parent also sets OMP_NUM_THREADS)."""
    import torch

    torch.set_num_threads(spec["threads"])


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far, from /proc/self/status (VmHWM, KiB).

    Not `getrusage(RUSAGE_SELF).ru_maxrss`: Linux carries the forking parent's RSS across exec into it,
    so a child of a large parent would report at least the parent's size.
    """
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # no /proc (KiB as on Linux)


# ---- modalign ---------------------------------------------------------------------------------------


def clock_modalign_steps() -> list[float]:
    """Record the wall time at which each recipe step ends (its `RunDir.log` call, right after the optimiser step)."""
    from modalign import runs

    ends: list[float] = []
    log = runs.RunDir.log

    def timed_log(self, step: int, metrics) -> None:
        ends.append(time.time())
        log(self, step, metrics)

    runs.RunDir.log = timed_log
    return ends


def clock_sampling() -> list[tuple[float, float]]:
    """Record the wall-clock interval of every `transformers` generate call (both frameworks sample through
    `GenerationMixin.generate`: modalign from `HFPolicyModel.generate`, TRL from `GRPOTrainer`)."""
    from transformers import GenerationMixin

    intervals: list[tuple[float, float]] = []
    generate = GenerationMixin.generate

    def timed_generate(self, *args, **kwargs):
        started = time.time()
        try:
            return generate(self, *args, **kwargs)
        finally:
            intervals.append((started, time.time()))

    GenerationMixin.generate = timed_generate
    return intervals


def modalign_dpo(spec: dict) -> dict:
    """modalign's DPO recipe on the TRL-format pairs file (imported into a feedback store by the recipe)."""
    import_all(MODALIGN_MODULES)
    set_threads(spec)
    from modalign.recipes.dpo import DPOConfig, run_dpo

    s = spec["settings"]
    ends = clock_modalign_steps()
    t0 = time.time()
    pairs = sum(1 for _ in open(spec["pairs"], encoding="utf-8"))
    run_dpo(DPOConfig(out=spec["out"], policy=spec["model"], store=spec["pairs"], beta=s["beta"], lr=s["lr"],
                      batch_size=s["batch_size"], max_length=s["max_length"],
                      epochs=(s["steps"] - 0.5) * s["batch_size"] / pairs,  # ceil(epochs * pairs / batch) = steps
                      checkpoint_every=0, data="", seed=s["seed"], precision=s["precision"]))
    return {"t0": t0, "step_ends": ends}


def modalign_rl_fields(spec: dict) -> dict:
    """The fields of a modalign RL config (GRPO's, PPO's) from a job's GRPO settings: `rule:shapes_gold`
    on the caption prompts, one minibatch per rollout, no checkpoints, one evaluation example."""
    s = spec["settings"]
    return dict(out=spec["out"], policy=spec["model"], reward_model="rule:shapes_gold", data=spec["data"],
                task="caption", steps=s["steps"], prompts_per_step=s["prompts"], samples_per_prompt=s["samples"],
                max_new_tokens=s["new_tokens"], lr=s["lr"], kl_coef=s["beta"], clip=s["clip"],
                minibatch_size=s["prompts"] * s["samples"], checkpoint_every=0, eval_examples=1, seed=s["seed"])


def generated_tokens(spec: dict, algorithm: str) -> list[float]:
    """Tokens sampled in each logged step of a modalign RL run (mean answer length x answers)."""
    s, key = spec["settings"], f"{algorithm}/answer_length"
    logged = [json.loads(line) for line in (Path(spec["out"]) / "metrics.jsonl").read_text().splitlines()]
    return [row[key] * s["prompts"] * s["samples"] for row in logged if key in row]


def modalign_grpo(spec: dict) -> dict:
    """modalign's GRPO recipe with the `rule:shapes_gold` reward on the caption prompts."""
    import_all(MODALIGN_MODULES)
    set_threads(spec)
    from modalign.recipes.online import OnlineConfig, run_online

    ends, sampling = clock_modalign_steps(), clock_sampling()
    t0 = time.time()
    run_online(OnlineConfig(algorithm="grpo", precision=spec["settings"]["precision"], **modalign_rl_fields(spec)))
    return {"t0": t0, "step_ends": ends, "generated_tokens": generated_tokens(spec, "grpo"), "sampling": sampling}


# ---- TRL --------------------------------------------------------------------------------------------


def load_processor(folder: str):
    """The checkpoint's Qwen2-VL processor without its video half: transformers builds the Qwen-VL video
    processor on torchvision only, which this venv does not have (TRL's `vlm` extra would install it)."""
    from transformers import Qwen2VLProcessor

    class Qwen2VLProcessorImagesOnly(Qwen2VLProcessor):
        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs) -> None:
            super().__init__(image_processor=image_processor, tokenizer=tokenizer, video_processor=None,
                             chat_template=chat_template, **kwargs)

    return Qwen2VLProcessorImagesOnly.from_pretrained(folder)


def step_clock_callback(ends: list[float]):
    """A TrainerCallback appending the wall time at each optimiser step's end."""
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            ends.append(time.time())

    return StepClock()


def common_trl_args(spec: dict) -> dict:
    """TrainingArguments shared by both TRL jobs: CPU, the run's precision, no recomputation, no eval, no saving,
    no reporting.

    TRL defaults to bf16 and gradient checkpointing; bf16 follows the run's precision (modalign's
    `precision`: fp32, or bf16 autocast as TRL's `bf16=True`) and checkpointing is off, so that both
    frameworks do the same arithmetic with no recomputation. Constant LR and AdamW weight decay 0.01 as modalign.
    """
    s = spec["settings"]
    return dict(output_dir=spec["out"], max_steps=s["steps"], learning_rate=s["lr"], beta=s["beta"], seed=s["seed"],
                use_cpu=True, bf16=s["precision"] == "bf16", gradient_checkpointing=False, report_to="none", save_strategy="no",
                eval_strategy="no", logging_steps=1, disable_tqdm=True, lr_scheduler_type="constant",
                weight_decay=0.01, dataloader_num_workers=0)


def read_jsonl(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def trl_dpo(spec: dict) -> dict:
    """TRL's DPOTrainer on the same pairs file, images through the `datasets` Image feature."""
    import_all(TRL_MODULES)
    set_threads(spec)
    import datasets
    from trl import DPOConfig, DPOTrainer

    s = spec["settings"]
    ends: list[float] = []
    t0 = time.time()
    dataset = datasets.Dataset.from_list(read_jsonl(spec["pairs"]))
    dataset = dataset.cast_column("images", datasets.List(datasets.Image()))
    args = DPOConfig(per_device_train_batch_size=s["batch_size"], max_length=s["max_length"], **common_trl_args(spec))
    trainer = DPOTrainer(model=spec["model"], args=args, train_dataset=dataset,
                         processing_class=load_processor(spec["model"]), callbacks=[step_clock_callback(ends)])
    trainer.train()
    return {"t0": t0, "step_ends": ends}


def shapes_gold_reward(eos_ids: list[int]) -> Callable:
    """modalign's `rule:shapes_gold` as a TRL reward function, with modalign's -1 for answers that never end.

    Uses modalign's ShapesWorld scorer (pure Python) so that both frameworks optimise the same reward.
    """
    from modalign.data.shapes.scorers import caption_facts, parse_caption
    from modalign.data.shapes.world import Scene

    def shapes_gold(completions, scene, completion_ids, **kwargs) -> list[float]:
        scores = []
        for completion, scene_json, ids in zip(completions, scene, completion_ids):
            if not ids or ids[-1] not in eos_ids:
                scores.append(-1.0)  # modalign's `unfinished_penalty`
                continue
            facts = caption_facts(Scene.from_dict(json.loads(scene_json)), parse_caption(completion[0]["content"]))
            scores.append((facts["covered"] - 2 * facts["hallucinated"]) / facts["true_facts"])
        return scores

    return shapes_gold


def trl_grpo(spec: dict) -> dict:
    """TRL's GRPOTrainer: same prompts, group size, answer length, KL weight, clip and sequence-mean loss."""
    import_all(TRL_MODULES)
    set_threads(spec)
    import datasets
    from trl import GRPOConfig, GRPOTrainer

    s = spec["settings"]
    ends: list[float] = []
    sampling = clock_sampling()
    t0 = time.time()
    dataset = datasets.Dataset.from_list(read_jsonl(spec["prompts"])).cast_column("image", datasets.Image())
    processor = load_processor(spec["model"])
    args = GRPOConfig(per_device_train_batch_size=s["prompts"] * s["samples"], num_generations=s["samples"],
                      max_completion_length=s["new_tokens"], epsilon=s["clip"], loss_type="grpo",
                      scale_rewards="group", temperature=1.0, **common_trl_args(spec))
    reward = shapes_gold_reward([processor.tokenizer.eos_token_id])
    trainer = GRPOTrainer(model=spec["model"], reward_funcs=reward, args=args, train_dataset=dataset,
                          processing_class=processor, callbacks=[step_clock_callback(ends)])
    trainer.train()
    answers = s["prompts"] * s["samples"]
    lengths = [row["completions/mean_length"] for row in trainer.state.log_history if "completions/mean_length" in row]
    return {"t0": t0, "step_ends": ends, "generated_tokens": [length * answers for length in lengths],
            "sampling": sampling}


# ---- start-up and matmul throughput -----------------------------------------------------------------


def import_modalign(spec: dict) -> dict:
    return {"import_s": import_all(MODALIGN_MODULES)}


def import_trl(spec: dict) -> dict:
    return {"import_s": import_all(TRL_MODULES)}


def import_base(spec: dict) -> dict:
    return {"import_s": import_all(BASE_MODULES)}


def matmul(spec: dict) -> dict:
    """Best and median FLOP/s of an n x n matmul (2 n^3 FLOPs; fp32, or `dtype`) over `repeats` runs after warm-up."""
    import torch

    set_threads(spec)
    n, repeats = spec.get("n", 2048), spec.get("repeats", 10)
    dtype = getattr(torch, spec.get("dtype", "float32"))
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(3):
        a @ b
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        a @ b
        seconds.append(time.perf_counter() - started)
    seconds.sort()
    return {"n": n, "best_flops": 2 * n**3 / seconds[0], "median_flops": 2 * n**3 / seconds[len(seconds) // 2]}


JOBS: dict[str, Callable[[dict], dict]] = {
    "modalign_dpo": modalign_dpo, "trl_dpo": trl_dpo, "modalign_grpo": modalign_grpo, "trl_grpo": trl_grpo,
    "import_modalign": import_modalign, "import_trl": import_trl, "import_base": import_base, "matmul": matmul,
}


def main() -> None:
    spec: dict[str, Any] = json.loads(sys.argv[1])
    result = JOBS[spec["job"]](spec)
    torch = sys.modules.get("torch")
    result.update(job=spec["job"], peak_rss_mib=peak_rss_mib(), finished=time.time(),
                  torch_threads=torch.get_num_threads() if torch else None)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
