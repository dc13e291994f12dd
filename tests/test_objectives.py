"""RL objectives, advantage estimators and preference losses against values computed by hand."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from modalign.rl.objectives import (
    OBJECTIVES,
    PREFERENCE_LOSSES,
    ObjectiveInputs,
    ObjectiveOutput,
    baseline_advantages,
    broadcast_to_tokens,
    dpo_loss,
    rpo_nll,
    get_objective,
    get_preference_loss,
    group_relative_advantages,
    leave_one_out_advantages,
    register_objective,
)

LN2 = 0.6931471805599453
K3_OF_2 = 2.0 - 1.0 - LN2  # k3 with r = pi_ref / pi = 2: (r - 1) - log r = 0.30685282


def inputs(logprobs, advantages, mask=None, old_logprobs=None, **extra) -> ObjectiveInputs:
    logprobs = torch.tensor(logprobs)
    mask = torch.ones_like(logprobs) if mask is None else torch.tensor(mask)
    old = logprobs.clone() if old_logprobs is None else torch.tensor(old_logprobs)
    extra = {k: torch.tensor(v) for k, v in extra.items()}
    return ObjectiveInputs(logprobs=logprobs, old_logprobs=old, advantages=torch.tensor(advantages), mask=mask,
                           **extra)


# ------------------------------------------------------------------ advantages


def test_group_relative_advantages_by_hand():
    # Groups [1, 2] and [3, 4]: mean 1.5 / 3.5, unbiased std sqrt((0.25 + 0.25) / 1) = 0.70711,
    # so A = -+0.5 / 0.70711 = -+0.70711 (up to eps = 1e-6).
    adv = group_relative_advantages(torch.tensor([1.0, 2.0, 3.0, 4.0]), group_size=2)
    assert adv.tolist() == pytest.approx([-0.70711, 0.70711, -0.70711, 0.70711], abs=1e-4)


def test_group_relative_advantages_group_of_three():
    # [1, 2, 6]: mean 3, unbiased std sqrt((4 + 1 + 9) / 2) = sqrt(7) = 2.64575.
    adv = group_relative_advantages(torch.tensor([1.0, 2.0, 6.0]), group_size=3)
    assert adv.tolist() == pytest.approx([-2 / 2.64575, -1 / 2.64575, 3 / 2.64575], abs=1e-4)


def test_dr_grpo_advantages_are_mean_only():
    adv = group_relative_advantages(torch.tensor([1.0, 2.0, 3.0, 7.0]), group_size=2, scale=False)
    assert adv.tolist() == pytest.approx([-0.5, 0.5, -2.0, 2.0])


def test_group_relative_advantages_equal_scores_give_zero():
    adv = group_relative_advantages(torch.tensor([5.0, 5.0, 1.0, 3.0]), group_size=2)
    assert adv.tolist()[:2] == [0.0, 0.0]
    assert torch.isfinite(adv).all()


def test_leave_one_out_by_hand():
    # [1, 2, 4]: 1 - (2 + 4)/2, 2 - (1 + 4)/2, 4 - (1 + 2)/2
    adv = leave_one_out_advantages(torch.tensor([1.0, 2.0, 4.0]), group_size=3)
    assert adv.tolist() == pytest.approx([-2.0, -0.5, 2.5])


def test_leave_one_out_two_groups():
    # [0, 1] -> [0 - 1, 1 - 0]; [3, 3] -> [0, 0]
    adv = leave_one_out_advantages(torch.tensor([0.0, 1.0, 3.0, 3.0]), group_size=2)
    assert adv.tolist() == pytest.approx([-1.0, 1.0, 0.0, 0.0])


@pytest.mark.parametrize("fn", [group_relative_advantages, leave_one_out_advantages])
def test_group_size_errors(fn):
    with pytest.raises(ValueError, match="not divisible"):
        fn(torch.arange(5.0), group_size=2)
    with pytest.raises(ValueError, match="group_size"):
        fn(torch.arange(4.0), group_size=1)
    with pytest.raises(ValueError, match="1-D"):
        fn(torch.zeros(2, 2), group_size=2)


def test_baseline_advantages():
    assert baseline_advantages(torch.tensor([1.0, 2.0, 3.0]), 1.5).tolist() == [-0.5, 0.5, 1.5]
    assert baseline_advantages(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1.0, 1.0, 4.0])).tolist() == [0, 1, -1]
    with pytest.raises(ValueError, match="baseline"):
        baseline_advantages(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1.0, 2.0]))


def test_broadcast_to_tokens_zero_on_padding():
    out = broadcast_to_tokens(torch.tensor([2.0, -1.0]), torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]]))
    assert out.tolist() == [[2.0, 2.0, 0.0], [-1.0, 0.0, 0.0]]
    with pytest.raises(ValueError):
        broadcast_to_tokens(torch.tensor([2.0, -1.0, 0.0]), torch.ones(2, 3))


# ------------------------------------------------------------------ inputs and registry


def test_inputs_check_shapes_and_are_frozen():
    with pytest.raises(ValueError, match="advantages"):
        ObjectiveInputs(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 2), torch.ones(2, 3))
    batch = inputs([[0.0]], [[1.0]])
    with pytest.raises(dataclasses.FrozenInstanceError):
        batch.logprobs = torch.zeros(1, 1)


def test_builtin_objectives_registered():
    assert {"ppo", "grpo", "rloo", "reinforce", "a2c"} <= set(OBJECTIVES)
    assert {"dpo", "ipo", "hinge"} <= set(PREFERENCE_LOSSES)
    assert get_preference_loss("dpo") is dpo_loss


def test_register_new_objective_by_one_function():
    @register_objective("test_double_advantage")
    def double(batch: ObjectiveInputs, scale: float = 2.0) -> ObjectiveOutput:
        return ObjectiveOutput((scale * batch.advantages).sum(), {})

    try:
        assert get_objective("test_double_advantage") is double
        out = get_objective("test_double_advantage")(inputs([[0.0, 0.0]], [[1.0, 2.0]]), scale=3.0)
        assert out.loss.item() == pytest.approx(9.0)
        with pytest.raises(ValueError, match="already registered"):
            register_objective("test_double_advantage")(double)
    finally:
        OBJECTIVES.pop("test_double_advantage")


def test_unknown_names_list_known_ones():
    with pytest.raises(ValueError, match="unknown objective 'nope'.*grpo"):
        get_objective("nope")
    with pytest.raises(ValueError, match="unknown preference loss 'nope'.*dpo"):
        get_preference_loss("nope")


# ------------------------------------------------------------------ online objectives


def test_grpo_one_by_two_by_hand():
    # ratio 1; token 0 has pi_ref / pi = 2, token 1 has pi_ref = pi.
    # per-token loss: -(0.5) + 0.1 * 0.30685282 = -0.46931472 and -0.5; mean = -0.48465736.
    batch = inputs([[-1.0, -1.0]], [[0.5, 0.5]], ref_logprobs=[[-1.0 + LN2, -1.0]])
    out = get_objective("grpo")(batch, beta=0.1)
    assert out.loss.item() == pytest.approx(-0.48465736, abs=1e-6)
    assert out.stats["kl_to_ref"].item() == pytest.approx(K3_OF_2 / 2, abs=1e-6)
    assert out.stats["clip_fraction"].item() == 0.0
    assert out.stats["approx_kl"].item() == 0.0


def test_grpo_clips_ratio():
    # log ratio 0.5 -> r = 1.64872. A = +1: min(1.64872, 1.2) = 1.2; A = -1: min(-1.64872, -1.2) = -1.64872.
    batch = inputs([[0.5], [0.5]], [[1.0], [-1.0]], old_logprobs=[[0.0], [0.0]])
    out = get_objective("grpo")(batch, beta=0.0, clip=0.2)
    assert out.loss.item() == pytest.approx((-1.2 + 1.6487213) / 2, abs=1e-6)
    assert out.stats["clip_fraction"].item() == 1.0


def test_grpo_sequence_vs_token_normalisation():
    # Answers of 3 and 1 tokens, ratio 1, beta 0: per-token loss is -A.
    # sequence: mean(-1, +2) = 0.5; token: (-1 - 1 - 1 + 2) / 4 = -0.25.
    batch = inputs([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]], [[1.0, 1.0, 1.0], [-2.0, 0.0, 0.0]],
                   mask=[[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    grpo = get_objective("grpo")
    assert grpo(batch, beta=0.0, normalization="sequence").loss.item() == pytest.approx(0.5)
    assert grpo(batch, beta=0.0, normalization="token").loss.item() == pytest.approx(-0.25)
    with pytest.raises(ValueError, match="normalization"):
        grpo(batch, beta=0.0, normalization="bogus")


def test_grpo_needs_reference_when_beta_positive():
    with pytest.raises(ValueError, match="ref_logprobs"):
        get_objective("grpo")(inputs([[0.0]], [[1.0]]), beta=0.04)


@pytest.mark.parametrize("name, hparams, weighting", [
    ("grpo", {"beta": 0.1, "normalization": "sequence"}, "sequence"),
    ("grpo", {"beta": 0.1, "normalization": "token"}, "token"),
    ("reinforce", {}, "token"),
    ("rloo", {}, "sequence"),
    ("rloo", {"clip": 0.2}, "sequence"),
    ("ppo", {}, "token"),
])
def test_masked_tokens_are_ignored(name, hparams, weighting):
    # The same two answers, once exactly sized and once padded with finite garbage.
    mask = [[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]]
    padded = inputs([[-1.0, -0.5, 3.0], [-2.0, 1.0, -6.0]], [[1.0, 1.0, 7.0], [-1.0, 4.0, 4.0]], mask=mask,
                    old_logprobs=[[-1.1, -0.4, -4.0], [-2.0, 5.0, 0.0]],
                    ref_logprobs=[[-1.5, -0.5, 9.0], [-1.0, 0.0, 2.0]])
    first = inputs([[-1.0, -0.5]], [[1.0, 1.0]], old_logprobs=[[-1.1, -0.4]], ref_logprobs=[[-1.5, -0.5]])
    second = inputs([[-2.0]], [[-1.0]], old_logprobs=[[-2.0]], ref_logprobs=[[-1.0]])
    fn = get_objective(name)
    loss = fn(padded, **hparams).loss.item()
    first_loss, second_loss = fn(first, **hparams).loss.item(), fn(second, **hparams).loss.item()
    if weighting == "token":  # 2 + 1 real tokens
        expected = (2 * first_loss + second_loss) / 3
    else:
        expected = (first_loss + second_loss) / 2
    assert loss == pytest.approx(expected, abs=1e-6)


def test_reinforce_by_hand():
    # -(2 * -1 + 2 * -2) / 2 = 3; the padded token (logprob 5, A 0) is ignored.
    batch = inputs([[-1.0, -2.0, 5.0]], [[2.0, 2.0, 0.0]], mask=[[1.0, 1.0, 0.0]])
    assert get_objective("reinforce")(batch).loss.item() == pytest.approx(3.0)


def test_reinforce_gradient_is_minus_advantage_over_token_count():
    # 4 real tokens: dL/dlogprob = -A / 4 on real tokens, 0 on padding (even with A != 0 there).
    logprobs = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, 9.0, 9.0]], requires_grad=True)
    advantages = torch.tensor([[1.0, 1.0, 1.0], [-3.0, -3.0, -3.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    batch = ObjectiveInputs(logprobs, logprobs.detach(), advantages, mask)
    loss = get_objective("reinforce")(batch).loss
    # -((-1 - 2 - 3) + (-3 * -0.5)) / 4 = 4.5 / 4
    assert loss.item() == pytest.approx(1.125)
    loss.backward()
    torch.testing.assert_close(logprobs.grad, torch.tensor([[-0.25, -0.25, -0.25], [0.75, 0.0, 0.0]]))


def test_rloo_by_hand():
    # Sequence log-probs -3 and -3 (padding 9 ignored); A = 2 and -1.
    # L = mean(-(2 * -3), -(-1 * -3)) = mean(6, -3) = 1.5; dL/dlogprob = -A_i / B on real tokens.
    logprobs = torch.tensor([[-1.0, -2.0], [-3.0, 9.0]], requires_grad=True)
    batch = ObjectiveInputs(logprobs, logprobs.detach(), torch.tensor([[2.0, 2.0], [-1.0, 0.0]]),
                            torch.tensor([[1.0, 1.0], [1.0, 0.0]]))
    loss = get_objective("rloo")(batch).loss
    assert loss.item() == pytest.approx(1.5)
    loss.backward()
    torch.testing.assert_close(logprobs.grad, torch.tensor([[-1.0, -1.0], [0.5, 0.0]]))


def test_rloo_clipped_matches_gradient_on_policy_and_clips_off_policy():
    logprobs = torch.tensor([[-1.0, -2.0], [-3.0, 9.0]], requires_grad=True)
    mask, adv = torch.tensor([[1.0, 1.0], [1.0, 0.0]]), torch.tensor([[2.0, 2.0], [-1.0, 0.0]])
    on_policy = get_objective("rloo")(ObjectiveInputs(logprobs, logprobs.detach(), adv, mask), clip=0.2)
    assert on_policy.loss.item() == pytest.approx(-0.5)  # ratio 1: mean(-2, 1)
    on_policy.loss.backward()
    torch.testing.assert_close(logprobs.grad, torch.tensor([[-1.0, -1.0], [0.5, 0.0]]))
    # Answer 1 has sequence log-ratio 0.5 (r = 1.6487 -> 1.2 with A = 2); answer 2 has ratio 1.
    old = torch.tensor([[-1.2, -2.3], [-3.0, 0.0]])
    off_policy = get_objective("rloo")(ObjectiveInputs(logprobs.detach(), old, adv, mask), clip=0.2)
    assert off_policy.loss.item() == pytest.approx((-2.4 + 1.0) / 2, abs=1e-6)
    assert off_policy.stats["clip_fraction"].item() == 0.5


def test_ppo_by_hand():
    # ratio 1: policy loss -(1 + 2) / 2 = -1.5; value loss 0.5 * (1 + 4) / 2 = 1.25 (x 0.5);
    # entropy bonus 0.1 * (0.5 + 1.5) / 2 = 0.1.  Total -1.5 + 0.625 - 0.1 = -0.975.
    batch = inputs([[-1.0, -1.0]], [[1.0, 2.0]], values=[[1.0, 2.0]], old_values=[[1.0, 2.0]],
                   returns=[[0.0, 0.0]], entropy=[[0.5, 1.5]])
    out = get_objective("ppo")(batch, value_coef=0.5, entropy_coef=0.1)
    assert out.loss.item() == pytest.approx(-0.975)
    assert out.stats["value_loss"].item() == pytest.approx(1.25)
    assert out.stats["entropy"].item() == pytest.approx(1.0)
    assert out.stats["clip_fraction"].item() == 0.0
    assert all(not v.requires_grad and v.dim() == 0 for v in out.stats.values())


def test_ppo_value_loss_needs_old_values():
    with pytest.raises(ValueError, match="old_values"):
        get_objective("ppo")(inputs([[0.0]], [[1.0]], values=[[1.0]], returns=[[0.0]]))


def test_a2c_by_hand():
    # policy: -mean(1 * -1, -1 * -2) = -mean(-1, 2) = -0.5; value: 0.5 * mean(1, 4) = 1.25;
    # entropy: 0.01 * 1.  Total 0.74.
    batch = inputs([[-1.0, -2.0]], [[1.0, -1.0]], values=[[1.0, 0.0]], returns=[[0.0, 2.0]], entropy=[[1.0, 1.0]])
    out = get_objective("a2c")(batch)
    assert out.loss.item() == pytest.approx(0.74)
    assert out.stats["policy_loss"].item() == pytest.approx(-0.5)
    assert out.stats["value_loss"].item() == pytest.approx(2.5)


def test_a2c_requires_critic_and_entropy():
    with pytest.raises(ValueError, match="values"):
        get_objective("a2c")(inputs([[0.0]], [[1.0]]))
    with pytest.raises(ValueError, match="entropy"):
        get_objective("a2c")(inputs([[0.0]], [[1.0]], values=[[0.0]], returns=[[0.0]]))
    out = get_objective("a2c")(inputs([[0.0]], [[1.0]], values=[[0.0]], returns=[[1.0]]), entropy_coef=0.0)
    assert out.loss.item() == pytest.approx(0.5)  # 0.5 * (0 - 1)^2


# ------------------------------------------------------------------ preference losses

# Two pairs: h = (pc - rc) - (pr - rr) = (1 - (-1), 0 - 0) = (2, 0).
PAIRS = dict(policy_chosen=torch.tensor([-1.0, -2.0]), policy_rejected=torch.tensor([-3.0, -2.0]),
             ref_chosen=torch.tensor([-2.0, -2.0]), ref_rejected=torch.tensor([-2.0, -2.0]))


def test_dpo_by_hand():
    # beta 0.5: beta h = (1, 0); -logsig(1) = log(1 + e^-1) = 0.31326169, -logsig(0) = log 2 = 0.69314718.
    loss, chosen, rejected = get_preference_loss("dpo")(**PAIRS, beta=0.5)
    assert loss.item() == pytest.approx((0.31326169 + 0.69314718) / 2, abs=1e-6)
    assert chosen.tolist() == pytest.approx([0.5, 0.0])  # 0.5 * (pc - rc)
    assert rejected.tolist() == pytest.approx([-0.5, 0.0])  # 0.5 * (pr - rr)


def test_conservative_dpo_by_hand():
    # eps 0.1, beta h = 1: 0.9 * log(1 + e^-1) + 0.1 * log(1 + e) = 0.9 * 0.31326169 + 0.1 * 1.31326169
    one = {k: v[:1] for k, v in PAIRS.items()}
    loss, _, _ = get_preference_loss("dpo")(**one, beta=0.5, label_smoothing=0.1)
    assert loss.item() == pytest.approx(0.41326169, abs=1e-6)


def test_dpo_gradient_raises_chosen():
    # dL/dpc = -beta * sigmoid(-beta h) = -0.5 * sigmoid(-1) = -0.5 * 0.26894142
    pc = torch.tensor([-1.0], requires_grad=True)
    loss, _, _ = dpo_loss(pc, torch.tensor([-3.0]), torch.tensor([-2.0]), torch.tensor([-2.0]), beta=0.5)
    loss.backward()
    assert pc.grad.item() == pytest.approx(-0.13447071, abs=1e-6)


def test_rpo_nll_by_hand():
    # summed chosen log-probs -6 over 3 tokens and -2 over 4: per token 2 and 0.5, mean 1.25, times alpha
    chosen, tokens = torch.tensor([-6.0, -2.0], requires_grad=True), torch.tensor([3.0, 4.0])
    assert rpo_nll(chosen, tokens, 1.0).item() == pytest.approx(1.25)
    loss = rpo_nll(chosen, tokens, 0.5)
    assert loss.item() == pytest.approx(0.625)
    loss.backward()  # d/dpc_i = -alpha / (B |y_i|): -0.5 / 6 and -0.5 / 8
    assert chosen.grad.tolist() == pytest.approx([-0.5 / 6, -0.5 / 8])


def test_ipo_by_hand():
    # beta 0.5: target 1/(2 beta) = 1, ((2 - 1)^2 + (0 - 1)^2) / 2 = 1
    # beta 0.25: target 2, ((2 - 2)^2 + (0 - 2)^2) / 2 = 2
    assert get_preference_loss("ipo")(**PAIRS, beta=0.5).loss.item() == pytest.approx(1.0)
    assert get_preference_loss("ipo")(**PAIRS, beta=0.25).loss.item() == pytest.approx(2.0)


def test_hinge_by_hand():
    # beta 0.25: (relu(1 - 0.5) + relu(1 - 0)) / 2 = 0.75; beta 1: (relu(-1) + relu(1)) / 2 = 0.5
    assert get_preference_loss("hinge")(**PAIRS, beta=0.25).loss.item() == pytest.approx(0.75)
    out = get_preference_loss("hinge")(**PAIRS, beta=1.0)
    assert out.loss.item() == pytest.approx(0.5)
    assert out.chosen_rewards.tolist() == pytest.approx([1.0, 0.0])
