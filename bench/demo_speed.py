"""Where the demo's SFT spends its CPU time: a few steps of the demo's SFT at its real size, profiled.

    PYTHONPATH=src OMP_NUM_THREADS=2 python bench/demo_speed.py --steps 30 [--precision bf16] [--profile]

Reports process CPU seconds per step (not wall: the machine may be shared), and with --profile the
top operators by CPU time (torch.profiler).
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path


def cpu_seconds() -> float:
    self_, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return self_.ru_utime + self_.ru_stime + children.ru_utime + children.ru_stime


def main() -> None:
    import torch

    from modalign.data.dataset import read_examples
    from modalign.models.inputs import MediaStore, collate_sft, encode_sft_example
    from modalign.precision import autocast
    from modalign.recipes.sft import SFTConfig, batch_at, make_optimizer, make_policy, prepare_data, tokenizer_corpus

    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--fused", action="store_true", help="fused AdamW (one kernel over all parameters)")
    parser.add_argument("--work", default="/tmp/demo_speed")
    parser.add_argument("--threads", action="store_true",
                        help="the same steps with 1 thread, then 2: the speed-up 2 threads give (CPU s of 1 thread / "
                             "wall s of 2), to turn a 1-thread demo's CPU time into wall time on 2 cores")
    parser.add_argument("--sample-model", default="", help="with --threads: a trained policy folder whose sampling "
                                                           "(64 prompts x 4 answers, as in PPO) is timed the same way")
    args = parser.parse_args()

    cfg = SFTConfig(seed=0, epochs=10.0, batch_size=args.batch_size, precision=args.precision)
    t0 = cpu_seconds()
    root = prepare_data(cfg, Path(args.work))
    t_data = cpu_seconds() - t0
    train = read_examples(root, "train")
    policy = make_policy(cfg, tokenizer_corpus(cfg, root, train))
    media = MediaStore(root)
    t0 = cpu_seconds()
    encoded = [encode_sft_example(policy.processor, media, e, cfg.max_length) for e in train]
    t_encode = cpu_seconds() - t0
    lengths = torch.tensor([e.input_ids.shape[0] for e in encoded]).float()
    print(f"data {t_data:.1f} s cpu, encode {len(encoded)} examples {t_encode:.1f} s cpu; "
          f"length mean {lengths.mean():.1f} max {lengths.max():.0f}")
    steps_per_epoch = len(encoded) // cfg.batch_size
    optimizer, scheduler = make_optimizer(policy.model, cfg, 2340)
    if args.fused:
        for group in optimizer.param_groups:
            group["fused"], group["foreach"] = True, False
    pad = policy.processor.tokenizer.pad_token_id
    model = policy.model.train()

    def step(i: int) -> None:
        batch = collate_sft(batch_at(encoded, i, cfg.batch_size, steps_per_epoch, cfg.seed), pad)
        with autocast(cfg.precision, model):
            loss = model(**batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()

    for i in range(3):  # warm-up
        step(i)
    if args.threads:
        timed_threads("sft step", lambda: [step(3 + i) for i in range(args.steps)], args.steps)
        if args.sample_model:
            time_sampling(args.sample_model, root)
        return
    t0, w0 = cpu_seconds(), time.time()
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for i in range(args.steps):
                step(3 + i)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=30))
    else:
        for i in range(args.steps):
            step(3 + i)
    cpu, wall = cpu_seconds() - t0, time.time() - w0
    per_epoch = cpu / args.steps * steps_per_epoch
    print(f"{args.precision} batch {cfg.batch_size}: {per_epoch:.0f} cpu s/epoch, {cpu / args.steps:.3f} cpu s/step, "
          f"{wall / args.steps:.3f} wall s/step "
          f"(contention cpu/wall {cpu / wall:.2f}); 2340 steps ~ {cpu / args.steps * 2340:.0f} cpu s")


def timed_threads(name: str, work, count: int) -> None:
    """Run `work` with 1 then 2 torch threads; print CPU and wall per item and the speed-up of 2 threads.

    The speed-up is (CPU s with 1 thread) / (wall s with 2 threads). It is only meaningful when the
    machine is quiet: the 1-thread run's CPU/wall (printed) should then be close to 1.0.
    """
    import torch

    rows = {}
    for threads in (1, 2):
        torch.set_num_threads(threads)
        t0, w0 = cpu_seconds(), time.time()
        work()
        rows[threads] = ((cpu_seconds() - t0) / count, (time.time() - w0) / count)
    (cpu1, wall1), (cpu2, wall2) = rows[1], rows[2]
    print(f"{name}: 1 thread {cpu1:.3f} cpu s {wall1:.3f} wall s (cpu/wall {cpu1 / wall1:.2f}); "
          f"2 threads {cpu2:.3f} cpu s {wall2:.3f} wall s (cpu/wall {cpu2 / wall2:.2f}); "
          f"speed-up of 2 threads over 1 thread's CPU: {cpu1 / wall2:.2f}")


def time_sampling(model_dir: str, data_root: Path) -> None:
    """PPO-sized sampling (16 prompts x 4 answers, bf16 autocast) with 1 and 2 threads."""
    import torch

    from modalign.data.dataset import read_examples
    from modalign.models.inputs import MediaStore, prompt_batch
    from modalign.precision import autocast
    from modalign.rl.rollout import sample_answers
    from modalign.validate import load_checked_policy

    policy = load_checked_policy(model_dir)
    tokenizer = policy.processor.tokenizer
    prompts_all = [e for e in read_examples(data_root, "train") if e.meta.get("task") == "caption"]
    media = MediaStore(data_root)

    def rollouts(count: int = 3) -> None:
        for i in range(count):
            prompts = prompt_batch(policy.processor, media, prompts_all[16 * i : 16 * (i + 1)])
            with torch.no_grad(), autocast("bf16", policy.model):
                sample_answers(policy.model.eval(), prompts, 4, 40, 1.0, tokenizer.eos_token_id,
                               tokenizer.pad_token_id)

    rollouts(1)  # warm-up
    timed_threads("sampling 16 prompts x 4", rollouts, 3)


if __name__ == "__main__":
    main()
