"""Modality attribution: how much of the score is due to the image, the audio and the text.

Two estimates, both against the same stated baseline (BASELINES):
- ablation: f(x) - f(x with one modality replaced by its baseline), one batched forward for all;
- integrated gradients (Sundararajan et al. 2017, eq. 1) with Captum over the cached media features
  (the projected image and audio tokens the model computes once) and the prompt's token embeddings,
  from the baseline's features to the example's. Completeness: the attributions sum to
  f(x) - f(all baselines), so a modality's share is its sum's magnitude over the total.
A share is |delta_m| / sum_m |delta_m| (0 when nothing moves the score).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from modalign.eval.explain.target import ExplainError, Subject, Target, captum_attr, repeat_rows

BASELINES = {
    "image": "blank image: pixel_values 0 (the processor's mean colour)",
    "audio": "silent audio: input_values 0",
    "text": "masked text: the prompt's text tokens replaced by the pad token (media and template tokens kept)",
}


def shares(deltas: dict[str, float]) -> dict[str, float]:
    """|delta| / sum |delta| per modality."""
    total = sum(abs(d) for d in deltas.values())
    return {m: (abs(d) / total if total > 0 else 0.0) for m, d in deltas.items()}


def masked_text(subject: Subject, pad_token_id: int) -> torch.Tensor:
    """input_ids (1, L) with the prompt's text tokens replaced by the pad token."""
    return subject.input_ids.masked_fill(subject.text_mask, pad_token_id)


@torch.no_grad()
def ablation(target: Target, subject: Subject, pad_token_id: int, others: Sequence[Subject] = ()) -> dict[str, Any]:
    """Score of the example and of each one-modality ablation, in one forward.

    Without `others` the image and the audio go to their blank / silent baseline (one row each). With
    `others` (other examples of the set) they are replaced by each other example's image / clip in turn and
    the ablated score is the mean over them (an in-distribution baseline: a model never trained on
    silence may react to silence itself). Text is always masked.
    """
    modalities = subject.modalities()
    variants: list[tuple[str, dict[str, Any]]] = []  # (modality, the row's replaced parts)
    baseline = {m: BASELINES[m] for m in modalities}
    for modality in modalities:
        if modality == "text":
            variants.append(("text", {"input_ids": masked_text(subject, pad_token_id)}))
            continue
        key = "pixel_values" if modality == "image" else "input_values"
        own = getattr(subject, key)
        swaps = [getattr(o, key) for o in others if _same_shape(getattr(o, key), own)]
        for media in swaps or [torch.zeros_like(own)]:
            variants.append((modality, {key: media}))
        if swaps:
            baseline[modality] = f"the {modality} of {len(swaps)} other example(s) in turn (mean score)"
    rows = 1 + len(variants)
    input_ids = repeat_rows(subject.input_ids, rows)  # (rows, L)
    pixels = _stack(subject.pixel_values, rows)  # (rows * N_img, C, H, W): row r's images are block r
    audio = _stack(subject.input_values, rows)
    for row, (_, parts) in enumerate(variants, start=1):
        if "input_ids" in parts:
            input_ids[row] = parts["input_ids"][0]
        if "pixel_values" in parts:
            _block(pixels, subject.pixel_values, row).copy_(parts["pixel_values"])
        if "input_values" in parts:
            _block(audio, subject.input_values, row).copy_(parts["input_values"])
    scores = target(input_ids, repeat_rows(subject.answer_mask, rows), **_media_kwargs(pixels, audio))
    ablated = {m: float(torch.stack([scores[r] for r, (v, _) in enumerate(variants, start=1) if v == m]).mean())
               for m in modalities}
    deltas = {m: float(scores[0]) - ablated[m] for m in modalities}
    return {"score": float(scores[0]), "ablated": ablated, "delta": deltas, "share": shares(deltas),
            "baseline": baseline}


def _same_shape(media: torch.Tensor | None, own: torch.Tensor) -> bool:
    return media is not None and media.shape == own.shape


def integrated_gradients(target: Target, subject: Subject, pad_token_id: int, steps: int = 16) -> dict[str, Any]:
    """Captum IntegratedGradients over (image features, audio features, prompt embeddings) of the subject."""
    backbone = target.backbone
    if not hasattr(backbone, "encode_media"):
        raise ExplainError("integrated gradients need a model that encodes its media once (encode_media)")
    with torch.no_grad():
        features = backbone.encode_media(subject.input_ids, subject.pixel_values, subject.input_values)
        blank = backbone.encode_media(subject.input_ids, _zeros(subject.pixel_values), _zeros(subject.input_values))
    features, blank = per_modality(backbone, features), per_modality(backbone, blank)
    embedding = input_embeddings(backbone)
    with torch.no_grad():
        text = embedding(subject.input_ids)  # (1, L, D)
        text_blank = embedding(masked_text(subject, pad_token_id))
    modalities = subject.modalities()
    inputs, baselines, names = [], [], []
    for name, value, base in (("image", features.image, blank.image), ("audio", features.audio, blank.audio),
                              ("text", text, text_blank)):
        if name in modalities and value is not None:
            # one leading row: Captum scales along dim 0, and an example may hold several images
            inputs.append(value.detach().unsqueeze(0) if name != "text" else value.detach())
            baselines.append(base.detach().unsqueeze(0) if name != "text" else base.detach())
            names.append(name)
    if not names:
        raise ExplainError(f"record {subject.example_id!r}: no image, audio or prompt text to attribute")

    def forward(*scaled: torch.Tensor) -> torch.Tensor:
        given = dict(zip(names, scaled))
        rows = scaled[0].shape[0]
        media = _scaled_media(features, given, rows)
        with replaced_embeddings(embedding, given.get("text")):
            return target(repeat_rows(subject.input_ids, rows), repeat_rows(subject.answer_mask, rows), media=media)

    ig = captum_attr().IntegratedGradients(forward)
    attributions, delta = ig.attribute(tuple(inputs), baselines=tuple(baselines), n_steps=steps,
                                       method="gausslegendre", return_convergence_delta=True)
    sums = {name: float(a.sum()) for name, a in zip(names, attributions)}
    out = {"attribution": sums, "share": shares(sums), "convergence_delta": float(delta.abs().sum()),
           "steps": steps, "baseline": {m: BASELINES[m] for m in names}}
    if "text" in names:  # per prompt token, for the token table
        text_attr = attributions[names.index("text")][0].sum(-1)  # (L,)
        out["text_tokens"] = [float(text_attr[p]) for p in subject.text_mask[0].nonzero().flatten().tolist()]
    return out


def per_modality(backbone, features):
    """`features` as an object with `.image` / `.audio` (N, P, D) and `repeat_interleave`: the built-in model's
    MediaFeatures as they are; a Hugging Face fast path's placeholder features (one modality, tokens (N_tok, D))
    seen as one item of that modality."""
    if hasattr(features, "image") and hasattr(features, "audio"):
        return features
    family = getattr(backbone, "family", None)
    if family is None or not hasattr(features, "tokens"):
        raise ExplainError(f"integrated gradients need cached media features; this model gives "
                           f"{type(features).__name__}: use ablation")
    return _OneModality(features, family.modality)


class _OneModality:
    """Placeholder features (tokens (N_tok, D)) under the name of the family's modality, as (1, N_tok, D)."""

    def __init__(self, features, modality: str) -> None:
        self.features, self.modality = features, modality
        self.image = self.audio = None
        setattr(self, modality, features.tokens.unsqueeze(0))

    def repeat_interleave(self, times: int, batch_size: int) -> "_Scaled":
        return _Scaled(self.features.repeat_interleave(times, batch_size), self.modality)


class _Scaled:
    """Repeated placeholder features whose tokens `_scaled_media` replaces by setting `.image` / `.audio`."""

    def __init__(self, features, modality: str) -> None:
        self.features, self.modality = features, modality

    def __setattr__(self, name, value) -> None:
        if name in ("image", "audio"):
            if name == self.modality:  # (rows * 1, N_tok, D) -> (rows * N_tok, D)
                self.features.tokens = value.reshape(-1, value.shape[-1])
            return
        super().__setattr__(name, value)


def input_embeddings(backbone) -> torch.nn.Module:
    """The token embedding module of the built-in model or a Hugging Face adapter."""
    for owner in (backbone, getattr(backbone, "hf", None)):
        getter = getattr(owner, "get_input_embeddings", None)
        if getter is not None:
            return getter()
    raise ExplainError(f"{type(backbone).__name__} has no get_input_embeddings(): the text cannot be attributed")


class replaced_embeddings:
    """Within the block, the embedding module returns `values` (K, L, D) instead of its lookup (None: unchanged)."""

    def __init__(self, embedding: torch.nn.Module, values: torch.Tensor | None) -> None:
        self.embedding, self.values, self.handle = embedding, values, None

    def __enter__(self):
        if self.values is not None:
            self.handle = self.embedding.register_forward_hook(lambda module, args, output: self.values)
        return self

    def __exit__(self, *exc) -> None:
        if self.handle is not None:
            self.handle.remove()


def _scaled_media(features, given: dict[str, torch.Tensor], rows: int):
    """MediaFeatures of `rows` variants: Captum's scaled features where given, the example's elsewhere."""
    repeated = features.repeat_interleave(rows, 1)  # every row holds the example's media
    for name in ("image", "audio"):
        if name in given:  # (rows, N, P, D) -> (rows * N, P, D), row r's items contiguous as repeat_interleave lays them
            setattr(repeated, name, given[name].reshape(-1, *given[name].shape[2:]))
    return getattr(repeated, "features", repeated)


def _stack(media: torch.Tensor | None, rows: int) -> torch.Tensor | None:
    return None if media is None else media.repeat(rows, *([1] * (media.dim() - 1)))


def _block(stacked: torch.Tensor, media: torch.Tensor, row: int) -> torch.Tensor:
    items = media.shape[0]
    return stacked[row * items : (row + 1) * items]


def _zeros(media: torch.Tensor | None) -> torch.Tensor | None:
    return None if media is None else torch.zeros_like(media)


def _media_kwargs(pixels: torch.Tensor | None, audio: torch.Tensor | None) -> dict[str, torch.Tensor]:
    return {k: v for k, v in (("pixel_values", pixels), ("input_values", audio)) if v is not None}
