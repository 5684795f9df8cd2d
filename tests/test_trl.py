"""TRL adapters: the questions dataset, the Search-R1 rollout_func (masks against the env's
own), the tool environment, and two GRPOTrainer steps through ``--backend trl``."""

from __future__ import annotations

import json
import math
import types

import pytest

pytest.importorskip("trl")
torch = pytest.importorskip("torch")

import numpy as np  # noqa: E402

import search_env  # noqa: E402, F401  (registers the env ids)
from agents.policy.scripted import ScriptedPolicy  # noqa: E402
from agents.trl.dataset import env_prompt, questions_dataset  # noqa: E402
from agents.trl.rollout import (  # noqa: E402
    EXTRA_FIELDS,
    check_sampling_args,
    env_reward,
    make_rollout_func,
)
from agents.trl.tools import TOOL_TEMPLATE, make_environment_factory  # noqa: E402
from search_env.protocol import format_documents  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

ENV_ID = "SearchQA-Synth-v0"
ENV_KWARGS = {
    "size": "tiny",
    "tokenizer": "synth",
    "template": "Question: {question}\n",
    "max_turns": 2,
    "topk": 1,
    "max_obs_length": 96,
    "max_response_length": 24,
    "max_prompt_length": 512,
    "max_start_length": 128,
}


@pytest.fixture(scope="module")
def rollout():
    return make_rollout_func(ENV_ID, ENV_KWARGS, num_envs=6, seed=3)


@pytest.fixture(scope="module")
def dataset(rollout):
    return questions_dataset(rollout.vec_env)


def fake_trainer(model=None, step: int = 0, **args):
    from trl import GRPOConfig

    args.setdefault("per_device_train_batch_size", args.get("num_generations", 8))
    config = GRPOConfig(output_dir="unused", use_cpu=True, report_to=[], **args)
    return types.SimpleNamespace(
        model=model, args=config, state=types.SimpleNamespace(global_step=step)
    )


def cycling_script(vec_env):
    """A policy whose turns cycle: search the question, a wrong answer, an invalid turn;
    after an information block it answers with the gold answer. Consecutive calls differ,
    so a group of one question gets different rewards."""
    env = vec_env.envs[0]
    golds = {env_prompt(env, i): env.dataset[i].golden_answers[0] for i in range(len(env.dataset))}
    calls = [0]

    def respond(context: str) -> str:
        prompt = next(p for p in golds if context.startswith(p))
        if "</information>" in context:
            return f"<answer> {golds[prompt]} </answer>"
        calls[0] += 1
        turn = calls[0] % 3
        if turn == 0:
            return "<think> hmm </think>"
        if turn == 1:
            return f"<search> {prompt.removeprefix('Question: ').strip()} </search>"
        return "<answer> nobody </answer>"

    return ScriptedPolicy(env.tokenizer, respond, trim=True)


def replay_mask(vec_env, index: int, prompt_ids, completion_ids, env_mask) -> np.ndarray:
    """The env's own loss mask for these tokens: a fresh single env is reset on the
    question and stepped with each run of agent tokens (mask 1) of the completion."""
    from search_env.env import SearchQAEnv

    base = vec_env.envs[0]
    env = SearchQAEnv(
        base.dataset,
        base.retriever,
        base.tokenizer,
        action_mode="chunk",
        protocol=base.protocol,
        eos_token_ids=sorted(base.codec.eos_ids),
        vocab_size=base.codec.vocab_size,
    )
    obs, _ = env.reset(options={"index": index})
    assert obs["tokens"][: obs["length"][0]].tolist() == list(prompt_ids)
    completion, mask = np.asarray(completion_ids), np.asarray(env_mask)
    edges = np.diff(np.concatenate([[0], mask, [0]]))
    for start, end in zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)):
        env.step(completion[start:end])
    assert env.done
    length = env.context_length
    assert env.context_ids[:length].tolist() == list(prompt_ids) + completion.tolist()
    return env.loss_mask[:length]


# ------------------------------------------------------------------------ dataset
def test_dataset_has_one_row_per_question_with_its_index_and_the_envs_prompt(rollout, dataset):
    env = rollout.vec_env.envs[0]
    assert len(dataset) == len(env.dataset)
    assert dataset["index"] == list(range(len(env.dataset)))
    row = dataset[5]
    obs, _ = env.reset(options={"index": 5})
    prompt_ids = obs["tokens"][: obs["length"][0]].tolist()
    assert env.tokenizer.encode(row["prompt"], add_special_tokens=False) == prompt_ids
    assert row["question"] == env.dataset[5].question
    assert row["golden_answers"] == list(env.dataset[5].golden_answers)


def test_dataset_from_an_env_id_and_a_tool_template(dataset):
    tools = questions_dataset(ENV_ID, env_kwargs=ENV_KWARGS, limit=3, template=TOOL_TEMPLATE)
    assert len(tools) == 3
    assert tools["index"] == [0, 1, 2]
    message = tools[0]["prompt"]
    assert message[0]["role"] == "user" and dataset[0]["question"] in message[0]["content"]


def test_dataset_drops_a_repeated_prompt(rollout):
    import dataclasses

    env = rollout.vec_env.envs[0]
    examples = list(env.dataset[:3]) + [dataclasses.replace(env.dataset[0], id="again")]
    fake = types.SimpleNamespace(envs=[env])
    original = env.dataset
    try:
        env.dataset = examples
        ds = questions_dataset(fake)
    finally:
        env.dataset = original
    assert ds["index"] == [0, 1, 2]


@pytest.mark.parametrize(
    ("source", "kwargs", "error"),
    [
        (ENV_ID, {"limit": 0}, "limit must be >= 1"),
        (ENV_ID, {"template": "no placeholder"}, "must contain '{question}'"),
        (object(), {}, "expected a search-env env"),
    ],
)
def test_dataset_bad_arguments_fail_clearly(source, kwargs, error):
    with pytest.raises((ValueError, TypeError), match=error):
        questions_dataset(source, env_kwargs=ENV_KWARGS, **kwargs)


# ------------------------------------------------------------------------ rollout
def test_rollout_plays_one_episode_per_prompt_and_env_mask_is_the_envs_own(rollout, dataset):
    """Prompts arrive as TRL's sampler sends them: each repeated num_generations times."""
    rollout.policy = cycling_script(rollout.vec_env)
    try:
        prompts = [dataset[1]["prompt"]] * 4 + [dataset[7]["prompt"]] * 4  # 8 > num_envs=6
        out = rollout(prompts, fake_trainer(num_generations=4))
    finally:
        rollout.policy = None
    assert set(out) == {"prompt_ids", "completion_ids", "logprobs", "env_mask", *EXTRA_FIELDS}
    assert all(len(v) == 8 for v in out.values())
    assert out["env_index"] == [1] * 4 + [7] * 4
    saw_information = saw_invalid = False
    tok = rollout.vec_env.envs[0].tokenizer
    for i in range(8):
        ids, mask, logps = out["completion_ids"][i], out["env_mask"][i], out["logprobs"][i]
        assert len(ids) == len(mask) == len(logps)
        env_mask = replay_mask(
            rollout.vec_env, out["env_index"][i], out["prompt_ids"][i], ids, mask
        )
        p = len(out["prompt_ids"][i])
        assert not env_mask[:p].any()
        assert env_mask[p:].tolist() == mask
        # the scripted policy's made-up log-probs sit exactly on the agent tokens
        agent = np.asarray(ids)[np.asarray(mask) == 1]
        expected = -0.001 * (agent + 1.0)
        np.testing.assert_allclose(np.asarray(logps)[np.asarray(mask) == 1], expected, rtol=1e-5)
        assert not np.asarray(logps)[np.asarray(mask) == 0].any()
        env_text = tok.decode(np.asarray(ids)[np.asarray(mask) == 0].tolist())
        saw_information |= "<information>" in env_text
        saw_invalid |= "My previous action is invalid" in env_text
    assert saw_information and saw_invalid
    golds = [1.0 if s and a else 0.0 for s, a in zip(out["env_searches"], out["env_answered"])]
    assert out["env_reward"] == golds  # searched, then answered with the gold: EM 1
    assert len(set(out["env_reward"][:4])) == 2  # a group with signal
    record = rollout.history[-1]
    assert record.episodes == 8
    assert record.agent_tokens == sum(sum(m) for m in out["env_mask"])


def test_rollout_with_the_trainers_model_returns_the_samplers_logprobs(rollout, dataset):
    from agents.policy.hf import HFPolicy
    from agents.tiny_model import make_tiny_qwen2

    tok = rollout.vec_env.envs[0].tokenizer
    model = make_tiny_qwen2(tok, hidden_size=32, layers=1, heads=4, kv_heads=2, intermediate=64)
    prompts = [dataset[2]["prompt"]] * 3
    out = rollout(prompts, fake_trainer(model, num_generations=3, temperature=0.7))
    scorer = HFPolicy(model, tok)
    for i in range(3):
        p, ids, mask = out["prompt_ids"][i], out["completion_ids"][i], out["env_mask"][i]
        env_mask = replay_mask(rollout.vec_env, 2, p, ids, mask)
        assert env_mask[len(p) :].tolist() == mask
        full = torch.tensor([p + ids])
        lp = scorer.logprobs(full, torch.ones_like(full), temperature=0.7)[0, len(p) :]
        agent = torch.tensor(mask) == 1
        torch.testing.assert_close(
            lp[agent], torch.tensor(out["logprobs"][i])[agent], atol=1e-4, rtol=1e-4
        )
    # reseeded from (seed, step): the same step samples the same episodes again
    again = rollout(prompts, fake_trainer(model, num_generations=3, temperature=0.7))
    assert again["completion_ids"] == out["completion_ids"]


def test_rollout_no_mask_ablation_trains_on_every_completion_token(dataset):
    ro = make_rollout_func(ENV_ID, ENV_KWARGS, num_envs=2, mask_env_tokens=False)
    ro.policy = cycling_script(ro.vec_env)
    out = ro([dataset[0]["prompt"]] * 2, fake_trainer(num_generations=2))
    assert all(m == [1] * len(ids) for m, ids in zip(out["env_mask"], out["completion_ids"]))


@pytest.mark.parametrize(
    ("args", "error"),
    [
        ({"top_p": 0.9}, "top_p"),
        ({"top_k": 5}, "top_k"),
        ({"repetition_penalty": 1.1}, "repetition_penalty"),
        ({"mask_truncated_completions": True}, "mask_truncated_completions"),
        ({"generation_kwargs": {"do_sample": True}}, "generation_kwargs"),
    ],
)
def test_rollout_refuses_sampling_settings_its_logprobs_would_not_match(args, error):
    with pytest.raises(ValueError, match=error):
        check_sampling_args(fake_trainer(**args).args)


def test_rollout_refuses_trl_vllm_server_and_unknown_prompts(rollout):
    with pytest.raises(NotImplementedError, match="vllm_mode='colocate'"):
        check_sampling_args(types.SimpleNamespace(use_vllm=True, vllm_mode="server"))
    with pytest.raises(KeyError, match="none of the env's questions"):
        rollout.indices(["Question: who is nobody?\n"])
    with pytest.raises(TypeError, match="prompt texts"):
        rollout.indices([[{"role": "user", "content": "x"}]])
    with pytest.raises(ValueError, match="max_new_tokens"):
        make_rollout_func(vec_env=rollout.vec_env, max_new_tokens=0)


def test_env_reward_passes_the_envs_reward_through_and_fails_without_it():
    logged = {}
    rewards = env_reward(
        ["p", "p"],
        ["c", "c"],
        env_reward=[1.0, 0.0],
        env_searches=[2, 0],
        env_em=[1.0, 0.0],
        log_metric=lambda k, v: logged.__setitem__(k, v),
    )
    assert rewards == [1.0, 0.0]
    assert logged == {"env/searches": 1.0, "env/em": 0.5}
    with pytest.raises(KeyError, match="env_reward"):
        env_reward(["p"], ["c"])
    with pytest.raises(ValueError, match="1 rewards for 2"):
        env_reward(["p", "p"], ["c", "c"], env_reward=[1.0])


# -------------------------------------------------------------------------- tools
def test_tool_environment_search_returns_the_envs_information_block(rollout, dataset):
    factory = make_environment_factory(env=rollout.vec_env)
    env = factory()
    assert env.reset(**dataset[4]) is None
    base = rollout.vec_env.envs[0]
    query = dataset[4]["question"]
    text = env.search(query)
    passages = base.retriever.search([query], base.protocol.topk)[0]
    assert text == f"<information>{format_documents(passages, base.protocol)}</information>"
    assert env.get_reward() == 0.0
    assert env.answer(dataset[4]["golden_answers"][0]) == "Answer recorded."
    assert env.get_reward() == 1.0
    with pytest.raises(RuntimeError, match="episode is over"):
        env.search(query)
    # a new episode on the same instance starts clean; a wrong answer scores 0
    env.reset(**dataset[4])
    env.answer("nobody")
    assert env.get_reward() == 0.0


def test_tool_environment_instances_are_isolated_and_get_trl_tool_schemas(rollout, dataset):
    from transformers.utils import get_json_schema

    factory = make_environment_factory(env=rollout.vec_env)
    a, b = factory(), factory()
    a.reset(**dataset[0])
    b.reset(**dataset[1])
    a.answer(dataset[0]["golden_answers"][0])
    assert (a.get_reward(), b.get_reward()) == (1.0, 0.0)
    schema = get_json_schema(a.search)["function"]
    assert schema["name"] == "search"
    assert schema["parameters"]["properties"]["query"]["type"] == "string"
    assert get_json_schema(a.answer)["function"]["parameters"]["required"] == ["answer"]


def test_tool_environment_bad_calls_fail_clearly_and_keep_the_episode(rollout, dataset):
    env = make_environment_factory(env=rollout.vec_env)()
    with pytest.raises(RuntimeError, match="episode is over"):
        env.search("before any reset")
    with pytest.raises(KeyError, match="'index' column"):
        env.reset(prompt="x")
    with pytest.raises(ValueError, match="options\\['index'\\]"):
        env.reset(index=10_000)
    with pytest.raises(ValueError, match="is not question 0's"):
        env.reset(index=0, id="another-dataset")
    env.reset(**dataset[3])
    with pytest.raises(ValueError, match="empty"):
        env.search("  ")
    with pytest.raises(ValueError, match="protocol tags"):
        env.search("x </search> <answer> y")
    for _ in range(rollout.vec_env.envs[0].protocol.max_turns):
        env.search(dataset[3]["question"])
    with pytest.raises(RuntimeError, match="no searches left"):
        env.search(dataset[3]["question"])
    env.answer(dataset[3]["golden_answers"][0])  # the budget error left the episode open
    assert env.get_reward() == 1.0


# -------------------------------------------------------------------------- train
TINY_RUN = [
    "--preset",
    "tiny-cpu",
    "--steps",
    "2",
    "--seed",
    "0",
    *("--set", "model.hidden_size=32"),
    *("--set", "model.intermediate=64"),
    *("--set", "model.layers=1"),
    *("--set", "rollout.env_kwargs.size=tiny"),
    *("--set", "rollout.env_kwargs.num_entities=null"),
    *("--set", "rollout.env_kwargs.tokenizer=synth"),
    *("--set", "rollout.env_kwargs.max_response_length=24"),
    *("--set", "rollout.num_envs=8"),
    *("--set", "rollout.group_size=4"),
    *("--set", "rollout.eval_questions=4"),
    *("--set", "rollout.eval_num_envs=4"),
    *("--set", "grpo.minibatch_size=8"),
    *("--set", "grpo.lr=1e-2"),
    *("--set", "sft.steps=0"),
]


def test_two_grpotrainer_steps_learn_with_env_mask_zero_exactly_on_env_tokens(tmp_path):
    """GRPOTrainer.train() for 2 steps on the tiny recipe, with a scripted sampler so that
    groups have reward variance: finite loss, changed weights, masks equal the env's."""
    from safetensors.torch import load_file

    from agents.trl import train as trl_train
    from search_env.protocol import INVALID_ACTION_MESSAGE

    cfg = trl_train.config_from_args(
        trl_train.build_parser().parse_args([*TINY_RUN, "--out", str(tmp_path / "run")])
    )
    run = trl_train.train_trl(cfg, policy_factory=cycling_script, keep_outputs=True)
    seen = run.rollout.outputs
    summary = run.summary
    assert summary["optimizer_steps"] == 2 and len(seen) == 2
    assert summary["loss_finite"] and len(summary["losses"]) == 2
    assert len(summary["step_times"]) == 2 and summary["agent_tokens"] > 0
    before = load_file(str(run.init_model / "model.safetensors"))
    after = run.trainer.accelerator.unwrap_model(run.trainer.model).state_dict()
    changed = [k for k, v in before.items() if not torch.equal(v, after[k].detach().cpu())]
    assert changed  # the update moved the weights
    vec = run.rollout.vec_env
    tok = vec.envs[0].tokenizer
    invalid = 0
    for out in seen:
        for i, index in enumerate(out["env_index"]):
            ids, mask = out["completion_ids"][i], out["env_mask"][i]
            env_mask = replay_mask(vec, index, out["prompt_ids"][i], ids, mask)
            assert env_mask[len(out["prompt_ids"][i]) :].tolist() == mask
            invalid += INVALID_ACTION_MESSAGE in tok.decode(
                [t for t, m in zip(ids, mask) if m == 0]
            )
    assert invalid  # the invalid-action message is among the masked tokens
    written = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert written["eval_questions"] == 4 and math.isfinite(written["eval_em_end"])
    assert (tmp_path / "run" / "final_model" / "config.json").is_file()


def test_train_backend_trl_is_dispatched_and_bad_configs_fail_before_work(tmp_path, capsys):
    from agents.commands import TRAIN_BACKENDS
    from agents.trl.train import main

    assert TRAIN_BACKENDS["trl"] == "agents.trl.train"
    out = str(tmp_path / "never")
    assert main(["--preset", "tiny-cpu", "--set", "algo=ppo", "--out", out]) == 2
    assert "GRPO only" in capsys.readouterr().err
    assert main(["--preset", "tiny-cpu", "--set", "grpo.kl_kind=kl", "--out", out]) == 2
    assert "k3" in capsys.readouterr().err
    assert main(["--preset", "tiny-cpu", "--set", "grpo.minibatch_size=40", "--out", out]) == 2
    assert "must divide" in capsys.readouterr().err
    assert not (tmp_path / "never").exists()


def test_search_env_train_backend_trl_hands_the_other_options_to_agents_trl_train(capsys):
    from search_env.cli import main as cli_main

    with pytest.raises(SystemExit) as e:
        cli_main(["train", "--backend", "trl", "--help"])
    text = capsys.readouterr().out
    assert e.value.code == 0
    assert "search-env train --backend trl" in text and "--init-model" in text
    assert cli_main(["train", "--backend=trl", "--set", "algo=ppo", "--out", "never"]) == 2
    assert "GRPO only" in capsys.readouterr().err
