"""The multimodal choice environment: gymnasium's and SB3's checkers, and SB3 agents that learn on it."""

from __future__ import annotations

import numpy as np
import pytest

from modalign.envs import MultimodalChoiceEnv
from modalign.models.policy import load_policy


@pytest.fixture(autouse=True)
def sb3_logs_in_tmp(tmp_path, monkeypatch):
    """SB3 makes a log folder for every agent (an empty /tmp/SB3-<time> when none is given): keep it in tmp_path."""
    monkeypatch.setenv("SB3_LOGDIR", str(tmp_path / "sb3"))


@pytest.fixture(scope="module")
def env_parts(sft_model):
    model, data = sft_model
    env = MultimodalChoiceEnv.from_policy(load_policy(model), str(data), "train", reward="rule:shapes_gold")
    return env, data


def test_env_passes_the_checkers(env_parts):
    from gymnasium.utils.env_checker import check_env as gym_check
    from stable_baselines3.common.env_checker import check_env

    env, _ = env_parts
    check_env(env, warn=True)
    gym_check(env, skip_render_check=True)
    obs, info = env.reset(seed=0)
    assert obs.shape == env.observation_space.shape and info["example_id"]
    _, reward, terminated, truncated, info = env.step(env.action_space.sample())
    assert terminated and not truncated and reward in (0.0, 1.0) and info["answer"] in env.candidates


def test_rewards_come_from_the_rule(env_parts):
    env, _ = env_parts
    assert env.rewards.shape == (len(env.observations), len(env.candidates))
    assert np.all(env.rewards.max(1) == 1.0)  # the gold answer is always a candidate
    assert 0.0 < env.random_policy_reward() < 0.5


def _mean_reward(model, env, episodes: int = 300) -> float:
    total = 0.0
    for i in range(episodes):
        obs, _ = env.reset(seed=10_000 + i)
        action, _ = model.predict(obs, deterministic=True)
        total += env.step(action)[1]
    return total / episodes


@pytest.mark.parametrize("algorithm", ["PPO", "DQN"])
def test_sb3_agents_beat_random(env_parts, algorithm):
    import stable_baselines3 as sb3

    env, _ = env_parts
    kwargs = {"PPO": dict(n_steps=256, batch_size=128, n_epochs=4, learning_rate=3e-3),
              "DQN": dict(learning_starts=200, train_freq=4, exploration_fraction=0.3, learning_rate=2e-3,
                          target_update_interval=100)}[algorithm]
    agent = getattr(sb3, algorithm)("MlpPolicy", env, seed=0, device="cpu", **kwargs)
    agent.learn(total_timesteps=2560)
    learned, random_mean = _mean_reward(agent, env), env.random_policy_reward()
    print(f"{algorithm}: learned {learned:.3f} vs random {random_mean:.3f}")
    assert learned > random_mean + 0.15, (learned, random_mean)


def test_a2c_runs(env_parts):
    from stable_baselines3 import A2C

    env, _ = env_parts
    A2C("MlpPolicy", env, seed=0, device="cpu").learn(total_timesteps=200)


def test_reward_model_table(tmp_path, env_parts, sft_model):
    from modalign.envs.choice import reward_table
    from modalign.models.inputs import MediaStore
    from modalign.reward.model import ScalarHeadModel

    model, data = sft_model
    policy = load_policy(model)
    ScalarHeadModel(policy.model).save(tmp_path / "rm", policy.processor)
    env, _ = env_parts
    from modalign.data.dataset import read_examples

    examples = [e for e in read_examples(data, "train") if e.meta["task"].startswith("vqa")][:3]
    table = reward_table(examples, env.candidates[:4], f"0.5*{tmp_path / 'rm'} + 1*rule:shapes_gold",
                         MediaStore(data))
    assert table.shape == (3, 4) and np.isfinite(table).all()
