"""The optional dependencies of ``agents.trl``, checked with an error naming the extra."""

from __future__ import annotations

import importlib.util

INSTALL_HINT = "pip install 'search-env[trl]'"


def require_trl() -> None:
    """Raise ImportError naming the ``[trl]`` extra when TRL, datasets or torch is missing."""
    missing = [
        name for name in ("trl", "datasets", "torch") if importlib.util.find_spec(name) is None
    ]
    if missing:
        raise ImportError(
            f"agents.trl needs {' and '.join(missing)}, which is not installed: {INSTALL_HINT}"
        )
