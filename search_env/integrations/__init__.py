"""The text env in other RL frameworks' env APIs.

:mod:`search_env.integrations.gem` registers it in GEM's registry (``gem.make("searchqa:NQ")``);
:mod:`search_env.integrations.openenv` wraps it as an OpenEnv ``Environment`` with its HTTP
server. Each needs its extra (``pip install 'search-env[gem]'``, ``'search-env[openenv]'``)
and, without it, raises an ``ImportError`` that names the extra. This package itself
imports neither framework.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym

from search_env.text import SearchQATextEnv

__all__ = ["make_text_env", "missing_extra"]


def missing_extra(module: str, extra: str, exc: ImportError) -> ImportError:
    """The error to raise when ``module`` cannot import the package of ``extra``.

    The new error keeps ``exc.name`` (the missing module), so callers that tell optional
    dependencies from broken code by that name still can.
    """
    return ImportError(
        f"{module} needs the {extra!r} extra ({exc}): pip install 'search-env[{extra}]'",
        name=exc.name,
    )


def make_text_env(env_id: str = "SearchQA-Synth-v0", **kwargs: Any) -> SearchQATextEnv:
    """``gym.make(env_id, action_mode="chunk", **kwargs)`` behind :class:`SearchQATextEnv`.

    Args:
        env_id: a Gymnasium id of a search-env env (``SearchQA-Synth-v0``, ...).
        **kwargs: ``gym.make`` keyword arguments (``tokenizer=``, ``retriever=``,
            ``max_turns=``, ...). ``action_mode`` can only be ``"chunk"``: the text env
            plays one whole turn per step.

    Raises:
        ValueError: ``action_mode`` is not ``"chunk"``.
    """
    mode = kwargs.pop("action_mode", "chunk")
    if mode != "chunk":
        raise ValueError(
            f"the text env plays one turn per step: action_mode must be 'chunk', got {mode!r}"
        )
    return SearchQATextEnv(gym.make(env_id, action_mode="chunk", **kwargs))
