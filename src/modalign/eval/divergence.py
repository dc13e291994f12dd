"""KL from an evaluated policy to a reference policy, on the policy's own answers.

Exact over the vocabulary: at each answer token (teacher-forced on the answer the policy gave)
both models' next-token distributions are compared in full, so there is no sampling error and
the value is never negative (unlike the sum of log pi - log pi_ref over sampled tokens).
"""

from __future__ import annotations

from typing import Sequence

import torch

from modalign.data.records import Example
from modalign.models.inputs import MediaStore
from modalign.models.policy import Policy

KL_ESTIMATOR = "exact: full-vocabulary KL(policy || reference) at each token of the policy's answers, summed per answer"
_NO_TRUNCATION = 1 << 30


@torch.no_grad()
def answer_kl(policy: Policy, reference, media: MediaStore, examples: Sequence[Example], answers: Sequence[str],
              batch_size: int = 16) -> dict[str, float]:
    """`kl_to_ref` (mean over answers of the KL summed over the answer's tokens, end-of-turn included)
    and `kl_to_ref_per_token`, of `policy` against the `reference` model (same tokenizer)."""
    from modalign.config import ConfigError
    from modalign.device import model_device
    from modalign.models.inputs import collate_sft, encode_sft_example
    from modalign.rl.kl import kl_exact

    processor, pad = policy.processor, policy.processor.tokenizer.pad_token_id
    models = (policy.model, reference)
    training = [m.training for m in models]
    for model in models:
        model.eval()
    per_answer, tokens = [], 0
    try:
        for start in range(0, len(answers), batch_size):
            rows = zip(examples[start : start + batch_size], answers[start : start + batch_size])
            batch = collate_sft([encode_sft_example(processor, media, e, _NO_TRUNCATION, a) for e, a in rows], pad,
                                model_device(policy.model))
            targets = batch.pop("labels")[:, 1:] != -100  # (B, L-1) positions that predict an answer token
            logits, ref_logits = (m(**batch).logits[:, :-1] for m in models)  # (B, L-1, V)
            if logits.shape[-1] != ref_logits.shape[-1]:
                raise ConfigError(f"reference: its vocabulary has {ref_logits.shape[-1]} tokens, the policy's "
                                  f"{logits.shape[-1]}; the KL needs the policy's tokenizer")
            kl = kl_exact(logits, ref_logits) * targets  # (B, L-1)
            per_answer.append(kl.sum(1))
            tokens += int(targets.sum())
    finally:
        for model, was_training in zip(models, training):
            model.train(was_training)
    total = torch.cat(per_answer) if per_answer else torch.zeros(0)
    return {"kl_to_ref": float(total.mean()) if len(total) else 0.0,
            "kl_to_ref_per_token": float(total.sum()) / max(1, tokens)}
