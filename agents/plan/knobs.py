"""Which knob makes an over-budget config fit: each one is tried by planning again."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from agents.config import TrainConfig, apply_overrides
from agents.plan.memory import GiB, Hardware, Plan, plan_memory
from agents.plan.shapes import ModelShape


@dataclass(frozen=True)
class Knob:
    """One change and the plan's total with it."""

    what: str
    """How to turn it (``--set key=value`` or the launch to use)."""
    total: int
    fits: bool


def _candidates(
    cfg: TrainConfig, hw: Hardware, plan: Plan
) -> list[tuple[str, dict[str, Any], int]]:
    """``(description, overrides, gpus)`` to try, most targeted first."""
    algo, ctx = cfg.algo, plan.workload.context
    out: list[tuple[str, dict[str, Any], int]] = []
    for k in (8, 4, 2, 1):
        budget = k * ctx
        if budget < plan.workload.micro_tokens:
            out.append(
                (
                    f"--set {algo}.micro_batch_tokens={budget}",
                    {f"{algo}.micro_batch_tokens": budget},
                    hw.gpus,
                )
            )
    if not cfg.model.gradient_checkpointing:
        out.append(
            (
                "--set model.gradient_checkpointing=true",
                {"model.gradient_checkpointing": True},
                hw.gpus,
            )
        )
    if cfg.model.dtype == "float32" and hw.device == "cuda":
        out.append(("--set model.dtype=bfloat16", {"model.dtype": "bfloat16"}, hw.gpus))
    gpu = hw.device == "cuda"  # on a CPU, offloading and more ranks use the same RAM
    if gpu and not cfg.fsdp.cpu_offload:
        out.append(("--set fsdp.cpu_offload=true (torchrun)", {"fsdp.cpu_offload": True}, hw.gpus))
    if gpu and not cfg.fsdp.ref_offload:
        out.append(("--set fsdp.ref_offload=true (torchrun)", {"fsdp.ref_offload": True}, hw.gpus))
    if cfg.rollout.backend == "vllm" and hw.device == "cuda":
        for util in (0.5, 0.4, 0.3, 0.2):
            if util < cfg.rollout.vllm_gpu_memory_utilization:
                key = "rollout.vllm_gpu_memory_utilization"
                out.append((f"--set {key}={util}", {key: util}, hw.gpus))
    if cfg.rollout.backend == "hf" and gpu:  # HF prefills every episode of the step at once
        out.append(("--set rollout.backend=vllm", {"rollout.backend": "vllm"}, hw.gpus))
    if cfg.model.lora_rank == 0:
        out.append(("--set model.lora_rank=16", {"model.lora_rank": 16}, hw.gpus))
    for gpus in (2, 4, 8, 16, 32, 64):
        if gpu and gpus > hw.gpus:
            out.append((f"more GPUs: {gpus} ranks (torchrun)", {}, gpus))
    return out


def _try(
    cfg: TrainConfig, hw: Hardware, shape: ModelShape, picks: list[tuple[str, dict[str, Any], int]]
) -> Knob | None:
    overrides: dict[str, Any] = {}
    for _, o, _ in picks:
        overrides.update(o)
    try:
        new = apply_overrides(cfg, overrides) if overrides else cfg
    except ValueError:
        return None  # not a valid combination for this config
    gpus = max(g for _, _, g in picks)
    p = plan_memory(new, dataclasses.replace(hw, gpus=gpus), shape)
    return Knob(" + ".join(w for w, _, _ in picks), p.total, p.fits)


def suggest_knobs(
    cfg: TrainConfig, hw: Hardware, plan: Plan, shape: ModelShape | None = None
) -> list[Knob]:
    """The knobs that alone make ``cfg`` fit (of each kind the smallest change first);
    when none does on this many GPUs, the pairs of knobs that do (and the GPU counts that
    would); failing those, every memory knob at once (LoRA aside) if that fits."""
    shape = shape or plan.shape
    by_kind: dict[str, list[tuple[str, dict[str, Any], int]]] = {}
    for cand in _candidates(cfg, hw, plan):
        by_kind.setdefault(cand[0].split("=")[0].split(":")[0], []).append(cand)
    singles = []
    for options in by_kind.values():
        for cand in options:
            knob = _try(cfg, hw, shape, [cand])
            if knob is not None and knob.fits:
                singles.append(knob)
                break
    if any(not k.what.startswith("more GPUs") for k in singles):
        return singles
    # None fits on this hardware alone: the largest change of each kind, two at a time.
    strongest = [options[-1] for kind, options in by_kind.items() if kind != "more GPUs"]
    pairs = []
    for i, a in enumerate(strongest):
        for b in strongest[i + 1 :]:
            knob = _try(cfg, hw, shape, [a, b])
            if knob is not None and knob.fits:
                pairs.append(knob)
    if singles or pairs:
        return pairs + singles
    memory_knobs = [c for c in strongest if c[1] and "lora_rank" not in c[0]]
    if memory_knobs:
        knob = _try(cfg, hw, shape, memory_knobs)
        if knob is not None and knob.fits:
            return [knob]
    return []


def refusal(plan: Plan, knobs: list[Knob]) -> str:
    """Why a config cannot start, and what to turn."""
    hw = plan.hardware
    top = sorted(
        (t for t in plan.terms if t.group in ("resident", plan.peak_working_set)),
        key=lambda t: -t.bytes,
    )[:4]
    where = "per GPU" if hw.device == "cuda" else "in RAM"
    lines = [
        f"the memory plan does not fit: {plan.machine_total / GiB:.1f} GiB {where} > "
        f"{hw.memory_bytes / GiB:.1f} GiB ({hw.describe()}); largest terms: "
        + ", ".join(f"{t.name} {t.bytes / GiB:.1f} GiB" for t in top)
    ]
    lines += [f"  {p}" for p in plan.problems]
    if knobs:
        lines.append("turn one of these knobs (the plan's total with it):")
        lines += [f"  {k.what}  ({k.total / GiB:.1f} GiB)" for k in knobs]
    else:
        lines.append(
            "no single knob fits it: combine micro_batch_tokens, fsdp.cpu_offload, "
            "more GPUs and model.lora_rank (`search-env plan` shows each term)"
        )
    lines.append("(--no-plan-check skips this check)")
    return "\n".join(lines)
