"""The trainers' configs (agents.config): presets, typed values and ``--set`` texts,
cross-field checks, config files, and the command lines that read them."""

from __future__ import annotations

import argparse
import json

import pytest

from agents.cli_args import parse_set
from agents.config import (
    PRESETS,
    TrainConfig,
    apply_overrides,
    from_dict,
    load_config,
    preset,
    save_config,
    tiny_cpu,
    to_dict,
)

TINY_CPU_ON_MAIN = {
    "algo": "grpo",
    "checkpoint_every": 20,
    "eval_every": 5,
    "grpo": {
        "clip": 0.2,
        "clip_high": None,
        "entropy_coef": 0.0,
        "epochs": 1,
        "grad_clip": 1.0,
        "kl_coef": 0.001,
        "kl_kind": "low_var_kl",
        "loss_agg": "token-mean",
        "lr": 0.0003,
        "mask_env_tokens": True,
        "minibatch_size": 48,
        "normalize_std": True,
        "warmup_ratio": 0.0,
        "weight_decay": 0.0,
    },
    "keep_checkpoints": 2,
    "model": {
        "device": "cpu",
        "dtype": "float32",
        "gradient_checkpointing": False,
        "heads": 8,
        "hidden_size": 128,
        "init_seed": 0,
        "intermediate": 256,
        "kv_heads": 4,
        "layers": 2,
        "max_positions": 1024,
        "path": "tiny",
    },
    "out_dir": "runs/tiny-cpu",
    "ppo": {
        "clip": 0.2,
        "critic_lr": 0.002,
        "entropy_coef": 0.001,
        "epochs": 1,
        "gamma": 1.0,
        "grad_clip": 1.0,
        "kl_coef": 0.001,
        "kl_in_reward": True,
        "kl_kind": "kl",
        "lam": 1.0,
        "loss_agg": "token-mean",
        "lr": 0.0003,
        "mask_critic_and_whitening": True,
        "mask_env_tokens": True,
        "minibatch_size": 48,
        "reference_masking": False,
        "value_clip": 0.5,
        "vf_coef": 0.5,
        "warmup_ratio": 0.0,
        "weight_decay": 0.0,
    },
    "rollout": {
        "backend": "hf",
        "env_id": "SearchQA-Synth-v0",
        "env_kwargs": {
            "max_obs_length": 96,
            "max_prompt_length": 512,
            "max_response_length": 48,
            "max_start_length": 128,
            "max_turns": 2,
            "num_entities": 2000,
            "question_types": ["single"],
            "template": "Question: {question}\n",
            "tokenizer": "world:6144",
            "topk": 1,
        },
        "eval_num_envs": 48,
        "eval_questions": None,
        "eval_split": "test",
        "group_size": 8,
        "max_new_tokens": None,
        "num_envs": 48,
        "temperature": 1.0,
        "vllm_enforce_eager": True,
        "vllm_gpu_memory_utilization": 0.3,
        "vllm_kv_cache_gb": None,
    },
    "seed": 0,
    "sft": {
        "batch_size": 24,
        "closed_book": 0.5,
        "grad_clip": 1.0,
        "lm_steps": 0,
        "lr": 0.006,
        "questions": None,
        "quote_evidence": True,
        "steps": 2000,
        "swap_names": True,
        "warmup_steps": 10,
        "weight_decay": 0.0,
    },
    "steps": 40,
    "threads": 1,
}
"""``to_dict(tiny_cpu())`` of ``agents/config.py`` on main before the package split (commit
b6cee8d): the recipe's numbers depend on these values."""


# ------------------------------------------------------------------ presets
ADDED_SINCE_THE_SPLIT = {
    ("grpo", "micro_batch_tokens"): None,
    ("ppo", "micro_batch_tokens"): None,
    ("grpo", "packing"): False,
    ("ppo", "packing"): False,
    ("model", "lora_rank"): 0,
    ("model", "lora_alpha"): 32,
    ("rollout", "tis_cap"): None,
    ("rollout", "vllm_sleep"): True,  # HF runs ignore it, vLLM on a CPU has no sleep mode
    ("fsdp",): {"cpu_offload": False, "reshard_after_forward": True, "ref_offload": False},
}
"""Fields added later (issue 13), at values that leave a one-process run unchanged."""


def _without_added(d: dict) -> dict:
    d = json.loads(json.dumps(d))
    for path, value in ADDED_SINCE_THE_SPLIT.items():
        *parents, last = path
        holder = d
        for key in parents:
            holder = holder[key]
        assert holder.pop(last) == value, path
    return d


def test_tiny_cpu_serialises_exactly_as_before_the_split():
    on_main = json.dumps(TINY_CPU_ON_MAIN, sort_keys=True)  # JSON text: 1 and 1.0 differ
    assert json.dumps(_without_added(to_dict(tiny_cpu())), sort_keys=True) == on_main
    # an override of nothing changes nothing either (no int turned float, no key added)
    again = to_dict(apply_overrides(tiny_cpu(), {}))
    assert json.dumps(_without_added(again), sort_keys=True) == on_main


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_round_trips_through_a_file(name, tmp_path):
    cfg = preset(name)
    assert from_dict(json.loads(json.dumps(to_dict(cfg)))) == cfg
    assert load_config(save_config(cfg, tmp_path / "config.json")) == cfg


def test_search_r1_grpo_preset_has_groups_and_a_mini_batch_within_the_batch():
    grpo = preset("search-r1-3b-grpo")
    assert grpo.algo == "grpo"
    assert (grpo.rollout.num_envs, grpo.rollout.group_size) == (2560, 5)  # 512 prompts x 5
    assert grpo.grpo.minibatch_size == 1280  # 256 prompts x 5, half the batch
    ppo = preset("search-r1-3b")
    assert (ppo.algo, ppo.rollout.num_envs, ppo.rollout.group_size) == ("ppo", 512, 1)
    assert ppo.ppo.minibatch_size == 256 and ppo.grpo.minibatch_size <= ppo.rollout.num_envs
    # the PPO preset's one-episode groups are refused for GRPO instead of running unbaselined
    with pytest.raises(ValueError, match=r"algo 'grpo' needs rollout.group_size >= 2.*got 1"):
        apply_overrides(ppo, {"algo": "grpo"})


def test_unknown_preset_lists_the_names():
    with pytest.raises(ValueError, match="unknown preset 'tiny'; choose from"):
        preset("tiny")


# ------------------------------------------------------------------ cross-field checks
@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"rollout.group_size": 1}, r"algo 'grpo' needs rollout.group_size >= 2"),
        (
            {"rollout.num_envs": 12, "rollout.group_size": 8, "grpo.minibatch_size": 12},
            r"rollout.group_size \(8\) must divide rollout.num_envs \(12\)",
        ),
        (
            {"rollout.num_envs": 16},
            (
                r"grpo.minibatch_size \(48\) must be between 1 and the batch, "
                r"rollout.num_envs \(16\)"
            ),
        ),
        ({"grpo.minibatch_size": 0}, r"grpo.minibatch_size \(0\) must be between 1"),
        (
            {
                "algo": "ppo",
                "rollout.num_envs": 16,
                "rollout.group_size": 1,
                "grpo.minibatch_size": 16,
            },
            r"ppo.minibatch_size \(48\) must be between 1 and the batch",
        ),
    ],
)
def test_cross_field_checks_refuse_a_config_at_build_time(overrides, message):
    before = tiny_cpu()
    with pytest.raises(ValueError, match=message):
        apply_overrides(before, overrides)
    assert before == tiny_cpu()  # the refused override left the config as it was


def test_ppo_may_play_one_episode_per_question_and_ignores_the_grpo_section():
    cfg = apply_overrides(
        tiny_cpu(),
        {"algo": "ppo", "rollout.group_size": 1, "rollout.num_envs": 48, "grpo.minibatch_size": 96},
    )
    assert cfg.rollout.group_size == 1 and cfg.grpo.minibatch_size == 96  # unused by PPO


# ------------------------------------------------------------------ typed values
def test_python_overrides_are_checked_against_the_field_types():
    cfg = apply_overrides(tiny_cpu(), {"grpo.lr": 1, "rollout.eval_questions": None})
    assert cfg.grpo.lr == 1.0 and isinstance(cfg.grpo.lr, float)
    for overrides, message in [
        ({"steps": "5"}, "config key 'steps' expects int, got '5'"),
        ({"model.hidden_size": True}, "config key 'model.hidden_size' expects int, got True"),
        ({"grpo.lr": "abc"}, "config key 'grpo.lr' expects float, got 'abc'"),
        ({"rollout.eval_questions": 2.5}, "expects int or null, got 2.5"),
        ({"rollout.env_kwargs": ["size"]}, "config key 'rollout.env_kwargs' expects dict"),
        ({"grpo": 3}, "config key 'grpo' expects an object of GRPOConfig fields, got 3"),
    ]:
        with pytest.raises(ValueError) as err:
            apply_overrides(tiny_cpu(), overrides)
        assert message in str(err.value)


@pytest.mark.parametrize(
    "item, key, expected",
    [
        ("grpo.lr=1e-4", "grpo.lr", 1e-4),
        ("grpo.lr=1", "grpo.lr", 1.0),
        ("steps=5", "steps", 5),
        ("model.path=123", "model.path", "123"),  # a str field keeps the text (was the int 123)
        ("model.path=Qwen/Qwen2.5-3B", "model.path", "Qwen/Qwen2.5-3B"),
        ("grpo.clip_high=null", "grpo.clip_high", None),
        ("grpo.normalize_std=false", "grpo.normalize_std", False),
        ("rollout.backend=vllm", "rollout.backend", "vllm"),
        ("rollout.eval_questions=null", "rollout.eval_questions", None),
        ("rollout.eval_questions=50", "rollout.eval_questions", 50),
        ("rollout.env_kwargs.topk=2", "rollout.env_kwargs.topk", 2),  # open dict: JSON, else text
        (
            "rollout.env_kwargs.template=Q: {question}",
            "rollout.env_kwargs.template",
            "Q: {question}",
        ),
        (
            'rollout.env_kwargs.question_types=["single", "multi"]',
            "rollout.env_kwargs.question_types",
            ["single", "multi"],
        ),
        ('rollout.env_kwargs={"size": "tiny"}', "rollout.env_kwargs", {"size": "tiny"}),
        (" seed =3", "seed", 3),
    ],
)
def test_set_values_are_decoded_by_the_type_of_their_field(item, key, expected):
    overrides = parse_set(TrainConfig, [item])
    assert overrides == {key: expected}
    assert type(overrides[key]) is type(expected)
    apply_overrides(tiny_cpu(), overrides)  # and the config takes them


@pytest.mark.parametrize(
    "item, message",
    [
        ("grpo.lr=abc", "config key 'grpo.lr' expects float, got 'abc'"),
        ("steps=2.5", "config key 'steps' expects int, got '2.5'"),
        ("steps=", "config key 'steps' expects int, got ''"),
        ("grpo.normalize_std=yes", "expects bool (true or false), got 'yes'"),
        (
            "rollout.backend=sglang",
            "config key 'rollout.backend' expects one of 'hf', 'vllm', got 'sglang'",
        ),
        ("rollout.eval_questions=all", "expects int or null, got 'all'"),
        ("model.hidden_size=true", "config key 'model.hidden_size' expects int, got 'true'"),
        (
            "rollout.env_kwargs=size",
            "config key 'rollout.env_kwargs' expects dict[str, Any], got 'size'",
        ),
        ("grpo", "--set needs KEY=VALUE, got 'grpo'"),
    ],
)
def test_bad_set_values_name_the_key_the_type_and_the_value(item, message):
    with pytest.raises(ValueError) as err:
        parse_set(TrainConfig, [item])
    assert message in str(err.value)


@pytest.mark.parametrize(
    "key, message",
    [
        ("grpo.kl_coeff", "unknown config key 'grpo.kl_coeff'; did you mean 'grpo.kl_coef'?"),
        ("rolout.num_envs", "did you mean 'rollout.num_envs'"),
        ("lr", "unknown config key 'lr'; did you mean 'grpo.lr' or 'ppo.lr' or 'sft.lr'?"),
        ("grpo.nope", "unknown config key 'grpo.nope'"),
        ("grpo.lr.x", "unknown config key 'grpo.lr.x'"),
    ],
)
def test_unknown_keys_suggest_close_names(key, message):
    for call in (
        lambda: parse_set(TrainConfig, [f"{key}=1"]),
        lambda: apply_overrides(tiny_cpu(), {key: 1}),
    ):
        with pytest.raises(ValueError) as err:
            call()
        assert message in str(err.value)


def test_new_keys_go_below_the_open_dict_but_not_below_a_missing_sub_dict():
    cfg = apply_overrides(tiny_cpu(), {"rollout.env_kwargs.new_key": 1})
    assert cfg.rollout.env_kwargs["new_key"] == 1
    with pytest.raises(ValueError, match="unknown config key 'rollout.env_kwargs.nope.x'"):
        apply_overrides(tiny_cpu(), {"rollout.env_kwargs.nope.x": 1})


def test_a_config_file_with_a_wrong_type_names_the_file_and_the_key(tmp_path):
    data = to_dict(tiny_cpu())
    data["grpo"]["lr"] = "abc"
    path = tmp_path / "config.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=rf"{path}: config key 'grpo.lr' expects float, got 'abc'"):
        load_config(path)
    path.write_text(json.dumps({"grpo": {"kl_coeff": 0.1}}))
    with pytest.raises(ValueError, match=r"unknown GRPOConfig fields: \['kl_coeff'\]; did you"):
        load_config(path)


# ------------------------------------------------------------------ command lines
def test_train_cli_refuses_a_bad_set_value_before_any_work(tmp_path, capsys):
    from agents.train import main

    out = tmp_path / "run"
    assert main(["--set", "grpo.lr=abc", "--out", str(out)]) == 2
    assert "error: config key 'grpo.lr' expects float, got 'abc'" in capsys.readouterr().err
    assert not out.exists()
    assert main(["--set", "rollout.num_envs=16", "--out", str(out)]) == 2
    assert "grpo.minibatch_size (48) must be between 1 and the batch" in capsys.readouterr().err
    assert main(["--preset", "search-r1-3b", "--algo", "grpo", "--out", str(out)]) == 2
    assert "algo 'grpo' needs rollout.group_size >= 2" in capsys.readouterr().err
    assert not out.exists()


def test_train_cli_types_the_set_values_and_reads_a_config_file(tmp_path, capsys):
    from agents.train import add_train_arguments, config_from_args, main

    parser = add_train_arguments(argparse.ArgumentParser())
    args = parser.parse_args(
        [
            "--set",
            "model.path=123",
            "--set",
            "rollout.eval_questions=null",
            "--set",
            "grpo.lr=1",
            "--steps",
            "3",
        ]
    )
    cfg = config_from_args(args)
    assert (cfg.model.path, cfg.rollout.eval_questions, cfg.steps) == ("123", None, 3)
    assert cfg.grpo.lr == 1.0 and isinstance(cfg.grpo.lr, float)
    bad = tmp_path / "config.json"
    bad.write_text(json.dumps({"steps": "many"}))
    assert main(["--config", str(bad), "--out", str(tmp_path / "run")]) == 2
    assert f"error: {bad}: config key 'steps' expects int, got 'many'" in capsys.readouterr().err


def test_rllib_cli_set_is_typed_by_the_rllib_config():
    from agents.rllib.train import add_arguments, config_from_args

    parser = add_arguments(argparse.ArgumentParser())

    def resolve(*items: str):
        argv = [arg for item in items for arg in ("--set", item)]
        return config_from_args(parser.parse_args(argv))

    cfg = resolve(
        "runners.rollout_fragment_length=64", "env_config.size=small", "module.allowed_words=null"
    )
    assert cfg.runners.rollout_fragment_length == 64 and cfg.env_config["size"] == "small"
    assert cfg.module.allowed_words is None
    assert resolve("runners.rollout_fragment_length=auto").runners.rollout_fragment_length == "auto"
    with pytest.raises(ValueError, match="config key 'ppo.lr' expects float, got 'abc'"):
        resolve("ppo.lr=abc")
    with pytest.raises(ValueError, match="did you mean 'ppo.lambda_'"):
        resolve("ppo.lambda=0.9")


def test_sb3_cli_refuses_a_bad_set_value(capsys):
    pytest.importorskip("stable_baselines3", reason="needs the [sb3] extra")
    from agents.sb3.train import main

    assert main(["--set", "n_envs=eight"]) == 2
    assert "config key 'n_envs' expects int, got 'eight'" in capsys.readouterr().err
