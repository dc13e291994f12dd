"""`gradient_checkpointing: true`: each decoder layer recomputed in backward, same loss and gradients."""

from __future__ import annotations

import pytest
import torch

from modalign.config import ConfigError
from modalign.memory import enable_gradient_checkpointing
from hf_tiny import shapes, tiny  # noqa: F401  (module fixtures)
from test_tinyvlm import make_policy, mixed_batch


def counted(forward, calls: list):
    def run(*args, **kwargs):
        calls.append(1)
        return forward(*args, **kwargs)
    return run


def loss_grads_and_layer_calls(model, batch) -> tuple[torch.Tensor, dict, int]:
    """The LM loss of `batch`, every parameter's gradient, and how often the decoder layers' MLPs ran."""
    calls = []
    layers = [m for m in model.modules() if type(m).__name__ in ("DecoderLayer", "Qwen2VLDecoderLayer")]
    for layer in layers:  # counted in `forward` itself: module hooks do not fire when checkpointing recomputes
        layer.mlp.forward = counted(type(layer.mlp).forward.__get__(layer.mlp), calls)
    model.train().zero_grad()
    torch.manual_seed(0)
    loss = model(**batch, labels=batch["input_ids"]).loss
    loss.backward()
    for layer in layers:
        del layer.mlp.forward
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads, len(calls)


@pytest.mark.parametrize("fusion", ["concat", "cross_attention"])
def test_builtin_model_checkpointing_gives_the_same_loss_and_gradients(fusion):
    policy = make_policy(fusion)
    batch = dict(mixed_batch(policy.processor))
    plain = loss_grads_and_layer_calls(policy.model, batch)
    enable_gradient_checkpointing(policy.model)
    checkpointed = loss_grads_and_layer_calls(policy.model, batch)
    layers = policy.model.config.num_hidden_layers
    assert (plain[2], checkpointed[2]) == (layers, 2 * layers)  # recomputed in backward
    assert torch.allclose(plain[0], checkpointed[0], atol=1e-6)
    assert plain[1].keys() == checkpointed[1].keys() and len(plain[1]) > 10
    for name, grad in plain[1].items():
        assert torch.allclose(grad, checkpointed[1][name], atol=1e-6, rtol=1e-5), name


def test_hf_model_checkpointing_gives_the_same_loss_and_gradients(tiny):  # noqa: F811
    from modalign.data.dataset import read_examples
    from modalign.models.inputs import MediaStore, prompt_batch
    from modalign.models.policy import load_policy

    folder, data = tiny("qwen2_vl")
    policy = load_policy(folder)
    examples = [e for e in read_examples(data, "train") if e.meta["task"] == "caption"][:2]
    batch = {k: v for k, v in prompt_batch(policy.processor, MediaStore(data), examples).items()
             if k in ("input_ids", "attention_mask", "pixel_values", "image_grid_thw")}
    plain = loss_grads_and_layer_calls(policy.model, batch)
    enable_gradient_checkpointing(policy.model)
    checkpointed = loss_grads_and_layer_calls(policy.model, batch)
    assert checkpointed[2] == 2 * plain[2] > 0
    assert torch.allclose(plain[0], checkpointed[0], atol=1e-6)
    for name, grad in plain[1].items():
        assert torch.allclose(grad, checkpointed[1][name], atol=1e-6, rtol=1e-5), name


def test_disabled_is_nothing_and_a_model_without_support_is_a_clear_error():
    layer = torch.nn.Linear(2, 2)
    enable_gradient_checkpointing(layer, False)
    with pytest.raises(ConfigError, match="gradient_checkpointing: Linear does not support it"):
        enable_gradient_checkpointing(layer)
