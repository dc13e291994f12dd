"""The fast paths compute what the plain ones do: shared-prefix packing of rollouts and DPO pairs.

`Plain` hides a model's `supports_shared_prefix`, so the same model runs the one-row-per-answer
path; both must agree to 1e-5 (values and gradients) on the built-in model (every fusion) and on
a tiny Qwen2-VL.
"""

from __future__ import annotations

import pytest
import torch

from hf_tiny import shapes, tiny  # noqa: F401  (module fixtures)
from modalign.data.dataset import read_examples
from modalign.models.inputs import MediaStore, prompt_batch
from modalign.models.policy import load_policy
from modalign.models.shared_prefix import pack
from modalign.reward.train import PreferencePair, encode_pairs, pair_answer_logprobs
from modalign.rl.ppo import subset
from modalign.rl.rollout import prompt_groups, response_logprobs, sample_answers
from test_tinyvlm import make_policy, mixed_batch

FUSIONS = ("concat", "cross_attention", "weighted_sum")


class Plain:
    """A model without the shared-prefix capability: the reference (unpacked) computation."""

    def __init__(self, model) -> None:
        self.model, self.generation_config = model, model.generation_config

    def __call__(self, *args, **kwargs):
        return self.model(*args, **kwargs)

    def encode_media(self, *args, **kwargs):
        return self.model.encode_media(*args, **kwargs)


def _rollout(model, processor, batch, seed: int = 0):
    tokenizer = processor.tokenizer
    torch.manual_seed(seed)
    return sample_answers(model.eval(), dict(batch), 3, 8, 0.8, tokenizer.eos_token_id, tokenizer.pad_token_id)


def _assert_same_logprobs_and_grads(model, samples, temperature: float = 0.8) -> None:
    mask = samples.response_mask.float()
    fast, fast_logits = response_logprobs(model, samples, temperature, with_logits=True)
    weights = torch.randn(mask.shape, generator=torch.Generator().manual_seed(1))
    (fast * mask * weights).sum().backward()
    fast_grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    model.zero_grad(set_to_none=True)
    slow, slow_logits = response_logprobs(Plain(model), samples, temperature, with_logits=True)
    (slow * mask * weights).sum().backward()
    slow_grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    model.zero_grad(set_to_none=True)
    on = samples.response_mask.bool()
    assert torch.allclose(fast[on], slow[on], atol=1e-5)
    assert torch.equal(fast[~on], torch.zeros_like(fast[~on]))
    finite = torch.isfinite(slow_logits[on])
    assert torch.allclose(fast_logits[on][finite], slow_logits[on][finite], atol=1e-5)
    assert len(fast_grads) == len(slow_grads) > 0
    for a, b in zip(fast_grads, slow_grads):
        assert torch.allclose(a, b, atol=1e-5)


def test_pack_masks_and_positions():
    packed = pack([torch.tensor([7, 8])], [[torch.tensor([1, 2]), torch.tensor([3])]], pad_token_id=0)
    assert packed.input_ids.tolist() == [[7, 8, 1, 2, 3]]
    assert packed.shift.tolist() == [[0, 0, 0, 0, 2]]  # answer 2 starts where the prompt ends
    assert packed.attention[0, 0].long().tolist() == [[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0],
                                                      [1, 1, 1, 1, 0], [1, 1, 0, 0, 1]]
    assert packed.columns.tolist() == [[1, 2], [1, 0]] and packed.valid.tolist() == [[True, True], [True, False]]


@pytest.mark.parametrize("fusion", FUSIONS)
def test_packed_rollout_logprobs_equal_plain_ones_builtin(fusion):
    policy = make_policy(fusion)
    samples = _rollout(policy.model, policy.processor, mixed_batch(policy.processor))
    assert [len(g) for g in prompt_groups(samples)] == [3, 3]
    _assert_same_logprobs_and_grads(policy.model, samples)


def test_prompt_groups_survive_reordering():
    policy = make_policy("concat")
    samples = _rollout(policy.model, policy.processor, mixed_batch(policy.processor))
    shuffled = subset(samples, torch.tensor([4, 0, 5, 1, 3, 2]))
    assert prompt_groups(shuffled) == [[0, 3], [1, 5], [2, 4]] or len(prompt_groups(shuffled)) == 2
    _assert_same_logprobs_and_grads(policy.model, shuffled)


def _qwen(tiny):
    folder, data = tiny("qwen2_vl")
    policy = load_policy(folder)
    examples = [e for e in read_examples(data, "train") if e.meta["task"] == "caption"][:2]
    return policy, data, examples


def test_packed_rollout_logprobs_equal_plain_ones_qwen2_vl(tiny):
    policy, data, examples = _qwen(tiny)
    assert policy.model.supports_shared_prefix
    batch = prompt_batch(policy.processor, MediaStore(data), examples)
    samples = _rollout(policy.model, policy.processor, batch)
    _assert_same_logprobs_and_grads(policy.model, samples)


def _pairs(policy, data, examples, max_length: int = 64):
    pairs = [PreferencePair(e, e.meta["answer"], "a wrong caption " + str(i)) for i, e in enumerate(examples)]
    return encode_pairs(policy.processor, MediaStore(data), pairs, max_length)


def _assert_same_pair_logprobs(model, encoded, pad: int) -> None:
    fast = pair_answer_logprobs(model, encoded, pad)
    (fast[0] - 2 * fast[1]).sum().backward()
    fast_grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    model.zero_grad(set_to_none=True)
    slow = pair_answer_logprobs(Plain(model), encoded, pad)
    (slow[0] - 2 * slow[1]).sum().backward()
    slow_grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    model.zero_grad(set_to_none=True)
    for a, b in zip(fast, slow):
        assert torch.allclose(a, b, atol=1e-5)
    assert len(fast_grads) == len(slow_grads) > 0
    for a, b in zip(fast_grads, slow_grads):
        assert torch.allclose(a, b, atol=1e-5)


def test_packed_pair_logprobs_equal_plain_ones_qwen2_vl(tiny):
    policy, data, examples = _qwen(tiny)
    _assert_same_pair_logprobs(policy.model, _pairs(policy, data, examples), policy.processor.tokenizer.pad_token_id)


def test_packed_pair_logprobs_equal_plain_ones_qwen2_vl_truncated(tiny):
    policy, data, examples = _qwen(tiny)
    encoded = _pairs(policy, data, examples, max_length=57)  # the prompt takes 56: one answer token left
    _assert_same_pair_logprobs(policy.model, encoded, policy.processor.tokenizer.pad_token_id)


@pytest.mark.parametrize("fusion", FUSIONS)
def test_packed_pair_logprobs_equal_plain_ones_builtin(sft_model, fusion):
    _, data = sft_model
    policy = make_policy(fusion)
    examples = [e for e in read_examples(data, "train") if e.meta["task"] == "caption"][:3]
    _assert_same_pair_logprobs(policy.model.eval(), _pairs(policy, data, examples, 128),
                               policy.processor.tokenizer.pad_token_id)


def test_pack_reads_a_repeated_answer_once():
    packed = pack([torch.tensor([7, 8])], [[torch.tensor([1, 2]), torch.tensor([1, 2]), torch.tensor([3])]], 0)
    assert packed.input_ids.tolist() == [[7, 8, 1, 2, 3]]
    assert packed.columns.tolist() == [[1, 2], [1, 2], [1, 0]]
    assert packed.shift.tolist() == [[0, 0, 0, 0, 2]]


def test_single_pass_grpo_update_equals_the_two_pass_one():
    """One epoch of one minibatch: old log-probs from the training forward (packed) give the update
    that a separate no-grad old-policy pass and unpacked rows give."""
    import copy

    from modalign.models.policy import frozen_reference
    from modalign.recipes.online import OnlineConfig, update_policy
    from modalign.rl.objectives import ObjectiveInputs, broadcast_to_tokens, grpo_objective, group_relative_advantages

    policy = make_policy("concat")
    samples = _rollout(policy.model, policy.processor, mixed_batch(policy.processor))
    scores = torch.tensor([0.5, -1.0, 0.25, 1.0, 0.0, -0.5])
    cfg = OnlineConfig(algorithm="grpo", samples_per_prompt=3, minibatch_size=6, temperature=0.8, lr=1e-3)
    fast, slow, reference = copy.deepcopy(policy.model), copy.deepcopy(policy.model), frozen_reference(policy.model)
    # SGD: the parameter change is the (clipped) gradient itself (Adam's first step would be lr * sign(g),
    # which turns float noise on a zero gradient into a full step)
    fast_opt = torch.optim.SGD(fast.parameters(), lr=1.0)
    slow_opt = torch.optim.SGD(slow.parameters(), lr=1.0)
    torch.manual_seed(0)
    stats = update_policy(cfg, fast, reference, None, {"policy": fast_opt}, samples, scores, {"step": 0})

    torch.manual_seed(0)
    mask = samples.response_mask.float()
    with torch.no_grad():
        old = response_logprobs(Plain(slow), samples, cfg.temperature)
        ref = response_logprobs(Plain(reference), samples, cfg.temperature)
    advantages = broadcast_to_tokens(group_relative_advantages(scores, 3), mask)
    rows = torch.randperm(6)
    logprobs = response_logprobs(Plain(slow), subset(samples, rows), cfg.temperature)
    out = grpo_objective(ObjectiveInputs(logprobs, old[rows], advantages[rows], mask[rows], ref[rows]),
                         clip=cfg.clip, beta=cfg.kl_coef)
    slow_opt.zero_grad()
    out.loss.backward()
    torch.nn.utils.clip_grad_norm_(list(slow.parameters()), 1.0)
    slow_opt.step()
    assert abs(stats["loss"] - float(out.loss.detach())) < 1e-5 and stats["approx_kl"] == 0.0
    for a, b in zip(fast.parameters(), slow.parameters()):
        assert torch.allclose(a, b, atol=1e-6)


def test_long_groups_split_into_several_packed_rows(monkeypatch):
    import modalign.rl.rollout as rollout

    policy = make_policy("concat")
    samples = _rollout(policy.model, policy.processor, mixed_batch(policy.processor))
    monkeypatch.setattr(rollout, "MAX_PACKED_TOKENS", 1)  # one answer per packed row
    assert [len(part) for group in prompt_groups(samples) for part in rollout._row_parts(group, samples)] == [1] * 6
    _assert_same_logprobs_and_grads(policy.model, samples)


def test_packed_rollout_logprobs_equal_plain_ones_qwen2_vl_eager_attention(tiny):
    """Eager attention takes an additive mask: the adapter converts the packed boolean one."""
    policy, data, examples = _qwen(tiny)
    policy.model.hf.set_attn_implementation("eager")
    assert policy.model.supports_shared_prefix
    batch = prompt_batch(policy.processor, MediaStore(data), examples)
    _assert_same_logprobs_and_grads(policy.model, _rollout(policy.model, policy.processor, batch))


def test_packing_pays_by_hand():
    """2 S A < P^2 + 6 d P: the bench's 0.3 M answer-heavy GRPO (d 64, P 56, answers of 160) packs one
    answer per row; at d 512 it packs all four; the first answer of a row always goes in."""
    from modalign.models.shared_prefix import packing_margin, packing_pays

    assert packing_margin(56, 160, 160, 64) == 56 * (56 + 384) - 2 * 160 * 160 == -26560
    assert not packing_pays(56, 160, 160, 64)
    assert packing_pays(56, 480, 160, 512)  # 153600 < 175168
    assert packing_pays(56, 0, 10_000, 1)


def test_packing_weighs_the_attention_by_its_measured_cost():
    """On CPU an attention FLOP of a packed row costs 1.5 projection FLOPs in fp32 and 2.9 under bf16 autocast
    (bench/packing_rule.py); at 19.3 M (d 512, a 55-token prompt) a third answer of 160 tokens pays in
    FLOPs and in fp32, not under bf16."""
    from modalign.models.shared_prefix import attention_cost, packing_margin

    assert attention_cost("cpu") == 1.5
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert attention_cost("cpu") == 2.9
    assert attention_cost("cuda") == 1.0  # not measured there: FLOPs alone
    assert packing_margin(55, 320, 160, 512) == 6 * 512 * 55 - (2 * 320 * 160 - 55 * 55) == 69585
    assert packing_margin(55, 320, 160, 512, 1.5) == 168960 - 1.5 * 99375 == 19897.5
    assert packing_margin(55, 320, 160, 512, 2.9) == 168960 - 2.9 * 99375 < 0


def test_split_groups_get_rows_of_even_length():
    """Packed rows are padded to the longest: a prompt's answers are spread over the rows the rule asks
    for, longest first onto the emptiest row, unless a row would then pass MAX_PACKED_TOKENS."""
    from modalign.rl.rollout import _balanced

    assert _balanced([[0, 1, 2], [3]], [160] * 4, [0, 1, 2, 3], 55) == [[0, 2], [1, 3]]
    assert _balanced([[0], [1, 2, 3]], [200, 50, 50, 100], [0, 1, 2, 3], 55) == [[0], [1, 2, 3]]
    assert _balanced([[4, 5, 6]], [1, 2, 3], [4, 5, 6], 10) == [[4, 5, 6]]
    # longest first gives 300 + 200 + 200 here: past 1024 behind a 330-token prompt, so the greedy split stays
    assert _balanced([[0, 1], [2, 3, 4]], [300, 300, 200, 200, 200], [0, 1, 2, 3, 4], 330) == [[0, 1], [2, 3, 4]]


def _assert_interleaved_parts_score_as_plain_rows(model, samples, monkeypatch) -> None:
    import modalign.rl.rollout as rollout

    interleaved = lambda group, *args: [group[0::2], group[1::2]] if len(group) > 1 else [group]  # noqa: E731
    monkeypatch.setattr(rollout, "_row_parts", interleaved)
    assert any(len(group) > 2 for group in prompt_groups(samples))  # some part really skips a row
    _assert_same_logprobs_and_grads(model, samples)


def test_rows_split_across_a_group_score_as_plain_ones(monkeypatch):
    """Balanced parts need not be runs of the group (2 + 2 of 4 answers is [[0, 2], [1, 3]]): log-probs and
    gradients still equal the plain path's."""
    policy = make_policy("concat")
    samples = _rollout(policy.model, policy.processor, mixed_batch(policy.processor))
    _assert_interleaved_parts_score_as_plain_rows(policy.model, samples, monkeypatch)


def test_rows_split_across_a_group_score_as_plain_ones_qwen2_vl(tiny, monkeypatch):
    """The same through the Hugging Face adapter (positions from `shared_prefix_positions`, media per row)."""
    policy, data, examples = _qwen(tiny)
    samples = _rollout(policy.model, policy.processor, prompt_batch(policy.processor, MediaStore(data), examples))
    _assert_interleaved_parts_score_as_plain_rows(policy.model, samples, monkeypatch)


def test_long_answers_behind_a_short_prompt_get_rows_of_their_own(monkeypatch):
    import modalign.rl.rollout as rollout

    policy = make_policy("concat")
    samples = _rollout(policy.model, policy.processor, mixed_batch(policy.processor))
    groups = prompt_groups(samples)
    assert [len(p) for g in groups for p in rollout._row_parts(g, samples, width=10**6)] == [len(g) for g in groups]
    # a (negative) width that makes the attention between answers outweigh any prompt: one answer per row
    assert [len(p) for g in groups for p in rollout._row_parts(g, samples, width=-10**6)] == [1] * 6
    monkeypatch.setattr(rollout, "model_width", lambda model: -10**6)
    _assert_same_logprobs_and_grads(policy.model, samples)


def test_dpo_pairs_whose_packing_costs_more_run_unpacked(sft_model, monkeypatch):
    """Where the attention between chosen and rejected outweighs the prompt copy, the pairs are scored as
    two rows each - with the same log-probs."""
    import modalign.reward.train as train

    policy = load_policy(sft_model[0])
    examples = [e for e in read_examples(sft_model[1], "train") if e.meta["task"] == "caption"][:2]
    encoded = encode_pairs(policy.processor, MediaStore(sft_model[1]),
                           [PreferencePair(e, e.meta["answer"], e.meta["answer"] + " and more") for e in examples], 256)
    pad = policy.processor.tokenizer.pad_token_id
    monkeypatch.setattr(train, "model_width", lambda model: 10**6)  # projections dominate: always pack
    assert train._packing_pays(policy.model, encoded)
    packed = pair_answer_logprobs(policy.model, encoded, pad)
    monkeypatch.setattr(train, "model_width", lambda model: -10**6)  # attention dominates: never pack
    assert not train._packing_pays(policy.model, encoded)
    unpacked, calls = train._unpacked_pair_logprobs, []
    monkeypatch.setattr(train, "_unpacked_pair_logprobs", lambda *args: calls.append(1) or unpacked(*args))
    plain = pair_answer_logprobs(policy.model, encoded, pad)
    assert calls == [1]
    for a, b in zip(packed, plain):
        assert torch.allclose(a, b, atol=1e-5)


def test_packing_rule_reads_a_hugging_face_models_width_qwen2_vl(tiny, monkeypatch):
    """The rule weighs a Hugging Face model by its text config's hidden size; split one answer per row,
    its rollout log-probs and gradients still equal the plain path's."""
    import modalign.rl.rollout as rollout
    from modalign.models.shared_prefix import model_width

    policy, data, examples = _qwen(tiny)
    assert model_width(policy.model) == policy.model.hf.config.get_text_config().hidden_size
    samples = _rollout(policy.model, policy.processor, prompt_batch(policy.processor, MediaStore(data), examples))
    monkeypatch.setattr(rollout, "model_width", lambda model: -10**6)  # attention dominates: one answer per row
    assert all(len(p) == 1 for g in prompt_groups(samples) for p in rollout._row_parts(g, samples, -10**6))
    _assert_same_logprobs_and_grads(policy.model, samples)
