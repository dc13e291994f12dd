"""A reward model on the policy backbone really sees the media: blanking them costs accuracy."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from PIL import Image

from modalign.data.dataset import read_examples
from modalign.data.shapes import Scene, caption, noisy_caption
from modalign.models.inputs import MediaStore
from modalign.models.policy import load_policy
from modalign.reward.model import ScalarHeadModel, last_token_index
from modalign.reward.train import PreferencePair, encode_pairs, fit_normalizer, pairwise_accuracy, train_reward_model


def test_last_token_index_left_and_right_padding():
    mask = torch.tensor([[1, 1, 1, 0], [0, 1, 1, 1], [0, 0, 1, 0]])
    assert last_token_index(mask).tolist() == [2, 3, 2]


class BlankMedia(MediaStore):
    """Grey images and silent audio: what a text-only reward model would see."""

    def images(self, example):
        return [Image.new("RGB", image.size, (128, 128, 128)) for image in super().images(example)]

    def audio(self, example):
        return [np.zeros_like(clip) for clip in super().audio(example)]


def caption_pairs(examples, seed, per_example=1):
    """Faithful caption vs the same caption with one hallucination: only the media can tell them apart."""
    rng = random.Random(seed)
    pairs = []
    for example in examples:
        if example.meta["task"] != "caption":
            continue
        scene = Scene.from_dict(example.meta["scene"])
        for _ in range(per_example):
            pairs.append(PreferencePair(example, caption(scene), noisy_caption(scene, rng)[0]))
    return pairs


@pytest.mark.slow
def test_reward_model_uses_image_and_audio(tmp_path, media_sft):
    sft_folder, root = media_sft  # 400 SFT steps on 300 noise-free scenes (shared_runs.py), shared with test_sft
    policy = load_policy(sft_folder)
    pad = policy.processor.tokenizer.pad_token_id
    model = ScalarHeadModel(policy.model)
    train = encode_pairs(policy.processor, MediaStore(root), caption_pairs(read_examples(root, "train"), 0, 3), 128)
    test_pairs = caption_pairs(read_examples(root, "test"), 1)
    train_reward_model(model, train, pad, steps=400, batch_size=16, lr=3e-4)
    fit_normalizer(model, train, pad)
    seen = pairwise_accuracy(model, encode_pairs(policy.processor, MediaStore(root), test_pairs, 128), pad)
    blank = pairwise_accuracy(model, encode_pairs(policy.processor, BlankMedia(root), test_pairs, 128), pad)
    print(f"reward model held-out accuracy: media {seen:.3f}, blanked {blank:.3f}")
    # measured 0.78 vs 0.55 with 2 threads and 0.72 vs 0.55 with 1 (BLAS order changes the training path);
    # with fused AdamW in SFT, 0.80 vs 0.55 with 1 thread
    assert seen >= 0.7, (seen, blank)
    assert seen >= blank + 0.12, (seen, blank)

    model.save(tmp_path / "rm", policy.processor)
    reloaded = ScalarHeadModel.load(tmp_path / "rm")
    again = pairwise_accuracy(reloaded, encode_pairs(policy.processor, MediaStore(root), test_pairs, 128), pad)
    assert again == seen
    assert float(reloaded.norm_std) == pytest.approx(float(model.norm_std))
