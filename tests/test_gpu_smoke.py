"""benchmarks/gpu_smoke.py: its reduced CPU form runs (1 GRPO + 1 PPO step on the tiny
model) and writes the report; its GPU form on a machine without a GPU skips every part
with the reason recorded."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_smoke.py"


@pytest.fixture(scope="module")
def smoke():
    spec = importlib.util.spec_from_file_location("gpu_smoke", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_smoke"] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("gpu_smoke", None)


@pytest.mark.slow
def test_cpu_smoke_trains_one_grpo_and_one_ppo_step_and_plans_them(smoke, tmp_path):
    out = tmp_path / "smoke.json"
    report = smoke.run_smoke(cpu_smoke=True, out_path=out)
    assert json.loads(out.read_text()) == report
    assert report["mode"] == "cpu-smoke" and report["device"] and report["failed"] == []
    s = report["sections"]
    for name in ("gpu_tests", "grpo_vllm", "dense_gpu"):
        assert "CPU smoke" in s[name]["skipped"]
    for name, algo in (("grpo_hf", "grpo"), ("ppo_hf", "ppo")):
        run = s[name]
        assert (run["algo"], run["steps"], run["backend"]) == (algo, 1, "hf")
        assert run["agent_tokens"] > 0 and run["agent_tokens_per_s_sampler"] > 0
        assert 0.0 <= run["env_share_of_rollout"] < 1.0
        assert len(run["step_time_s"]) == 1 and run["step_time_s"][0] > 0
        assert run["plan_fits"] and run["plan_total_bytes"] > 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU path")
def test_gpu_form_without_a_gpu_skips_every_part_with_the_reason(smoke, tmp_path):
    out = tmp_path / "gpu.json"
    report = smoke.run_smoke(cpu_smoke=False, out_path=out)
    assert report["mode"] == "gpu" and report["failed"] == []
    assert set(report["sections"]) == {"gpu_tests", "grpo_hf", "grpo_vllm", "ppo_hf", "dense_gpu"}
    assert all("no CUDA GPU" in part["skipped"] for part in report["sections"].values())
    assert smoke.main(["--out", str(out)]) == 0 and json.loads(out.read_text())["device"]


def test_dense_section_searches_and_checks_against_exact_top1(smoke):
    out = smoke.dense_section(rows=2000, d=32, batch=64, k=3, device="cpu")
    assert out["torch_fp32"]["top1_agrees_with_fp32"] == 1.0
    assert out["torch_fp32"]["queries_per_s"] > 0 and "skipped" in out["faiss_gpu_fp16"]
