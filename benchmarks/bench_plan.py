"""The memory plan against measurement on CPU: peak RSS of one GRPO update step.

For each case (the tiny-cpu model; a ~100M-parameter Qwen2-shaped random model, with and
without gradient checkpointing) a fresh subprocess builds a padded rollout batch shaped
as the plan assumes (every episode's agent tokens at the plan's bound, lengths between
3/4 of the context and all of it), then the policy, its frozen reference and AdamW, and
runs two GRPO updates exactly as ``agents/grpo.py`` does: the no-grad old-policy and
reference log-prob passes, the loss's forward and backward, gradient clipping and the
AdamW step. Measured: the peak RSS (``VmHWM``) of the second update (the steady state:
AdamW allocates its moments during the first one) minus the RSS before the model was
built. Planned: ``agents.plan.plan_memory`` on a CPU.

    python benchmarks/bench_plan.py          # writes benchmarks/results/plan_vs_measured.json
    python benchmarks/bench_plan.py --out plan_micro_batch \
        --cases qwen2-20m-mb1024,qwen2-20m-mb1024-packed,qwen2-20m-mb512,qwen2-20m-mb512-packed,qwen2-20m

Run it with ``nice``. RSS counts what the allocator holds, not only live tensors: each
case also runs with a fixed glibc mmap threshold, where RSS follows the live tensors.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_info, save_results  # noqa: E402

GIB = 1 << 30

CASES: dict[str, dict[str, Any]] = {
    "tiny-cpu": {},
    "qwen2-100m": {
        "model.hidden_size": 768,
        "model.layers": 12,
        "model.heads": 12,
        "model.kv_heads": 4,
        "model.intermediate": 2048,
        "rollout.env_kwargs.tokenizer": "world:32768",  # the plan's vocabulary: 32,768
        "rollout.env_kwargs.max_prompt_length": 256,
        "rollout.num_envs": 8,
        "rollout.group_size": 4,
        "grpo.minibatch_size": 8,
    },
}
CASES["qwen2-100m-ckpt"] = {**CASES["qwen2-100m"], "model.gradient_checkpointing": True}
CASES["qwen2-20m"] = {  # the 100M case shrunk (fewer, narrower layers) for a busy machine
    **CASES["qwen2-100m"],
    "model.hidden_size": 384,
    "model.layers": 4,
    "model.heads": 6,
    "model.kv_heads": 2,
    "model.intermediate": 1024,
}
for _model in ("qwen2-100m", "qwen2-20m"):
    for _budget in (1024, 512):  # step time and peak memory against micro_batch_tokens
        _mb = {**CASES[_model], "grpo.micro_batch_tokens": _budget}
        CASES[f"{_model}-mb{_budget}"] = _mb
        CASES[f"{_model}-mb{_budget}-packed"] = {**_mb, "grpo.packing": True}
"""Overrides of ``tiny_cpu()`` per case."""

ALLOCATORS = {
    "glibc_default": {},
    "mmap_threshold_128k": {"MALLOC_MMAP_THRESHOLD_": "131072"},
}
"""Each case runs twice: with glibc's defaults (what a user sees; freed blocks stay in
the heap once its dynamic mmap threshold has grown) and with a fixed 128 KiB mmap
threshold, so that every tensor's memory goes back to the system when freed (RSS then
follows the live tensors)."""


def case_config(name: str) -> Any:
    from agents.config import apply_overrides, tiny_cpu

    return apply_overrides(tiny_cpu(), CASES[name])


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def measure(name: str) -> dict[str, Any]:
    """One GRPO update of case ``name`` in this process: RSS figures in bytes."""
    import numpy as np
    import torch
    from transformers import Qwen2ForCausalLM

    from agents.grpo import grpo_backward
    from agents.microbatch import forward_in_micro_batches
    from agents.model import frozen_copy
    from agents.plan import model_shape
    from agents.plan.memory import workload
    from agents.rollout import Trajectory, to_batch

    torch.set_num_threads(1)
    cfg = case_config(name)
    shape = model_shape(cfg)
    wl = workload(cfg, 1)
    rng = np.random.default_rng(0)
    trajectories = []
    for i in range(cfg.rollout.num_envs):
        n = wl.context if i == 0 else int(rng.integers(wl.context * 3 // 4, wl.context + 1))
        mask = np.zeros(n, np.int8)
        mask[n - wl.agent_tokens :] = 1  # the plan's bound of agent tokens, at the end
        trajectories.append(
            Trajectory(
                tokens=rng.integers(0, shape.vocab, n).astype(np.int64),
                loss_mask=mask,
                logprobs=np.zeros(n, np.float32),
                prompt_length=n - wl.agent_tokens,
                reward=float(i % 2),
                group=i // cfg.rollout.group_size,
            )
        )
    batch = to_batch(trajectories, pad_id=0)
    g, r = cfg.grpo, cfg.rollout
    mask = batch.loss_mask
    adv = torch.where(batch.rewards > 0, 1.0, -1.0)[:, None] * mask

    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := current RSS
    base = _status_kib("VmRSS") * 1024
    marks: dict[str, float] = {}
    t0 = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = Qwen2ForCausalLM(shape.hf_config())
    if cfg.model.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.config.use_cache = False
    ref = frozen_copy(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=g.lr)
    marks["models_built"] = _status_kib("VmHWM") * 1024 - base

    def update() -> None:
        """One GRPO update over the whole batch, as agents/grpo.py runs it (micro-batched
        under ``grpo.micro_batch_tokens``)."""
        budget, pack = g.micro_batch_tokens, g.packing
        update_started = time.perf_counter()
        with torch.no_grad():
            ids, attn = batch.input_ids, batch.attention_mask
            old = forward_in_micro_batches(
                model, ids, attn, budget, only=mask, packing=pack
            ).logprobs
            ref_lp = forward_in_micro_batches(
                ref, ids, attn, budget, only=mask, packing=pack
            ).logprobs
        marks["logprob_passes"] = _status_kib("VmHWM") * 1024 - base
        model.train()
        optimizer.zero_grad(set_to_none=True)
        started = time.perf_counter()
        stats = grpo_backward(model, batch, old, ref_lp, adv, mask, g, r.temperature)
        marks["micro_batches"] = stats.get("micro_batches", 1.0)
        marks["backward"] = _status_kib("VmHWM") * 1024 - base
        marks["backward_seconds"] = time.perf_counter() - started
        torch.nn.utils.clip_grad_norm_(model.parameters(), g.grad_clip)
        optimizer.step()
        marks["optimizer_step"] = _status_kib("VmHWM") * 1024 - base
        marks["update_seconds"] = time.perf_counter() - update_started
        model.eval()

    # The first update allocates AdamW's moments (lazily, at its step); the second is the
    # steady state the plan describes: moments and last step's gradients held throughout.
    update()
    first = dict(marks)
    Path("/proc/self/clear_refs").write_text("5")
    update()
    return {
        "baseline_rss_bytes": base,
        "peak_rss_bytes": _status_kib("VmHWM") * 1024,
        "measured_bytes": _status_kib("VmHWM") * 1024 - base,
        "peak_after": marks,
        "first_update_peak_after": first,
        "seconds": time.perf_counter() - t0,
        "tokens": int(batch.input_ids.numel()),
        "agent_tokens": int(mask.sum()),
    }


def planned(name: str) -> dict[str, Any]:
    from agents.plan import GiB, Hardware, plan_memory

    cfg = case_config(name)
    plan = plan_memory(cfg, Hardware(1, 64 * GiB, "cpu"), name=name)
    return {
        "parameters": plan.params.total,
        "planned_bytes": plan.total,
        "groups": {g: plan.group_bytes(g) for g in ("resident", "update", "step", "logprob")},
        "terms": {t.name: t.bytes for t in plan.terms},
        "peak_working_set": plan.peak_working_set,
    }


def _save(name: str, rows: list[dict[str, Any]]) -> None:
    save_results(
        name,
        {
            "what": "peak RSS of one GRPO update (log-prob passes, forward+backward, AdamW) "
            "vs agents.plan's CPU estimate; fp32, one torch thread; peak_after.update_seconds: "
            "the second update's wall time (log-prob passes to AdamW step)",
            "note": "measured on a shared 2-core machine (other jobs running), with nice",
            "machine": machine_info(),
            "cases": rows,
        },
    )


def markdown_table(name: str) -> str:
    """``benchmarks/results/NAME.json`` as a markdown table: per case, the second update's
    wall time, its peak RSS (glibc defaults), the peak with a 128 KiB mmap threshold (RSS
    then follows the live tensors) and the plan's estimate."""
    from common import RESULTS_DIR

    data = json.loads((RESULTS_DIR / f"{name}.json").read_text())
    head = (
        "| case | micro_batch_tokens | packing | micro-batches | update s (glibc / mmap run) | peak RSS GiB "
        "| live-tensor peak GiB | plan GiB | plan / live |\n|---|---:|---|---:|---:|---:|---:|---:|---:|\n"
    )
    lines = []
    for row in data["results"]["cases"]:
        cfg = case_config(row["case"])
        glibc, live = row["glibc_default"], row["mmap_threshold_128k"]
        lines.append(
            f"| {row['case']} | {cfg.grpo.micro_batch_tokens} | {cfg.grpo.packing} "
            f"| {live['peak_after'].get('micro_batches', 1):.0f} "
            f"| {glibc['peak_after']['update_seconds']:.1f} / "
            f"{live['peak_after']['update_seconds']:.1f} "
            f"| {glibc['measured_bytes'] / GIB:.2f} | {live['measured_bytes'] / GIB:.2f} "
            f"| {row['planned_bytes'] / GIB:.2f} | {live['planned_over_measured']:.2f} |"
        )
    return head + "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--one", choices=sorted(CASES), help=argparse.SUPPRESS)
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated case names")
    parser.add_argument(
        "--out",
        default="plan_vs_measured",
        help="results name: benchmarks/results/NAME.json (e.g. plan_micro_batch for the "
        "micro-batch cases, so that the other cases' file is kept)",
    )
    parser.add_argument(
        "--table", action="store_true", help="print NAME.json (--out) as a markdown table"
    )
    args = parser.parse_args(argv)
    if args.table:
        print(markdown_table(args.out), end="")
        return 0
    if args.one:
        print(json.dumps(measure(args.one)))
        return 0
    rows = []
    for name in args.cases.split(","):
        plan = planned(name)
        row: dict[str, Any] = {"case": name, **plan}
        for allocator, env in ALLOCATORS.items():
            out = subprocess.run(
                [sys.executable, __file__, "--one", name],
                capture_output=True,
                text=True,
                check=True,
                env={**os.environ, **env},
            )
            measured = json.loads(out.stdout.strip().splitlines()[-1])
            ratio = plan["planned_bytes"] / measured["measured_bytes"]
            row[allocator] = {**measured, "planned_over_measured": round(ratio, 3)}
            print(
                f"{name:16s} {allocator:18s} {plan['parameters'] / 1e6:6.1f}M params  planned "
                f"{plan['planned_bytes'] / GIB:5.2f} GiB  measured "
                f"{measured['measured_bytes'] / GIB:5.2f} GiB  planned/measured {ratio:.2f}  "
                f"forward+backward {measured['peak_after']['backward_seconds']:.1f} s "
                f"({measured['seconds']:.0f} s)",
                flush=True,
            )
        rows.append(row)
        _save(args.out, rows)  # after every case: a long run interrupted keeps its rows
    return 0


if __name__ == "__main__":
    sys.exit(main())
