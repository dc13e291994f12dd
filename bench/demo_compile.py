"""Eager against torch.compile on the demo's SFT step, interleaved in one process (issue 23, Part 5).

    PYTHONPATH=src OMP_NUM_THREADS=1 TORCHINDUCTOR_CACHE_DIR=$(mktemp -d) \
        python bench/demo_compile.py --compile regional [--precision bf16] [--math-attention] [--stems]

Two copies of the demo's SFT model (same seed: the same weights), each with its own optimizer, follow the
same batches. After each one's warm-up (the compiled one's is its cold compile, when the inductor cache
folder is empty), they take turns of `--block-steps` steps, the order swapped every turn, and the process
CPU time of each turn is added to its side: on a shared machine a slower stretch then costs both sides
alike, which two processes run one after the other do not guarantee (measured: the same eager fp32 step at
0.236 and 0.291 CPU s in two runs five minutes apart). The first `--losses` losses of both sides are compared.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from demo_speed import attention_backend, compile_forward, cpu_seconds, repeated_blocks, update  # noqa: E402


def main() -> None:
    import torch

    from modalign.data.dataset import read_examples
    from modalign.models.inputs import MediaStore, collate_sft, encode_sft_example
    from modalign.precision import autocast
    from modalign.recipes.sft import SFTConfig, batch_at, make_optimizer, make_policy, prepare_data, tokenizer_corpus

    parser = argparse.ArgumentParser()
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--compile", default="regional", choices=["none", "decoder", "regional"],
                        help="the second side: each decoder layer compiled, each repeated block, or nothing (eager)")
    parser.add_argument("--stems", action="store_true", help="compile the image and audio stems too")
    parser.add_argument("--math-attention", default="none", choices=["none", "both", "second"],
                        help="SDPA's math backend on no side, both, or the second only (eager flash against eager math "
                             "with --compile none)")
    parser.add_argument("--dynamic", default="true", choices=["true", "auto"])
    parser.add_argument("--workload", default="sft", choices=["sft", "ppo"],
                        help="ppo: the shape of PPO's update (demo: minibatches of 16 caption answers, media encoded "
                             "without gradient by the frozen encoders, decoder forward + backward)")
    parser.add_argument("--turns", type=int, default=6)
    parser.add_argument("--block-steps", type=int, default=5)
    parser.add_argument("--losses", type=int, default=20)
    parser.add_argument("--work", default="/tmp/demo_speed")
    args = parser.parse_args()

    cfg = SFTConfig(seed=0, epochs=10.0, precision=args.precision)
    root = prepare_data(cfg, Path(args.work))
    train = read_examples(root, "train")
    corpus = tokenizer_corpus(cfg, root, train)
    policies = [make_policy(cfg, corpus) for _ in range(2)]  # [eager, compiled], the same seed
    same = all(torch.equal(a, b) for a, b in zip(policies[0].model.state_dict().values(),
                                                  policies[1].model.state_dict().values()))
    media = MediaStore(root)
    if args.workload == "ppo":  # the demo's PPO prompts are the caption ones; its encoders are frozen in RL
        train = [e for e in train if e.meta.get("task") == "caption"]
        cfg.batch_size = 16
        for policy in policies:
            for module in policy.model.media_encoder_modules():
                module.requires_grad_(False)
    encoded = [encode_sft_example(policies[0].processor, media, e, cfg.max_length) for e in train]
    steps_per_epoch = len(encoded) // cfg.batch_size
    pad = policies[0].processor.tokenizer.pad_token_id
    models = [p.model.train() for p in policies]
    optimizers = [make_optimizer(m, cfg, 2340) for m in models]
    compiled = models[1]
    blocks = {"none": [], "decoder": list(compiled.layers), "regional": repeated_blocks(compiled)}[args.compile]
    for block in blocks + ([compiled.vision.patchify, compiled.audio.stem] if args.stems else []):
        compile_forward(block, dynamic=True if args.dynamic == "true" else None)
    done, losses, cpu = [0, 0], [[], []], [0.0, 0.0]

    def run(side: int, steps: int) -> float:
        model, (optimizer, scheduler) = models[side], optimizers[side]
        start = cpu_seconds()
        for _ in range(steps):
            batch = collate_sft(batch_at(encoded, done[side], cfg.batch_size, steps_per_epoch, cfg.seed), pad)
            if args.workload == "ppo":  # PPO reuses the rollout's media features (encoded once, no gradient)
                with torch.no_grad(), autocast(cfg.precision, model):
                    batch["media"] = model.encode_media(batch["input_ids"], batch.pop("pixel_values"),
                                                        batch.pop("input_values"))
            math = args.math_attention == "both" or (args.math_attention == "second" and side == 1)
            with attention_backend(math), autocast(cfg.precision, model):
                loss = model(**batch).loss
            update(model, optimizer, scheduler, loss)
            if len(losses[side]) < args.losses:
                losses[side].append(loss.item())
            done[side] += 1
        return cpu_seconds() - start

    wall = time.time()
    warm = [run(side, 3) for side in (0, 1)]  # the compiled side's warm-up is its compile
    for turn in range(args.turns):
        for side in ((0, 1) if turn % 2 == 0 else (1, 0)):
            cpu[side] += run(side, args.block_steps)
    steps = args.turns * args.block_steps
    eager, comp = cpu[0] / steps, cpu[1] / steps
    relative = max(abs(a - b) / abs(a) for a, b in zip(*losses))
    print(f"{args.workload} {args.precision} compile={args.compile}{' +stems' if args.stems else ''}"
          f" math-attention={args.math_attention} dynamic={args.dynamic}: same initial weights {same}; "
          f"warm-up 3 steps first {warm[0]:.1f} cpu s, second {warm[1]:.1f} cpu s; steady over {steps} steps each "
          f"first (eager) {eager:.3f} second {comp:.3f} cpu s/step (first/second {eager / comp:.2f}x); "
          f"losses of the first {len(losses[0])} steps: max relative difference {relative:.2e}; "
          f"contention cpu/wall {(sum(cpu) + sum(warm)) / (time.time() - wall):.2f}")
    print("first  " + " ".join(f"{v:.6f}" for v in losses[0]))
    print("second " + " ".join(f"{v:.6f}" for v in losses[1]))
    with contextlib.suppress(Exception):
        print("compile counters", dict(torch._dynamo.utils.counters["stats"]))


if __name__ == "__main__":
    main()
