"""A model with more logits than tokenizer ids (Qwen2.5: 151,936 vs 151,665) gets an env
whose action space covers every logit when the trainer builds it."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")

import search_env  # noqa: E402,F401  (registers the env ids)
from agents.config import TINY_WORLD, apply_overrides, tiny_cpu  # noqa: E402
from agents.rollout import make_env  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

PADDED = 64
"""Unused logits past ``len(tokenizer)``, as Qwen2.5 pads its embedding."""


@pytest.fixture(scope="module")
def padded_model_dir(tmp_path_factory):
    from agents.tiny_model import make_tiny_qwen2, save_tiny_model
    from search_env.registration import load_tokenizer

    synth = load_tokenizer("synth")
    model = make_tiny_qwen2(synth, hidden_size=32, layers=1, heads=2, kv_heads=1, intermediate=32)
    model.resize_token_embeddings(len(synth) + PADDED)
    path = save_tiny_model(model, synth, tmp_path_factory.mktemp("padded"))
    return path, len(synth)


def test_make_env_passes_the_models_vocab_size():
    cfg = apply_overrides(tiny_cpu(), dict(TINY_WORLD))
    vec = make_env(cfg.rollout, "train", 1, vocab_size=len(_synth()) + PADDED)
    env = vec.envs[0]
    assert env.codec.vocab_size == len(_synth()) + PADDED
    env.reset(options={"index": 0})
    # an id only the model has (past the tokenizer) is a valid agent token
    env.step(np.asarray([len(_synth()) + PADDED - 1, *_synth().encode("<answer> x </answer>")]))
    vec.close()


def test_trainer_builds_its_envs_with_the_models_logits(padded_model_dir, tmp_path):
    from agents.run import setup_run

    path, n_ids = padded_model_dir
    cfg = apply_overrides(
        tiny_cpu(),
        {
            **TINY_WORLD,
            "model.path": str(path),
            "sft.steps": 0,
            "steps": 1,
            "eval_every": 0,
            "checkpoint_every": 0,
            "threads": 1,
            "out_dir": str(tmp_path / "run"),
            "rollout.num_envs": 2,
            "rollout.group_size": 2,
            "rollout.eval_num_envs": 2,
            "grpo.minibatch_size": 2,
        },
    )
    run = setup_run(cfg)
    for vec in (run.train_env, run.eval_env):
        assert vec.envs[0].codec.vocab_size == n_ids + PADDED
        assert len(vec.envs[0].tokenizer) == n_ids
    assert run.model.get_output_embeddings().weight.shape[0] == n_ids + PADDED


def _synth():
    from search_env.registration import load_tokenizer

    return load_tokenizer("synth")
