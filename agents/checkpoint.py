"""Atomic, checksummed training checkpoints: everything a resumed run needs to continue.

A checkpoint is a directory ``step_{N:08d}`` in ``{run_dir}/checkpoints`` holding
``state.pt`` (model, optional value head, optimizer, scheduler, RNG states, step),
``config.json`` and ``checkpoint.json`` (the size and sha256 of ``state.pt``). It is
written into a staging directory first (named after this process, so the next save
removes one a killed run left) and renamed into place, so a run killed mid-write never
leaves a half checkpoint under a ``step_*`` name.

Loading checks the sha256: a damaged ``state.pt`` is refused with a
:class:`CorruptCheckpointError` naming the file, and :func:`resume_checkpoint` falls
back to the previous intact checkpoint (``keep`` of them are kept).
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import pickle
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agents.config import TrainConfig, to_dict
from search_env.files import atomic_write_text, fsync, make_staging_dir, sha256_of

logger = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
STATE_NAME = "state.pt"
MANIFEST_NAME = "checkpoint.json"
STAGING_PREFIX = ".tmp_step_"
TRASH_PREFIX = ".old_step_"
FORMAT_NAME = "agents.checkpoint"
_STEP_DIR = re.compile(r"step_(\d+)")


class CorruptCheckpointError(RuntimeError):
    """A checkpoint whose files are missing, damaged or unreadable."""


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


# ---------------------------------------------------------------------- saving
class _HashingWriter:
    """A binary file that hashes what passes through (no second read of a 30 GB state)."""

    def __init__(self, f: Any) -> None:
        self._f = f
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data: Any) -> int:
        n = self._f.write(data)
        self.sha256.update(data)
        self.size += len(memoryview(data).cast("B"))
        return n

    def flush(self) -> None:
        self._f.flush()


def _write_state(state: dict[str, Any], path: Path) -> dict[str, Any]:
    """``torch.save`` through a Python file object, so an OSError (ENOSPC) keeps its errno
    instead of becoming torch's ``unexpected pos`` RuntimeError; returns the file record."""
    with open(path, "wb") as f:
        writer = _HashingWriter(f)
        torch.save(state, writer)
        f.flush()
        os.fsync(f.fileno())
    return {"size": writer.size, "sha256": writer.sha256.hexdigest()}


def atomic_torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` through a temporary sibling and a rename (for ``init_model.pt``).

    Raises:
        OSError: ``errno.ENOSPC`` naming ``path`` when the disk is full.
    """
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        _write_state(obj, tmp)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        if e.errno == errno.ENOSPC:
            raise OSError(
                errno.ENOSPC, f"no space left on device while saving {path}", str(path)
            ) from e
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def step_of(path: Path) -> int | None:
    """The step of a ``step_{N}`` checkpoint directory, or None for other names."""
    match = _STEP_DIR.fullmatch(path.name)
    return int(match.group(1)) if match else None


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    config: TrainConfig,
    modules: dict[str, Any],
    extra: dict[str, Any] | None = None,
    keep: int = 2,
) -> Path:
    """Write ``{run_dir}/checkpoints/step_{step}`` atomically; keep the newest ``keep``.

    Args:
        run_dir: the run directory.
        step: RL steps completed.
        config: the run's config (saved beside the state).
        modules: objects with ``state_dict()`` (model, optimizer, scheduler, ...).
        extra: more picklable state (e.g. the sampling generator's state).
        keep: checkpoints to keep, this one included: older ones are removed after it is
            in place, and so are any of later steps (left by a run this one replaced).

    Raises:
        ValueError: ``keep`` < 1.
        OSError: the disk is full (``errno.ENOSPC``, naming the checkpoint), or another
            write error; the checkpoints already saved are left as they were.
    """
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    root = Path(run_dir) / CHECKPOINT_DIR
    final = root / f"step_{step:08d}"
    tmp = make_staging_dir(root, STAGING_PREFIX)  # also removes those of killed runs
    try:
        state = {name: m.state_dict() for name, m in modules.items()}
        state["step"] = step
        state["rng"] = rng_state()
        state["extra"] = extra or {}
        record = _write_state(state, tmp / STATE_NAME)
        atomic_write_text(
            tmp / "config.json", json.dumps(to_dict(config), indent=2, sort_keys=True) + "\n"
        )
        manifest = {"format": FORMAT_NAME, "step": step, "files": {STATE_NAME: record}}
        atomic_write_text(tmp / MANIFEST_NAME, json.dumps(manifest, indent=2) + "\n")
        fsync(tmp)
        publish_dir(tmp, final)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if e.errno == errno.ENOSPC:
            raise OSError(
                errno.ENOSPC,
                f"no space left on device while saving checkpoint {final} "
                f"(free space, or lower keep_checkpoints)",
                str(final),
            ) from e
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _prune(root, step, keep)
    return final


def publish_dir(tmp: Path, final: Path) -> None:
    """Rename the finished staging directory ``tmp`` to ``final`` (same parent), then
    fsync the parent. An existing ``final`` (the same step again, in a resumed run) is
    moved aside first and removed once the new one is in place."""
    root = final.parent
    if final.exists():
        trash = make_staging_dir(root, TRASH_PREFIX)
        os.replace(final, trash / final.name)
        os.replace(tmp, final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp, final)
    fsync(root)


def _prune(root: Path, step: int, keep: int) -> None:
    """Remove all but the newest ``keep`` checkpoints up to ``step`` (never ``step``'s own)
    and every checkpoint of a later step (another run's, which a resume would pick)."""
    older: list[tuple[int, Path]] = []
    for path in root.iterdir():
        other = step_of(path)
        if other is None or other == step or not path.is_dir():
            continue
        if other > step:
            logger.warning("removing %s: a later step than the checkpoint just written", path)
            shutil.rmtree(path, ignore_errors=True)
        else:
            older.append((other, path))
    older.sort()
    for _, path in older[: max(len(older) - (keep - 1), 0)]:
        shutil.rmtree(path, ignore_errors=True)


# ---------------------------------------------------------------------- finding
def _checkpoints(run_dir: str | Path) -> list[Path]:
    """Checkpoint directories holding a ``state.pt``, oldest first (by step)."""
    root = Path(run_dir) / CHECKPOINT_DIR
    if not root.is_dir():
        return []
    found = [
        (s, p)
        for p in root.iterdir()
        if (s := step_of(p)) is not None and (p / STATE_NAME).is_file()
    ]
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest checkpoint directory (unverified), or None."""
    found = _checkpoints(run_dir)
    return found[-1] if found else None


def verify_checkpoint(path: str | Path) -> None:
    """Check ``state.pt`` against the size and sha256 in ``checkpoint.json``.

    A checkpoint written before checksums were recorded passes with a warning.

    Raises:
        CorruptCheckpointError: naming the file and the problem.
    """
    path = Path(path)
    state = path / STATE_NAME
    if not state.is_file():
        raise CorruptCheckpointError(f"checkpoint {path} has no {STATE_NAME}")
    manifest_path = path / MANIFEST_NAME
    if not manifest_path.is_file():
        logger.warning("%s records no checksum (an older checkpoint): loading it unverified", path)
        return
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        record = manifest["files"][STATE_NAME]
        want_size, want_sha = int(record["size"]), str(record["sha256"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CorruptCheckpointError(f"unreadable checkpoint manifest {manifest_path}: {e}") from e
    size = state.stat().st_size
    if size != want_size:
        raise CorruptCheckpointError(
            f"damaged checkpoint {state}: {size} bytes, {MANIFEST_NAME} says {want_size}"
        )
    if sha256_of(state) != want_sha:
        raise CorruptCheckpointError(
            f"damaged checkpoint {state}: sha256 differs from {MANIFEST_NAME} "
            "(the file was modified or damaged)"
        )


def resume_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest intact checkpoint, falling back past damaged ones; None if there is none.

    Raises:
        CorruptCheckpointError: checkpoints exist but every one of them is damaged.
    """
    found = _checkpoints(run_dir)
    problems: list[str] = []
    for path in reversed(found):
        try:
            verify_checkpoint(path)
        except CorruptCheckpointError as e:
            logger.warning("%s; trying the previous checkpoint", e)
            problems.append(str(e))
            continue
        if problems:
            logger.warning("resuming from %s, the newest intact checkpoint", path)
        return path
    if problems:
        raise CorruptCheckpointError(
            f"no intact checkpoint in {Path(run_dir) / CHECKPOINT_DIR}: " + "; ".join(problems)
        )
    return None


# ---------------------------------------------------------------------- loading
def load_checkpoint(
    path: str | Path, modules: dict[str, Any], *, verify: bool = True
) -> tuple[int, dict[str, Any]]:
    """Load ``modules`` (in place) and the global RNG states from a checkpoint.

    Args:
        path: the ``step_N`` directory.
        modules: objects with ``load_state_dict()``, by the names they were saved under.
        verify: check the sha256 first (skip only for one :func:`resume_checkpoint`
            has just checked).

    Returns:
        ``(step, extra)``.

    Raises:
        CorruptCheckpointError: the file is damaged or cannot be unpickled.
        KeyError: the checkpoint lacks one of ``modules``.
    """
    path = Path(path)
    if verify:
        verify_checkpoint(path)
    try:
        state = torch.load(path / STATE_NAME, map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError, ValueError, OSError, pickle.UnpicklingError) as e:
        raise CorruptCheckpointError(f"cannot read checkpoint {path / STATE_NAME}: {e}") from e
    for name, module in modules.items():
        if name not in state:
            raise KeyError(f"checkpoint {path} has no {name!r} state")
        module.load_state_dict(state[name])
    set_rng_state(state["rng"])
    return int(state["step"]), state["extra"]
