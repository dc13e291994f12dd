"""Frozen-backbone reward models train on cached features: the same scores as the full forward, each
distinct answer run through the backbone once."""

from __future__ import annotations

import pytest
import torch

from modalign.data.dataset import read_examples
from modalign.models.inputs import MediaStore
from modalign.models.policy import load_policy
from modalign.reward.model import ScalarHeadModel
from modalign.reward.train import (
    PreferencePair, encode_pairs, feature_accuracy, fit_normalizer, fit_normalizer_on_features, pair_features,
    pair_scores, pairwise_accuracy, train_head_on_features,
)


@pytest.fixture
def encoded(sft_model):
    model_dir, data = sft_model
    policy = load_policy(model_dir)
    captions = [e for e in read_examples(data, "train") if e.meta["task"] == "caption"][:6]
    # each caption: reference vs a truncated answer, and reference vs a wrong word; the reference is in two pairs
    pairs = [PreferencePair(e, e.answer, e.answer.split(",")[0]) for e in captions]
    pairs += [PreferencePair(e, e.answer, e.answer.replace("a ", "two ", 1), tie=(i == 0)) for i, e in enumerate(captions)]
    return policy, encode_pairs(policy.processor, MediaStore(data), pairs, 128)


@pytest.mark.parametrize("likelihood", [False, True])
def test_feature_scores_equal_the_full_forward(encoded, likelihood):
    policy, pairs = encoded
    pad = policy.processor.tokenizer.pad_token_id
    torch.manual_seed(0)
    model = ScalarHeadModel(policy.model, likelihood_feature=likelihood).eval()
    with torch.no_grad():
        model.head.weight.normal_()  # a likelihood model's head starts at zero: give it something to score
    features = pair_features(model, pairs, pad)
    assert features.hidden.shape[0] == len({(p.chosen.example_id, tuple(p.chosen.input_ids.tolist())) for p in pairs}
                                           | {(p.rejected.example_id, tuple(p.rejected.input_ids.tolist())) for p in pairs})
    with torch.no_grad():
        full = pair_scores(model, pairs, pad)
        cached = features.scores(model)
    torch.testing.assert_close(cached[0], full[0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(cached[1], full[1], atol=1e-4, rtol=1e-4)
    assert feature_accuracy(model, features) == pairwise_accuracy(model, pairs, pad)
    fit_normalizer_on_features(model, features)
    mean, std = float(model.norm_mean), float(model.norm_std)
    fit_normalizer(model, pairs, pad)
    assert float(model.norm_mean) == pytest.approx(mean, abs=1e-4) and float(model.norm_std) == pytest.approx(std, abs=1e-4)


def test_training_on_features_separates_the_pairs(encoded):
    policy, pairs = encoded
    model = ScalarHeadModel(policy.model, likelihood_feature=True)
    model.backbone.requires_grad_(False)
    features = pair_features(model, pairs, policy.processor.tokenizer.pad_token_id)
    before = feature_accuracy(model, features)
    losses = []
    train_head_on_features(model, features, steps=150, batch_size=8, lr=3e-2, on_step=lambda s, l: losses.append(l))
    assert sum(losses[-10:]) / 10 < sum(losses[:10]) / 10
    assert feature_accuracy(model, features) >= max(before, 0.9)
