"""RLlib (new API stack) on the token-level env: ``pip install 'search-env[rllib]'``.

- :mod:`agents.rllib.env`: every search-env id registered with Ray's env registry.
- :mod:`agents.rllib.module`: :class:`TokenPolicyModule`, a small transformer over the
  observation's token buffer giving next-token logits and a value.
- :mod:`agents.rllib.learner`: PPO's torch learner plus an audit that only agent tokens
  become loss rows.
- :mod:`agents.rllib.config`: run configs (presets ``laptop``, ``test``, ``cluster``) and
  the ``PPOConfig`` they build; :mod:`agents.rllib.train`: ``python -m agents.rllib.train``.
- The env builder, the synthetic task and the token encoder it shares with SB3 live in
  :mod:`agents.tokenlevel`.

Names are imported on first use, so ``import agents.rllib`` works without Ray; using one
that needs Ray without it raises an ImportError naming the ``[rllib]`` extra.
"""

from __future__ import annotations

from agents import lazy_getattr
from agents.rllib.deps import require_ray

_EXPORTS = {
    "register_search_envs": "agents.rllib.env",
    "env_creator": "agents.rllib.env",
    "TokenPolicyModule": "agents.rllib.module",
    "TokenPPOTorchLearner": "agents.rllib.learner",
    "SearchEpisodeMetrics": "agents.rllib.callbacks",
    "RLlibRunConfig": "agents.rllib.config",
    "build_ppo_config": "agents.rllib.config",
    "preset": "agents.rllib.config",
    "train_rllib": "agents.rllib.train",
    "audit_chunk": "agents.rllib.audit",
}
_NEEDS_RAY = {
    "agents.rllib.env",
    "agents.rllib.module",
    "agents.rllib.learner",
    "agents.rllib.callbacks",
}

__all__ = sorted(_EXPORTS)


def _require(module: str) -> None:
    if module in _NEEDS_RAY:
        require_ray()


__getattr__ = lazy_getattr(__name__, _EXPORTS, _require)
