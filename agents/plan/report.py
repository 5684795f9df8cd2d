"""The plan as an aligned text table (one per rank) and as JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from agents.plan.memory import GROUPS, WORKING_SETS, GiB, Plan


def _gib(n: int) -> str:
    return f"{n / GiB:9.2f}"


def format_plan(plan: Plan) -> str:
    """The plan's table: every term in GiB, grouped, then the total and the headroom."""
    hw, wl, pc = plan.hardware, plan.workload, plan.params
    shape = plan.shape
    lines = [
        f"memory plan: {plan.config_name or 'config'} ({plan.algo}), {shape.name} "
        f"({pc.total / 1e9:.3f}B parameters, {plan.trainable:,} trained), on {hw.describe()}",
        f"  model: hidden {shape.hidden}, layers {shape.layers}, heads {shape.heads}/"
        f"{shape.kv_heads} kv, intermediate {shape.intermediate}, vocab {shape.vocab:,}, "
        f"tied {shape.tied}  [{shape.source}]",
        f"  per rank: {wl.rollout_seqs} rollout episodes of <= {wl.context:,} tokens "
        f"(<= {wl.agent_tokens:,} agent tokens), mini-batch {wl.minibatch_seqs}, micro-batch "
        f"{wl.micro_tokens:,} tokens ({wl.scored:,} scored), log-prob pass "
        f"{wl.logprob_tokens:,} tokens; FSDP {'on' if plan.fsdp else 'off'}",
        "",
    ]
    width = max(len(t.name) for t in plan.terms)
    peak = plan.peak_working_set
    for group, title in GROUPS.items():
        terms = [t for t in plan.terms if t.group == group]
        if not terms:
            continue
        mark = ""
        if group in WORKING_SETS:
            mark = "  <- the peak" if group == peak else "  (not at the peak)"
        if group == "host" and hw.device == "cpu":
            mark = "  (same RAM: counted)"
        lines.append(f"{title} [{_gib(plan.group_bytes(group)).strip()} GiB]{mark}")
        lines += [f"  {t.name:<{width}} {_gib(t.bytes)} GiB  {t.note}" for t in terms]
    other = "without" if any("checkpointed" in t.note for t in plan.terms) else "with"
    lines += [
        "",
        f"  activations {other} gradient checkpointing would be "
        f"{plan.activations_alt / GiB:.2f} GiB",
    ]
    if plan.vllm:
        v = plan.vllm
        lines.append(
            f"  vLLM KV cache holds {v['kv_tokens']:,} tokens; one step's rollout needs up to "
            f"{v['rollout_tokens_needed']:,} ({'enough' if v['kv_fits_rollout'] else 'episodes queue'})"
        )
    where = "per GPU" if hw.device == "cuda" else "for all ranks"
    lines += [
        f"  total {where}: {plan.machine_total / GiB:.2f} GiB of {hw.memory_bytes / GiB:.2f} GiB"
        f"  headroom {plan.headroom / GiB:.2f} GiB  -> {'fits' if plan.fits else 'DOES NOT FIT'}",
    ]
    lines += [f"  problem: {p}" for p in plan.problems]
    return "\n".join(lines)


def write_json(payload: Any, path: str | Path) -> Path:
    """Write ``payload`` as indented JSON (parents created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    return path
