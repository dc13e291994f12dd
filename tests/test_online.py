"""GRPO, RLOO, REINFORCE and A2C on the shared rollout core: each runs, logs, evaluates and resumes."""

from __future__ import annotations

import json
import math

import pytest
import torch

from modalign.models.policy import load_policy
from modalign.recipes.online import OnlineConfig, run_online


def online_config(out, sft_model, algorithm, **overrides):
    model, data = sft_model
    fields = dict(out=str(out), algorithm=algorithm, policy=str(model), data=str(data), reward_model="rule:shapes_gold",
                  steps=2, prompts_per_step=2, samples_per_prompt=3, max_new_tokens=10, minibatch_size=4,
                  eval_examples=2, checkpoint_every=1, lr=1e-3)
    return OnlineConfig(**{**fields, **overrides})


@pytest.mark.parametrize("algorithm", ["grpo", "rloo", "reinforce", "a2c"])
def test_each_algorithm_trains_and_logs(tmp_path, sft_model, algorithm):
    before = load_policy(sft_model[0]).model.state_dict()
    summary = run_online(online_config(tmp_path / algorithm, sft_model, algorithm))
    lines = [json.loads(l) for l in (tmp_path / algorithm / "metrics.jsonl").read_text().splitlines()]
    assert [l["step"] for l in lines] == [1, 2]
    for key in ("reward_mean", "reward_std", "kl_to_ref", "approx_kl", "answer_length", "loss"):
        assert lines[-1][f"{algorithm}/{key}"] is not None, key
    assert "hallucination_rate" in summary["eval"] and math.isfinite(summary["eval"]["kl_to_ref"])  # k1: may dip below 0
    after = load_policy(tmp_path / algorithm / "model").model.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed and not any(k.startswith(("vision.", "audio.", "image_projector", "audio_projector")) for k in changed)


def test_online_stops_at_the_kl_budget(tmp_path, sft_model):
    summary = run_online(online_config(tmp_path / "run", sft_model, "grpo", steps=6, lr=3e-3, kl_budget=1e-6))
    lines = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert summary["stopped_at_kl_budget"] and summary["steps"] == len(lines) < 6
    assert sum(line["grpo/kl_to_ref"] for line in lines[-5:]) / len(lines[-5:]) > 1e-6  # why it stopped
    assert (tmp_path / "run" / "model" / "config.json").is_file() and "hallucination_rate" in summary["eval"]


def test_online_reference_other_than_the_start_policy(tmp_path, sft_model):
    # as PPO's `reference`: a run that starts from a moved policy keeps its KL to SFT, so the KL is > 0
    # from step 1 (measured on the rollout, before any update); without it the reference is the start policy
    # (a seeded move large enough that the sampled k1 estimate of the KL is clearly positive; 0.05 left it
    # within the estimate's noise of 6 short answers, either sign)
    policy = load_policy(sft_model[0])
    weight = policy.model.lm_head.weight
    with torch.no_grad():
        weight.add_(0.5 * torch.randn(weight.shape, generator=torch.Generator().manual_seed(0)))
    policy.save(tmp_path / "moved")
    cfg = dict(policy=str(tmp_path / "moved"), steps=1, checkpoint_every=0)
    run_online(online_config(tmp_path / "own", sft_model, "grpo", **cfg))
    run_online(online_config(tmp_path / "sft_ref", sft_model, "grpo", reference=str(sft_model[0]), **cfg))
    own, sft_ref = (json.loads((tmp_path / name / "metrics.jsonl").read_text().splitlines()[0])["grpo/kl_to_ref"]
                    for name in ("own", "sft_ref"))
    assert own == pytest.approx(0.0, abs=1e-5)
    assert sft_ref > 0.01


def test_online_reference_that_is_not_a_policy_is_a_clear_error(tmp_path, sft_model):
    from modalign.errors import UserError

    with pytest.raises(UserError, match="reference '.*nowhere': no such folder"):
        run_online(online_config(tmp_path / "bad", sft_model, "grpo", reference=str(tmp_path / "nowhere")))
    assert not (tmp_path / "bad").exists()


def test_a_reference_with_another_vocabulary_is_refused(tmp_path, sft_model):
    """The KL compares both models' log-probs of the policy's tokens: a reference with another tokenizer's
    vocabulary is a clear error naming it (PPO and the online methods load it through `kl_reference`)."""
    from modalign.errors import UserError
    from modalign.models.policy import create_tinyvlm, kl_reference

    policy = load_policy(sft_model[0])
    other = create_tinyvlm(["a red circle", "two low beeps"] * 20, vocab_size=300, hidden_size=32, num_hidden_layers=1)
    assert other.model.config.vocab_size != policy.model.config.vocab_size
    other.save(tmp_path / "other")
    with pytest.raises(UserError, match="reference '.*other': its vocabulary has .* tokens, the policy's"):
        kl_reference(policy.model, str(tmp_path / "other"))
    with pytest.raises(UserError, match="its vocabulary has"):  # a run is refused before its folder exists
        run_online(online_config(tmp_path / "run", sft_model, "grpo", reference=str(tmp_path / "other")))
    assert not (tmp_path / "run").exists()
    same = kl_reference(policy.model, str(sft_model[0]))
    assert not same.training and not any(p.requires_grad for p in same.parameters())


def test_unknown_algorithm_is_a_clear_error(tmp_path, sft_model):
    with pytest.raises(ValueError, match="choose one of grpo, rloo, reinforce, a2c"):
        run_online(online_config(tmp_path / "x", sft_model, "sarsa"))


def test_grpo_resume_matches_uninterrupted(tmp_path, sft_model):
    run_online(online_config(tmp_path / "straight", sft_model, "grpo", steps=3))
    calls = {"n": 0}
    from modalign.rl.rewards import RULES

    def failing(examples, answers, samples, prompts):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("killed in step 3")
        return torch.tensor([float(RULES["shapes_gold"](e, a)) for e, a in zip(examples, answers)])

    with pytest.raises(KeyboardInterrupt):
        run_online(online_config(tmp_path / "killed", sft_model, "grpo", steps=3), reward_source=failing)
    run_online(online_config(tmp_path / "killed", sft_model, "grpo", steps=3), resume=str(tmp_path / "killed"))
    straight = load_policy(tmp_path / "straight" / "model").model.state_dict()
    resumed = load_policy(tmp_path / "killed" / "model").model.state_dict()
    for key in straight:
        assert torch.allclose(straight[key], resumed[key], atol=1e-6), key


def test_a_registered_loss_trains_by_name(tmp_path, sft_model):
    """docs/algorithms.md: a new loss is one registered function, then `objective=<name>`."""
    from modalign.rl.losses import masked_mean
    from modalign.rl.objectives import OBJECTIVES, ObjectiveInputs, ObjectiveOutput, register_objective

    calls = []

    @register_objective("test_clipped_reinforce")
    def clipped_reinforce(batch: ObjectiveInputs, clip: float = 0.2) -> ObjectiveOutput:
        calls.append(batch.logprobs.shape)
        ratio = torch.exp(batch.logprobs - batch.old_logprobs)
        loss = -masked_mean(torch.clamp(ratio, max=1 + clip) * batch.advantages.detach(), batch.mask)
        return ObjectiveOutput(loss, {"ratio": masked_mean(ratio, batch.mask).detach()})

    try:
        run_online(online_config(tmp_path / "run", sft_model, "rloo", objective="test_clipped_reinforce", steps=1,
                                 minibatch_size=8))  # one minibatch: the ratio is exactly 1
    finally:
        OBJECTIVES.pop("test_clipped_reinforce")
    line = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert calls and line["rloo/ratio"] == pytest.approx(1.0, abs=1e-4)


def test_min_new_tokens_gives_every_answer_the_same_length(tmp_path, sft_model):
    """Fixed-work sampling (bench/trl_compare.py --fixed-length): the end token is blocked until the last
    position, so every answer is max_new_tokens long; without it the SFT policy's answers end earlier."""
    def lengths(name, **overrides):
        run_online(online_config(tmp_path / name, sft_model, "grpo", steps=2, eval_examples=1, **overrides))
        lines = [json.loads(l) for l in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        return [line["grpo/answer_length"] for line in lines]

    assert lengths("fixed", min_new_tokens=9) == [10.0, 10.0]
    assert max(lengths("free")) < 10.0


def test_min_new_tokens_over_max_is_a_clear_error(tmp_path, sft_model):
    with pytest.raises(ValueError, match=r"min_new_tokens=11: use 0 to 10 \(max_new_tokens\)"):
        run_online(online_config(tmp_path / "x", sft_model, "grpo", min_new_tokens=11))
    assert not (tmp_path / "x").exists()
