"""A contextual-bandit environment: see a multimodal example, pick one of the candidate answers.

Each episode is one example. The observation is the fused embedding a frozen multimodal
model makes of the example's image, audio and question (its last hidden state at the
last prompt token, a `Box`); the action picks one of a fixed list of candidate answers
(`Discrete`); the reward comes from a rule, a composite of rules, or a reward model,
precomputed as an (examples x candidates) table so that stepping is free.
"""

from __future__ import annotations

from typing import Callable, Sequence

import gymnasium as gym
import numpy as np
import torch

from modalign.data.records import Example


class MultimodalChoiceEnv(gym.Env):
    """obs: (D,) float32 embedding; action: index into `candidates`; one step per episode."""

    metadata = {"render_modes": []}

    def __init__(self, observations: np.ndarray, rewards: np.ndarray, candidates: Sequence[str],
                 example_ids: Sequence[str] | None = None) -> None:
        super().__init__()
        if observations.ndim != 2 or rewards.shape != (observations.shape[0], len(candidates)):
            raise ValueError(f"observations (N, D) {observations.shape} and rewards (N, K) {rewards.shape} "
                             f"do not match {len(candidates)} candidates")
        self.observations = observations.astype(np.float32)
        self.rewards = rewards.astype(np.float32)
        self.candidates = list(candidates)
        self.example_ids = list(example_ids or range(len(observations)))
        bound = float(np.abs(self.observations).max()) + 1.0
        self.observation_space = gym.spaces.Box(-bound, bound, (observations.shape[1],), np.float32)
        self.action_space = gym.spaces.Discrete(len(candidates))
        self._index = 0

    @classmethod
    def from_policy(cls, policy, data_root: str, split: str = "train", reward: str | Callable = "rule:shapes_gold",
                    tasks: Sequence[str] = ("vqa_image", "vqa_audio", "vqa_both"), limit: int = 0,
                    candidates: Sequence[str] | None = None) -> "MultimodalChoiceEnv":
        """Embed a dataset's question examples with a frozen policy; candidates default to every gold answer."""
        from modalign.data.dataset import read_examples
        from modalign.models.inputs import MediaStore

        examples = [e for e in read_examples(data_root, split) if e.meta.get("task") in tasks]
        examples = examples[:limit] if limit else examples
        if not examples:
            raise ValueError(f"{data_root}/{split}: no examples of tasks {list(tasks)}")
        candidates = list(candidates or sorted({str(e.meta.get("answer", e.answer)) for e in examples}))
        media = MediaStore(data_root)
        observations = prompt_embeddings(policy, media, examples)
        table = reward_table(examples, candidates, reward, media)
        return cls(observations, table, candidates, [e.id for e in examples])

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._index = int(self.np_random.integers(len(self.observations)))
        return self.observations[self._index].copy(), {"example_id": self.example_ids[self._index]}

    def step(self, action):
        action = int(action)
        reward = float(self.rewards[self._index, action])
        info = {"example_id": self.example_ids[self._index], "answer": self.candidates[action],
                "best_reward": float(self.rewards[self._index].max())}
        return self.observations[self._index].copy(), reward, True, False, info

    def random_policy_reward(self) -> float:
        """Expected reward of picking uniformly at random (the baseline to beat)."""
        return float(self.rewards.mean())


@torch.no_grad()
def prompt_embeddings(policy, media, examples: Sequence[Example], batch_size: int = 64) -> np.ndarray:
    """(N, D) last-layer hidden state at each prompt's last token; media encoded once per example."""
    from modalign.device import model_device
    from modalign.models.inputs import prompt_batch

    model = policy.model.eval()
    parts = []
    for start in range(0, len(examples), batch_size):
        batch = prompt_batch(policy.processor, media, examples[start : start + batch_size], model_device(model))
        output = model(**batch, output_hidden_states=True)
        parts.append(output.hidden_states[-1][:, -1].float().cpu().numpy())
    return np.concatenate(parts)


def reward_table(examples: Sequence[Example], candidates: Sequence[str], reward: str | Callable,
                 media=None) -> np.ndarray:
    """(N, K) reward of each candidate answer for each example, from a rule, composite or reward model."""
    from modalign.rl.rewards import reward_source_from, score_texts

    source = reward_source_from(reward) if isinstance(reward, str) else reward
    owners = [e for e in examples for _ in candidates]
    scores = score_texts(source, owners, list(candidates) * len(examples), media)
    return scores.view(len(examples), len(candidates)).numpy().astype(np.float32)
