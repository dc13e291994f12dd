"""Bootstrap ensembles of reward heads on one frozen backbone, for active selection.

Each member is a fresh scalar head (plus likelihood weight) trained on a resample, with
replacement, of the store's preference pairs; all members share the backbone's cached
features, so K members cost K head trainings, not K backbone passes. Their disagreement on
a new pair is the uncertainty that ensemble-based selection reads (Christiano et al. 2017,
sec. 2.2.4; Lakshminarayanan et al. 2017 for bootstrap-style deep ensembles).
"""

from __future__ import annotations

import random
from typing import Sequence

import torch

from modalign.data.records import Completion, Example
from modalign.reward.model import ScalarHeadModel
from modalign.reward.train import PairFeatures, pair_features, sequence_features, train_head_on_features


def bootstrap_ensemble_scores(policy_path: str, store, examples: Sequence[Example], completions: Sequence[Completion],
                              media, members: int = 5, steps: int = 1000, seed: int = 0,
                              max_length: int = 128, device: torch.device | str = "cpu") -> torch.Tensor:
    """Scores (K, N) of the N answers (`completions[i]` answers `examples[i]`) under K bootstrap heads, on the
    CPU (they choose the pairs to judge); the backbone and the heads run on `device`."""
    from modalign.models.inputs import encode_sft_example
    from modalign.models.policy import load_policy
    from modalign.recipes.reward import encode_store_pairs

    policy = load_policy(policy_path)
    pad = policy.processor.tokenizer.pad_token_id
    policy.model.requires_grad_(False).to(device)  # heads follow their backbone's device
    features = pair_features(ScalarHeadModel(policy.model), encode_store_pairs(store, policy.processor, 1, max_length),
                             pad)
    answers = [encode_sft_example(policy.processor, media, e, max_length, c.text) for e, c in zip(examples, completions)]
    hidden, loglik = sequence_features(policy.model, answers, pad)
    rng, scores = random.Random(seed), []
    for member in range(members):
        torch.manual_seed(seed * 1000 + member)
        head = ScalarHeadModel(policy.model, likelihood_feature=True)
        train_head_on_features(head, resample(features, rng), steps, seed=seed * 1000 + member)
        with torch.no_grad():
            scores.append(head.score_features(hidden, loglik)[:, 0])
    return torch.stack(scores).cpu()  # (K, N)


def resample(features: PairFeatures, rng: random.Random) -> PairFeatures:
    """The same number of pairs drawn with replacement (the cached sequence features are shared)."""
    rows = torch.tensor([rng.randrange(len(features.chosen)) for _ in range(len(features.chosen))])
    return PairFeatures(features.hidden, features.loglik, features.chosen[rows], features.rejected[rows],
                        features.margin[rows], features.tie[rows])
