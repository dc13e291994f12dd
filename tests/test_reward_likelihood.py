"""The likelihood feature of reward models: equals the backbone's answer log-prob at start, dense
shares sum to the score, it survives save/load, and it needs the answer mask."""

from __future__ import annotations

import pytest
import torch

from modalign.data.dataset import read_examples
from modalign.models.inputs import MediaStore, collate_sft, encode_sft_example
from modalign.models.policy import load_policy
from modalign.reward.model import ScalarHeadModel


@pytest.fixture(scope="module")
def batch(sft_model):
    model, data = sft_model
    policy = load_policy(model)
    examples = [e for e in read_examples(data, "train") if e.meta["task"] == "caption"][:3]
    encoded = [encode_sft_example(policy.processor, MediaStore(data), e, 128) for e in examples]
    tensors = collate_sft(encoded, policy.processor.tokenizer.pad_token_id)
    return policy, tensors


def test_starts_as_the_backbones_mean_answer_logprob(batch):
    policy, tensors = batch
    rm = ScalarHeadModel(policy.model, likelihood_feature=True).eval()
    answer_mask = tensors["labels"] != -100
    with torch.no_grad():
        score = rm(tensors["input_ids"], tensors["attention_mask"], answer_mask=answer_mask,
                   pixel_values=tensors["pixel_values"], input_values=tensors["input_values"])[:, 0]
        loss_per_row = []
        for row in range(tensors["input_ids"].shape[0]):
            out = policy.model(input_ids=tensors["input_ids"][row : row + 1],
                               attention_mask=tensors["attention_mask"][row : row + 1],
                               pixel_values=tensors["pixel_values"][row : row + 1],
                               input_values=tensors["input_values"][row : row + 1],
                               labels=tensors["labels"][row : row + 1])
            loss_per_row.append(-out.loss)  # mean log-prob of the answer tokens
    assert score.tolist() == pytest.approx(torch.stack(loss_per_row).tolist(), abs=1e-4)


def test_dense_shares_sum_to_the_score_and_survive_save_load(tmp_path, batch):
    policy, tensors = batch
    rm = ScalarHeadModel(policy.model, likelihood_feature=True)
    with torch.no_grad():
        rm.head.weight.normal_()
        rm.likelihood_weight.fill_(2.5)
        rm.norm_mean.fill_(0.3)
        rm.norm_std.fill_(1.7)
    rm.save(tmp_path / "rm", policy.processor)
    loaded = ScalarHeadModel.load(tmp_path / "rm").eval()
    inputs = dict(answer_mask=tensors["labels"] != -100, pixel_values=tensors["pixel_values"],
                  input_values=tensors["input_values"])
    with torch.no_grad():
        score = loaded(tensors["input_ids"], tensors["attention_mask"], normalize=True, **inputs)
        dense = loaded.dense_scores(tensors["input_ids"], tensors["attention_mask"], normalize=True, **inputs)
        original = rm.eval()(tensors["input_ids"], tensors["attention_mask"], normalize=True, **inputs)
    assert torch.allclose(dense.sum(1), score, atol=1e-5) and torch.allclose(score, original, atol=1e-5)
    assert loaded.likelihood_weight.item() == pytest.approx(2.5)
    with pytest.raises(ValueError, match="answer_mask"):
        loaded(tensors["input_ids"], tensors["attention_mask"], pixel_values=tensors["pixel_values"],
               input_values=tensors["input_values"])
