"""A Hugging Face VLM or audio-LM behind modalign's policy interface.

The same calls as the built-in model (`modalign.models.tinyvlm.modeling`):
  - `encode_media(input_ids, pixel_values, input_values) -> PlaceholderFeatures` (cacheable),
  - `forward(input_ids, attention_mask, media=... | pixel_values=... | input_values=..., labels=...)`,
  - `generate(input_ids, attention_mask, media=..., ...)`, media encoded once before decoding,
  - `media_encoder_modules()`, `save_pretrained`, `from_pretrained`,
  - `supports_shared_prefix` / `shared_prefix_positions` and a 4-D mask with explicit `position_ids`
    in `forward`: one prompt with several answers in one row (`modalign.models.shared_prefix`).

Fast path (a registered family): media features replace the placeholder tokens of the text in
order (`inputs_embeds.masked_scatter`); the model then runs on `inputs_embeds` plus what its
family reads besides (`extras`). Generic path (any other model type): `encode_media` returns
the processor's outputs per row (`ProcessorMedia`) and the model's own forward and generate
read them all, with the ids. Composition, not inheritance: `self.model` is the untouched
`transformers` model (or a `peft` model around it), so its own `generate` and
`save_pretrained` do the work.
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import torch
from torch import nn

from modalign.models.hf.attention import is_sdpa, use_fp32_cpu_sdpa
from modalign.models.hf.extras import forward_inputs, generation_inputs
from modalign.models.hf.families import Family, ModelSupportError, family_of, media_token_ids
from modalign.models.hf.features import PlaceholderFeatures
from modalign.models.hf.media import ProcessorMedia
from modalign.models.hf.guards import debug_from_env, media_reach_decoder, reject_raw_media
from modalign.models.hf.packing import unpack
from modalign.models.prompt_cache import can_share_prompt, shared_prompt_cache


# `from_pretrained` options for every model modalign loads (policy, reference, reward model, critic, judge).
# transformers 5.25 kernelizes by default (`use_kernels=None` -> True; 5.24 defaulted to False), and again on
# every train() / eval() switch: on a CUDA device it downloads layers from the hub (kernels-community: Liger
# RMSNorm, rotary, and activations for inference only) and swaps them in, so a rollout's eval-mode log-probs
# and the update's train-mode ones would come from different kernels, and a run would reach the hub; on a
# CPU it swaps nothing but walks every module at each switch. Off: the model's own torch layers in both modes.
NO_HUB_KERNELS = {"use_kernels": False}

class HFPolicyModel(nn.Module):
    """A loaded `transformers` multimodal model with modalign's encode-once interface."""

    def __init__(self, model: nn.Module, family: Family) -> None:
        super().__init__()
        self.model = model
        self.family = family
        self.placeholder_id = family.placeholder_id(self.hf.config)
        # When True, every forward and generation prefill checks that the decoder reads the media (`guards`).
        self.debug_media = debug_from_env()

    # ---- what recipes read -----------------------------------------------------------
    @property
    def hf(self) -> nn.Module:
        """The `transformers` model itself (under a `peft` wrapper, its base model with the adapters)."""
        get_base = getattr(self.model, "get_base_model", None)
        return get_base() if get_base is not None else self.model

    @property
    def config(self):
        return self.hf.config

    @property
    def generation_config(self):
        return self.hf.generation_config

    @property
    def name_or_path(self) -> str:
        return self.hf.name_or_path

    @property
    def dtype(self) -> torch.dtype:
        return self.hf.dtype

    @property
    def supports_shared_prefix(self) -> bool:
        """Shared-prefix packing (`modalign.models.shared_prefix`) for families whose positions follow the
        attention mask (M-RoPE from the mask and the grids), with an attention that takes a 4-D mask.

        Other families keep one row per answer: their forward without `position_ids` counts left
        padding as positions, which packed rows would not reproduce.
        """
        if self.family.generic:
            return False
        implementation = self.hf.config._attn_implementation
        return self.family.positions == "mrope" and (is_sdpa(implementation) or implementation == "eager")

    def shared_prefix_positions(self, input_ids: torch.Tensor, key_mask: torch.Tensor,
                                media: PlaceholderFeatures | None, shift: torch.Tensor) -> torch.Tensor:
        """Positions (3, B, L) of packed rows: the family's own, with each answer moved back to its prompt's end.

        Answers are text after the media, where every M-RoPE axis advances by one per token.
        """
        positions = forward_inputs(self.family, self.hf, input_ids, key_mask, media, self.placeholder_id)
        return positions["position_ids"] - shift.unsqueeze(0)

    def media_encoder_modules(self) -> list[nn.Module]:
        """The media encoder and projector (frozen during RL so cached features stay valid; a generic
        model's are those of the usual names it has)."""
        if self.family.generic:
            return [self.hf.get_submodule(path) for path in self.family.encoder_modules if _has_module(self.hf, path)]
        return [self.hf.get_submodule(path) for path in self.family.encoder_modules]

    @property
    def media_token_ids(self) -> list[int]:
        """Every media placeholder id the config names (never sampled)."""
        return sorted((set(media_token_ids(self.hf.config).values()) | {self.placeholder_id}) - {None})

    # ---- media -------------------------------------------------------------------------
    def encode_media(
        self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None = None,
        input_values: torch.Tensor | None = None,
    ) -> PlaceholderFeatures | ProcessorMedia:
        """Encode every media item of a batch once: features for each placeholder of `input_ids` (B, L).

        `pixel_values` / `input_values` are in the packed layout of the adapter's processor. On the
        generic path nothing is encoded ahead: the processor's outputs are returned for the model's
        own forward.
        """
        if self.family.generic:
            return self._processor_media(input_ids, pixel_values, input_values)
        packed = self._media_tensor(pixel_values, input_values)
        counts = (input_ids == self.placeholder_id).sum(1)  # (B,)
        width = self.hf.config.get_text_config().hidden_size
        grids = None
        if packed is None or packed.shape[0] == 0:
            tokens = torch.zeros(0, width, dtype=self.dtype, device=input_ids.device)
        else:
            inputs = unpack(self.family.layout, packed)
            grids = inputs.get("image_grid_thw")
            tokens = self.family.encode(self.hf, inputs)  # (N_tok, D)
        if tokens.shape[0] != int(counts.sum()):
            raise ValueError(
                f"{self.family.name}: input_ids hold {int(counts.sum())} {self.family.modality} placeholder tokens "
                f"but the {self.family.modality} inputs give {tokens.shape[0]} feature tokens; the text and the "
                f"media of the batch do not match")
        features = PlaceholderFeatures(tokens, counts)
        if self.family.positions == "mrope":
            features.grids, features.grid_rows = self._grid_rows(grids, counts)
        return features

    def _processor_media(self, input_ids: torch.Tensor, pixel_values, input_values) -> ProcessorMedia:
        given = [value for value in (pixel_values, input_values) if value is not None]
        if any(not isinstance(value, ProcessorMedia) for value in given):
            raise ValueError(f"{self.family.name} runs on the generic path: build batches with the processor that "
                             f"`load_policy` returns (its media are the processor's outputs per row, not a tensor)")
        if not given:
            return ProcessorMedia([{} for _ in range(input_ids.shape[0])])
        if given[0].batch_size != input_ids.shape[0]:
            raise ValueError(f"{self.family.name}: the media hold {given[0].batch_size} rows but input_ids "
                             f"{input_ids.shape[0]}; the text and the media of the batch do not match")
        return given[0].to(input_ids.device)

    def _native_inputs(self, input_ids: torch.Tensor, media: ProcessorMedia,
                       attention_mask: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """The generic path's keyword arguments besides ids and mask: every processor output for these rows."""
        return {**media.model_inputs(), **media.token_type_inputs(input_ids, attention_mask)}

    def _media_tensor(self, pixel_values, input_values) -> torch.Tensor | None:
        given = {"pixel_values": pixel_values, "input_values": input_values}
        for slot, value in given.items():
            if slot != self.family.media_slot and value is not None and value.numel():
                raise ValueError(f"{self.family.name} reads {self.family.modality} only, but the batch holds "
                                 f"{slot}: keep only the {self.family.modality} parts of the examples")
        return given[self.family.media_slot]

    def _grid_rows(self, grids: torch.Tensor | None, counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N_img, 3) grids and the batch row of each, read from where its placeholder tokens sit."""
        if grids is None:
            return torch.zeros(0, 3, dtype=torch.long), torch.zeros(0, dtype=torch.long)
        merge = self.hf.config.vision_config.spatial_merge_size
        per_image = grids.prod(-1) // merge**2  # (N_img,) placeholder tokens of each image
        token_rows = torch.repeat_interleave(torch.arange(counts.shape[0]), counts.cpu())  # (N_tok,)
        starts = torch.cumsum(per_image, 0) - per_image
        first, last = token_rows[starts], token_rows[starts + per_image - 1]
        if not torch.equal(first, last):
            raise ValueError(f"{self.family.name}: an image's placeholder tokens span two rows of the batch")
        return grids, first

    def check_placeholders(self, input_ids: torch.Tensor, media: PlaceholderFeatures | None) -> torch.Tensor:
        """The (B, L) placeholder mask, after checking that each row has exactly its cached feature tokens.

        Without this check `masked_scatter` would silently use the first features only (e.g. after a
        truncation cut into the media tokens) and misplace every later image of the batch.
        """
        slots = input_ids == self.placeholder_id  # (B, L)
        given = 0 if media is None else media.tokens.shape[0]
        if int(slots.sum()) != given or (media is not None and not torch.equal(slots.sum(1), media.counts)):
            per_row = [] if media is None else media.counts.tolist()
            raise ValueError(f"{self.family.name}: input_ids hold {slots.sum(1).tolist()} {self.family.modality} "
                             f"placeholder tokens per row but the media features cover {per_row} ({given} in all); "
                             f"the text and the media do not match (was a prompt truncated?)")
        return slots

    def embed(self, input_ids: torch.Tensor, media: PlaceholderFeatures | None) -> torch.Tensor:
        """Token embeddings (B, L, D) with the media features written over the placeholder tokens."""
        slots = self.check_placeholders(input_ids, media)
        # The placeholder id may lie outside the embedding table (Gemma 3 allows it): embed 0 there, then overwrite.
        embeds = self.hf.get_input_embeddings()(input_ids.masked_fill(slots, 0))
        if media is None or media.tokens.shape[0] == 0:
            return embeds
        return embeds.masked_scatter(slots.unsqueeze(-1), media.tokens.to(embeds.dtype))

    def _debug(self, input_ids: torch.Tensor, media: PlaceholderFeatures, call: str):
        """The debug-mode check around one call (a no-op context when debug mode is off)."""
        if not self.debug_media:
            return nullcontext()
        return media_reach_decoder(self.hf.get_decoder(), input_ids, self.placeholder_id, media,
                                   f"{self.family.name} {call}")

    # ---- forward and generate ------------------------------------------------------------
    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None, input_values: torch.Tensor | None = None,
        media: PlaceholderFeatures | None = None, labels: torch.Tensor | None = None, **kwargs,
    ):
        """The model's output (logits (B, L, V), loss with `labels`, hidden states on request)."""
        reject_raw_media(kwargs, self.family.name)
        if media is None:
            media = self.encode_media(input_ids, pixel_values, input_values)
        if self.family.generic:
            output = self.model(input_ids=input_ids, attention_mask=attention_mask, labels=labels,
                                **self._native_inputs(input_ids, media, attention_mask), **kwargs)
            return text_positions(output, input_ids.shape[1])
        embeds = self.embed(input_ids, media)
        if kwargs.get("position_ids") is not None:  # packed rows (`shared_prefix_positions`)
            extras, attention_mask = {}, self._packed_mask(attention_mask, embeds.dtype)
        else:
            kwargs.pop("position_ids", None)
            extras = forward_inputs(self.family, self.hf, input_ids, attention_mask, media, self.placeholder_id)
        with self._debug(input_ids, media, "forward"):
            return self.model(inputs_embeds=embeds, attention_mask=attention_mask, labels=labels, **extras, **kwargs)

    def _packed_mask(self, mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
        """A boolean 4-D mask as the attention takes it: as is for SDPA, additive (0 / min) for eager."""
        if mask is None or mask.dim() != 4 or mask.dtype != torch.bool or is_sdpa(self.hf.config._attn_implementation):
            return mask
        return torch.zeros(mask.shape, dtype=dtype).masked_fill(~mask, torch.finfo(dtype).min)

    @torch.no_grad()
    def generate(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None, input_values: torch.Tensor | None = None,
        media: PlaceholderFeatures | None = None, **kwargs,
    ) -> torch.Tensor:
        """`transformers` generation from the media-filled embeddings; returns prompt + answer ids (N, P + T).

        With `num_return_sequences=G` the prompts and their features are repeated here (rows
        b*G .. b*G+G-1 belong to prompt b), so media are encoded once per prompt, and each prompt
        runs through the model once (`models.prompt_cache`): generate continues from its cache.
        """
        reject_raw_media(kwargs, self.family.name)
        if media is None:
            media = self.encode_media(input_ids, pixel_values, input_values)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        repeats = int(kwargs.pop("num_return_sequences", 1) or 1)
        if self.family.generic:  # the model's own generate on every processor output, G rows per prompt
            batch = input_ids.shape[0]
            input_ids = input_ids.repeat_interleave(repeats, dim=0)
            attention_mask = attention_mask.repeat_interleave(repeats, dim=0)
            media = media.repeat_interleave(repeats, batch)
            return self.hf.generate(input_ids=input_ids, attention_mask=attention_mask,
                                    **self._native_inputs(input_ids, media, attention_mask), **kwargs)
        cache = None
        if can_share_prompt(input_ids, [self.placeholder_id], repeats):
            cache = shared_prompt_cache(self._prompt_pass, input_ids, attention_mask, media, repeats)  # (B*G rows)
        if repeats > 1:
            batch = input_ids.shape[0]
            input_ids = input_ids.repeat_interleave(repeats, dim=0)
            attention_mask = attention_mask.repeat_interleave(repeats, dim=0)
            media = media.repeat_interleave(repeats, batch)
        extras = generation_inputs(self.family, input_ids, media, self.placeholder_id)
        if cache is not None:  # the media are in the cache: the continuation reads only ids, positions, masks
            if self.family.positions == "mrope":
                # The model keeps the last batch's rope offsets and would reuse them when continuing from a
                # cache; cleared, generate computes them again from these rows' ids and image grids.
                self.hf.model.rope_deltas = None
            return self.hf.generate(input_ids=input_ids, attention_mask=attention_mask, cache=cache, **extras,
                                    **kwargs)
        with self._debug(input_ids, media, "generate"):
            return self.hf.generate(input_ids=input_ids, attention_mask=attention_mask,
                                    **self._generation_media(input_ids, media), **extras, **kwargs)

    def _prompt_pass(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, media: PlaceholderFeatures,
                     use_cache: bool):
        """The forward of prompts for their KV cache, at the positions generate gives them.

        `forward` leaves positions to the model, which counts left padding in (0, 1, 2, ... from the
        first column); generate counts real tokens only. A cache filled at the model's positions
        would put a padded prompt's last token the wrong distance from the rest of it.
        """
        extras = forward_inputs(self.family, self.hf, input_ids, attention_mask, media, self.placeholder_id)
        if "position_ids" not in extras:  # mrope families get theirs from the rope index, padding-aware
            extras["position_ids"] = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)  # (B, P)
        with self._debug(input_ids, media, "forward"):
            return self.model(inputs_embeds=self.embed(input_ids, media), attention_mask=attention_mask,
                              use_cache=use_cache, **extras)

    def _generation_media(self, input_ids: torch.Tensor, media: PlaceholderFeatures) -> dict:
        if self.family.generate_from == "inputs_embeds":
            return {"inputs_embeds": self.embed(input_ids, media)}
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        self.check_placeholders(input_ids, media)
        if media.tokens.shape[0] == 0:
            return {}
        return {"mm_encoder_outputs": {self.family.modality: BaseModelOutputWithPooling(pooler_output=media.tokens)}}

    # ---- save and load -----------------------------------------------------------------
    def save_pretrained(self, path: str | Path, **kwargs) -> None:
        """The `transformers` checkpoint (LoRA adapters merged into a copy first: see `models.hf.lora`)."""
        from modalign.models.hf.lora import save_merged

        save_merged(self.model, path, **kwargs)

    @classmethod
    def from_pretrained(cls, path: str | Path, dtype: torch.dtype | None = None) -> "HFPolicyModel":
        """Load through the family's own `from_pretrained` (the Auto classes for a generic model, `_load_auto`)."""
        import transformers
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(str(path))
        family = family_of(config, str(path))
        if family.generic:
            model = _load_auto(path, config, dtype or torch.float32)
        else:
            model_class = getattr(transformers, family.model_class)
            model = model_class.from_pretrained(str(path), dtype=dtype or torch.float32, **NO_HUB_KERNELS)
        use_fp32_cpu_sdpa(model)  # bf16 decoding steps attend in fp32 on a CPU (see models.hf.attention)
        return cls(model, family)


def text_positions(output, length: int):
    """The output at the text's `length` positions: a model that puts its media positions in front of the
    text (GIT: (B, K + L, V) logits) gives them to no token, and every caller indexes logits and hidden
    states like `input_ids` (B, L). Models that keep their language model's output apart (BLIP-2:
    `language_model_outputs`) give its hidden states as the output's."""
    inner = getattr(output, "language_model_outputs", None)
    if getattr(output, "hidden_states", None) is None and getattr(inner, "hidden_states", None) is not None:
        output.hidden_states = inner.hidden_states
    logits = getattr(output, "logits", None)
    if logits is None or logits.dim() != 3 or logits.shape[1] <= length:
        return output
    output.logits = logits[:, -length:]
    if getattr(output, "hidden_states", None) is not None:
        output.hidden_states = tuple(h[:, -length:] if h.dim() == 3 and h.shape[1] > length else h
                                     for h in output.hidden_states)
    return output


def _load_auto(path: str | Path, config, dtype: torch.dtype) -> nn.Module:
    """`AutoModelForImageTextToText`, else `AutoModelForMultimodalLM` (audio-LMs too), else
    `AutoModelForCausalLM`; one line when none maps the config."""
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoModelForMultimodalLM

    autos = (AutoModelForImageTextToText, AutoModelForMultimodalLM, AutoModelForCausalLM)
    for auto in autos:
        if type(config) in auto._model_mapping:
            return auto.from_pretrained(str(path), dtype=dtype, **NO_HUB_KERNELS)
    raise ModelSupportError(f"model_type {config.model_type!r} ({path}) loads with none of "
                            f"{', '.join(auto.__name__ for auto in autos)}")


def _has_module(model: nn.Module, path: str) -> bool:
    try:
        model.get_submodule(path)
    except AttributeError:
        return False
    return True
