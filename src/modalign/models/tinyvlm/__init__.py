"""The built-in image+audio VLM, registered with the `transformers` Auto classes.

After `import modalign.models.tinyvlm`, `AutoConfig`, `AutoModelForImageTextToText`,
`AutoModelForCausalLM` and `AutoProcessor` load saved TinyVLM folders like any other model.
"""

from transformers import (
    AutoConfig,
    AutoFeatureExtractor,
    AutoImageProcessor,
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    AutoProcessor,
)

from modalign.models.tinyvlm.configuration import FUSIONS, TinyVLMConfig
from modalign.models.tinyvlm.fusion import MediaFeatures
from modalign.models.tinyvlm.modeling import TinyVLMForConditionalGeneration
from modalign.models.tinyvlm.processing import TinyVLMFeatureExtractor, TinyVLMImageProcessor, TinyVLMProcessor
from modalign.models.tinyvlm.tokenizer import build_tokenizer


def _register() -> None:
    AutoConfig.register("tinyvlm", TinyVLMConfig, exist_ok=True)
    AutoModelForImageTextToText.register(TinyVLMConfig, TinyVLMForConditionalGeneration, exist_ok=True)
    AutoModelForCausalLM.register(TinyVLMConfig, TinyVLMForConditionalGeneration, exist_ok=True)
    AutoImageProcessor.register(TinyVLMConfig, TinyVLMImageProcessor, exist_ok=True)
    AutoFeatureExtractor.register(TinyVLMConfig, TinyVLMFeatureExtractor, exist_ok=True)
    AutoProcessor.register(TinyVLMConfig, TinyVLMProcessor, exist_ok=True)


_register()


def build_processor(tokenizer, config: TinyVLMConfig) -> TinyVLMProcessor:
    """The processor that matches a config (image size, audio window, tokens per item)."""
    return TinyVLMProcessor(
        TinyVLMImageProcessor(image_size=config.image_size),
        TinyVLMFeatureExtractor(sampling_rate=config.sample_rate, num_samples=config.audio_samples,
                                truncate=getattr(config, "audio_overflow", "error") == "truncate"),
        tokenizer,
        chat_template=tokenizer.chat_template,
        image_seq_length=config.image_seq_length,
        audio_seq_length=config.audio_seq_length,
    )


__all__ = [
    "FUSIONS",
    "MediaFeatures",
    "TinyVLMConfig",
    "TinyVLMFeatureExtractor",
    "TinyVLMForConditionalGeneration",
    "TinyVLMImageProcessor",
    "TinyVLMProcessor",
    "build_processor",
    "build_tokenizer",
]
