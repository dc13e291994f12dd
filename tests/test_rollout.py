"""The rollout core: log-probs recomputed from cached media equal those generate sampled from."""

from __future__ import annotations

import torch

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
