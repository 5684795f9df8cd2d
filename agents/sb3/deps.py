"""The optional dependencies of ``agents.sb3``, checked with an error naming the extra."""

from __future__ import annotations

import importlib.util

INSTALL_HINT = "pip install 'search-env[sb3]'"


def require_sb3() -> None:
    """Raise ImportError naming the ``[sb3]`` extra when Stable-Baselines3 or torch is missing."""
    missing = [
        name for name in ("stable_baselines3", "torch") if importlib.util.find_spec(name) is None
    ]
    if missing:
        raise ImportError(
            f"agents.sb3 needs {' and '.join(missing)}, which is not installed: {INSTALL_HINT}"
        )
