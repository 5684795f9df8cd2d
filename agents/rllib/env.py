"""Every search-env id in Ray's env registry.

RLlib looks env names up in Ray's own registry (shipped to every env runner, local or
on other nodes); Gymnasium's registry and its import hook live only in processes that
imported Gymnasium with this package installed. :func:`register_search_envs` registers
one creator per id in ``search_env.registration.ENV_IDS``, each calling
:func:`agents.tokenlevel.env.make_search_env`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import gymnasium as gym

from agents.rllib.deps import require_ray
from agents.tokenlevel.env import make_search_env


def env_creator(env_id: str) -> Callable[[Mapping[str, Any]], gym.Env]:
    """The creator RLlib calls with the ``env_config`` of a run (an ``EnvContext``)."""
    return functools.partial(make_search_env, env_id)


def register_search_envs() -> tuple[str, ...]:
    """Register every search-env id with Ray's registry (idempotent); returns the ids.

    Call it in the driver before building the algorithm: the creators are stored in the
    cluster's registry and found by every env runner, on any node.
    """
    require_ray()
    from ray.tune.registry import register_env

    from search_env.registration import ENV_IDS

    for env_id in ENV_IDS:
        register_env(env_id, env_creator(env_id))
    return ENV_IDS
