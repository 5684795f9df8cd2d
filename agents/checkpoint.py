"""Atomic training checkpoints: everything a resumed run needs to continue exactly.

A checkpoint is a directory ``step_{N:08d}`` in ``{run_dir}/checkpoints`` holding
``state.pt`` (model, optional value head, optimizer, scheduler, RNG states, step) and
``config.json``. It is written into a temporary directory first and renamed into place,
so a run killed mid-write never leaves a half checkpoint that :func:`latest_checkpoint`
would pick up.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agents.config import TrainConfig, save_config

CHECKPOINT_DIR = "checkpoints"


def rng_state() -> dict[str, Any]:
    """Python, numpy, torch CPU (and CUDA) generator states."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`rng_state`."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    config: TrainConfig,
    modules: dict[str, Any],
    extra: dict[str, Any] | None = None,
    keep: int = 1,
) -> Path:
    """Write ``{run_dir}/checkpoints/step_{step}`` atomically; keep the newest ``keep``.

    Args:
        run_dir: the run directory.
        step: RL steps completed.
        config: the run's config (saved beside the state).
        modules: objects with ``state_dict()`` (model, optimizer, scheduler, ...).
        extra: more picklable state (e.g. the sampling generator's state).
        keep: checkpoints to keep (older ones are removed after the new one is in place).
    """
    root = Path(run_dir) / CHECKPOINT_DIR
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:08d}"
    tmp = Path(tempfile.mkdtemp(prefix=".tmp_step_", dir=root))
    try:
        state = {name: m.state_dict() for name, m in modules.items()}
        state["step"] = step
        state["rng"] = rng_state()
        state["extra"] = extra or {}
        torch.save(state, tmp / "state.pt")
        save_config(config, tmp / "config.json")
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = sorted(p for p in root.glob("step_*") if p.is_dir())
    for path in old[: max(len(old) - keep, 0)]:
        shutil.rmtree(path, ignore_errors=True)
    return final


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint directory, or None."""
    root = Path(run_dir) / CHECKPOINT_DIR
    done = sorted(p for p in root.glob("step_*") if (p / "state.pt").is_file())
    return done[-1] if done else None


def load_checkpoint(path: str | Path, modules: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """Load ``modules`` (in place) and the global RNG states from a checkpoint.

    Returns:
        ``(step, extra)``.
    """
    state = torch.load(Path(path) / "state.pt", map_location="cpu", weights_only=False)
    for name, module in modules.items():
        if name not in state:
            raise KeyError(f"checkpoint {path} has no {name!r} state")
        module.load_state_dict(state[name])
    set_rng_state(state["rng"])
    return int(state["step"]), state["extra"]
