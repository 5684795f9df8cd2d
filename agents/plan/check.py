"""The start-up check of ``search-env train``: plan the config on this machine before any
weights load, and refuse one that cannot fit, naming the knob to turn."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from agents.config import TrainConfig
from agents.plan.knobs import refusal, suggest_knobs
from agents.plan.memory import GiB, Hardware, Plan, plan_memory
from agents.plan.shapes import UnknownShapeError, model_shape

logger = logging.getLogger(__name__)


class PlanRefusedError(RuntimeError):
    """The memory plan of a config exceeds the memory it would run in."""


def available_ram_bytes() -> int:
    """Memory a new allocation can use now: psutil's ``available`` when installed, else
    ``MemAvailable`` of ``/proc/meminfo``.

    Raises:
        OSError: neither is there (not Linux, no psutil).
    """
    try:
        import psutil
    except ImportError:
        pass
    else:
        return int(psutil.virtual_memory().available)
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise OSError("/proc/meminfo has no MemAvailable")


def this_machine(cfg: TrainConfig) -> Hardware | None:
    """The hardware ``cfg`` would run on here: the device ``model.device`` resolves to,
    ``WORLD_SIZE`` ranks (torchrun), and the GPU's memory, or the RAM available now
    (shared by this host's ranks, ``LOCAL_WORLD_SIZE``); None when ``cfg`` asks for a GPU
    and there is none (the trainer reports that itself)."""
    import torch

    device = cfg.model.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            return None
        index = int(os.environ.get("LOCAL_RANK", "0"))
        props = torch.cuda.get_device_properties(index)
        ranks = int(os.environ.get("WORLD_SIZE", "1"))
        return Hardware(ranks, int(props.total_memory), "cuda", props.name)
    ranks = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))
    return Hardware(ranks, available_ram_bytes(), "cpu", "this machine's available RAM")


def check_config_fits(cfg: TrainConfig, hardware: Hardware | None = None) -> Plan | None:
    """Plan ``cfg`` on ``hardware`` (default: :func:`this_machine`).

    Returns:
        The plan, or None when the model's shape cannot be known without a download (then
        nothing is checked, and a warning says so).

    Raises:
        PlanRefusedError: the plan does not fit; the message names the knobs that would.
    """
    try:
        shape = model_shape(cfg)
    except UnknownShapeError as exc:
        logger.warning("memory plan skipped: %s", exc)
        return None
    hardware = hardware or this_machine(cfg)
    if hardware is None:
        return None
    plan = plan_memory(cfg, hardware, shape)
    if not plan.fits:
        raise PlanRefusedError(refusal(plan, suggest_knobs(cfg, hardware, plan, shape)))
    logger.info(
        "memory plan: %.2f GiB of %.2f GiB (%s)",
        plan.machine_total / GiB,
        hardware.memory_bytes / GiB,
        hardware.describe(),
    )
    return plan
