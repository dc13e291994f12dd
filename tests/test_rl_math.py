"""Losses, advantages and KL estimators against values computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from modalign.reward.losses import bradley_terry_loss, plackett_luce_loss, rating_regression_loss
from modalign.rl.advantages import gae, whiten
from modalign.rl.kl import AdaptiveKLController, kl_k1, kl_k3
from modalign.rl.losses import clipped_value_loss, entropy_from_logits, masked_mean, ppo_policy_loss


def test_gae_by_hand():
    # deltas = [0.1, 0.1, 0.3]; A2 = 0.3, A1 = 0.1 + 0.5 * 0.3, A0 = 0.1 + 0.5 * 0.25
    advantages, returns = gae(torch.tensor([[0.0, 0.0, 1.0]]), torch.tensor([[0.5, 0.6, 0.7]]),
                              torch.ones(1, 3), gamma=1.0, lam=0.5)
    assert advantages.tolist()[0] == pytest.approx([0.225, 0.25, 0.3])
    assert returns.tolist()[0] == pytest.approx([0.725, 0.85, 1.0])


def test_gae_stops_at_padding():
    # The last token is padding: its value is ignored and the episode ends at token 1.
    advantages, _ = gae(torch.tensor([[0.0, 1.0, 5.0]]), torch.tensor([[0.5, 0.6, 9.0]]),
                        torch.tensor([[1.0, 1.0, 0.0]]), gamma=1.0, lam=0.5)
    assert advantages.tolist()[0] == pytest.approx([0.3, 0.4, 0.0])


def test_gae_discount():
    # gamma = 0.5, lam = 1, zero values: A_t is the discounted return.
    advantages, _ = gae(torch.tensor([[1.0, 0.0, 4.0]]), torch.zeros(1, 3), torch.ones(1, 3), gamma=0.5, lam=1.0)
    assert advantages.tolist()[0] == pytest.approx([2.0, 2.0, 4.0])


def test_whiten_ignores_padding():
    out = whiten(torch.tensor([[1.0, 3.0, 100.0]]), torch.tensor([[1.0, 1.0, 0.0]]))
    assert out.tolist()[0] == pytest.approx([-1.0, 1.0, 0.0], abs=1e-4)


def test_ppo_policy_loss_by_hand():
    logprobs = torch.log(torch.tensor([[1.5, 0.5]]))
    result = ppo_policy_loss(logprobs, torch.zeros(1, 2), torch.tensor([[1.0, -1.0]]), torch.ones(1, 2), clip=0.2)
    # token 0: min(1.5, 1.2) = 1.2; token 1: min(-0.5, -0.8) = -0.8; loss = -(1.2 - 0.8) / 2
    assert result.loss.item() == pytest.approx(-0.2)
    assert result.clip_fraction.item() == pytest.approx(1.0)
    expected_kl = ((0.5 - math.log(1.5)) + (-0.5 - math.log(0.5))) / 2
    assert result.approx_kl.item() == pytest.approx(expected_kl, rel=1e-5)


def test_ppo_policy_loss_mask():
    logprobs = torch.log(torch.tensor([[1.1, 7.0]]))
    result = ppo_policy_loss(logprobs, torch.zeros(1, 2), torch.tensor([[2.0, 9.0]]), torch.tensor([[1.0, 0.0]]))
    assert result.loss.item() == pytest.approx(-2.2)
    assert result.clip_fraction.item() == 0.0


def test_clipped_value_loss_by_hand():
    loss = clipped_value_loss(torch.tensor([[1.0]]), torch.tensor([[0.5]]), torch.tensor([[2.0]]), torch.ones(1, 1), 0.2)
    assert loss.item() == pytest.approx(0.5 * 1.69)  # clipped value 0.7 is further from 2.0 than 1.0


def test_kl_estimators():
    logp, ref = torch.log(torch.tensor([0.5])), torch.log(torch.tensor([0.25]))
    assert kl_k1(logp, ref).item() == pytest.approx(math.log(2))
    assert kl_k3(logp, ref).item() == pytest.approx(0.5 - 1 + math.log(2))
    assert kl_k3(ref, ref).item() == 0.0


def test_adaptive_kl_controller():
    controller = AdaptiveKLController(value=0.1, target=6.0, horizon=10_000)
    controller.update(observed_kl=12.0, n_steps=100)  # error clipped to 0.2
    assert controller.value == pytest.approx(0.1 * 1.002)
    controller.update(observed_kl=3.0, n_steps=100)  # error -0.5 clipped to -0.2
    assert controller.value == pytest.approx(0.1 * 1.002 * 0.998)


def test_entropy_and_masked_mean():
    uniform = torch.zeros(1, 1, 4)
    assert entropy_from_logits(uniform).item() == pytest.approx(math.log(4))
    assert masked_mean(torch.tensor([1.0, 3.0, 10.0]), torch.tensor([1, 1, 0])).item() == 2.0


def test_bradley_terry_by_hand():
    chosen, rejected = torch.tensor([2.0]), torch.tensor([0.0])
    assert bradley_terry_loss(chosen, rejected).item() == pytest.approx(math.log(1 + math.exp(-2)))
    assert bradley_terry_loss(chosen, rejected, margin=torch.tensor([1.0])).item() == pytest.approx(math.log(1 + math.exp(-1)))
    tie = bradley_terry_loss(chosen, rejected, tie=torch.tensor([True])).item()
    assert tie == pytest.approx(math.log(1 + math.exp(-2)) + math.log(1 + math.exp(2)))
    # A tie is cheapest when the scores are equal.
    assert bradley_terry_loss(chosen, chosen.clone(), tie=torch.tensor([True])).item() == pytest.approx(2 * math.log(2))


def test_plackett_luce_by_hand():
    loss = plackett_luce_loss(torch.tensor([[2.0, 1.0, 0.0]])).item()
    expected = -((2 - math.log(math.e**2 + math.e + 1)) + (1 - math.log(math.e + 1)))
    assert loss == pytest.approx(expected, rel=1e-5)
    short = plackett_luce_loss(torch.tensor([[2.0, 1.0, 99.0]]), torch.tensor([[True, True, False]])).item()
    assert short == pytest.approx(math.log(1 + math.exp(-1)), rel=1e-5)
    # Two candidates: Plackett-Luce equals Bradley-Terry.
    assert plackett_luce_loss(torch.tensor([[2.0, 0.0]])).item() == pytest.approx(
        bradley_terry_loss(torch.tensor([2.0]), torch.tensor([0.0])).item())


def test_rating_regression_skips_missing_axes():
    loss = rating_regression_loss(torch.tensor([[1.0, 5.0]]), torch.tensor([[3.0, 0.0]]), torch.tensor([[1, 0]]))
    assert loss.item() == 4.0
