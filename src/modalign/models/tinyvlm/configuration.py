"""Configuration of the built-in image+audio VLM."""

from __future__ import annotations

from transformers import PretrainedConfig

FUSIONS = ("concat", "cross_attention", "weighted_sum")
# Clips longer than `audio_seconds`: refused (the default, so no sound is silently lost) or cut to the window.
AUDIO_OVERFLOWS = ("error", "truncate")


class TinyVLMConfig(PretrainedConfig):
    """A small decoder-only VLM that reads images and audio.

    Fusion, chosen by `fusion`:
      - `concat`: early fusion; each image becomes `num_patches` tokens and each audio
        clip `num_audio_frames` tokens, written in place of the placeholders.
      - `cross_attention`: each media item is one marker token; the decoder reads the
        media tokens through gated cross-attention (Flamingo, Alayrac et al. 2022, eq. 1).
      - `weighted_sum`: each media item is one marker token; per modality the tokens are
        pooled by `fused_queries` learned queries, the modalities are summed with learned
        softmax gates, and the fused vector is added to every token of the sequence.

    Media sizes: images of any size are resized to `image_size` x `image_size` by the
    processor; audio is read in a window of `audio_seconds` (shorter clips are padded with
    silence; longer ones are an error, or cut to the window with `audio_overflow="truncate"`).
    """

    model_type = "tinyvlm"

    def __init__(
        self,
        vocab_size: int = 512,
        hidden_size: int = 128,
        num_hidden_layers: int = 4,
        num_attention_heads: int = 4,
        intermediate_size: int = 512,
        max_position_embeddings: int = 256,
        dropout: float = 0.0,
        fusion: str = "concat",
        image_size: int = 48,
        patch_size: int = 16,
        vision_hidden_size: int = 128,
        vision_layers: int = 2,
        sample_rate: int = 16000,
        audio_seconds: float = 1.0,
        audio_overflow: str = "error",
        n_fft: int = 400,
        hop_length: int = 160,
        n_mels: int = 40,
        audio_stride: int = 8,
        audio_hidden_size: int = 128,
        audio_layers: int = 2,
        fused_queries: int = 4,
        projector: str = "linear",
        image_token_id: int = 4,
        audio_token_id: int = 5,
        pad_token_id: int = 0,
        bos_token_id: int = 2,
        eos_token_id: int = 3,
        tie_word_embeddings: bool = True,
        **kwargs,
    ) -> None:
        if fusion not in FUSIONS:
            raise ValueError(f"TinyVLMConfig.fusion must be one of {FUSIONS}, got {fusion!r}")
        if projector not in ("mlp", "linear"):
            raise ValueError(f"TinyVLMConfig.projector must be 'mlp' or 'linear', got {projector!r}")
        if hidden_size % num_attention_heads:
            raise ValueError("TinyVLMConfig: hidden_size must be divisible by num_attention_heads")
        if image_size % patch_size or patch_size % 2:
            raise ValueError(f"TinyVLMConfig: patch_size must be even and divide image_size (image_size={image_size}, "
                             f"patch_size={patch_size})")
        if audio_overflow not in AUDIO_OVERFLOWS:
            raise ValueError(f"TinyVLMConfig.audio_overflow must be one of {AUDIO_OVERFLOWS}, got {audio_overflow!r}")
        if audio_seconds <= 0:
            raise ValueError(f"TinyVLMConfig.audio_seconds must be positive, got {audio_seconds}")
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_attention_heads
        self.head_dim = hidden_size // num_attention_heads
        self.intermediate_size = intermediate_size
        self.max_position_embeddings = max_position_embeddings
        self.dropout = dropout
        self.fusion = fusion
        self.image_size = image_size
        self.patch_size = patch_size
        self.vision_hidden_size = vision_hidden_size
        self.vision_layers = vision_layers
        self.sample_rate = sample_rate
        self.audio_seconds = audio_seconds
        self.audio_overflow = audio_overflow
        self.n_fft = n_fft
        self.hop_length = hop_length
        self.n_mels = n_mels
        self.audio_stride = audio_stride
        self.audio_hidden_size = audio_hidden_size
        self.audio_layers = audio_layers
        self.fused_queries = fused_queries
        self.projector = projector
        self.image_token_id = image_token_id
        self.audio_token_id = audio_token_id
        super().__init__(
            pad_token_id=pad_token_id,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            tie_word_embeddings=tie_word_embeddings,
            **kwargs,
        )

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def audio_samples(self) -> int:
        return int(round(self.sample_rate * self.audio_seconds))

    @property
    def num_audio_frames(self) -> int:
        """Audio tokens per clip: STFT frames (centered) downsampled by `audio_stride`."""
        stft_frames = self.audio_samples // self.hop_length + 1
        return -(-stft_frames // self.audio_stride)

    @property
    def image_seq_length(self) -> int:
        """Placeholder tokens the processor writes for one image."""
        return self.num_patches if self.fusion == "concat" else 1

    @property
    def audio_seq_length(self) -> int:
        return self.num_audio_frames if self.fusion == "concat" else 1
