"""What a measurement ran on: package versions, the git commit, Python, platform, threads.

Recorded beside results (``recipe.json``) so a number can be traced to the code and the
machine that produced it.
"""

from __future__ import annotations

import platform
import subprocess
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGES = ("search-env", "torch", "transformers", "numpy", "gymnasium", "bm25s")
"""The distributions whose versions :func:`provenance` records."""


def package_versions(names: Sequence[str] = PACKAGES) -> dict[str, str | None]:
    """Installed version of each distribution; None for one that is not installed."""
    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _git(args: Sequence[str], cwd: Path) -> str | None:
    """``git ARGS`` in ``cwd``: its stdout, or None (no git, or not a checkout)."""
    try:
        done = subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def git_state(path: str | Path | None = None) -> dict[str, Any]:
    """``{"commit", "dirty"}`` of the git checkout that tracks ``path`` (default: this package).

    Both are None when git tracks no such file there: no git, an installed wheel, or a
    virtual environment inside some other project's checkout (whose commit would say
    nothing about this code). ``dirty`` counts changes to tracked files only: run
    directories and caches are untracked.
    """
    target = Path(path) if path is not None else Path(__file__).parent
    target = target.resolve()
    where = target if target.is_dir() else target.parent
    if _git(["ls-files", "--error-unmatch", str(target)], where) is None:
        return {"commit": None, "dirty": None}
    commit = _git(["rev-parse", "HEAD"], where)
    if commit is None:
        return {"commit": None, "dirty": None}
    status = _git(["status", "--porcelain", "--untracked-files=no"], where)
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def provenance() -> dict[str, Any]:
    """Packages, git state, Python, platform and torch's thread count, as JSON values."""
    import torch

    return {
        "packages": package_versions(),
        "git": git_state(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch_threads": torch.get_num_threads(),
    }
