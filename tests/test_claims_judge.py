"""The ask primitive, claim verification, its cache and the judge reward (issue 19)."""

from __future__ import annotations

import pytest
import torch

from modalign.data.dataset import read_examples
from modalign.feedback.judges.ask import Query, question_example, score_options
from modalign.models.inputs import MediaStore, encode_sft_example
from modalign.models.policy import create_tinyvlm
from modalign.reward.model import answer_token_logprobs

CORPUS = ["a large red circle on the left, a small blue square on the right. two high beeps.",
          "describe the scene.", "is there a red circle? yes no", "are there two beeps? yes no"] * 20
TINY = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
            vision_hidden_size=32, audio_hidden_size=32, vision_layers=1, audio_layers=1)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """A tiny ShapesWorld (train examples) and an untrained built-in policy."""
    from modalign.data.shapes import build_shapes_dataset

    root = build_shapes_dataset(tmp_path_factory.mktemp("claims") / "data", n_train=3, n_test=1, seed=0,
                                questions_per_scene=1)
    return root, read_examples(root, "train"), create_tinyvlm(CORPUS, vocab_size=200, seed=0, **TINY)


def count_calls(model, name: str) -> list:
    """Wrap `model.<name>` so each call is recorded (its first argument's batch size)."""
    calls, original = [], getattr(model, name)

    def counted(*args, **kwargs):
        first = args[0] if args else next(iter(kwargs.values()))
        calls.append(first.shape[0])
        return original(*args, **kwargs)

    setattr(model, name, counted)
    return calls


def plain_logprob(policy, media, query: Query, option: str) -> float:
    """The option's log-likelihood by hand: one unpacked forward of prompt + option, media from pixels."""
    encoded = encode_sft_example(policy.processor, media, question_example(query), 512, option)
    ids = encoded.input_ids.unsqueeze(0)
    logits = policy.model(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=encoded.pixel_values,
                          input_values=encoded.input_values).logits
    mask = torch.zeros_like(ids)
    mask[0, encoded.prompt_length :] = 1
    return float(answer_token_logprobs(logits, ids, mask).sum())


@pytest.mark.parametrize("packed", [True, False])
def test_score_options_equal_summed_token_logprobs_of_a_plain_forward(shapes, monkeypatch, packed):
    root, examples, policy = shapes
    if not packed:  # the path of models that cannot pack a prompt with its options
        monkeypatch.setattr("modalign.feedback.judges.ask.supports_shared_prefix", lambda model: False)
    media = MediaStore(root)
    captions = [e for e in examples if e.meta["task"] == "caption"]
    queries = [Query(captions[0], "is there a red circle?"), Query(captions[0], "are there two beeps?"),
               Query(captions[1], "is there a red circle?")]
    options = ["yes", "no", "a red circle"]
    encodes = count_calls(policy.model, "encode_media")
    scores = score_options(policy, queries, options, media)
    assert scores.shape == (3, 3)
    assert encodes == [2]  # one call, one row per distinct example: the two questions on captions[0] share it
    policy.model.encode_media = type(policy.model).encode_media.__get__(policy.model)
    with torch.no_grad():
        policy.model.eval()
        expected = torch.tensor([[plain_logprob(policy, media, q, o) for o in options] for q in queries])
    torch.testing.assert_close(scores, expected, rtol=0, atol=1e-4)
    assert (scores < 0).all()
    assert not torch.equal(scores[0], scores[1])  # the question changes the scores
