"""The GPU check of issue 13 (section 4), ready for when a GPU is lent; a reduced CPU form.

On one GPU (under 8 minutes, no downloads): the ``gpu``-marked tests; 2 GRPO steps with
the HF sampler and, when vLLM is installed, 2 with a colocated vLLM engine in sleep mode
(asleep from each rollout's end to the weight push; the sleeps, wakes and device memory
each sleep freed are recorded, and no sleep/wake is a failure); 2 PPO steps;
dense flat search on the GPU (torch fp16, and faiss-gpu when present); for every training
run its peak memory (``torch.cuda.max_memory_allocated``) against the memory plan
(``agents.plan``), agent tokens/s, step time and the env's share of the rollout time. The
model is a random-init Qwen2.5-0.5B-shaped Qwen2 in bf16 on the real Qwen2.5 tokenizer
built offline (``tokenizer="qwen2.5"``), the env the synthetic world.

    python benchmarks/gpu_smoke.py                  # -> benchmarks/results/gpu_smoke.json
    python benchmarks/gpu_smoke.py --cpu-smoke      # tiny model, 1 GRPO + 1 PPO step (CI)

Every GPU-only part without a GPU (or vLLM, or faiss-gpu) is skipped with its reason in
the JSON; a part that fails records its error and the exit status is 1.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

GIB = 1 << 30

QWEN_0_5B_SHAPE = {
    "model.hidden_size": 896,
    "model.layers": 24,
    "model.heads": 14,
    "model.kv_heads": 2,
    "model.intermediate": 4864,
}
"""Qwen2.5-0.5B's decoder shape (agents.plan.shapes.QWEN2_5) for the random-init model."""


def gpu_overrides(out_dir: str, algo: str, backend: str) -> dict[str, Any]:
    """The GPU runs: Qwen2.5-0.5B-shaped, bf16, 32 episodes a step, 2,048-token contexts."""
    return {
        **QWEN_0_5B_SHAPE,
        "algo": algo,
        "steps": 2,
        "eval_every": 0,
        "checkpoint_every": 0,
        "out_dir": out_dir,
        "threads": 0,
        "model.max_positions": 4096,
        "model.dtype": "bfloat16",
        "model.device": "cuda",
        "model.gradient_checkpointing": True,
        "rollout.env_kwargs.tokenizer": "qwen2.5",
        "rollout.env_kwargs.max_turns": 2,
        "rollout.env_kwargs.topk": 2,
        "rollout.env_kwargs.max_response_length": 128,
        "rollout.env_kwargs.max_obs_length": 256,
        "rollout.env_kwargs.max_prompt_length": 2048,
        "rollout.env_kwargs.max_start_length": 256,
        "rollout.num_envs": 32,
        "rollout.group_size": 4 if algo == "grpo" else 1,
        "rollout.eval_questions": 8,
        "rollout.eval_num_envs": 8,
        "rollout.backend": backend,
        "rollout.vllm_gpu_memory_utilization": 0.3,
        "rollout.vllm_sleep": True,  # the engine frees its memory during the update
        "grpo.minibatch_size": 8,
        "ppo.minibatch_size": 8,
        "sft.steps": 0,
    }


def cpu_overrides(out_dir: str, algo: str) -> dict[str, Any]:
    """The CPU smoke: the tests' seconds-long tiny config, one step."""
    from agents.config import TINY_WORLD

    return {
        **TINY_WORLD,
        "algo": algo,
        "steps": 1,
        "eval_every": 0,
        "checkpoint_every": 0,
        "out_dir": out_dir,
        "threads": 1,
        "model.hidden_size": 32,
        "model.intermediate": 64,
        "model.layers": 1,
        "rollout.env_kwargs.max_response_length": 16,
        "rollout.num_envs": 8,
        "rollout.group_size": 4 if algo == "grpo" else 1,
        "rollout.eval_questions": 2,
        "rollout.eval_num_envs": 2,
        "grpo.minibatch_size": 4,
        "ppo.minibatch_size": 4,
        "sft.steps": 0,
    }


class SamplerClock:
    """Times the policies' ``generate`` inside the trainers' ``collect`` (the rollout), so
    the env's share of the rollout time is what is left."""

    def __init__(self) -> None:
        self.collect_s = self.generate_s = 0.0
        self.tokens = 0
        self._inside = False
        self.sleeps = self.wakes = 0
        self.sleep_freed: list[int] = []
        """Device memory in use before minus after each vLLM sleep (bytes, CUDA only)."""

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        import agents.grpo
        import agents.steps
        from agents.policy.hf import HFPolicy

        targets: list[tuple[Any, str, Callable[..., Any]]] = []
        try:
            from agents.policy.vllm import VLLMPolicy

            targets.append((VLLMPolicy, "generate", self._timed_generate))
            targets.append((VLLMPolicy, "sleep", self._counted_sleep))
            targets.append((VLLMPolicy, "wake_up", self._counted_wake))
        except ImportError:
            pass
        targets += [
            (HFPolicy, "generate", self._timed_generate),
            (agents.steps, "collect", self._timed_collect),  # both loops' rollouts
        ]
        saved = [(obj, name, getattr(obj, name)) for obj, name, _ in targets]
        try:
            for obj, name, wrap in targets:
                setattr(obj, name, wrap(getattr(obj, name)))
            yield
        finally:
            for obj, name, original in saved:
                setattr(obj, name, original)

    def _timed_collect(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        def run(*args: Any, **kwargs: Any) -> Any:
            t0, self._inside = time.perf_counter(), True
            try:
                return fn(*args, **kwargs)
            finally:
                self._inside = False
                self.collect_s += time.perf_counter() - t0

        return run

    def _timed_generate(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        def run(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            out = fn(*args, **kwargs)
            if self._inside:
                self.generate_s += time.perf_counter() - t0
                self.tokens += sum(len(g.token_ids) for g in out)
            return out

        return run

    def _counted_sleep(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        def run(policy: Any, *args: Any, **kwargs: Any) -> Any:
            before = _device_used()
            slept = fn(policy, *args, **kwargs)
            if slept:
                self.sleeps += 1
                if before is not None:
                    self.sleep_freed.append(before - (_device_used() or 0))
            return slept

        return run

    def _counted_wake(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        def run(policy: Any, *args: Any, **kwargs: Any) -> Any:
            was_asleep = policy.asleep
            out = fn(policy, *args, **kwargs)
            if was_asleep and not policy.asleep:
                self.wakes += 1  # fully awake again
            return out

        return run


def _device_used() -> int | None:
    """Bytes in use on the current CUDA device (all processes), None without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return None
    free, total = torch.cuda.mem_get_info()
    return int(total - free)


def _peak_rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def train_section(cfg: Any, cuda: bool) -> dict[str, Any]:
    """Train ``cfg`` (its ``steps``); timings, throughput and memory against the plan."""
    from agents.plan import GiB, Hardware, plan_memory
    from agents.plan.check import this_machine
    from agents.plan.memory import CUDA_RESERVE

    hw = this_machine(cfg) if cuda else Hardware(1, 64 * GiB, "cpu")
    assert hw is not None
    plan = plan_memory(cfg, hw)
    clock = SamplerClock()
    if cuda:
        import torch

        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    else:
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := current RSS
    rss0 = _peak_rss_bytes()
    t0 = time.perf_counter()
    with clock.installed():
        if cfg.algo == "grpo":
            from agents.grpo import train_grpo as train
        else:
            from agents.ppo import train_ppo as train
        summary = train(cfg, overwrite=True)
    wall = time.perf_counter() - t0
    records = [json.loads(line) for line in (Path(cfg.out_dir) / "metrics.jsonl").open()]
    steps = [r for r in records if r.get("step", 0) > 0]
    # The trainer's own tensors: the plan without what torch does not count (the CUDA
    # context) and without vLLM's engine (its own process).
    trainer_plan = plan.total - (CUDA_RESERVE if cuda else 0)
    trainer_plan -= sum(t.bytes for t in plan.terms if t.name.startswith("vLLM"))
    out: dict[str, Any] = {
        "algo": cfg.algo,
        "backend": cfg.rollout.backend,
        "steps": len(steps),
        "wall_s": round(wall, 2),
        "step_time_s": [round(r["step_time"], 3) for r in steps],
        "rollout_time_s": [round(r["rollout_time"], 3) for r in steps],
        "update_time_s": [round(r["update_time"], 3) for r in steps],
        "agent_tokens": clock.tokens,
        "agent_tokens_per_s_sampler": round(clock.tokens / max(clock.generate_s, 1e-9), 1),
        "agent_tokens_per_s_rollout": round(clock.tokens / max(clock.collect_s, 1e-9), 1),
        "env_share_of_rollout": round(1 - clock.generate_s / max(clock.collect_s, 1e-9), 4),
        "plan_total_bytes": plan.total,
        "plan_trainer_bytes": trainer_plan,
        "plan_fits": plan.fits,
        "hardware": hw.describe(),
        "eval_em_end": summary.get("eval_em_end"),
    }
    if cfg.rollout.backend == "vllm":
        out["sleep_wake"] = {
            "asked": cfg.rollout.vllm_sleep,
            "sleeps": clock.sleeps,
            "wakes": clock.wakes,
            "ran": clock.sleeps > 0 and clock.wakes == clock.sleeps,
            "freed_bytes": clock.sleep_freed,
        }
    if cuda:
        import torch

        peak = int(torch.cuda.max_memory_allocated())
        free, total = torch.cuda.mem_get_info()
        out.update(
            {
                "max_memory_allocated": peak,
                "max_memory_reserved": int(torch.cuda.max_memory_reserved()),
                "device_used_at_end": int(total - free),
                "plan_trainer_over_measured": round(trainer_plan / max(peak, 1), 3),
            }
        )
    else:
        # Not a check of the plan: the growth includes the env (world, BM25 index,
        # tokenizer) and the imports; benchmarks/bench_plan.py measures the update alone.
        out["peak_rss_growth_with_env_and_imports"] = _peak_rss_bytes() - rss0
    return out


def dense_section(
    rows: int = 1_000_000, d: int = 768, batch: int = 512, k: int = 3, device: str = "cuda:0"
) -> dict[str, Any]:
    """Flat fp16 inner-product search of random unit vectors on the GPU: torch and faiss
    (``device="cpu"``: the torch path in fp32, for the tests)."""
    import numpy as np
    import torch

    from search_env.retrievers.dense.placement import FaissGpuFlat, TorchFlat, faiss_gpu_count

    rng = np.random.default_rng(0)
    x = rng.standard_normal((rows, d), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q = x[rng.integers(0, rows, batch)] + 0.01 * rng.standard_normal((batch, d), dtype=np.float32)
    out: dict[str, Any] = {"rows": rows, "dim": d, "batch": batch, "k": k}
    on_gpu = device.startswith("cuda")
    engines: dict[str, Any] = {
        "torch_fp16" if on_gpu else "torch_fp32": lambda: TorchFlat.from_rows(
            rows,
            d,
            lambda a, b: x[a:b],
            devices=[device],
            dtype=torch.float16 if on_gpu else torch.float32,
        )
    }
    if on_gpu and faiss_gpu_count() > 0:
        engines["faiss_gpu_fp16"] = lambda: FaissGpuFlat(rows, d, lambda a, b: x[a:b], gpus=[0])
    else:
        out["faiss_gpu_fp16"] = {
            "skipped": "faiss has no GPU support (search-env[gpu])" if on_gpu else "not on a GPU"
        }
    # exact fp32 top-1, 64 queries at a time (a (64, rows) score block)
    exact = np.concatenate([(q[i : i + 64] @ x.T).argmax(1) for i in range(0, batch, 64)])
    for name, make in engines.items():
        index = make()
        index.search(q[:8], k)  # warm-up
        t0 = time.perf_counter()
        _, ids = index.search(q, k)
        dt = time.perf_counter() - t0
        out[name] = {
            "queries_per_s": round(batch / dt, 1),
            "top1_agrees_with_fp32": float((ids[:, 0] == exact).mean()),
        }
    return out


def gpu_tests_section() -> dict[str, Any]:
    """``pytest -m gpu`` over the suite."""
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", "tests"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    tail = proc.stdout.strip().splitlines()[-1:] or [proc.stderr.strip()[-300:]]
    return {
        "returncode": proc.returncode,
        "summary": tail[0],
        "seconds": round(time.perf_counter() - t0, 1),
    }


def run_smoke(cpu_smoke: bool, out_path: Path) -> dict[str, Any]:
    """Run every part; returns (and writes) the report."""
    import torch

    from agents.config import apply_overrides, tiny_cpu

    cuda = torch.cuda.is_available() and not cpu_smoke
    report: dict[str, Any] = {
        "mode": "cpu-smoke" if cpu_smoke else "gpu",
        "device": torch.cuda.get_device_name(0) if cuda else platform.processor() or "cpu",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "sections": {},
    }
    sections: dict[str, Any] = report["sections"]
    no_gpu = "CPU smoke (--cpu-smoke)" if cpu_smoke else "no CUDA GPU"
    try:
        import vllm  # noqa: F401

        has_vllm = True
    except ImportError:
        has_vllm = False

    def part(name: str, fn: Callable[[], dict[str, Any]]) -> None:
        t0 = time.perf_counter()
        try:
            sections[name] = fn()
        except Exception as exc:  # a failed part is recorded; the others still run
            sections[name] = {
                "error": f"{type(exc).__name__}: {exc}",
                "traceback": traceback.format_exc()[-2000:],
            }
        sections[name].setdefault("seconds", round(time.perf_counter() - t0, 1))
        print(f"{name}: {json.dumps(sections[name])[:300]}", flush=True)

    with tempfile.TemporaryDirectory(prefix="gpu-smoke-") as tmp:

        def config(algo: str, backend: str = "hf") -> Any:
            out_dir = str(Path(tmp) / f"{algo}-{backend}")
            over = (
                cpu_overrides(out_dir, algo) if not cuda else gpu_overrides(out_dir, algo, backend)
            )
            return apply_overrides(tiny_cpu(), over)

        if cuda:
            part("gpu_tests", gpu_tests_section)
        else:
            sections["gpu_tests"] = {"skipped": no_gpu}
        if not cuda and not cpu_smoke:  # a 0.5B model in bf16 is not for a CPU
            why = "no CUDA GPU (--cpu-smoke runs the reduced CPU form)"
            for name in ("grpo_hf", "grpo_vllm", "ppo_hf", "dense_gpu"):
                sections[name] = {"skipped": why}
            return _finish(report, out_path)
        part("grpo_hf", lambda: train_section(config("grpo"), cuda))
        if cuda and has_vllm:
            part("grpo_vllm", lambda: train_section(config("grpo", "vllm"), cuda))
            sleep = sections["grpo_vllm"].get("sleep_wake")
            if sleep is not None and not sleep["ran"]:  # CUDA has a sleep mode: it must run
                sections["grpo_vllm"]["error"] = f"vLLM sleep/wake did not run: {sleep}"
        else:
            sections["grpo_vllm"] = {"skipped": no_gpu if not cuda else "vllm is not installed"}
        part("ppo_hf", lambda: train_section(config("ppo"), cuda))
        if cuda:
            part("dense_gpu", dense_section)
        else:
            sections["dense_gpu"] = {"skipped": no_gpu}
    return _finish(report, out_path)


def _finish(report: dict[str, Any], out_path: Path) -> dict[str, Any]:
    sections = report["sections"]
    report["failed"] = sorted(n for n, s in sections.items() if "error" in s or s.get("returncode"))
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny model, 1 GRPO + 1 PPO step")
    parser.add_argument(
        "--out", type=Path, help="JSON path (default: benchmarks/results/gpu_smoke[_cpu].json)"
    )
    args = parser.parse_args(argv)
    default = "gpu_smoke_cpu.json" if args.cpu_smoke else "gpu_smoke.json"
    out = args.out or REPO / "benchmarks" / "results" / default
    report = run_smoke(args.cpu_smoke, out)
    print(f"wrote {out}")
    return 1 if report["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
