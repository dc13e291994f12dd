"""One timed job of bench/trl_compare.py, run in its own process (so that its peak RSS is its own).

    .venv/bin/python bench/trl_compare_jobs.py '<spec as JSON>'

Prints one JSON line with wall-clock times (time.time(), comparable with the parent's clock),
per-step end times, generated tokens and the peak RSS. The jobs:

    modalign_dpo / trl_dpo     DPO on the preference pairs (modalign's `run_dpo`, TRL's `DPOTrainer`)
    modalign_grpo / trl_grpo   GRPO with the ShapesWorld gold rule (modalign's `run_online`, TRL's `GRPOTrainer`)
    import_modalign / import_trl   start-up: import the modules a run of that framework loads
    import_base                torch + transformers alone (what both frameworks import anyway)
    matmul                     this machine's fp32 (or bf16) matmul throughput at given shapes

Each training job imports its framework first (the modules listed below, the same set the import
job times), then starts its clock `t0`; model loading, data preparation, reference log-probs and
the steps all fall inside the clock. Every training job also reports its own CPU time and threads
(contention: CPU seconds / wall seconds against the threads it asked for) and, after training, the
best matmul throughput of its precision at the model's shapes (`peak_shapes`: the MFU denominator,
measured in the same process). With `count_flops` the whole run executes under torch's
`FlopCounterMode`: the FLOPs executed up to each step end (and around modalign's DPO reference
pass) are recorded; such a run is not timed (the counter slows every op), it counts.
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


class Counter:
    """The job's FlopCounterMode (None when the job does not count): FLOPs executed so far, read at step ends."""

    mode = None
    step_flops: list[float] = []  # cumulative executed FLOPs at each step end
    step_cpu: list[float] = []  # the process's CPU seconds at each step end (contention-proof with 1 thread)

    @classmethod
    def total(cls) -> float:
        return float(cls.mode.get_total_flops()) if cls.mode is not None else 0.0


def flop_counter():
    """torch's FlopCounterMode with the CPU SDPA kernels counted too (torch's table has only the GPU ones):
    attention is counted as two batched matmuls forward and their gradients backward, causal or not."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

    aten = torch.ops.aten

    def forward(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return sdpa_flop_count(query_shape, key_shape, value_shape)

    def backward(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)

    return FlopCounterMode(display=False, custom_mapping={
        aten._scaled_dot_product_flash_attention_for_cpu: forward,
        aten._scaled_dot_product_flash_attention_for_cpu_backward: backward})


def step_ended(ends: list[float]) -> None:
    """Record one step's end: wall time, and the executed FLOPs so far when counting."""
    ends.append(time.time())
    Counter.step_cpu.append(cpu_seconds())
    if Counter.mode is not None:
        Counter.step_flops.append(Counter.total())


def counted(spec: dict, train: Callable[[], None]) -> None:
    """Run `train`, under the FLOP counter when the spec asks for counting."""
    if not spec.get("count_flops"):
        train()
        return
    Counter.mode = flop_counter()
    with Counter.mode:
        train()


def clock_modalign_steps() -> list[float]:
    """Record the wall time at which each recipe step ends (its `RunDir.log` call, right after the optimiser step)."""
    from modalign import runs

    ends: list[float] = []
    log = runs.RunDir.log

    def timed_log(self, step: int, metrics) -> None:
        step_ended(ends)
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


def clock_modalign_reference() -> dict:
    """Record the wall-clock interval (and the executed FLOPs, when counting) of modalign DPO's up-front
    reference pass (`recipes.dpo.sequence_logprobs_all`, called once per run)."""
    from modalign.recipes import dpo

    record: dict = {}
    reference_pass = dpo.sequence_logprobs_all

    def timed(*args, **kwargs):
        record.update(start=time.time(), start_cpu=cpu_seconds(), start_flops=Counter.total())
        try:
            return reference_pass(*args, **kwargs)
        finally:
            record.update(end=time.time(), end_cpu=cpu_seconds(), end_flops=Counter.total())

    dpo.sequence_logprobs_all = timed
    return record


def modalign_dpo(spec: dict) -> dict:
    """modalign's DPO recipe on the TRL-format pairs file (imported into a feedback store by the recipe)."""
    import_all(MODALIGN_MODULES)
    set_threads(spec)
    from modalign.recipes.dpo import DPOConfig, run_dpo

    s = spec["settings"]
    ends, reference = clock_modalign_steps(), clock_modalign_reference()
    t0, cpu0 = time.time(), cpu_seconds()
    pairs = sum(1 for _ in open(spec["pairs"], encoding="utf-8"))
    config = DPOConfig(out=spec["out"], policy=spec["model"], store=spec["pairs"], beta=s["beta"], lr=s["lr"],
                       batch_size=s["batch_size"], max_length=s["max_length"],
                       epochs=(s["steps"] - 0.5) * s["batch_size"] / pairs,  # ceil(epochs * pairs / batch) = steps
                       checkpoint_every=0, data="", seed=s["seed"], precision=s["precision"])
    counted(spec, lambda: run_dpo(config))
    return {"t0": t0, "cpu0": cpu0, "step_ends": ends, "reference": reference}


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
    t0, cpu0 = time.time(), cpu_seconds()
    config = OnlineConfig(algorithm="grpo", precision=spec["settings"]["precision"],
                          min_new_tokens=spec["settings"].get("min_new_tokens", 0), **modalign_rl_fields(spec))
    counted(spec, lambda: run_online(config))
    return {"t0": t0, "cpu0": cpu0, "step_ends": ends, "generated_tokens": generated_tokens(spec, "grpo"),
            "sampling": sampling}


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
            step_ended(ends)

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
    t0, cpu0 = time.time(), cpu_seconds()

    def train() -> None:
        dataset = datasets.Dataset.from_list(read_jsonl(spec["pairs"]))
        dataset = dataset.cast_column("images", datasets.List(datasets.Image()))
        args = DPOConfig(per_device_train_batch_size=s["batch_size"], max_length=s["max_length"],
                         **common_trl_args(spec))
        DPOTrainer(model=spec["model"], args=args, train_dataset=dataset, processing_class=load_processor(spec["model"]),
                   callbacks=[step_clock_callback(ends)]).train()

    counted(spec, train)
    return {"t0": t0, "cpu0": cpu0, "step_ends": ends}


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
    t0, cpu0 = time.time(), cpu_seconds()
    history: list[dict] = []

    def train() -> None:
        dataset = datasets.Dataset.from_list(read_jsonl(spec["prompts"])).cast_column("image", datasets.Image())
        processor = load_processor(spec["model"])
        args = GRPOConfig(per_device_train_batch_size=s["prompts"] * s["samples"], num_generations=s["samples"],
                          max_completion_length=s["new_tokens"], epsilon=s["clip"], loss_type="grpo",
                          scale_rewards="group", temperature=1.0, **common_trl_args(spec),
                          generation_kwargs={"min_new_tokens": s.get("min_new_tokens", 0)})
        reward = shapes_gold_reward([processor.tokenizer.eos_token_id])
        trainer = GRPOTrainer(model=frozen_vision_policy(spec["model"]), reward_funcs=reward, args=args,
                              train_dataset=dataset, processing_class=processor, callbacks=[step_clock_callback(ends)])
        trainer.train()
        history.extend(trainer.state.log_history)

    counted(spec, train)
    answers = s["prompts"] * s["samples"]
    lengths = [row["completions/mean_length"] for row in history if "completions/mean_length" in row]
    return {"t0": t0, "cpu0": cpu0, "step_ends": ends, "generated_tokens": [length * answers for length in lengths],
            "sampling": sampling}


def frozen_vision_policy(folder: str):
    """The checkpoint with its vision tower (and merger) frozen, as modalign's RL recipes freeze the media
    encoders: both frameworks then train the same parameters (the decoder and the LM head). TRL's reference
    model is loaded from the same folder (the config's name or path)."""
    from transformers import Qwen2VLForConditionalGeneration

    model = Qwen2VLForConditionalGeneration.from_pretrained(folder)
    model.model.visual.requires_grad_(False)
    return model


# ---- start-up and matmul throughput -----------------------------------------------------------------


def import_modalign(spec: dict) -> dict:
    return {"import_s": import_all(MODALIGN_MODULES)}


def import_trl(spec: dict) -> dict:
    return {"import_s": import_all(TRL_MODULES)}


def import_base(spec: dict) -> dict:
    return {"import_s": import_all(BASE_MODULES)}


def matmul_peak(shapes: list[list[int]], dtype_name: str, repeats: int = 10) -> dict:
    """Best FLOP/s of (m, k) @ (k, n) matmuls in `dtype_name` at each shape (2 m k n FLOPs each, best of
    `repeats` timings after warm-up, each timing long enough to measure); the peak is the best of them."""
    import torch

    dtype = getattr(torch, dtype_name)
    by_shape = []
    for m, k, n in shapes:
        a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
        flops = 2 * m * k * n
        calls = max(1, int(2e8 // flops))  # about 0.2 GFLOP per timing: tiny shapes are looped
        for _ in range(2):
            a @ b
        best = float("inf")
        for _ in range(repeats):
            started = time.perf_counter()
            for _ in range(calls):
                a @ b
            best = min(best, (time.perf_counter() - started) / calls)
        by_shape.append({"shape": [m, k, n], "best_flops": flops / best})
    return {"dtype": dtype_name, "shapes": by_shape, "best_flops": max(r["best_flops"] for r in by_shape)}


def matmul(spec: dict) -> dict:
    """Best FLOP/s of an n x n matmul (fp32, or `dtype`): the machine-level figure of the report."""
    set_threads(spec)
    n = spec.get("n", 2048)
    return dict(matmul_peak([[n, n, n]], spec.get("dtype", "float32")), n=n)


def cpu_seconds() -> float:
    """User + system CPU seconds of this process so far (all its threads)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def os_threads() -> int:
    """Threads of this process now (/proc/self/status), 0 where there is no /proc."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("Threads:"):
                return int(line.split()[1])
    return 0


JOBS: dict[str, Callable[[dict], dict]] = {
    "modalign_dpo": modalign_dpo, "trl_dpo": trl_dpo, "modalign_grpo": modalign_grpo, "trl_grpo": trl_grpo,
    "import_modalign": import_modalign, "import_trl": import_trl, "import_base": import_base, "matmul": matmul,
}


def main() -> None:
    spec: dict[str, Any] = json.loads(sys.argv[1])
    result = JOBS[spec["job"]](spec)
    torch = sys.modules.get("torch")
    result.update(job=spec["job"], peak_rss_mib=peak_rss_mib(), finished=time.time(), cpu_end=cpu_seconds(),
                  os_threads=os_threads(), torch_threads=torch.get_num_threads() if torch else None,
                  step_cpu=Counter.step_cpu)
    if Counter.mode is not None:
        result.update(step_flops=Counter.step_flops, total_flops=Counter.total())
    if spec.get("peak_shapes"):  # after the run, in the same process: the MFU denominator of this run
        result["peak"] = matmul_peak(spec["peak_shapes"], "bfloat16" if spec["settings"]["precision"] == "bf16"
                                     else "float32")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
