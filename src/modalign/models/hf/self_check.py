"""The load-time self-check: a fast path must give the model's own log-probs, or it is not used.

A registered family (`register_family`) runs modalign's fast path: media encoded once and
scattered into the placeholders, and, where the family supports it, several answers packed
behind one prompt (`models.shared_prefix`). `self_check` runs the first examples of a run both
ways, through the fast path and through the model's own forward on every processor output
(the generic path), and compares the answer log-probs. Above the tolerance the policy (model
and processor) switches to the generic path, with one warning; either way the result is
returned for the run's log:

    {"self_check": {"path": "fast" | "generic", "max_abs_diff": float, "tolerance": float, "device": str}}

Call it before the dataset is encoded (the processor's output differs between the two paths), and
after the model is on the run's device: the check runs there, so it compares the kernels the run
will use (a fast path that differs only on a GPU falls back), and a large model is not run on the CPU.
"""

from __future__ import annotations

import logging
from typing import Sequence

import torch

from modalign.device import model_device, to_device
from modalign.models.hf.families import generic_family
from modalign.models.hf.media import ProcessorMedia
from modalign.models.shared_prefix import pack, packed_logprobs, target_logprobs

LOG = logging.getLogger("modalign")
TOLERANCE = 1e-4
_warned: set[str] = set()


def self_check(policy, examples: Sequence, media_store, tolerance: float = TOLERANCE, probes: int = 2) -> dict:
    """Compare the fast path with the model's own forward and generate on the first `probes` examples; fall back
    above `tolerance` (max abs difference of answer-token log-probs) or when greedy answers differ. Returns
    the record for the run's log."""
    from modalign.models.inputs import eos_text, render_prompt

    examples = list(examples)[:probes]
    processor = policy.processor
    prompts = [render_prompt(processor, e) for e in examples] if examples else []
    answers = [e.answer + eos_text(processor) if e.answer is not None else "" for e in examples]
    images = [image for e in examples for image in media_store.images(e)]
    audio = [clip for e in examples for clip in media_store.audio(e)]
    return check_paths(policy, prompts, answers, images, audio, tolerance)


def check_paths(policy, prompts: list[str], answers: list[str], images: list, audio: list,
                tolerance: float = TOLERANCE, warn: bool = True) -> dict:
    """`self_check` on given prompts (with one marker per media item), answers and media; `warn`: log the
    fall-back (once per model type)."""
    from modalign.models.hf.modeling import HFPolicyModel

    model = policy.model
    if not isinstance(model, HFPolicyModel):
        return {"self_check": {"path": "builtin", "max_abs_diff": 0.0, "tolerance": tolerance}}
    if model.family.generic:  # nothing to compare: the generic path is the model's own forward
        return {"self_check": {"path": "generic", "max_abs_diff": 0.0, "tolerance": tolerance}}
    was_training = model.training
    model.eval()
    failure = None
    try:
        difference, same_answers = compare_paths(policy, prompts, answers, images or None, audio or None)
    except Exception as error:  # noqa: BLE001  (a fast path that cannot even run falls back too)
        difference, same_answers, failure = float("inf"), False, f"{type(error).__name__}: {error}".splitlines()[0]
    finally:
        model.train(was_training)
    record = {"path": "fast", "max_abs_diff": float(difference), "tolerance": tolerance,
              "device": str(model_device(model))}
    if failure:
        record["error"] = failure
    if not (difference <= tolerance and same_answers):  # NaN falls back too
        use_generic_path(policy)
        record["path"] = "generic"
        if not same_answers:
            record["generate"] = "differs"
        if warn and model.family.name not in _warned:
            _warned.add(model.family.name)
            LOG.warning("model_type %r: the fast path differs from the model's own forward (log-probs by %.3g, "
                        "tolerance %g; greedy answers %s); using the generic path", model.family.name, difference,
                        tolerance, "equal" if same_answers else "differ")
    return {"self_check": record}


def use_generic_path(policy) -> None:
    """Switch a policy's model and processor to the generic path (the model's own forward and generate)."""
    model, processor = policy.model, policy.processor
    generic = generic_family(model.config, tuple(processor.family.modality.split("+")))
    model.family = generic
    processor.__init__(processor.processor, generic)


@torch.no_grad()
def compare_paths(policy, prompts: list[str], answers: list[str], images, audio) -> tuple[float, bool]:
    """(max abs difference of the log-probs of every prompt + answer token, whether greedy answers are equal)
    between the fast path (cached features, shared-prefix packing where supported, the shared prompt cache)
    and the model's own forward and generate on every processor output."""
    from modalign.models.hf.processing import HFProcessor

    model, processor = policy.model, policy.processor
    device = model_device(model)  # inputs are made on the CPU and moved where the model is
    texts = [p + a for p, a in zip(prompts, answers)]
    fast = to_device(dict(processor(text=texts, images=images, audio=audio, padding_side="right")), device)
    kinds = tuple(processor.family.modality.split("+"))
    generic = HFProcessor(processor.processor, generic_family(model.config, kinds))
    native = to_device(dict(generic(text=texts, images=images, audio=audio, padding_side="right")), device)
    ids, mask = native["input_ids"], native["attention_mask"]
    media: ProcessorMedia = native[generic.family.media_slot]
    reference = model.model(input_ids=ids, attention_mask=mask, **media.model_inputs(),
                            **media.token_type_inputs(ids, mask)).logits
    valid = (mask[:, 1:] * mask[:, :-1]).bool()  # (B, L-1) real tokens predicted by a real token
    theirs, _ = target_logprobs(reference[:, :-1], ids[:, 1:], valid, 1.0, None, False)
    features = model.encode_media(fast["input_ids"], fast.get("pixel_values"), fast.get("input_values"))
    ours, _ = target_logprobs(model(input_ids=fast["input_ids"], attention_mask=fast["attention_mask"],
                                    media=features).logits[:, :-1], ids[:, 1:], valid, 1.0, None, False)
    difference = float((ours - theirs).abs().max())
    if model.supports_shared_prefix:
        difference = max(difference, _packed_difference(model, ids, mask, features, theirs))
    return difference, _same_greedy_answers(model, processor, generic, prompts, images, audio)


def _same_greedy_answers(model, processor, generic, prompts, images, audio) -> bool:
    """Greedy answers (2 per prompt: the shared prompt cache) of the fast path equal the model's own generate."""
    greedy = dict(max_new_tokens=3, do_sample=False, num_return_sequences=2,
                  suppress_tokens=model.generation_config.suppress_tokens)
    device = model_device(model)
    fast = to_device(dict(processor(text=prompts, images=images, audio=audio, padding_side="left")), device)
    native = to_device(dict(generic(text=prompts, images=images, audio=audio, padding_side="left")), device)
    ours = model.generate(**fast, **greedy)
    media = native[generic.family.media_slot].repeat_interleave(2, len(prompts))
    ids, mask = native["input_ids"].repeat_interleave(2, dim=0), native["attention_mask"].repeat_interleave(2, dim=0)
    theirs = model.hf.generate(input_ids=ids, attention_mask=mask,
                               **media.model_inputs(), **media.token_type_inputs(ids, mask),
                               **{k: v for k, v in greedy.items() if k != "num_return_sequences"})
    return ours.shape == theirs.shape and torch.equal(ours, theirs)


def _packed_difference(model, ids: torch.Tensor, mask: torch.Tensor, features, theirs: torch.Tensor) -> float:
    """Each row's text after its last media token, up to its last quarter, packed as an answer behind the rest
    (`models.shared_prefix`), against the native log-probs `theirs` (B, L-1). Packed on the CPU, as rollouts
    pack, and moved to the model's device."""
    ids, mask = ids.cpu(), mask.cpu()
    prompts, answers, spans = [], [], []
    media_ids = torch.tensor(model.media_token_ids)
    for r in range(ids.shape[0]):
        row = ids[r][mask[r].bool()]
        media_at = torch.isin(row, media_ids).nonzero()
        start = max(int(media_at[-1]) + 1 if media_at.numel() else 1, row.shape[0] - max(1, row.shape[0] // 4))
        if start >= row.shape[0]:
            start = row.shape[0] - 1  # the last token alone (it is no media token: prompts end with text)
        prompts.append(row[:start])
        answers.append([row[start:]])
        spans.append((start, row.shape[0]))
    packed = to_device(pack(prompts, answers, 0), model_device(model))
    ours, _ = packed_logprobs(model, packed, features, sampled=False)  # (B, A)
    difference = 0.0
    for r, (start, end) in enumerate(spans):
        difference = max(difference, float((ours[r, : end - start] - theirs[r, start - 1 : end - 1]).abs().max()))
    return difference
