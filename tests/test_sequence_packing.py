"""SFT sequence packing computes what one padded row per example does: same loss, same gradients."""

from __future__ import annotations

import pytest
import torch

from modalign.data.dataset import read_examples
from modalign.data.shapes import build_shapes_dataset
from modalign.models.inputs import MediaStore, collate_sft, encode_sft_example
from modalign.models.sequence_packing import can_pack, collate_packed, pack_examples
from test_tinyvlm import make_policy


@pytest.fixture(scope="module")
def encoded(tmp_path_factory):
    """Ten tiny ShapesWorld examples (captions and questions, image + audio each), tokenized."""
    root = build_shapes_dataset(tmp_path_factory.mktemp("pack") / "data", n_train=2, n_test=1, seed=0,
                                caption_noise=0.3)
    policy = make_policy()
    media = MediaStore(root)
    return policy, [encode_sft_example(policy.processor, media, e, 128) for e in read_examples(root, "train")]


def _loss_and_grads(model, batch):
    model.zero_grad(set_to_none=True)
    loss = model(**batch).loss
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]


def test_packed_rows_give_the_padded_loss_and_gradients(encoded):
    policy, items = encoded
    model, pad = policy.model.eval(), policy.processor.tokenizer.pad_token_id  # eval: no dropout draws to differ
    rows = pack_examples(items, 128)
    assert len(rows) < len(items) and sorted(id(e) for row in rows for e in row) == sorted(id(e) for e in items)
    assert all(sum(e.input_ids.shape[0] for e in row) <= 128 for row in rows)
    padded_loss, padded_grads = _loss_and_grads(model, collate_sft(items, pad))
    packed_loss, packed_grads = _loss_and_grads(model, collate_packed(rows, pad))
    assert torch.allclose(packed_loss, padded_loss, atol=1e-5)
    assert len(packed_grads) == len(padded_grads) > 0
    for a, b in zip(packed_grads, padded_grads):
        assert torch.allclose(a, b, atol=1e-5)


def test_packed_mask_keeps_examples_apart(encoded):
    policy, items = encoded
    batch = collate_packed([items[:3]], policy.processor.tokenizer.pad_token_id)
    first, second = items[0].input_ids.shape[0], items[1].input_ids.shape[0]
    mask = batch["attention_mask"][0, 0]  # (L, L)
    assert batch["position_ids"][0, first] == 0 and batch["position_ids"][0, first + second - 1] == second - 1
    assert not mask[first, first - 1] and mask[first + 1, first] and mask[first - 1, 0]
    assert batch["labels"][0, first] == -100  # an example's first token is never a target


def test_only_early_fusion_packs():
    assert can_pack(make_policy("concat").model)
    assert not can_pack(make_policy("cross_attention").model) and not can_pack(make_policy("weighted_sum").model)
