"""The rollout core: log-probs recomputed from cached media equal those generate sampled from."""

from __future__ import annotations

import pytest
import torch

from modalign.models.tinyvlm import FUSIONS
from modalign.rl.rollout import answer_mask, response_logprobs, sample_answers
from test_tinyvlm import make_policy, mixed_batch


def test_answer_mask_stops_after_first_eos():
    responses = torch.tensor([[5, 6, 3, 0, 0], [5, 3, 7, 3, 0], [5, 6, 7, 8, 9]])
    assert answer_mask(responses, eos_token_id=3).tolist() == [[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1]]


def test_recomputed_logprobs_match_sampling_distribution():
    policy = make_policy("cross_attention")
    model, tokenizer = policy.model.eval(), policy.processor.tokenizer
    batch = dict(mixed_batch(policy.processor))
    torch.manual_seed(0)
    samples = sample_answers(model, batch, 3, 10, 0.7, tokenizer.eos_token_id, tokenizer.pad_token_id)
    assert samples.sequences.shape[0] == 6 and samples.media.image_rows.tolist() == [0, 1, 2]
    torch.manual_seed(0)
    media = model.encode_media(batch["input_ids"], batch["pixel_values"], batch["input_values"]).repeat_interleave(3, 2)
    reference = model.generate(
        input_ids=batch["input_ids"].repeat_interleave(3, 0), attention_mask=batch["attention_mask"].repeat_interleave(3, 0),
        media=media, max_new_tokens=10, do_sample=True, temperature=0.7, top_k=None, top_p=None, output_scores=True,
        return_dict_in_generate=True, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    assert torch.equal(reference.sequences, samples.sequences)
    sampled_from = torch.stack(reference.scores, 1).log_softmax(-1)
    expected = sampled_from.gather(-1, samples.responses.unsqueeze(-1)).squeeze(-1)
    with torch.no_grad():
        recomputed = response_logprobs(model, samples, temperature=0.7)
    mask = samples.response_mask.bool()
    assert torch.allclose(recomputed[mask], expected[mask], atol=1e-5)


def test_a_prompt_is_shared_only_with_several_answers_and_a_text_token_last():
    from modalign.models.prompt_cache import can_share_prompt

    prompts = torch.tensor([[0, 4, 9, 7], [4, 4, 8, 7]])  # 4: a media placeholder
    assert can_share_prompt(prompts, [4], repeats=2)
    assert not can_share_prompt(prompts, [4], repeats=1)  # one answer: nothing to share
    assert not can_share_prompt(prompts[:, :1], [4], repeats=2)  # one token: no prefix to cache
    assert not can_share_prompt(prompts[:, :2], [4], repeats=2)  # a placeholder last: needs its media


def prompt_rows_seen(model, embedding) -> list[tuple[int, int]]:
    """(rows, tokens) of every call to `embedding` (the model's token embedding) from now on."""
    seen: list[tuple[int, int]] = []
    embedding.register_forward_hook(lambda module, args, out: seen.append(tuple(args[0].shape)))
    return seen


def sampled_twice(model, batch: dict, media, groups: int, **sampling):
    """The same sampling with `num_return_sequences` (shared prompt cache) and on prompts repeated by hand."""
    rows = batch["input_ids"].shape[0]
    torch.manual_seed(0)
    shared = model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], media=media,
                            num_return_sequences=groups, output_scores=True, return_dict_in_generate=True, **sampling)
    torch.manual_seed(0)
    repeated = model.generate(input_ids=batch["input_ids"].repeat_interleave(groups, 0),
                              attention_mask=batch["attention_mask"].repeat_interleave(groups, 0),
                              media=media.repeat_interleave(groups, rows), output_scores=True,
                              return_dict_in_generate=True, **sampling)
    return shared, repeated


@pytest.mark.parametrize("fusion", FUSIONS)
def test_answers_from_a_shared_prompt_cache_equal_those_of_repeated_prompts(fusion):
    """Each prompt runs once (B rows, all but its last token) and its G answers continue from its cache:
    the same tokens and scores as G copies of the prompt, with every fusion."""
    policy = make_policy(fusion)
    model, tokenizer = policy.model.eval(), policy.processor.tokenizer
    batch = dict(mixed_batch(policy.processor))
    rows, prompt_length = batch["input_ids"].shape
    seen = prompt_rows_seen(model, model.embed_tokens)
    sampling = dict(max_new_tokens=8, do_sample=True, temperature=0.7, top_k=None, top_p=None,
                    eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    with torch.no_grad():
        media = model.encode_media(batch["input_ids"], batch["pixel_values"], batch["input_values"])
        shared, repeated = sampled_twice(model, batch, media, 3, **sampling)
    assert seen[0] == (rows, prompt_length - 1)  # the prompt pass: 2 rows, not 6
    assert seen[1] == (rows * 3, 1)  # then the last prompt token of every row
    assert torch.equal(shared.sequences, repeated.sequences)
    assert torch.allclose(torch.stack(shared.scores), torch.stack(repeated.scores), atol=1e-5)
