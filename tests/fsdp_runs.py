"""Run by tests/test_fsdp.py under `accelerate launch --config_file configs/accelerate/cpu_fsdp.yaml`:
every FSDP run of the test file in one launch (the interpreters and the process group start once).

    fsdp_runs.py MODEL DATA STORE OUT

OUT/sft, OUT/dpo: the recipes on 2 sharded processes (`sft_config`, `dpo_config`: the test runs the
same configs on one process); OUT/grpo-update.pt: `mp_ppo_update`'s GRPO update on a fixed rollout;
OUT/ppo: 2 PPO iterations (policy and critic sharded); OUT/grpo-straight: 4 GRPO iterations with a checkpoint at 2; OUT/grpo-resumed: that run cut back to
its checkpoint (as a kill after iteration 3 leaves it) and resumed.
"""

from __future__ import annotations

import dataclasses
import shutil
import sys
from pathlib import Path

from modalign.recipes.dpo import DPOConfig
from modalign.recipes.online import OnlineConfig
from modalign.recipes.ppo import PPOConfig
from modalign.recipes.sft import SFTConfig


def sft_config(model: str, data: str, out: Path) -> SFTConfig:
    return SFTConfig(out=str(out), policy=str(model), data=str(data), batch_size=8, max_steps=4, lr=1e-3,
                     warmup_steps=0, log_every=1, checkpoint_every=2, eval_examples=1, max_new_tokens=4)


def dpo_config(model: str, store: str, out: Path) -> DPOConfig:
    return DPOConfig(out=str(out), policy=str(model), store=str(store), batch_size=4, epochs=1.0, lr=1e-3,
                     checkpoint_every=2)


def grpo_config(model: str, data: str, out: Path) -> OnlineConfig:
    return OnlineConfig(out=str(out), algorithm="grpo", policy=str(model), data=str(data),
                        reward_model="rule:shapes_gold", steps=4, prompts_per_step=4, samples_per_prompt=2,
                        max_new_tokens=8, minibatch_size=4, lr=1e-3, checkpoint_every=2, eval_examples=1)


def ppo_config(model: str, data: str, out: Path) -> PPOConfig:
    return PPOConfig(out=str(out), policy=str(model), data=str(data), reward_model="rule:shapes_gold", steps=2,
                     prompts_per_step=4, samples_per_prompt=2, max_new_tokens=8, minibatch_size=4,
                     checkpoint_every=1, eval_examples=1)


def cut_back(run: Path, killed: Path) -> None:
    """What a kill after iteration 3 of 4 leaves: the step-2 checkpoint, 3 logged steps, no model or summary."""
    shutil.copytree(run, killed)
    shutil.rmtree(killed / "model")
    (killed / "summary.json").unlink()
    lines = (killed / "metrics.jsonl").read_text().splitlines()
    (killed / "metrics.jsonl").write_text("\n".join(lines[:3]) + "\n")


def main(model: str, data: str, store: str, out: str) -> None:
    import mp_ppo_update
    from modalign.dist import processes
    from modalign.recipes.dpo import run_dpo
    from modalign.recipes.online import run_online
    from modalign.recipes.ppo import run_ppo
    from modalign.recipes.sft import run_sft

    dist, root = processes(), Path(out)
    assert dist.sharded and dist.world == 2, "launch with configs/accelerate/cpu_fsdp.yaml on 2 processes"
    run_sft(sft_config(model, data, root / "sft"))
    run_dpo(dpo_config(model, store, root / "dpo"))
    mp_ppo_update.main(model, data, str(root / "grpo-update.pt"), "grpo")
    run_ppo(ppo_config(model, data, root / "ppo"))
    straight = grpo_config(model, data, root / "grpo-straight")
    run_online(straight)
    if dist.is_main:
        cut_back(root / "grpo-straight", root / "grpo-resumed")
    dist.wait()
    run_online(dataclasses.replace(straight, out=str(root / "grpo-resumed")), resume=str(root / "grpo-resumed"))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))  # mp_ppo_update
    main(*sys.argv[1:5])
