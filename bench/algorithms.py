"""Issue 4's comparison: PPO, GRPO, RLOO, REINFORCE, A2C and DPO from one SFT policy, same seed and budget.

    .venv/bin/python bench/algorithms.py --sft runs/demo-X/sft --reward runs/demo-X/loop/round-1/reward/model \
        --store runs/demo-X/loop/feedback.db --out bench/results/algorithms

Every online method gets the same number of sampled answers (steps x prompts x samples)
and the same reward model; DPO trains on the store's pairs. Each policy is evaluated with
the gold scorers on the held-out split at temperature 1 with the same seed. Writes
`table.md` and `table.json` in --out.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sft", required=True, help="SFT run folder (with model/ and data/)")
    parser.add_argument("--reward", required=True, help="reward model folder")
    parser.add_argument("--store", required=True, help="feedback store with the pairs DPO trains on")
    parser.add_argument("--out", default="bench/results/algorithms")
    parser.add_argument("--answers", type=int, default=120 * 64, help="sampled answers per online method")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", default="", help="comma-separated subset of methods")
    args = parser.parse_args()

    from modalign.eval.generation import evaluate_split
    from modalign.models.policy import load_policy
    from modalign.recipes.dpo import DPOConfig, run_dpo
    from modalign.recipes.online import OnlineConfig, run_online
    from modalign.recipes.ppo import PPOConfig, run_ppo

    sft, out = Path(args.sft), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model, data = str(sft / "model"), str(sft / "data")
    common = dict(policy=model, data=data, task="caption", eval_examples=0, seed=args.seed, max_new_tokens=40)
    # The demo's KL coefficient for every online method (at 0.02 all of them reached KL ~7.5 and dropped
    # true objects: coverage 0.93 -> 0.53); DPO at lr 1e-5 (at 5e-5: KL 20, hallucination 0.073 -> 0.088).
    prompts, samples, kl_coef = 16, 4, 0.1
    steps = max(1, args.answers // (prompts * samples))
    runs = {
        "ppo": lambda o: run_ppo(PPOConfig(out=o, reward_model=args.reward, steps=steps, prompts_per_step=prompts,
                                           samples_per_prompt=samples, lr=1e-4, kl_coef=kl_coef, **common)),
        **{name: (lambda o, name=name: run_online(OnlineConfig(
            out=o, algorithm=name, reward_model=args.reward, steps=steps, prompts_per_step=prompts,
            samples_per_prompt=samples, lr=1e-4, kl_coef=kl_coef, minibatch_size=32, **common)))
           for name in ("grpo", "rloo", "reinforce", "a2c")},
        "dpo": lambda o: run_dpo(DPOConfig(out=o, store=args.store, epochs=1.0, lr=1e-5, beta=0.1, **common)),
    }
    only = [m for m in args.only.split(",") if m] or list(runs)
    table = {}
    started = time.time()
    sft_eval = evaluate_split(load_policy(model), data, "test", 0, 40, 1.0, args.seed)
    table["sft"] = {**_row(sft_eval), "kl_to_ref": 0.0, "wall_seconds": 0.0}
    for name in only:
        tick = time.time()
        runs[name](str(out / name))
        wall = round(time.time() - tick, 1)  # training + its own caption evaluation
        full = evaluate_split(load_policy(out / name / "model"), data, "test", 0, 40, 1.0, args.seed)
        kl = heldout_kl(out / name / "model", model, data, args.seed)
        table[name] = {**_row(full), "kl_to_ref": kl, "wall_seconds": wall}
        print(name, table[name], flush=True)
    (out / "table.json").write_text(json.dumps(table, indent=2))
    lines = ["| method | hallucination | coverage | VQA | KL to ref | wall s |", "|---|---|---|---|---|---|"]
    lines += [f"| {m} | {r['hallucination_rate']:.3f} | {r['coverage']:.3f} | {r['vqa_accuracy']:.3f} | "
              f"{r['kl_to_ref']:.3f} | {r['wall_seconds']:.0f} |" for m, r in table.items()]
    (out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines), f"\n({time.time() - started:.0f} s)")


def heldout_kl(policy_path, reference_path, data: str, seed: int, samples: int = 4) -> float:
    """KL(policy || SFT) per answer on held-out caption prompts, k1 on the policy's own samples (same for all)."""
    import torch

    from modalign.data.dataset import read_examples
    from modalign.models.inputs import MediaStore, prompt_batch
    from modalign.models.policy import load_policy
    from modalign.rl.rollout import response_logprobs, sample_answers

    policy, reference = load_policy(policy_path), load_policy(reference_path)
    examples = [e for e in read_examples(data, "test") if e.meta.get("task") == "caption"]
    tokenizer, media, total, count = policy.processor.tokenizer, MediaStore(data), 0.0, 0
    torch.manual_seed(seed)
    with torch.no_grad():
        for start in range(0, len(examples), 32):
            prompts = prompt_batch(policy.processor, media, examples[start : start + 32])
            rollout = sample_answers(policy.model.eval(), prompts, samples, 40, 1.0, tokenizer.eos_token_id,
                                     tokenizer.pad_token_id)
            gap = response_logprobs(policy.model, rollout) - response_logprobs(reference.model.eval(), rollout)
            total += float((gap * rollout.response_mask).sum())
            count += rollout.sequences.shape[0]
    return total / count


def _row(metrics: dict) -> dict:
    return {k: metrics[k] for k in ("hallucination_rate", "coverage", "vqa_accuracy")}


if __name__ == "__main__":
    main()
