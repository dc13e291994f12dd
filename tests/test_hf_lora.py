"""LoRA through peft: adapter folders train in every recipe, the reference is the base with the
adapter disabled (no second copy), and saving merges into a plain checkpoint."""

from __future__ import annotations

import json

import pytest
import torch

from hf_tiny import shapes, stores, tiny  # noqa: F401  (module fixtures)
from modalign.data.dataset import read_examples
from modalign.models.hf.lora import AdapterDisabled, init_lora, is_lora_policy
from modalign.models.inputs import MediaStore, prompt_batch
from modalign.models.policy import frozen_reference, load_policy


@pytest.fixture(scope="module")
def lora(tmp_path_factory, tiny):
    """family -> a LoRA policy folder (rank 4 on the decoder) over the tiny model."""
    made = {}

    def get(family: str):
        if family not in made:
            made[family] = init_lora(tiny(family)[0], tmp_path_factory.mktemp(f"{family}_lora") / "policy", rank=4)
        return made[family]

    return get


def batch_of(policy, data):
    return prompt_batch(policy.processor, MediaStore(data), read_examples(data, "train")[:2])


@pytest.mark.parametrize("family", ["qwen2_vl", "gemma3", "qwen2_audio"])
def test_lora_folder_trains_only_decoder_adapters(tiny, lora, family):
    policy = load_policy(lora(family))
    assert is_lora_policy(policy.model)
    trainable = [name for name, p in policy.model.named_parameters() if p.requires_grad]
    encoders = policy.model.family.encoder_modules
    assert trainable and all(".lora_" in name for name in trainable)
    assert not any(path in name for name in trainable for path in encoders)  # none on the media encoder
    adapter = json.loads((lora(family) / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str(tiny(family)[0])


@pytest.mark.parametrize("family", ["qwen2_vl", "idefics3", "qwen2_audio"])
def test_reference_is_the_base_with_the_adapter_disabled(tiny, lora, family):
    model_dir, data = tiny(family)
    policy = load_policy(lora(family))
    model = policy.model
    reference = frozen_reference(model)
    assert isinstance(reference, AdapterDisabled) and reference.policy_model is model  # shares every weight
    reference.eval().requires_grad_(False)  # what recipes do to a reference: must not freeze the policy
    assert any(p.requires_grad for p in model.parameters())
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".lora_B." in name:
                p.normal_(0, 0.5)  # a trained adapter
    batch = batch_of(policy, data)
    base = load_policy(model_dir).model.eval()
    with torch.no_grad():
        adapted = model.eval()(**batch).logits
        assert torch.allclose(reference(**batch).logits, base(**batch).logits, atol=1e-5)
        assert not torch.allclose(adapted, base(**batch).logits, atol=1e-3)
        assert torch.equal(model(**batch).logits, adapted)  # the adapter is back on after the reference pass


@pytest.mark.parametrize("family", ["llava", "qwen2_audio"])
def test_save_merges_into_a_plain_checkpoint(tmp_path, tiny, lora, family):
    model_dir, data = tiny(family)
    policy = load_policy(lora(family))
    with torch.no_grad():
        for name, p in policy.model.named_parameters():
            if ".lora_B." in name:
                p.normal_(0, 0.5)
    policy.save(tmp_path / "merged")
    assert (tmp_path / "merged" / "config.json").is_file()
    assert not (tmp_path / "merged" / "adapter_config.json").exists()
    merged = load_policy(tmp_path / "merged")
    assert not is_lora_policy(merged.model) and is_lora_policy(policy.model)  # the live policy keeps its adapter
    batch = batch_of(policy, data)
    with torch.no_grad():
        assert torch.allclose(merged.model.eval()(**batch).logits, policy.model.eval()(**batch).logits, atol=1e-5)


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen2_audio"])
def test_ppo_two_steps_on_a_lora_policy(tmp_path, tiny, lora, family):
    """PPO trains the adapter (policy and critic); the saved policy is merged; the media encoder is untouched."""
    from modalign.recipes.ppo import PPOConfig, run_ppo

    model_dir, data = tiny(family)
    summary = run_ppo(PPOConfig(out=str(tmp_path / "ppo"), policy=str(lora(family)), reward_model="rule:shapes_gold",
                                data=str(data), steps=2, prompts_per_step=2, samples_per_prompt=2, max_new_tokens=6,
                                minibatch_size=4, checkpoint_every=0, eval_examples=1, lr=5e-3, critic_lr=5e-3))
    base, trained = load_policy(model_dir).model, load_policy(summary["model"]).model
    assert not is_lora_policy(trained)
    before, after = base.state_dict(), trained.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    encoder = tuple(f"model.{path}." for path in base.family.encoder_modules)
    assert changed and not [k for k in changed if k.startswith(encoder)]


def test_grpo_two_steps_on_a_lora_policy(tmp_path, tiny, lora):
    from modalign.recipes.online import OnlineConfig, run_online

    model_dir, data = tiny("gemma3")
    summary = run_online(OnlineConfig(out=str(tmp_path / "grpo"), algorithm="grpo", policy=str(lora("gemma3")),
                                      reward_model="rule:shapes_gold", data=str(data), steps=2, prompts_per_step=2,
                                      samples_per_prompt=3, max_new_tokens=6, minibatch_size=6, eval_examples=1,
                                      checkpoint_every=0, lr=5e-3))
    assert summary["steps"] == 2 and (tmp_path / "grpo" / "model" / "config.json").is_file()


def test_reward_model_on_a_lora_backbone(tmp_path, tiny, lora, stores):
    """Reward-model training with a trainable LoRA backbone: adapter and head learn, the base stays frozen."""
    from modalign.recipes.reward import RewardConfig, run_reward
    from modalign.reward.model import ScalarHeadModel

    model_dir, _ = tiny("qwen2_vl")
    run_reward(RewardConfig(out=str(tmp_path / "rm"), policy=str(lora("qwen2_vl")), store=str(stores("qwen2_vl")),
                            steps=2, batch_size=2, heldout_fraction=0.0, backbone_lr=5e-3, max_length=256))
    reward_model = ScalarHeadModel.load(tmp_path / "rm" / "model")  # a merged backbone: loads without peft
    before, after = load_policy(model_dir).model.state_dict(), reward_model.backbone.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed and all(".layers." in k for k in changed)  # decoder projections only (merged LoRA deltas)


def test_grpo_reference_of_a_lora_policy_is_no_second_copy(tmp_path, tiny, lora, monkeypatch):
    from modalign.models.hf import lora as lora_module
    from modalign.recipes.online import OnlineConfig, run_online

    views = []
    original = lora_module.AdapterDisabled.__init__

    def counted(self, model):
        views.append(model)
        original(self, model)

    monkeypatch.setattr(lora_module.AdapterDisabled, "__init__", counted)
    _, data = tiny("qwen2_audio")
    run_online(OnlineConfig(out=str(tmp_path / "grpo"), algorithm="grpo", policy=str(lora("qwen2_audio")),
                            reward_model="rule:shapes_gold", data=str(data), steps=1, prompts_per_step=2,
                            samples_per_prompt=2, max_new_tokens=4, minibatch_size=4, eval_examples=1,
                            checkpoint_every=0))
    assert len(views) == 1


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_audio"])
def test_lora_on_the_generic_path(tmp_path, tiny, lora, family, monkeypatch):
    """An unregistered model type (the generic path) takes a LoRA adapter too: the reference is its base, and
    GRPO trains the adapter only."""
    from modalign.models.hf import FAMILIES
    from modalign.recipes.online import OnlineConfig, run_online

    model_dir, data = tiny(family)
    folder = lora(family)
    monkeypatch.delitem(FAMILIES, family)
    monkeypatch.setenv("MODALIGN_FAST_PATHS", "0")
    policy = load_policy(folder)
    assert policy.model.family.generic and is_lora_policy(policy.model)
    with torch.no_grad():
        for name, p in policy.model.named_parameters():
            if ".lora_B." in name:
                p.normal_(0, 0.5)
        batch = batch_of(policy, data)
        base = load_policy(model_dir).model.eval()
        assert torch.allclose(frozen_reference(policy.model)(**batch).logits, base(**batch).logits, atol=1e-5)
        assert not torch.allclose(policy.model.eval()(**batch).logits, base(**batch).logits, atol=1e-3)
    summary = run_online(OnlineConfig(out=str(tmp_path / "grpo"), algorithm="grpo", policy=str(folder),
                                      reward_model="rule:shapes_gold", data=str(data), steps=2, prompts_per_step=2,
                                      samples_per_prompt=3, max_new_tokens=6, minibatch_size=6, eval_examples=1,
                                      checkpoint_every=0, lr=5e-3))
    assert summary["steps"] == 2
