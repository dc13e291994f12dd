"""Where the demo's SFT spends its CPU time: a few steps of the demo's SFT at its real size, profiled.

    PYTHONPATH=src OMP_NUM_THREADS=2 python bench/demo_speed.py --steps 30 [--precision bf16] [--profile]

Reports process CPU seconds per step (not wall: the machine may be shared), and with --profile the
top operators by CPU time (torch.profiler). The speed-up 2 threads give (to turn a 1-thread demo's
CPU time into wall time on 2 cores): run it twice, OMP_NUM_THREADS=1 and OMP_NUM_THREADS=2, and
divide the first's CPU s/step by the second's wall s/step - on a quiet machine only: with a few
other runnable processes a 2-thread step waits at every parallel region for its descheduled
partner (measured 1.5-3.0 wall s/step against 0.23 with 1 thread, bench/results/demo_speed.md).
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path


def update(model, optimizer, scheduler, loss) -> None:
    """One SFT optimizer step as `recipes/sft.py` takes it: backward, clip at 1.0, AdamW, schedule."""
    import torch

    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    scheduler.step()


def cpu_seconds() -> float:
    self_, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return self_.ru_utime + self_.ru_stime + children.ru_utime + children.ru_stime


def main() -> None:
    import torch

    from modalign.data.dataset import read_examples
    from modalign.models.inputs import MediaStore, collate_sft, encode_sft_example
    from modalign.models.tinyvlm import FUSIONS
    from modalign.precision import autocast
    from modalign.recipes.sft import (SFTConfig, batch_at, make_optimizer, make_policy, media_groups, prepare_data,
                                      tokenizer_corpus)

    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--fusion", default="concat", choices=FUSIONS)
    parser.add_argument("--group", action="store_true", help="batches of whole scenes (group_by_media)")
    parser.add_argument("--group-size", type=int, default=0,
                        help="with --group: chunks of at most this many examples of a scene (media_group_size)")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--fused", action="store_true", help="fused AdamW (one kernel over all parameters)")
    parser.add_argument("--work", default="/tmp/demo_speed")
    parser.add_argument("--compile", default="none", choices=["none", "decoder", "regional", "full"],
                        help="torch.compile: each decoder layer, each repeated block (decoder and encoder layers) or "
                             "the whole forward")
    parser.add_argument("--stems", action="store_true",
                        help="with --compile regional: compile the image stem and the audio stem too")
    parser.add_argument("--math-attention", action="store_true",
                        help="scaled_dot_product_attention's math backend (plain matmuls + softmax) instead of flash")
    parser.add_argument("--dynamic", default="true", choices=["true", "false", "auto"],
                        help="with --compile: torch.compile's dynamic= True, False or None (auto: static first, "
                             "dynamic after a shape changes)")
    parser.add_argument("--losses", type=int, default=0, help="print the first N losses (all steps counted)")
    args = parser.parse_args()

    cfg = SFTConfig(seed=0, epochs=10.0, batch_size=args.batch_size, precision=args.precision, fusion=args.fusion)
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
    groups = media_groups(train) if args.group else None
    dynamic = {"true": True, "false": False, "auto": None}[args.dynamic]
    if args.compile in ("decoder", "regional"):
        stems = [model.vision.patchify, model.audio.stem] if args.stems else []
        blocks = list(model.layers) if args.compile == "decoder" else repeated_blocks(model)
        for block in blocks + stems:
            compile_forward(block, dynamic=dynamic)
    elif args.compile == "full":
        model.compile(dynamic=dynamic)
    losses: list[float] = []

    def step(i: int) -> None:
        with attention_backend(args.math_attention):
            train_step(i)

    def train_step(i: int) -> None:
        batch = collate_sft(batch_at(encoded, i, cfg.batch_size, steps_per_epoch, cfg.seed, groups, args.group_size), pad)
        with autocast(cfg.precision, model):
            loss = model(**batch).loss
        update(model, optimizer, scheduler, loss)
        if len(losses) < args.losses:
            losses.append(loss.item())

    t0, w0 = cpu_seconds(), time.time()
    for i in range(3):  # warm-up (the compile, if any: cold unless TORCHINDUCTOR_CACHE_DIR holds it)
        step(i)
    print(f"warm-up 3 steps: {cpu_seconds() - t0:.1f} cpu s, {time.time() - w0:.1f} wall s")
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
    if losses:
        print("losses " + " ".join(f"{value:.8f}" for value in losses))


def attention_backend(math: bool):
    """The math backend of scaled_dot_product_attention when asked; torch's choice (flash on a CPU) otherwise."""
    import contextlib

    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel(SDPBackend.MATH) if math else contextlib.nullcontext()


def compile_forward(module, dynamic: bool) -> None:
    """Compile `module`'s forward in place (same module, same state_dict keys). Not `module.compile()`:
    dynamo skips that for torch.nn's own classes (TransformerEncoderLayer, Sequential), whose first frame
    is in torch; a wrapper of ours as the first frame is traced, with the module's code inlined."""
    import torch

    eager = module.forward

    def forward(*args, **kwargs):
        return eager(*args, **kwargs)

    module.forward = torch.compile(forward, dynamic=dynamic)


def repeated_blocks(model) -> list:
    """Children of every ModuleList whose children share one class (decoder layers, encoder layers)."""
    import torch

    return [block for modules in model.modules() if isinstance(modules, torch.nn.ModuleList) and len(modules)
            and all(type(m) is type(modules[0]) for m in modules) for block in modules]


if __name__ == "__main__":
    main()
