"""Agents that train on search-env (PPO, GRPO, RLlib, SB3)."""
