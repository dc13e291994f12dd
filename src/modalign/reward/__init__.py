"""Reward models, reward losses, rule and composite rewards."""
