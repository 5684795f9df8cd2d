"""Stable-Baselines3 on the token-level env: ``pip install 'search-env[sb3]'``.

- :class:`TokenFeaturesExtractor`: a small transformer over the observation's token
  buffer, for ``PPO("MultiInputPolicy", ..., policy_kwargs={"features_extractor_class":
  TokenFeaturesExtractor})``.
- :class:`TokenSubset`: an action wrapper that restricts the policy to a few tokens (SB3's
  PPO has no action masking); each action is still one agent token.
- :mod:`agents.sb3.train`: ``python -m agents.sb3.train``, PPO on the small synthetic task.

Names are imported on first use; without SB3 they raise an ImportError naming ``[sb3]``.
"""

from __future__ import annotations

from agents import lazy_getattr
from agents.sb3.deps import require_sb3

_EXPORTS = {
    "TokenFeaturesExtractor": "agents.sb3.features",
    "TokenSubset": "agents.sb3.wrappers",
    "SB3RunConfig": "agents.sb3.train",
    "build_model": "agents.sb3.train",
    "train_sb3": "agents.sb3.train",
}

__all__ = sorted(_EXPORTS)


def _require(module: str) -> None:
    if module != "agents.sb3.wrappers":
        require_sb3()


__getattr__ = lazy_getattr(__name__, _EXPORTS, _require)
