"""Gymnasium environments over multimodal examples (for Stable-Baselines3 and other RL libraries)."""

from modalign.envs.choice import MultimodalChoiceEnv, prompt_embeddings

__all__ = ["MultimodalChoiceEnv", "prompt_embeddings"]
