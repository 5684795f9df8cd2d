"""Agents that train on search-env (PPO, GRPO, RLlib, SB3).

The names below are imported on first use, so ``import agents`` stays light (torch and
transformers load only with the modules that need them).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_getattr(
    package: str, exports: dict[str, str], before_import: Callable[[str], None] | None = None
) -> Callable[[str], Any]:
    """A module ``__getattr__`` (PEP 562) for ``package``: ``exports`` maps each name to the
    module it is imported from on first use; ``before_import(module)`` runs first (e.g. to
    raise an ImportError naming a missing extra)."""

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        if before_import is not None:
            before_import(module)
        return getattr(importlib.import_module(module), name)

    return __getattr__


_EXPORTS = {
    # rollout: the one place that knows env and policy
    "collect": "agents.rollout",
    "to_batch": "agents.rollout",
    "Trajectory": "agents.rollout",
    "Batch": "agents.rollout",
    "RolloutError": "agents.rollout",
    # policies
    "Policy": "agents.policy",
    "Generation": "agents.policy",
    "HFPolicy": "agents.policy",
    "ScriptedPolicy": "agents.policy",
    # training: configs, loops, warm start, recipe
    "TrainConfig": "agents.config",
    "load_config": "agents.config",
    "save_config": "agents.config",
    "preset": "agents.config",
    "train_grpo": "agents.grpo",
    "train_ppo": "agents.ppo",
    "train_sft": "agents.sft",
    "oracle_trajectories": "agents.sft",
    "run_recipe": "agents.recipe",
    # tiny models for CPU runs
    "make_tiny_qwen2": "agents.tiny_model",
    "save_tiny_model": "agents.tiny_model",
}

__all__ = sorted(_EXPORTS)
__getattr__ = lazy_getattr(__name__, _EXPORTS)
