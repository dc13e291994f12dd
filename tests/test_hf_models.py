"""Hugging Face VLMs and audio-LMs behind the one policy interface: every recipe, every family.

Tiny random-weight models of each family are built here (`hf_tiny`), saved, and loaded by
path through `load_policy`, as a user's checkpoint would be. For each family: the adapter
matches the model's own forward and generate exactly, then SFT, reward-model training
(media reaching the reward model's encoder), PPO with a critic, GRPO and DPO run 2 steps.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import hf_tiny
from hf_tiny import shapes, stores, tiny  # noqa: F401  (module fixtures: tiny models, data, feedback stores)
from modalign.data.dataset import read_examples
from modalign.models.inputs import MediaStore, prompt_batch
from modalign.models.policy import load_policy

FAMILIES = hf_tiny.FAMILIES


def metric_lines(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def changed_keys(before: dict, after: dict) -> list[str]:
    return [key for key in before if not torch.equal(before[key], after[key])]


# ---- the adapter is the model ---------------------------------------------------------------------


def two_prompts(data: Path) -> list:
    """Two prompts of the family's dataset, the second with its media item twice (several items per example)."""
    from modalign.data.records import Example

    first, second = read_examples(data, "train")[:2]
    doubled = tuple({**m, "content": m["content"][:1] + m["content"]} if m["role"] == "user" else m
                    for m in second.prompt_messages)
    return [first, Example(second.id, doubled, second.media * 2, second.meta)]


def native_inputs(policy, examples: list, store: MediaStore) -> dict:
    """The prompts through the family's own processor (unpacked inputs, images grouped per prompt)."""
    from modalign.models.inputs import render_prompt

    processor = policy.processor
    call = dict(text=[render_prompt(processor, e) for e in examples], padding=True, padding_side="left",
                return_tensors="pt", add_special_tokens=False)
    if processor.family.modality == "image":
        call["images"] = [store.images(e) for e in examples]
    else:
        call.update(audio=[clip for e in examples for clip in store.audio(e)], sampling_rate=16000)
    return dict(processor.processor(**call))


@pytest.mark.parametrize("family", FAMILIES)
def test_adapter_matches_the_models_own_forward_and_generate(tiny, family):
    """Cached features give exactly the logits and the greedy answers of the model's own pixel / audio path."""
    model_dir, data = tiny(family)
    policy = load_policy(model_dir)
    model, examples, store = policy.model.eval(), two_prompts(data), MediaStore(data)
    batch, native = prompt_batch(policy.processor, store, examples), native_inputs(policy, examples, store)
    with torch.no_grad():
        media = model.encode_media(batch["input_ids"], batch.get("pixel_values"), batch.get("input_values"))
        ours = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], media=media).logits
        theirs = model.hf(**native).logits
        mask = batch["attention_mask"].bool()
        assert torch.allclose(ours[mask], theirs[mask], atol=1e-5)
        blank = dataclasses.replace(media, tokens=torch.zeros_like(media.tokens))  # the media matter
        assert not torch.allclose(ours, model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                              media=blank).logits, atol=1e-4)
        greedy = dict(max_new_tokens=5, do_sample=False, suppress_tokens=model.generation_config.suppress_tokens)
        assert torch.equal(model.generate(**batch, **greedy), model.hf.generate(**native, **greedy))


@pytest.mark.parametrize("family", FAMILIES)
def test_answers_from_a_shared_prompt_cache_equal_those_of_repeated_prompts(tiny, family):
    """G answers per prompt continue from one pass over the prompt (its media in the cache): the same tokens
    and scores as G copies of the prompt, greedy and sampled, for every family."""
    from test_rollout import prompt_rows_seen, sampled_twice

    model_dir, data = tiny(family)
    policy = load_policy(model_dir)
    model, tokenizer = policy.model.eval(), policy.processor.tokenizer
    batch = prompt_batch(policy.processor, MediaStore(data), two_prompts(data))
    rows, prompt_length = batch["input_ids"].shape
    seen = prompt_rows_seen(model, model.hf.get_input_embeddings())
    common = dict(max_new_tokens=6, pad_token_id=tokenizer.pad_token_id,
                  suppress_tokens=model.generation_config.suppress_tokens)
    with torch.no_grad():
        media = model.encode_media(batch["input_ids"], batch.get("pixel_values"), batch.get("input_values"))
        # state a model keeps between calls (Qwen's rope offsets) comes from other prompts first
        model.generate(**prompt_batch(policy.processor, MediaStore(data), two_prompts(data)[::-1]), **common)
        seen.clear()
        for sampling in (dict(do_sample=False), dict(do_sample=True, temperature=0.7, top_k=None, top_p=None)):
            shared, repeated = sampled_twice(model, batch, media, 3, **sampling, **common)
            assert torch.equal(shared.sequences, repeated.sequences)
            assert torch.allclose(torch.stack(shared.scores), torch.stack(repeated.scores), atol=1e-5)
    assert seen[0] == (rows, prompt_length - 1) and seen[1] == (rows * 3, 1)


@pytest.mark.parametrize("family", ["qwen2_5_vl", "idefics3"])
def test_images_of_different_sizes_in_one_batch(tiny, family):
    """Dynamic resolution (Qwen grids, Idefics3 tiles): each image keeps its own grid through packing."""
    from PIL import Image

    from modalign.models.hf.processing import _per_text

    policy = load_policy(tiny(family)[0])
    model, processor = policy.model.eval(), policy.processor
    rng = np.random.default_rng(1)
    sizes = ((48, 48), (24, 64), (64, 40))
    images = [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for h, w in sizes]
    turns = [[{"role": "user", "content": [{"type": "image"}] * n + [{"type": "text", "text": "?"}]}] for n in (1, 2)]
    texts = [processor.apply_chat_template(turn, add_generation_prompt=True, tokenize=False) for turn in turns]
    batch = processor(text=texts, images=images)
    native = processor.processor(text=texts, images=_per_text(images, [1, 2]), padding=True, padding_side="left",
                                 return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        ours, theirs = model(**batch).logits, model.hf(**native).logits
    assert torch.allclose(ours[batch["attention_mask"].bool()], theirs[batch["attention_mask"].bool()], atol=1e-5)


# ---- recipes ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_sft_two_steps(tmp_path, tiny, family):
    from modalign.recipes.sft import SFTConfig, run_sft

    model_dir, data = tiny(family)
    summary = run_sft(SFTConfig(out=str(tmp_path / "sft"), data=str(data), policy=str(model_dir), max_steps=2,
                                batch_size=4, lr=1e-3, warmup_steps=0, log_every=1, checkpoint_every=0,
                                eval_examples=1, max_new_tokens=4))
    lines = metric_lines(tmp_path / "sft")
    assert [line["step"] for line in lines] == [1, 2] and all(np.isfinite(line["train/loss"]) for line in lines)
    # the run's self-check: the family's fast path gave the model's own log-probs, so it was kept
    check = json.loads((tmp_path / "sft" / "self_check.json").read_text())["self_check"]
    assert check["path"] == "fast" and check["max_abs_diff"] <= check["tolerance"] == 1e-4
    after = load_policy(summary["model"]).model.state_dict()
    assert changed_keys(load_policy(model_dir).model.state_dict(), after)


class EncoderCalls:
    """Records the floating-point tensor shapes of every call of the family's media encoder, in any model."""

    def __init__(self, model_dir: Path) -> None:
        self.encoder_class = type(load_policy(model_dir).model.media_encoder_modules()[0])
        self.shapes: list[tuple[int, ...]] = []

    def __enter__(self) -> "EncoderCalls":
        self.handle = torch.nn.modules.module.register_module_forward_hook(self.record, with_kwargs=True)
        return self

    def __exit__(self, *exc) -> None:
        self.handle.remove()

    def record(self, module, args, kwargs, output) -> None:
        if isinstance(module, self.encoder_class):
            tensors = list(args) + list(kwargs.values())
            self.shapes += [tuple(t.shape) for t in tensors if isinstance(t, torch.Tensor) and t.is_floating_point()]


def train_reward(out: Path, model_dir: Path, store: Path, backbone_lr: float) -> list[tuple[int, ...]]:
    """2 steps of `modalign reward` in debug mode (every forward checks the media reach the decoder);
    returns the media shapes that reached the reward model's encoder."""
    from modalign.recipes.reward import RewardConfig, run_reward

    with pytest.MonkeyPatch.context() as patch, EncoderCalls(model_dir) as calls:
        patch.setenv("MODALIGN_DEBUG_MEDIA", "1")
        run_reward(RewardConfig(out=str(out), policy=str(model_dir), store=str(store), steps=2, batch_size=2,
                                heldout_fraction=0.0, max_length=256, backbone_lr=backbone_lr))
    return calls.shapes


@pytest.fixture(scope="module")
def reward_models(tmp_path_factory, tiny, stores):
    """family -> (reward-model folder with a frozen backbone, media shapes its encoder saw in training)."""
    made: dict[str, tuple[Path, list]] = {}

    def get(family: str):
        if family not in made:
            out = tmp_path_factory.mktemp(f"{family}_reward")
            made[family] = (out / "model", train_reward(out, tiny(family)[0], stores(family), backbone_lr=0.0))
        return made[family]

    return get


def assert_media_seen(family: str, shapes: list[tuple[int, ...]]) -> None:
    assert shapes, "the reward model's media encoder never ran"
    if family in hf_tiny.AUDIO_FAMILIES:
        assert any(len(shape) == 3 and shape[-1] == 100 for shape in shapes)  # (clips, mel bins, frames)
    else:
        assert any(shape[-1] == 32 or shape[-1] == 96 for shape in shapes)  # 32 x 32 pixels, or Qwen patch rows


@pytest.mark.parametrize("family", FAMILIES)
def test_reward_model_two_steps_reads_the_media(reward_models, family):
    from modalign.reward.model import ScalarHeadModel

    folder, shapes = reward_models(family)
    assert_media_seen(family, shapes)
    assert type(ScalarHeadModel.load(folder).backbone).__name__ == "HFPolicyModel"


@pytest.mark.parametrize("family", FAMILIES)
def test_reward_model_two_steps_with_a_trained_backbone(tmp_path, tiny, stores, family):
    """backbone_lr > 0: Bradley-Terry gradients flow through the Hugging Face backbone (media encoder included)."""
    from modalign.reward.model import ScalarHeadModel

    model_dir, _ = tiny(family)
    assert_media_seen(family, train_reward(tmp_path / "rm", model_dir, stores(family), backbone_lr=1e-3))
    trained = ScalarHeadModel.load(tmp_path / "rm" / "model").backbone.state_dict()
    assert changed_keys(load_policy(model_dir).model.state_dict(), trained)


@pytest.mark.parametrize("family", FAMILIES)
def test_ppo_two_steps_with_critic_and_reward_model(tmp_path, tiny, reward_models, family):
    from modalign.recipes.ppo import PPOConfig, run_ppo

    model_dir, data = tiny(family)
    reward_model = str(reward_models(family)[0])
    summary = run_ppo(PPOConfig(out=str(tmp_path / "ppo"), policy=str(model_dir), reward_model=reward_model,
                                data=str(data), steps=2, prompts_per_step=2, samples_per_prompt=2, max_new_tokens=6,
                                minibatch_size=4, checkpoint_every=0, eval_examples=1, lr=1e-3, critic_lr=1e-3))
    lines = metric_lines(tmp_path / "ppo")
    assert [line["step"] for line in lines] == [1, 2]
    assert all(np.isfinite(line["ppo/value_loss"]) and np.isfinite(line["ppo/reward_mean"]) for line in lines)
    assert (tmp_path / "ppo" / "critic" / "scalar_head.safetensors").is_file()
    assert_only_decoder_changed(model_dir, summary["model"])


def assert_only_decoder_changed(before_dir, after_dir) -> None:
    """RL changed the policy but not its (frozen) media encoder."""
    before, after = load_policy(before_dir).model, load_policy(after_dir).model
    encoder = {f"model.{name}" for path in before.family.encoder_modules
               for name, _ in before.hf.get_submodule(path).named_parameters(prefix=path)}
    changed = changed_keys(before.state_dict(), after.state_dict())
    assert changed and not encoder & set(changed)


@pytest.mark.parametrize("family", FAMILIES)
def test_grpo_two_steps(tmp_path, tiny, family):
    from modalign.recipes.online import OnlineConfig, run_online

    model_dir, data = tiny(family)
    summary = run_online(OnlineConfig(out=str(tmp_path / "grpo"), algorithm="grpo", policy=str(model_dir),
                                      reward_model="rule:shapes_gold", data=str(data), steps=2, prompts_per_step=2,
                                      samples_per_prompt=3, max_new_tokens=6, minibatch_size=6, eval_examples=1,
                                      checkpoint_every=0, lr=1e-3))
    assert [line["step"] for line in metric_lines(tmp_path / "grpo")] == [1, 2]
    assert_only_decoder_changed(model_dir, summary["model"])


def test_grpo_reference_other_than_the_start_policy_qwen2_vl(tmp_path, tiny):
    """`OnlineConfig.reference` on a Hugging Face model: from a moved policy, step 1's KL is 0 against its own
    start and clearly positive against the unmoved folder (the rollout's KL, before any update)."""
    from modalign.recipes.online import OnlineConfig, run_online

    model_dir, data = tiny("qwen2_vl")
    moved = load_policy(model_dir)
    head = moved.model.hf.get_output_embeddings().weight
    with torch.no_grad():
        head.add_(0.5 * torch.randn(head.shape, generator=torch.Generator().manual_seed(0)))
    moved.save(tmp_path / "moved")

    def step_one_kl(name: str, reference: str) -> float:
        run_online(OnlineConfig(out=str(tmp_path / name), algorithm="grpo", policy=str(tmp_path / "moved"),
                                reference=reference, reward_model="rule:shapes_gold", data=str(data), steps=1,
                                prompts_per_step=2, samples_per_prompt=3, max_new_tokens=6, minibatch_size=6,
                                eval_examples=1, checkpoint_every=0))
        return metric_lines(tmp_path / name)[0]["grpo/kl_to_ref"]

    assert step_one_kl("own", "") == pytest.approx(0.0, abs=1e-5)
    assert step_one_kl("base_ref", str(model_dir)) > 0.01


@pytest.mark.parametrize("family", FAMILIES)
def test_dpo_two_steps(tmp_path, tiny, stores, family):
    from modalign.recipes.dpo import DPOConfig, run_dpo
    from modalign.recipes.reward import encode_store_pairs, open_store

    model_dir, data = tiny(family)
    policy = load_policy(model_dir)
    pairs = [p for p in encode_store_pairs(open_store(str(stores(family))), policy.processor, 1, 256) if not p.tie]
    summary = run_dpo(DPOConfig(out=str(tmp_path / "dpo"), policy=str(model_dir), store=str(stores(family)),
                                data=str(data), batch_size=2, epochs=3.0 / len(pairs), lr=1e-3, max_length=256,
                                eval_examples=1, max_new_tokens=4, checkpoint_every=0))
    lines = metric_lines(tmp_path / "dpo")
    assert summary["steps"] == 2 and lines[0]["dpo/reward_margin"] == pytest.approx(0.0, abs=1e-4)
    assert changed_keys(policy.model.state_dict(), load_policy(summary["model"]).model.state_dict())


# ---- loading ------------------------------------------------------------------------------------------


def test_the_builtin_model_still_loads_as_before(tmp_path, shapes):
    from modalign.models.policy import create_tinyvlm, load_processor
    from modalign.models.tinyvlm import TinyVLMForConditionalGeneration, TinyVLMProcessor

    create_tinyvlm(shapes["corpus"], vocab_size=300, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                   intermediate_size=64, vision_layers=1, audio_layers=1, vision_hidden_size=32,
                   audio_hidden_size=32).save(tmp_path / "tinyvlm")
    policy = load_policy(tmp_path / "tinyvlm")
    assert isinstance(policy.model, TinyVLMForConditionalGeneration) and isinstance(policy.processor, TinyVLMProcessor)
    assert isinstance(load_processor(tmp_path / "tinyvlm"), TinyVLMProcessor)


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_audio"])
def test_load_processor_gives_the_adapters_processor(tiny, family):
    from modalign.models.hf import HFProcessor
    from modalign.models.policy import load_processor

    processor = load_processor(tiny(family)[0])
    assert isinstance(processor, HFProcessor) and processor.tokenizer.eos_token == processor.family.end_of_turn


def test_answers_end_at_the_familys_end_of_turn(tmp_path, tiny):
    """A Gemma 3 checkpoint whose tokenizer keeps `<eos>` as eos: answers still end (and stop) at `<end_of_turn>`."""
    import shutil

    from transformers import AutoTokenizer

    folder = shutil.copytree(tiny("gemma3")[0], tmp_path / "gemma3")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.eos_token = "<eos>"
    tokenizer.save_pretrained(folder)
    policy = load_policy(folder)
    eos, generation = policy.processor.tokenizer.eos_token_id, policy.model.generation_config
    assert policy.processor.tokenizer.eos_token == "<end_of_turn>" and eos in np.atleast_1d(generation.eos_token_id)
    assert policy.model.placeholder_id in generation.suppress_tokens


def test_an_unsupported_model_type_is_a_clear_error(tmp_path):
    from transformers import LlamaConfig

    LlamaConfig(vocab_size=10, hidden_size=8, intermediate_size=8, num_hidden_layers=1,
                num_attention_heads=1).save_pretrained(tmp_path / "llama")
    with pytest.raises(ValueError, match=r"^model_type 'llama': no processor loads from "):  # one line, before weights
        load_policy(tmp_path / "llama")


def test_best_of_n_scores_texts_with_a_hugging_face_reward_model(tiny, reward_models):
    from modalign.reward.model import ScalarHeadModel
    from modalign.rl.rewards import RewardModelSource, score_texts

    _, data = tiny("qwen2_vl")
    source = RewardModelSource(ScalarHeadModel.load(reward_models("qwen2_vl")[0]))
    scores = score_texts(source, read_examples(data, "train")[:2], ["a red circle.", "two shapes."], MediaStore(data))
    assert scores.shape == (2,) and bool(torch.isfinite(scores).all())
