"""TRL's ``GRPOTrainer`` on search-env: ``pip install 'search-env[trl]'``.

- :func:`questions_dataset` (:mod:`agents.trl.dataset`): one row per question of any env
  id, with its index and prompt.
- :func:`make_rollout_func` / :func:`env_reward` (:mod:`agents.trl.rollout`): the exact
  Search-R1 protocol as a ``rollout_func`` (token ids, the sampler's log-probs, the env's
  loss mask as ``env_mask``) and the env's reward as a reward function.
- :class:`SearchToolEnvironment` / :func:`make_environment_factory`
  (:mod:`agents.trl.tools`): TRL's ``environment_factory`` tool-calling path, a typed
  ``search(query)`` tool.
- :mod:`agents.trl.train`: ``search-env train --backend trl``.

Names are imported on first use; without TRL they raise an ImportError naming ``[trl]``.
"""

from __future__ import annotations

from agents import lazy_getattr
from agents.trl.deps import require_trl

_EXPORTS = {
    "questions_dataset": "agents.trl.dataset",
    "make_rollout_func": "agents.trl.rollout",
    "SearchR1Rollout": "agents.trl.rollout",
    "env_reward": "agents.trl.rollout",
    "SearchToolEnvironment": "agents.trl.tools",
    "make_environment_factory": "agents.trl.tools",
    "train_trl": "agents.trl.train",
}

__all__ = sorted(_EXPORTS)


def _require(module: str) -> None:
    require_trl()


__getattr__ = lazy_getattr(__name__, _EXPORTS, _require)
