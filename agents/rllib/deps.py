"""The optional dependencies of ``agents.rllib``, checked with an error naming the extra."""

from __future__ import annotations

import importlib.util

INSTALL_HINT = "pip install 'search-env[rllib]'"


def require_ray() -> None:
    """Raise ImportError naming the ``[rllib]`` extra when Ray RLlib or torch is missing."""
    missing = [name for name in ("ray", "torch") if importlib.util.find_spec(name) is None]
    if not missing and importlib.util.find_spec("ray.rllib") is None:
        missing = ["ray[rllib]"]
    if missing:
        raise ImportError(
            f"agents.rllib needs {' and '.join(missing)}, which is not installed: {INSTALL_HINT}"
        )
