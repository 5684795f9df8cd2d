"""LoRA (peft): wrapping at load, the reference as the adapters-off base, merged weights
for a sampler with its own copy (vLLM), on CPU."""

from __future__ import annotations

import copy

import pytest

torch = pytest.importorskip("torch", reason="needs the [torch] extra")
peft = pytest.importorskip("peft", reason="needs the [lora] extra")

from agents.config import ModelConfig
from agents.lora import AdaptersOff, is_peft, merged_state_dict, save_merged
from agents.model import forward_tokens, frozen_copy, load_model
from agents.policy.base import sync_weights

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


class _Vocab:
    eos_token_id, pad_token_id, bos_token_id = 1, 0, None

    def __len__(self) -> int:
        return 97


def lora_model(rank: int = 4):
    cfg = ModelConfig(
        hidden_size=32, intermediate=64, layers=2, heads=4, device="cpu", lora_rank=rank
    )
    model, _ = load_model(cfg, _Vocab())
    return model


def train_adapters(model) -> None:
    """Give every lora_B a nonzero value, as training would."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)


IDS = torch.randint(2, 97, (2, 12), generator=torch.Generator().manual_seed(3))
MASK = torch.ones_like(IDS)


def test_load_model_wraps_every_linear_layer_and_trains_only_adapters():
    model = lora_model()
    assert is_peft(model)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    adapted = {n.split(".lora_A")[0].rsplit(".", 1)[-1] for n in trainable if "lora_A" in n}
    assert {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"} <= adapted


def test_bad_lora_settings_are_refused():
    from agents.lora import wrap_lora

    with pytest.raises(ValueError, match="rank"):
        wrap_lora(torch.nn.Linear(2, 2), 0, 8)


def test_reference_is_the_base_with_adapters_off():
    model = lora_model()
    ref = frozen_copy(model)
    assert isinstance(ref, AdaptersOff)
    assert not list(ref.named_parameters())  # no second copy of the weights
    train_adapters(model)  # the policy moves on; the reference must not
    with torch.no_grad():
        got = forward_tokens(ref, IDS, MASK).logprobs
        with model.disable_adapter():
            want = forward_tokens(model, IDS, MASK).logprobs
        policy = forward_tokens(model, IDS, MASK).logprobs
    torch.testing.assert_close(got, want, atol=0, rtol=0)
    assert (policy - want).abs().max() > 1e-4
    # trained adapters (a warm start ran): the reference is a frozen merged copy
    ref2 = frozen_copy(model)
    assert not isinstance(ref2, AdaptersOff) and not is_peft(ref2)
    with torch.no_grad():
        torch.testing.assert_close(
            forward_tokens(ref2, IDS, MASK).logprobs, policy, atol=1e-5, rtol=0
        )


def test_merged_state_dict_equals_a_merged_copy():
    model = lora_model()
    train_adapters(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    want = copy.deepcopy(model).merge_and_unload().state_dict()
    got = merged_state_dict(model)
    assert set(got) == set(want)
    for key, value in want.items():
        torch.testing.assert_close(got[key], value, atol=1e-7, rtol=1e-6)
    base = model.get_base_model().state_dict()
    q = "model.layers.0.self_attn.q_proj"
    assert not torch.equal(got[f"{q}.weight"], base[f"{q}.base_layer.weight"])  # merged in
    after = model.state_dict()  # the live model is untouched
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_saved_merged_model_loads_as_a_plain_model(tmp_path):
    from transformers import AutoModelForCausalLM

    model = lora_model()
    train_adapters(model)
    save_merged(model, tmp_path / "merged")
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    with torch.no_grad():
        torch.testing.assert_close(plain(IDS).logits, model(IDS).logits, atol=1e-5, rtol=1e-5)


class _CopyPolicy:
    """A sampler with its own weights (as vLLM): records what it is sent."""

    def __init__(self) -> None:
        self.sent: list[dict] = []

    def update_weights(self, state_dict: dict) -> None:
        self.sent.append(state_dict)


def test_sync_weights_sends_merged_weights_to_a_copy_and_nothing_to_the_model_itself():
    model = lora_model()
    train_adapters(model)
    copy_policy = _CopyPolicy()
    sync_weights(copy_policy, model)
    (sent,) = copy_policy.sent
    want = merged_state_dict(model)
    assert set(sent) == set(want) and all("lora_" not in k and "base_layer" not in k for k in sent)

    class _Same:
        def __init__(self, m) -> None:
            self.model = m

        def update_weights(self, state_dict: dict) -> None:  # pragma: no cover - must not run
            raise AssertionError("the policy samples from the trained model itself")

    sync_weights(_Same(model), model)


def test_a_lora_run_trains_only_the_adapters(tmp_path, monkeypatch):
    """One GRPO step with LoRA, micro-batches and the sampler correction on: the base
    weights stay as loaded, the adapters move."""
    import json

    import agents.grpo
    import search_env  # noqa: F401  (registers the env ids)
    from agents.config import TINY_WORLD, apply_overrides, tiny_cpu
    from agents.grpo import train_grpo

    monkeypatch.setattr(
        agents.grpo,
        "grpo_advantages",
        lambda rewards, group_ids, **_: torch.linspace(-1.0, 1.0, len(rewards)),
    )
    cfg = apply_overrides(
        tiny_cpu(),
        {
            "steps": 1,
            "eval_every": 0,
            "checkpoint_every": 1,
            "out_dir": str(tmp_path / "run"),
            "threads": 1,
            "model.hidden_size": 32,
            "model.intermediate": 64,
            "model.layers": 1,
            "model.lora_rank": 4,
            **TINY_WORLD,
            "rollout.env_kwargs.max_response_length": 16,
            "rollout.num_envs": 8,
            "rollout.group_size": 4,
            "rollout.eval_questions": 4,
            "rollout.eval_num_envs": 4,
            "rollout.tis_cap": 2.0,
            "grpo.minibatch_size": 4,
            "grpo.lr": 1e-2,
            "grpo.micro_batch_tokens": 64,
            "sft.steps": 0,
        },
    )
    train_grpo(cfg)
    state = torch.load(
        tmp_path / "run" / "checkpoints" / "step_00000001" / "state.pt", weights_only=False
    )["model"]
    from agents.model import load_model as load

    start, _ = load(cfg.model, make_env_tokenizer(cfg))
    before = start.state_dict()
    assert set(state) == set(before)
    moved = {k for k in state if not torch.equal(state[k], before[k])}
    assert moved and all("lora_" in k for k in moved)  # the base weights as loaded
    assert any("lora_B" in k for k in moved)  # B starts at 0: trained
    record = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()][-1]
    assert record["micro_batches"] > 1 and record["logp_diff_max"] < 1e-4


def make_env_tokenizer(cfg):
    from agents.rollout import make_env

    return make_env(cfg.rollout, "train", 1).envs[0].tokenizer
