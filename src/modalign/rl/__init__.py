"""RL fine-tuning: rollout, advantages, KL, losses."""
