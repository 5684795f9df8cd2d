"""The memory plan (agents.plan): shapes and exact parameter counts, each term against a
hand computation, the presets against their stated hardware, the refusal of an
over-budget config by ``train`` (before any weights load), and ``search-env plan``."""

from __future__ import annotations

import json
import math
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from agents.config import apply_overrides, preset, tiny_cpu
from agents.config.presets import PRESET_HARDWARE, PRESETS
from agents.model import LOGIT_CHUNK_TOKENS
from agents.plan import (
    GiB,
    Hardware,
    PlanRefusedError,
    UnknownShapeError,
    available_ram_bytes,
    check_config_fits,
    count_parameters,
    model_shape,
    plan_memory,
    qwen_shape,
)
from agents.plan.memory import LOGIT_BYTES_TRAIN, layer_activation_bytes, workload
from search_env import cli

H80 = Hardware(8, 79 * GiB, "cuda")


def term(plan, name):
    (found,) = [t for t in plan.terms if t.name == name]
    return found.bytes


# ------------------------------------------------------------------ shapes and counts
@pytest.mark.parametrize(
    "size, total, non_embedding_b",
    # Qwen's model cards: 0.49B/0.36B, 1.54B/1.31B, 3.09B/2.77B, 7.61B/6.53B
    [
        ("0.5B", 494_032_768, 0.36),
        ("1.5B", 1_543_714_304, 1.31),
        ("3B", 3_085_938_688, 2.77),
        ("7B", 7_615_616_512, 6.53),
    ],
)
def test_meta_model_counts_match_the_model_cards(size, total, non_embedding_b):
    shape = qwen_shape(size)
    pc = count_parameters(shape)
    assert pc.total == total
    non_embedding = pc.total - pc.embedding - pc.lm_head
    assert round(non_embedding / 1e9, 2) == non_embedding_b
    # one decoder layer by hand: q/k/v with bias, o, gate/up/down, two RMSNorm weights
    h, kv, inter = shape.hidden, shape.kv_heads * shape.dim, shape.intermediate
    by_hand = (h * h + h) + 2 * (h * kv + kv) + h * h + 3 * h * inter + 2 * h
    assert pc.per_layer == by_hand
    assert pc.root == pc.embedding + pc.lm_head + h  # + the final norm
    assert pc.lm_head == (0 if shape.tied else shape.vocab * h)


def test_lora_counts_every_decoder_linear_layer():
    shape = qwen_shape("3B")
    h, kv, inter, r = shape.hidden, shape.kv_heads * shape.dim, shape.intermediate, 16
    per_layer = r * ((h + h) + 2 * (h + kv) + (h + h) + 2 * (h + inter) + (inter + h))
    assert count_parameters(shape).lora(r) == shape.layers * per_layer


def test_shapes_come_from_names_local_config_and_the_tiny_config(tmp_path):
    assert model_shape(preset("search-r1-7b")).vocab == 152_064
    assert (
        model_shape(apply_overrides(tiny_cpu(), {"model.path": "Qwen/Qwen2.5-3B-Instruct"})).layers
        == 36
    )
    tiny = model_shape(tiny_cpu())
    assert (tiny.hidden, tiny.layers, tiny.heads, tiny.kv_heads, tiny.vocab) == (128, 2, 8, 4, 6144)
    cfg = {
        "hidden_size": 64,
        "num_hidden_layers": 3,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "intermediate_size": 96,
        "vocab_size": 500,
        "tie_word_embeddings": True,
    }
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    local = model_shape(apply_overrides(tiny_cpu(), {"model.path": str(tmp_path)}))
    assert (local.layers, local.vocab, local.source) == (3, 500, str(tmp_path / "config.json"))
    with pytest.raises(UnknownShapeError, match="--no-plan-check"):
        model_shape(apply_overrides(tiny_cpu(), {"model.path": "nobody/not-a-model"}))


def test_tiny_shape_counts_the_model_the_trainer_builds():
    from agents.tiny_model import make_tiny_qwen2
    from search_env.synth.tokenizer import load_synth_tokenizer

    cfg = apply_overrides(tiny_cpu(), {"rollout.env_kwargs.tokenizer": "synth"})
    m = cfg.model
    model = make_tiny_qwen2(
        load_synth_tokenizer(),
        hidden_size=m.hidden_size,
        layers=m.layers,
        heads=m.heads,
        kv_heads=m.kv_heads,
        intermediate=m.intermediate,
        max_positions=m.max_positions,
    )
    assert count_parameters(model_shape(cfg)).total == sum(p.numel() for p in model.parameters())


# ------------------------------------------------------------------ terms by hand
def test_one_process_bf16_terms_by_hand():
    cfg = preset("qwen2.5-1.5b-1gpu")
    plan = plan_memory(cfg, Hardware(1, 79 * GiB, "cuda"))
    n = count_parameters(plan.shape).total
    assert not plan.fsdp
    assert term(plan, "parameters") == term(plan, "reference model") == 2 * n
    assert term(plan, "gradients") == 2 * n
    assert term(plan, "optimizer state") == 4 * n  # AdamW's moments in bf16: no fp32 master
    wl = plan.workload
    assert (wl.context, wl.agent_tokens, wl.micro_tokens) == (4096, 2500, 8192)
    assert wl.scored == math.ceil(8192 * 2500 / 4096)
    # the trainer holds one chunk of positions' logits at once (agents.model)
    assert term(plan, "logits") == min(wl.scored, LOGIT_CHUNK_TOKENS) * 151_936 * LOGIT_BYTES_TRAIN
    s = plan.shape
    per_layer = 2 * 8 * s.hidden + 10 * s.hidden + 8 * s.intermediate
    assert layer_activation_bytes(s, 2) == per_layer
    assert term(plan, "activations") == 8192 * (s.layers * 2 * s.hidden + per_layer)
    assert plan.activations_alt == 8192 * s.layers * per_layer  # without checkpointing
    # resident + the largest working set is the total
    assert plan.total == plan.group_bytes("resident") + plan.group_bytes("update")


def test_vllm_kv_cache_is_what_the_utilisation_leaves_and_its_tokens():
    plan = plan_memory(preset("search-r1-3b"), H80)
    v, s = plan.vllm, plan.shape
    assert v["kv_bytes_per_token"] == 2 * s.layers * s.kv_heads * s.dim * 2 == 36_864
    assert v["reserved_bytes"] == int(0.6 * 79 * GiB)
    assert v["kv_cache_bytes"] == v["reserved_bytes"] - v["weights_bytes"] - v["activation_bytes"]
    assert v["kv_tokens"] == v["kv_cache_bytes"] // 36_864
    assert v["rollout_tokens_needed"] == 64 * 4096  # 512 episodes over 8 GPUs
    starved = apply_overrides(preset("search-r1-7b"), {"rollout.vllm_gpu_memory_utilization": 0.1})
    low = plan_memory(starved, H80)
    assert not low.fits and "leaves no KV cache" in low.problems[0]


def test_fsdp_shards_over_gpus_and_offload_moves_state_to_the_host():
    cfg = apply_overrides(
        preset("search-r1-3b"), {"fsdp.cpu_offload": False, "fsdp.ref_offload": False}
    )
    n = count_parameters(qwen_shape("3B")).total
    for gpus in (2, 8):
        plan = plan_memory(cfg, Hardware(gpus, 79 * GiB, "cuda"))
        assert term(plan, "parameter shards") == math.ceil(4 * n / gpus)  # fp32 masters
        assert term(plan, "optimizer state") == math.ceil(8 * n / gpus)
        assert term(plan, "reference shards") == math.ceil(2 * n / gpus)
    off = plan_memory(preset("search-r1-3b"), H80)
    host = {t.name for t in off.terms if t.group == "host"}
    assert {"parameter shards", "gradient shards", "optimizer state", "reference shards"} <= host
    assert off.total < plan.total


def test_lora_trains_adapters_only():
    cfg = apply_overrides(preset("qwen2.5-1.5b-1gpu"), {"model.lora_rank": 16})
    plan = plan_memory(cfg, Hardware(1, 79 * GiB, "cuda"))
    lora = count_parameters(plan.shape).lora(16)
    assert plan.trainable == lora
    assert term(plan, "gradients") == 4 * lora and term(plan, "optimizer state") == 8 * lora


def test_cpu_ranks_share_the_ram():
    one = plan_memory(tiny_cpu(), Hardware(1, 8 * GiB, "cpu"))
    two = plan_memory(tiny_cpu(), Hardware(2, 8 * GiB, "cpu"))
    assert two.machine_total == 2 * two.total
    assert one.machine_total == one.total and "CUDA context + workspaces" not in {
        t.name for t in one.terms
    }


# ------------------------------------------------------------------ presets
def test_every_preset_states_its_hardware():
    assert set(PRESET_HARDWARE) == set(PRESETS)


@pytest.mark.parametrize("name", sorted(PRESET_HARDWARE))
def test_every_preset_fits_its_stated_hardware(name):
    hw = PRESET_HARDWARE[name]
    plan = plan_memory(preset(name), Hardware(hw.gpus, int(hw.memory_gib * GiB), hw.device))
    assert plan.fits and plan.machine_total <= hw.memory_gib * GiB, plan.to_dict()["groups"]


def test_grpo_preset_plans_groups_of_five_and_the_ppo_one_a_critic():
    grpo = plan_memory(preset("search-r1-3b-grpo"), H80)
    assert workload(preset("search-r1-3b-grpo"), 8).rollout_seqs == 2560 // 8
    assert "critic (value head)" not in {t.name for t in grpo.terms}
    ppo = plan_memory(preset("search-r1-3b"), H80)
    assert term(ppo, "critic (value head)") == (2048 + 1) * 16


def test_docs_page_is_the_commands_output():
    import argparse

    from agents.plan.command import add_plan_arguments, markdown_page, plan_of

    parser = add_plan_arguments(argparse.ArgumentParser())
    plans = []
    for name in sorted(PRESETS):
        plans.append(plan_of(parser.parse_args(["--preset", name]), name)[2])
    page = Path(__file__).parent.parent / "docs" / "plans.md"
    assert page.read_text() == markdown_page(plans), (
        "docs/plans.md is stale: search-env plan --all-presets --markdown docs/plans.md"
    )


# ------------------------------------------------------------------ refusal
SEVEN_B_ONE_GPU = ["--set", "fsdp.cpu_offload=false", "--set", "fsdp.ref_offload=false"]


def test_over_budget_config_is_refused_naming_the_knobs():
    cfg = apply_overrides(
        preset("search-r1-7b"), {"fsdp.cpu_offload": False, "fsdp.ref_offload": False}
    )
    with pytest.raises(PlanRefusedError) as e:
        check_config_fits(cfg, Hardware(1, 79 * GiB, "cuda"))
    text = str(e.value)
    assert "does not fit" in text and "per GPU > 79.0 GiB" in text
    assert "fsdp.cpu_offload=true" in text and "--no-plan-check" in text
    # the same config on 8 GPUs with the preset's offload fits
    assert check_config_fits(preset("search-r1-7b"), H80).fits


def test_a_too_large_micro_batch_is_refused_naming_micro_batch_tokens():
    cfg = apply_overrides(preset("search-r1-3b"), {"ppo.micro_batch_tokens": None})
    with pytest.raises(PlanRefusedError, match=r"--set ppo.micro_batch_tokens=\d+"):
        check_config_fits(cfg, H80)


def test_train_refuses_before_loading_weights_and_the_escape_hatch(tmp_path, monkeypatch, capsys):
    import agents.plan.check as check
    import agents.ppo
    from agents.train import main

    monkeypatch.setattr(check, "this_machine", lambda cfg: Hardware(1, 79 * GiB, "cuda"))
    started = []
    monkeypatch.setattr(agents.ppo, "train_ppo", lambda cfg, **kw: started.append(cfg) or {})
    out = tmp_path / "run"
    argv = ["--preset", "search-r1-7b", *SEVEN_B_ONE_GPU, "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: the memory plan does not fit") and "fsdp.cpu_offload" in err
    assert not started and not out.exists()
    assert main([*argv, "--no-plan-check"]) == 0 and len(started) == 1


def test_the_tiny_recipe_fits_this_machines_ram(monkeypatch):
    plan = check_config_fits(tiny_cpu())
    assert plan is not None and plan.fits and plan.hardware.device == "cpu"
    ram = available_ram_bytes()
    import builtins

    real_import = builtins.__import__

    def no_psutil(name, *args, **kwargs):
        if name == "psutil":
            raise ImportError("no psutil")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_psutil)
    meminfo = available_ram_bytes()  # /proc/meminfo
    assert abs(meminfo - ram) < 0.2 * ram


# ------------------------------------------------------------------ search-env plan
@pytest.fixture
def plan_command(monkeypatch):
    eps = [EntryPoint("plan", "agents.commands:plan", cli.COMMANDS_GROUP)]
    monkeypatch.setattr(
        cli, "entry_points", lambda group: eps if group == cli.COMMANDS_GROUP else []
    )
    return cli.main


def test_plan_command_prints_the_table_and_writes_json(plan_command, tmp_path, capsys):
    path = tmp_path / "plan.json"
    assert plan_command(["plan", "--preset", "search-r1-3b", "--json", str(path)]) == 0
    text = capsys.readouterr().out
    for row in (
        "parameter shards",
        "activations",
        "logits",
        "vLLM KV cache",
        "critic",
        "total per GPU",
    ):
        assert row in text
    data = json.loads(path.read_text())
    assert data["fits"] and data["hardware"]["gpus"] == 8
    assert data["total_bytes"] == sum(
        data["groups"][g] for g in ("resident", data["peak_working_set"])
    )


def test_plan_command_over_budget_lists_knobs_and_bad_input_exits_2(plan_command, tmp_path, capsys):
    path = tmp_path / "plan.json"
    argv = [
        "plan",
        "--preset",
        "search-r1-7b",
        "--gpus",
        "1",
        *SEVEN_B_ONE_GPU,
        "--json",
        str(path),
    ]
    assert plan_command(argv) == 1
    assert "DOES NOT FIT" in capsys.readouterr().out
    assert any("fsdp.cpu_offload" in k["what"] for k in json.loads(path.read_text())["knobs"])
    assert plan_command(["plan", "--preset", "tiny-cpu", "--set", "grpo.lr=abc"]) == 2
    assert "grpo.lr" in capsys.readouterr().err
    assert plan_command(["plan", "--preset", "tiny-cpu", "--gpus", "0"]) == 2
    assert "gpus must be >= 1" in capsys.readouterr().err


def test_plan_command_reads_a_config_file_and_refuses_mixed_options(plan_command, tmp_path, capsys):
    from agents.config import save_config

    path = save_config(preset("search-r1-3b"), tmp_path / "config.json")
    assert plan_command(["plan", "--config", str(path), "--gpus", "8", "--gpu-memory", "79"]) == 0
    assert "8 x 79.0 GiB" in capsys.readouterr().out
    assert plan_command(["plan", "--all-presets", "--preset", "tiny-cpu"]) == 2
    assert "--all-presets plans every preset" in capsys.readouterr().err
    assert plan_command(["plan", "--preset", "tiny-cpu", "--markdown", str(tmp_path / "x.md")]) == 2
    assert "--markdown needs --all-presets" in capsys.readouterr().err


def test_hf_rollout_of_a_big_batch_is_refused_naming_vllm():
    cfg = apply_overrides(preset("qwen2.5-1.5b-1gpu"), {"rollout.backend": "hf"})
    plan = plan_memory(cfg, Hardware(1, 79 * GiB, "cuda"))
    assert plan.peak_working_set == "rollout" and not plan.fits
    s = plan.shape
    assert (
        term(plan, "KV cache (HF generate)") == 320 * 4096 * 2 * s.layers * s.kv_heads * s.dim * 2
    )
    with pytest.raises(PlanRefusedError, match="rollout.backend=vllm"):
        check_config_fits(cfg, Hardware(1, 79 * GiB, "cuda"))
