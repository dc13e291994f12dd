"""Memory options of the training recipes: `gradient_checkpointing: true`.

Gradient (activation) checkpointing keeps only each decoder layer's input in the forward pass
and recomputes the layer during backward: activation memory falls from all layers' to about
one layer's, for one more forward's compute. It is `transformers`' own mechanism
(`activation_checkpointing_enable`, formerly `gradient_checkpointing_enable`) for Hugging Face
policies and the built-in model alike (its `DecoderLayer` is a `GradientCheckpointingLayer`).
Only passes with gradients are recomputed: sampling and reference passes run as before.
"""

from __future__ import annotations

GRADIENT_CHECKPOINTING_HELP = ("Recompute each decoder layer in backward instead of keeping its activations: "
                               "less memory for large policies, about one more forward pass of compute.")


def enable_gradient_checkpointing(model, enabled: bool = True) -> None:
    """Turn on checkpointing of every decoder layer of the (outermost) Hugging Face model inside `model`
    (the built-in model, or the model a policy wraps). Nothing when `enabled` is False."""
    if not enabled:
        return
    from transformers import PreTrainedModel

    from modalign.config import ConfigError

    hf = next((m for m in model.modules() if isinstance(m, PreTrainedModel)), None)
    if hf is None or not hf.supports_gradient_checkpointing:
        name = type(hf or model).__name__
        raise ConfigError(f"gradient_checkpointing: {name} does not support it; set gradient_checkpointing=false")
    hf.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
