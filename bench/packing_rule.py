"""Scoring a GRPO rollout with and without the packing rule (`models.shared_prefix.packing_pays`), in one process.

    OMP_NUM_THREADS=2 PYTHONPATH=src python bench/packing_rule.py --work /tmp/bpk [--size small] [--turns 8]
        [--precision bf16]

Builds bench/trl_compare.py's fixtures (or reuses them in --work), samples one rollout of 2 caption
prompts x 4 answers of exactly --tokens tokens, then times `response_logprobs` forward + backward on it,
the rule's split (one answer per row at 0.3 M) against every answer packed behind its prompt and against
one answer per row, turns alternating so that the sides share the process's speed. Prints CPU seconds
per pass and the ratios.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def main() -> None:
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import modalign.rl.rollout as rollout
    from modalign.data.dataset import read_examples
    from modalign.models.inputs import MediaStore, prompt_batch
    from modalign.models.policy import load_policy
    from modalign.models.shared_prefix import attention_cost
    from modalign.precision import autocast
    from trl_compare_setup import build_fixtures

    parser = argparse.ArgumentParser()
    parser.add_argument("--work", required=True)
    parser.add_argument("--size", default="small")
    parser.add_argument("--tokens", type=int, default=160)
    parser.add_argument("--turns", type=int, default=8)
    parser.add_argument("--passes", type=int, default=5, help="passes per side per turn")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"], help="bf16: the forward under "
                        "autocast, as a GRPO run with `precision: bf16` scores its rollouts")
    args = parser.parse_args()

    fixtures = build_fixtures(Path(args.work), [args.size])
    policy = load_policy(str(fixtures.models[args.size]))
    model, tokenizer = policy.model, policy.processor.tokenizer
    examples = [e for e in read_examples(fixtures.data, "train") if e.meta.get("task") == "caption"][:2]
    prompts = prompt_batch(policy.processor, MediaStore(fixtures.data), examples)
    torch.manual_seed(0)
    samples = rollout.sample_answers(model.eval(), dict(prompts), 4, args.tokens, 1.0, tokenizer.eos_token_id,
                                     tokenizer.pad_token_id, min_new_tokens=args.tokens - 1)
    model.train()
    width = rollout.model_width(model)
    # rule: the FLOP rule; packed: every answer behind its prompt (no rule); unpacked: one answer per row
    sides = {"rule": lambda m: width, "packed": lambda m: None, "unpacked": lambda m: -10**9}
    with autocast(args.precision, model):  # the split the pass makes: the attention's cost depends on it
        cost = attention_cost("cpu")
    groups = rollout.prompt_groups(samples)
    parts = {name: [len(p) for g in groups for p in rollout._row_parts(g, samples, fn(model), cost)]
             for name, fn in sides.items()}
    prompt_tokens = [int(samples.attention_mask[g[0], : samples.prompt_length].sum()) for g in groups]
    print(f"width {width}, prompt tokens {prompt_tokens}, answers per packed row: "
          + ", ".join(f"{k} {v}" for k, v in parts.items()))

    def one_pass() -> None:
        with autocast(args.precision, model):  # forward only: backward runs outside, as in recipes/online.py
            logprobs = rollout.response_logprobs(model, samples)
        (logprobs * samples.response_mask).sum().backward()
        model.zero_grad(set_to_none=True)

    spent = {name: 0.0 for name in sides}
    for turn in range(args.turns + 1):  # turn 0 warms both up
        for name in (list(sides) if turn % 2 else list(sides)[::-1]):  # the order flips every turn
            rollout.model_width = sides[name]
            start = time.process_time()
            for _ in range(args.passes):
                one_pass()
            if turn:
                spent[name] += time.process_time() - start
    per_pass = {name: spent[name] / (args.turns * args.passes) for name in sides}
    print("CPU s per scoring pass (forward + backward): " + ", ".join(f"{k} {v:.4f}" for k, v in per_pass.items())
          + f"; packed / rule {per_pass['packed'] / per_pass['rule']:.2f}, unpacked / rule "
          f"{per_pass['unpacked'] / per_pass['rule']:.2f}")


if __name__ == "__main__":
    main()
