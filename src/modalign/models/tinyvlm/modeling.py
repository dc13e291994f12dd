"""The built-in VLM: a real `transformers` PreTrainedModel (save/load/generate as users expect).

Interface shared with the Hugging Face adapters (see `modalign.models.policy`):
  - `encode_media(input_ids, pixel_values, input_values) -> MediaFeatures` (cacheable),
  - `forward(input_ids, attention_mask, media=... | pixel_values=..., labels=...)`,
  - `generate(...)`, which encodes media once and reuses it at every decoding step.
  - `shared_prefix_positions` and a 4-D mask in `forward`: one prompt with several answers in one
    row (`modalign.models.shared_prefix`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import CausalLMOutputWithPast

from modalign.models.prompt_cache import can_share_prompt, shared_prompt_cache
from modalign.models.tinyvlm.configuration import TinyVLMConfig
from modalign.models.tinyvlm.encoders import AudioEncoder, PatchImageEncoder
from modalign.models.tinyvlm.fusion import (
    GatedCrossAttention,
    MediaFeatures,
    WeightedSumFusion,
    media_memory,
    place_media_tokens,
)


class SelfAttention(nn.Module):
    def __init__(self, config: TinyVLMConfig, layer_idx: int) -> None:
        super().__init__()
        self.heads, self.head_dim, self.layer_idx = config.num_attention_heads, config.head_dim, layer_idx
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size)
        self.out = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout = config.dropout

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor, cache: Cache | None) -> torch.Tensor:
        batch, length, width = hidden.shape
        q, k, v = self.qkv(hidden).view(batch, length, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        if cache is not None:  # k, v: (B, H, past + L, hd)
            k, v = cache.update(k, v, self.layer_idx)
        dropout = self.dropout if self.training else 0.0
        if q.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
            # bf16 SDPA is several times slower than fp32 on a CPU for one query token (models.hf.attention)
            with torch.autocast("cpu", enabled=False):
                attended = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask,
                                                          dropout_p=dropout).to(torch.get_autocast_dtype("cpu"))
        else:
            attended = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)  # (B, H, L, hd)
        return self.out(attended.transpose(1, 2).reshape(batch, length, width))


class DecoderLayer(GradientCheckpointingLayer):  # `gradient_checkpointing: true` recomputes it in backward
    def __init__(self, config: TinyVLMConfig, layer_idx: int) -> None:
        super().__init__()
        self.attn_norm = nn.LayerNorm(config.hidden_size)
        self.attn = SelfAttention(config, layer_idx)
        self.mlp_norm = nn.LayerNorm(config.hidden_size)
        self.mlp = nn.Sequential(
            nn.Linear(config.hidden_size, config.intermediate_size),
            nn.GELU(),
            nn.Linear(config.intermediate_size, config.hidden_size),
            nn.Dropout(config.dropout),
        )
        self.cross = (
            GatedCrossAttention(config.hidden_size, config.num_attention_heads, config.dropout)
            if config.fusion == "cross_attention"
            else None
        )

    def forward(self, hidden, mask, cache, memory=None, memory_mask=None) -> torch.Tensor:
        if self.cross is not None:
            hidden = self.cross(hidden, memory, memory_mask)
        hidden = hidden + self.attn(self.attn_norm(hidden), mask, cache)
        return hidden + self.mlp(self.mlp_norm(hidden))


class TinyVLMPreTrainedModel(PreTrainedModel):
    config_class = TinyVLMConfig
    base_model_prefix = "tinyvlm"
    main_input_name = "input_ids"
    _no_split_modules = ["DecoderLayer"]
    _supports_sdpa = True
    supports_gradient_checkpointing = True

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        std = 0.02
        if isinstance(module, (nn.Conv1d, nn.Conv2d)):
            # He init: a stack of small-std convolutions would shrink the media signal to nothing.
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
            module.bias.zero_()
        elif isinstance(module, nn.Linear):
            module.weight.normal_(0.0, std)
            if module.bias is not None:
                module.bias.zero_()
        elif isinstance(module, nn.Embedding):
            module.weight.normal_(0.0, std)
        elif isinstance(module, (nn.LayerNorm, nn.GroupNorm)):
            module.weight.fill_(1.0)
            module.bias.zero_()
        elif isinstance(module, nn.MultiheadAttention):
            module.in_proj_weight.normal_(0.0, std)
            module.in_proj_bias.zero_()
        elif isinstance(module, (PatchImageEncoder, AudioEncoder)):
            module.positions.normal_(0.0, std)
        elif isinstance(module, GatedCrossAttention):
            module.attn_gate.zero_()
            module.ff_gate.zero_()
            module.null.normal_(0.0, std)
        elif isinstance(module, WeightedSumFusion):
            module.gates.zero_()
            for queries in module.queries.values():
                queries.normal_(0.0, std)


def once_per_item(encode, items: torch.Tensor) -> torch.Tensor:
    """`encode(items)` (N, ...) -> (N, ...), running the encoder once per distinct item.

    A batch may hold one image or clip several times (SFT batches grouped by media, `group_by_media`:
    five questions about one scene): the copies' features are the same rows, so the result and its
    gradients equal encoding every copy (the gradient of a shared row is the sum over its uses). The
    encoders are per item (GroupNorm, no batch statistics), so which copy is encoded does not matter.
    """
    flat = items.flatten(1)  # (N, prod)
    if flat.sum(1).unique().shape[0] == items.shape[0]:  # distinct sums: distinct items (a cheap exact pre-check:
        return encode(items)  # sorting whole rows cost ~1 ms per reward-model step, whose batches repeat nothing)
    distinct, inverse = flat.unique(dim=0, return_inverse=True)  # (U, prod), (N,)
    if distinct.shape[0] == items.shape[0]:
        return encode(items)
    return encode(distinct.view(-1, *items.shape[1:]))[inverse]


def _projector(kind: str, in_width: int, width: int) -> nn.Sequential:
    """Media features -> decoder width: one Linear (LLaVA) or Linear-GELU-Linear (LLaVA-1.5)."""
    if kind == "linear":
        return nn.Sequential(nn.Linear(in_width, width))
    return nn.Sequential(nn.Linear(in_width, width), nn.GELU(), nn.Linear(width, width))


class TinyVLMForConditionalGeneration(TinyVLMPreTrainedModel, GenerationMixin):
    """Image + audio + text -> text. See `TinyVLMConfig` for the fusion options."""

    def __init__(self, config: TinyVLMConfig) -> None:
        super().__init__(config)
        width = config.hidden_size
        self.vision = PatchImageEncoder(
            config.image_size, config.patch_size, config.vision_hidden_size, config.vision_layers, config.dropout
        )
        self.audio = AudioEncoder(
            config.sample_rate, config.n_fft, config.hop_length, config.n_mels, config.audio_stride,
            config.audio_hidden_size, config.audio_layers, config.dropout, config.num_audio_frames,
        )
        self.image_projector = _projector(config.projector, config.vision_hidden_size, width)
        self.audio_projector = _projector(config.projector, config.audio_hidden_size, width)
        self.embed_tokens = nn.Embedding(config.vocab_size, width, padding_idx=config.pad_token_id)
        self.embed_positions = nn.Embedding(config.max_position_embeddings, width)
        self.layers = nn.ModuleList(DecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.weighted_sum = (
            WeightedSumFusion(width, config.num_attention_heads, config.fused_queries)
            if config.fusion == "weighted_sum"
            else None
        )
        self.norm = nn.LayerNorm(width)
        self.lm_head = nn.Linear(width, config.vocab_size, bias=False)
        self.post_init()
        # Media placeholders are the processor's to write, never the model's to sample.
        self.generation_config.suppress_tokens = [config.image_token_id, config.audio_token_id, config.bos_token_id]

    # Shared-prefix packing (`modalign.models.shared_prefix`): a 4-D mask and explicit positions.
    supports_shared_prefix = True

    @staticmethod
    def shared_prefix_positions(input_ids: torch.Tensor, key_mask: torch.Tensor, media: MediaFeatures | None,
                                shift: torch.Tensor) -> torch.Tensor:
        """(B, L) positions of packed rows: each answer continues from its prompt's end (`shift` moves it back)."""
        return (key_mask.long().cumsum(-1) - 1).clamp(min=0) - shift

    # ---- media -------------------------------------------------------------------
    def media_encoder_modules(self) -> list[nn.Module]:
        """Modules that turn pixels and waveforms into `MediaFeatures` (frozen during RL)."""
        return [self.vision, self.audio, self.image_projector, self.audio_projector]

    def encode_media(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        input_values: torch.Tensor | None = None,
    ) -> MediaFeatures:
        """Encode every image (N_img, 3, H, W) and clip (N_aud, S) of a batch once.

        The row of each item is read from the placeholders in `input_ids` (B, L).
        """
        image = audio = image_rows = audio_rows = None
        if pixel_values is not None and pixel_values.shape[0] > 0:
            # (N, P, D), each distinct image encoded once
            image = once_per_item(lambda x: self.image_projector(self.vision(x)), pixel_values.to(self.dtype))
            image_rows = self._item_rows(input_ids, self.config.image_token_id, self.config.image_seq_length, "image")
            self._check_items(image_rows, image.shape[0], "image")
        if input_values is not None and input_values.shape[0] > 0:
            # (N, T, D), each distinct clip encoded once
            audio = once_per_item(lambda x: self.audio_projector(self.audio(x)), input_values.to(self.dtype))
            audio_rows = self._item_rows(input_ids, self.config.audio_token_id, self.config.audio_seq_length, "audio")
            self._check_items(audio_rows, audio.shape[0], "audio")
        return MediaFeatures(image, image_rows, audio, audio_rows)

    @staticmethod
    def _item_rows(input_ids: torch.Tensor, token_id: int, tokens_per_item: int, kind: str) -> torch.Tensor:
        counts = (input_ids == token_id).sum(-1)  # (B,)
        if bool((counts % tokens_per_item).any()):
            raise ValueError(f"a row holds a partial {kind}: {counts.tolist()} placeholder tokens, {tokens_per_item} per {kind}")
        return torch.arange(input_ids.shape[0], device=input_ids.device).repeat_interleave(counts // tokens_per_item)

    @staticmethod
    def _check_items(rows: torch.Tensor, n_items: int, kind: str) -> None:
        if rows.numel() != n_items:
            raise ValueError(f"{rows.numel()} {kind} placeholder(s) in the text but {n_items} {kind}(s) given")

    # ---- forward -----------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        input_values: torch.Tensor | None = None,
        media: MediaFeatures | None = None,
        labels: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache: Cache | None = None,
        past_key_values: Cache | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        logits_to_keep: int = 0,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        cache = cache if cache is not None else past_key_values
        if media is None and (pixel_values is not None or input_values is not None):
            media = self.encode_media(input_ids, pixel_values, input_values)
        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)
        batch, length = input_ids.shape
        past = cache.get_seq_length() if cache is not None else 0
        hidden = self._embed(input_ids, media)
        if position_ids is None:
            position_ids = self._positions(attention_mask, batch, length, past, input_ids.device)
        hidden = hidden + self.embed_positions(position_ids.clamp(max=self.config.max_position_embeddings - 1))
        mask = self._attention_mask(attention_mask, batch, length, past, input_ids.device)
        memory = memory_mask = None
        if self.config.fusion == "cross_attention":
            memory, memory_mask = media_memory(media, batch, self.config.hidden_size, input_ids.device)
        all_hidden = [hidden]
        for layer in self.layers:
            hidden = layer(hidden, mask, cache, memory, memory_mask)
            all_hidden.append(hidden)
        hidden = self.norm(hidden)
        all_hidden[-1] = hidden  # as in transformers: the last entry is after the final norm
        if isinstance(logits_to_keep, torch.Tensor):  # (U,) columns: logits only where they are read
            hidden = hidden[:, logits_to_keep]
        elif logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        logits = self.lm_head(hidden)  # (B, L, V), or (B, U, V)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]).float(), labels[:, 1:].reshape(-1), ignore_index=-100
            )
        return CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            cache=cache if use_cache else None,
            hidden_states=tuple(all_hidden) if output_hidden_states else None,
        )

    def _embed(self, input_ids: torch.Tensor, media: MediaFeatures | None) -> torch.Tensor:
        hidden = self.embed_tokens(input_ids)  # (B, L, D)
        if self.config.fusion == "concat":
            hidden = place_media_tokens(hidden, input_ids, self.config.image_token_id, media and media.image, "image")
            hidden = place_media_tokens(hidden, input_ids, self.config.audio_token_id, media and media.audio, "audio")
        elif self.config.fusion == "weighted_sum":
            fused = self.weighted_sum(media, input_ids.shape[0], self.config.hidden_size, input_ids.device)  # (B, D)
            hidden = hidden + fused.unsqueeze(1)
        return hidden

    @staticmethod
    def _positions(attention_mask, batch: int, length: int, past: int, device) -> torch.Tensor:
        # Left padding: positions count real tokens only, so a padded prompt sees the same positions.
        if attention_mask is None:
            return torch.arange(past, past + length, device=device).expand(batch, -1)
        positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        return positions[:, -length:]

    @staticmethod
    def _attention_mask(attention_mask, batch: int, length: int, past: int, device) -> torch.Tensor:
        """Boolean (B, 1, L, past + L): causal, without padding keys, and always self.

        A 4-D mask is taken as it is (shared-prefix packing, `modalign.models.shared_prefix`).
        """
        if attention_mask is not None and attention_mask.dim() == 4:
            return attention_mask.bool()
        total = past + length
        query_pos = torch.arange(past, total, device=device).unsqueeze(-1)  # (L, 1)
        key_pos = torch.arange(total, device=device).unsqueeze(0)  # (1, total)
        allowed = (key_pos <= query_pos).unsqueeze(0).expand(batch, -1, -1)
        if attention_mask is not None:
            allowed = allowed & attention_mask[:, -total:].bool().unsqueeze(1)
        # Padding queries would see no key at all (NaN in softmax); let them see themselves.
        allowed = allowed | (key_pos == query_pos).unsqueeze(0)
        return allowed.unsqueeze(1)

    # ---- generation --------------------------------------------------------------
    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        input_values: torch.Tensor | None = None,
        media: MediaFeatures | None = None,
        **kwargs,
    ):
        """`GenerationMixin.generate` with media encoded once, before the first step.

        With `num_return_sequences=G`, prompts and their media features are repeated
        here (rows b*G .. b*G+G-1 belong to prompt b), so pixels are encoded once per prompt,
        and each prompt runs through the model once (`models.prompt_cache`).
        """
        if media is None and (pixel_values is not None or input_values is not None):
            media = self.encode_media(input_ids, pixel_values, input_values)
        repeats = int(kwargs.pop("num_return_sequences", 1) or 1)
        if repeats > 1:
            batch = input_ids.shape[0]
            if kwargs.get("attention_mask") is None:
                kwargs["attention_mask"] = torch.ones_like(input_ids)
            media_tokens = [self.config.image_token_id, self.config.audio_token_id]
            if can_share_prompt(input_ids, media_tokens, repeats):
                kwargs["cache"] = shared_prompt_cache(self, input_ids, kwargs["attention_mask"], media, repeats)
            input_ids = input_ids.repeat_interleave(repeats, dim=0)
            kwargs["attention_mask"] = kwargs["attention_mask"].repeat_interleave(repeats, dim=0)
            media = media.repeat_interleave(repeats, batch) if media is not None else None
        return super().generate(input_ids=input_ids, media=media, **kwargs)
