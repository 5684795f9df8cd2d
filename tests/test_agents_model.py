"""Model loading: dropout off for the update, the model's own EOS ids in the env's stop
set and in the policy's stop ids."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch", reason="needs the [torch] extra")

import search_env  # noqa: F401  (registers the env ids)
from agents.config import ModelConfig, RolloutConfig
from agents.model import disable_dropout, load_model, model_eos_ids
from agents.policy import ScriptedPolicy
from agents.rollout import collect, make_env
from agents.tiny_model import make_tiny_qwen2, save_tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


class _Vocab:
    eos_token_id, pad_token_id, bos_token_id = 1, 0, None

    def __len__(self) -> int:
        return 97


def dropout_model():
    """A tiny Qwen2 with dropout in its attention (config and layers) and an nn.Dropout."""
    model = make_tiny_qwen2(_Vocab(), hidden_size=32, intermediate=64, layers=2, heads=4)
    model.config.attention_dropout = 0.5
    for layer in model.model.layers:
        layer.self_attn.attention_dropout = 0.5
    model.model.norm = torch.nn.Sequential(model.model.norm, torch.nn.Dropout(0.5))
    return model.train()


def two_forwards(model):
    ids = torch.arange(2, 30)[None]
    return model(input_ids=ids).logits, model(input_ids=ids).logits


def test_dropout_model_is_random_in_train_mode():
    a, b = two_forwards(dropout_model())
    assert not torch.equal(a, b)


def test_disable_dropout_makes_train_mode_deterministic():
    model = dropout_model()
    disable_dropout(model)
    a, b = two_forwards(model)
    assert torch.equal(a, b)
    eval_logits = model.eval()(input_ids=torch.arange(2, 30)[None]).logits
    assert torch.equal(a, eval_logits)
    assert model.config.attention_dropout == 0.0


def test_load_model_turns_dropout_off(monkeypatch):
    import agents.tiny_model

    monkeypatch.setattr(agents.tiny_model, "make_tiny_qwen2", lambda *a, **k: dropout_model())
    model, _ = load_model(ModelConfig(device="cpu"), _Vocab())
    a, b = two_forwards(model.train())
    assert torch.equal(a, b)


@pytest.fixture(scope="module")
def two_eos_model(tmp_path_factory):
    """A saved tiny model whose generation config lists two EOS ids (as instruct models
    do): the tokenizer's EOS and a second one (the id of ``" Velmora"``'s first token)."""
    vec = make_env(RolloutConfig(env_kwargs={"size": "tiny"}), "train", 1)
    tok = vec.envs[0].tokenizer
    model = make_tiny_qwen2(tok, hidden_size=32, intermediate=64, layers=1)
    second = tok.encode(" Velmora")[0]
    assert second != tok.eos_token_id
    model.generation_config.eos_token_id = [tok.eos_token_id, second]
    path = save_tiny_model(model, tok, tmp_path_factory.mktemp("two_eos") / "model")
    return path, tok, second


def test_model_eos_ids_lists_every_generation_eos(two_eos_model):
    path, tok, second = two_eos_model
    assert model_eos_ids(str(path)) == sorted({tok.eos_token_id, second})


def test_model_eos_ids_without_a_generation_config(two_eos_model, tmp_path):
    import shutil

    path, tok, _ = two_eos_model
    copy = shutil.copytree(path, tmp_path / "copy")
    (copy / "generation_config.json").unlink()
    assert model_eos_ids(str(copy)) == [tok.eos_token_id]


class RecordingPolicy(ScriptedPolicy):
    """A scripted policy that records the stop ids it is asked to stop at."""

    stop_ids: list[list[int]]

    def generate(self, prompts, max_new_tokens, *, stop_token_ids=None, **kwargs):
        self.stop_ids = [*getattr(self, "stop_ids", []), sorted(stop_token_ids or [])]
        return super().generate(prompts, max_new_tokens, stop_token_ids=stop_token_ids, **kwargs)


def test_the_models_eos_ids_reach_the_env_and_the_policy(two_eos_model):
    path, tok, second = two_eos_model
    eos = model_eos_ids(str(path))
    rollout = RolloutConfig(env_kwargs={"size": "tiny", "eos_token_ids": [tok.eos_token_id]})
    vec = make_env(rollout, "train", 2, eos_token_ids=eos)
    assert {tok.eos_token_id, second} <= set(vec.envs[0].codec.eos_ids)
    policy = RecordingPolicy(tok, lambda context: "<answer> x </answer>")
    collect(vec, policy, indices=[0, 1])
    assert policy.stop_ids and all(second in ids for ids in policy.stop_ids)
    # without the model's ids, the second EOS is no stop
    plain = make_env(RolloutConfig(env_kwargs={"size": "tiny"}), "train", 2)
    assert second not in plain.envs[0].codec.eos_ids
