"""`precision: bf16`: forward passes under bf16 autocast, backward and optimizer steps outside it.

Every training recipe is run with bf16 while global hooks watch it: its linear layers must
compute in bf16 (autocast is on where the recipe runs a model), no optimizer step may run under
autocast (autocast keeps bf16 copies of the weights until its region ends, so a region spanning
a step would compute the next forward with the old weights), and the run must train.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

from modalign.config import ConfigError, load_config
from modalign.models.policy import load_policy
from modalign.precision import autocast
from modalign.recipes.dpo import run_dpo
from modalign.recipes.online import OnlineConfig, run_online
from modalign.recipes.ppo import run_ppo
from modalign.recipes.sft import SFTConfig, run_sft
from modalign.rl.rollout import response_logprobs, sample_answers
from hf_tiny import shapes, tiny  # noqa: F401  (module fixtures)
from test_dpo import dpo_config, store  # noqa: F401  (module fixture)
from test_online import online_config
from test_ppo import ppo_config
from test_tinyvlm import make_policy, mixed_batch


def test_autocast_runs_linear_layers_in_bf16_and_fp32_leaves_them():
    layer = torch.nn.Linear(4, 3)
    with autocast("bf16", layer):
        assert layer(torch.randn(2, 4)).dtype == torch.bfloat16
    with autocast("fp32", layer):
        assert layer(torch.randn(2, 4)).dtype == torch.float32
    with pytest.raises(ValueError, match="precision 'fp16'"):
        autocast("fp16", layer)


def test_precision_maps_to_the_same_autocast_on_every_device(monkeypatch):
    """bf16 is bfloat16 autocast on the model's device type, CPU or CUDA (checked without a GPU: the mapping,
    and a CUDA GPU without bf16 refused by name); fp32 is no autocast anywhere."""
    from modalign.precision import autocast_settings

    for device in ("cpu", "cuda", "cuda:1", torch.device("cuda", 0)):
        assert autocast_settings("bf16", device) == (torch.device(device).type, torch.bfloat16)
        assert autocast_settings("fp32", device) is None
    with pytest.raises(ValueError, match="precision 'fp16'"):
        autocast_settings("fp16", "cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla V100")
    with pytest.raises(ConfigError, match="Tesla V100 has no bf16"):
        autocast_settings("bf16", "cuda:0")
    assert autocast_settings("bf16", "cpu") == ("cpu", torch.bfloat16)


def test_an_unknown_precision_is_refused_when_the_config_loads():
    with pytest.raises(ConfigError, match="'precision'"):
        load_config(OnlineConfig, overrides=["precision=fp16"])


def test_bf16_log_probs_and_gradients_are_close_to_fp32():
    policy = make_policy("concat")
    model, tokenizer = policy.model.eval(), policy.processor.tokenizer
    torch.manual_seed(0)
    samples = sample_answers(model, mixed_batch(policy.processor), 3, 8, 1.0, tokenizer.eos_token_id,
                             tokenizer.pad_token_id)
    mask = samples.response_mask.float()
    grads = {}
    for precision in ("fp32", "bf16"):
        model.zero_grad(set_to_none=True)
        with autocast(precision, model):
            logprobs = response_logprobs(model, samples)
        assert logprobs.dtype == torch.float32  # log-softmax of fp32 logits either way
        (logprobs * mask).sum().backward()
        grads[precision] = (logprobs.detach(), torch.cat([p.grad.flatten() for p in model.parameters()
                                                          if p.grad is not None]))
    (lp32, g32), (lp16, g16) = grads["fp32"], grads["bf16"]
    assert 0 < (lp32 - lp16).abs().max() < 0.05  # bf16 did run, and its log-probs are close
    assert torch.nn.functional.cosine_similarity(g32, g16, dim=0) > 0.99


@pytest.fixture
def watched(monkeypatch):
    """Counts linear outputs per dtype and optimizer steps taken under autocast, during one test."""
    seen = {"bf16_linear": 0, "fp32_linear": 0, "steps": 0, "steps_under_autocast": 0}

    def on_forward(module, inputs, output):
        if isinstance(module, torch.nn.Linear) and isinstance(output, torch.Tensor):
            seen["bf16_linear" if output.dtype == torch.bfloat16 else "fp32_linear"] += 1

    def on_step(optimizer, args, kwargs):
        seen["steps"] += 1
        seen["steps_under_autocast"] += torch.is_autocast_enabled("cpu")

    forward_hook = torch.nn.modules.module.register_module_forward_hook(on_forward)
    step_hook = register_optimizer_step_pre_hook(on_step)
    yield seen
    forward_hook.remove()
    step_hook.remove()


def _changed(before: dict, folder) -> bool:
    after = load_policy(folder).model.state_dict()
    return any(not torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("recipe", ["sft", "dpo", "grpo", "a2c", "ppo"])
def test_every_training_recipe_runs_in_bf16(tmp_path, sft_model, store, watched, recipe):  # noqa: F811
    model_folder, data = sft_model
    before = load_policy(model_folder).model.state_dict()
    out = tmp_path / recipe
    if recipe == "sft":
        run_sft(SFTConfig(out=str(out), data=str(data), hidden_size=32, num_layers=1, num_heads=2, encoder_layers=1,
                          vocab_size=300, batch_size=8, max_steps=3, eval_examples=1, precision="bf16"))
        key = "train/loss"
    elif recipe == "dpo":
        run_dpo(dpo_config(out, sft_model, store, precision="bf16"))
        key = "dpo/loss"
    elif recipe == "ppo":
        run_ppo(ppo_config(out, sft_model, steps=2, reward_model="rule:shapes_gold", precision="bf16"))
        key = "ppo/policy_loss"
    else:
        run_online(online_config(out, sft_model, recipe, precision="bf16"))
        key = f"{recipe}/loss"
    assert watched["bf16_linear"] > 0 and watched["steps"] > 0
    assert watched["steps_under_autocast"] == 0
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert logged and all(math.isfinite(line[key]) for line in logged if key in line)
    if recipe != "sft":  # sft builds a fresh model; the others start from the SFT policy
        assert _changed(before, out / "model")



def test_hf_models_attend_in_fp32_under_bf16_and_save_plain_sdpa(tmp_path, tiny):  # noqa: F811
    """A loaded Qwen2-VL uses `modalign_sdpa`: the same fp32 results as `sdpa`, bf16 close to them, and a
    saved copy that plain transformers loads with `sdpa`."""
    import transformers

    from modalign.data.dataset import read_examples
    from modalign.models.hf.attention import NAME
    from modalign.models.inputs import MediaStore, prompt_batch

    folder, data = tiny("qwen2_vl")
    policy = load_policy(folder)
    model, tokenizer = policy.model.eval(), policy.processor.tokenizer
    assert model.hf.config._attn_implementation == NAME and model.supports_shared_prefix
    policy.save(tmp_path / "saved")
    config = transformers.AutoConfig.from_pretrained(tmp_path / "saved")
    assert NAME not in json.dumps(config.to_dict())
    examples = [e for e in read_examples(data, "train") if e.meta["task"] == "caption"][:2]
    batch = prompt_batch(policy.processor, MediaStore(data), examples)
    torch.manual_seed(0)
    with autocast("bf16", model):
        samples = sample_answers(model, dict(batch), 2, 6, 1.0, tokenizer.eos_token_id, tokenizer.pad_token_id)
    with torch.no_grad():
        ours = response_logprobs(model, samples)
        with autocast("bf16", model):
            ours_bf16 = response_logprobs(model, samples)
        model.hf.set_attn_implementation("sdpa")
        plain = response_logprobs(model, samples)
    assert torch.equal(ours, plain)  # fp32: a pass-through
    assert 0 < (ours - ours_bf16).abs().max() < 0.05
