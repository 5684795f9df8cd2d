"""Reward components in ``info``, the typed reward config and a replaceable ``reward_fn``.

Expected values are worked out by hand from the reference rules (Search-R1 v0.3
qa_em_format.py, AutoRefine qa_em.py) for scripted episodes.
"""

from __future__ import annotations

import numpy as np
import pytest

from search_env.env import SearchQAEnv
from search_env.protocol import PRESETS, ProtocolConfig
from search_env.reward_config import (
    COMPONENTS,
    EpisodeOutcome,
    RewardConfig,
    RewardError,
    autorefine_format_valid,
    search_r1_format_valid,
)
from search_env.rewards import make_reward, substring_exact_match
from search_env.vector import SearchQAVectorEnv
from tests.conftest import PASSAGES, QUESTIONS, MemoryRetriever
from tests.faults import env_state, plain, vec_state

SEARCH = "<think> a </think><search> capital of Norway </search>"
GOOD_RIGHT = [SEARCH, "<think> b </think><answer> Oslo </answer>"]
GOOD_WRONG = [SEARCH, "<think> b </think><answer> Bergen </answer>"]
BAD_RIGHT = [SEARCH, "<answer> Oslo </answer>"]  # no <think> before the answer
BAD_WRONG = [SEARCH, "<answer> Bergen </answer>"]
INVALID_THEN_RIGHT = ["no tags", "<think> b </think><answer> Oslo </answer>"]


def run(env, tokenizer, turns, index=0):
    env.reset(options={"index": index})
    for text in turns:
        out = env.step(tokenizer.encode(text))
    return out


@pytest.fixture
def chunk_env(make_env):
    def make(**kw):
        kw.setdefault("use_chat_template", False)
        return make_env(action_mode="chunk", **kw)

    return make


@pytest.mark.parametrize(
    "turns, retrieval_score, expected, valid",
    [
        (GOOD_RIGHT, 0.0, 1.0, 1.0),
        (GOOD_WRONG, 0.0, 0.2, 1.0),
        (GOOD_WRONG, 0.1, 0.3, 1.0),  # + retrieval_score: "Oslo" is in the documents
        (BAD_RIGHT, 0.0, 0.8, 0.0),  # 1 - structure_format_score
        (BAD_WRONG, 0.1, 0.1, 0.0),  # final_format_score; retrieval needs a valid format
        (INVALID_THEN_RIGHT, 0.0, 0.8, 0.0),  # the invalid message breaks the structure
    ],
)
def test_search_r1_v03_format_reward(chunk_env, tokenizer, turns, retrieval_score, expected, valid):
    env = chunk_env(reward=RewardConfig(kind="search_r1_format", retrieval_score=retrieval_score))
    obs, reward, term, trunc, info = run(env, tokenizer, turns)
    assert term and reward == pytest.approx(expected)
    assert info["reward_components"]["format_valid"] == valid


def test_no_answer_is_zero_under_the_format_reward(chunk_env, tokenizer):
    env = chunk_env(reward="search_r1_format", max_turns=0)
    obs, reward, term, trunc, info = run(env, tokenizer, ["<think> x </think> nothing"])
    assert trunc and reward == 0.0 and info["reward_components"]["answered"] == 0.0


def test_components_are_reported_by_default_and_the_reward_stays_em(chunk_env, tokenizer):
    env = chunk_env()
    assert env.episode_reward_fn is None and env.reward_config == RewardConfig()
    obs, reward, term, trunc, info = run(env, tokenizer, GOOD_WRONG)
    comps = info["reward_components"]
    assert set(comps) == set(COMPONENTS)
    assert reward == 0.0 and comps["em"] == 0.0
    assert comps["retrieval_hit"] == comps["answer_in_documents"] == 1.0
    assert comps["searches"] == 1.0 and comps["invalid_turns"] == 0.0 and comps["answered"] == 1.0


def test_every_answer_metric_is_a_reward_kind(chunk_env, tokenizer):
    expected = {"em": 0.0, "f1": 2 / 3, "cover_em": 1.0, "substring_em": 1.0}
    for kind, value in expected.items():
        env = chunk_env(reward=kind)
        *_, reward, term, trunc, info = run(
            env, tokenizer, [SEARCH, "<answer> Oslo city </answer>"]
        )
        assert reward == pytest.approx(value), kind
        assert info["reward_components"][kind] == pytest.approx(value)


def test_invalid_action_penalty(chunk_env, tokenizer):
    env = chunk_env(reward=RewardConfig(kind="em", invalid_penalty=0.25))
    *_, reward, term, trunc, info = run(env, tokenizer, INVALID_THEN_RIGHT)
    assert reward == pytest.approx(0.75) and info["reward_components"]["invalid_turns"] == 1.0


def test_weighted_components(chunk_env, tokenizer):
    config = RewardConfig(kind="weighted", weights={"em": 1.0, "retrieval_hit": 0.5})
    env = chunk_env(reward=config)
    assert run(env, tokenizer, GOOD_WRONG)[1] == pytest.approx(0.5)
    assert run(env, tokenizer, GOOD_RIGHT)[1] == pytest.approx(1.5)


def test_autorefine_reward_and_refine_hit(make_env, tokenizer):
    env = make_env(action_mode="chunk", protocol="autorefine", reward="autorefine")
    refine_wrong = (
        "<refine> Oslo is the capital </refine><think> b </think><answer> Bergen </answer>"
    )
    *_, reward, term, trunc, info = run(env, tokenizer, [SEARCH, refine_wrong])
    comps = info["reward_components"]
    assert comps["refine_hit"] == 1.0 and comps["autorefine_format"] == 1.0
    assert comps["format_valid"] == 1.0  # refine after documents is in the structure
    assert reward == pytest.approx(0.1)  # refine_score; format_score is 0 in AutoRefine
    right = "<refine> x </refine><think> b </think><answer> Oslo </answer>"
    *_, reward, term, trunc, info = run(env, tokenizer, [SEARCH, right])
    assert reward == 1.0 and info["reward_components"]["refine_hit"] == 0.0


def test_answer_in_documents_yes_no_rule(make_env, tokenizer):
    yes_no = [*QUESTIONS, QUESTIONS[0].__class__("yn", "Is Oslo in Norway?", ("yes",))]
    env = SearchQAEnv(yes_no, MemoryRetriever(PASSAGES), tokenizer, action_mode="chunk")
    *_, info = run(env, tokenizer, GOOD_WRONG, index=3)
    assert info["reward_components"]["answer_in_documents"] == 0.5  # AutoRefine's rule
    *_, info = run(env, tokenizer, ["<think> b </think><answer> yes </answer>"], index=3)
    assert info["reward_components"]["answer_in_documents"] == 0.0  # nothing retrieved


@pytest.mark.parametrize(
    "text, valid",
    [
        ("<think> a </think><answer> x </answer>", True),
        ("\n<think> a </think>\n\n<answer> x </answer>", True),
        (
            "<think>a</think><search>q</search>\n<information>d</information>"
            "<think>b</think><answer>x</answer>",
            True,
        ),
        ("<think>a</think><search>q</search><information>d</information><answer>x</answer>", False),
        ("hello <think> a </think><answer> x </answer>", False),
        ("<think> a </think><answer> x </answer> trailing", False),
        ("<think> a </think><search>q</search>", False),
        ("<think> a <think> b </think></think><answer> x </answer>", False),
        ("", False),
    ],
)
def test_search_r1_structure_check(text, valid):
    assert search_r1_format_valid(text, ProtocolConfig()) is valid


def test_structure_check_follows_the_preset_tags():
    r1 = PRESETS["research"]
    text = "<think>a</think><search>q</search> <result>d</result><think>b</think><answer>x</answer>"
    assert search_r1_format_valid(text, r1)
    assert not search_r1_format_valid(text, ProtocolConfig())
    assert autorefine_format_valid("<think></think><search></search><answer></answer>", r1)
    assert not autorefine_format_valid(
        "<think></think><search></search><answer></answer>", PRESETS["autorefine"]
    )


def test_substring_em_is_two_way():
    assert substring_exact_match("Obama", ["Barack Obama"]) == 1.0
    assert substring_exact_match("Barack Obama jr", ["Barack Obama"]) == 1.0
    assert substring_exact_match("", ["x"]) == 0.0 and substring_exact_match(None, ["x"]) == 0.0
    assert make_reward("substring_em")("Obama", ["Barack Obama"]) == 1.0


def test_a_typed_reward_fn_replaces_the_reward(chunk_env, tokenizer):
    seen: list[EpisodeOutcome] = []

    def reward(outcome: EpisodeOutcome) -> float:
        seen.append(outcome)
        return 2.0 * outcome.components["retrieval_hit"] - 0.5 * outcome.invalid_turns

    env = chunk_env(reward_fn=reward)
    *_, r, term, trunc, info = run(env, tokenizer, GOOD_WRONG)
    assert r == 2.0 and len(seen) == 1
    outcome = seen[0]
    assert outcome.answer == "Bergen" and outcome.golden_answers == ("Oslo",)
    assert outcome.documents and "Oslo is the capital of Norway." in outcome.documents[0]
    assert outcome.response.startswith("<think> a </think><search>")
    assert "<information>" in outcome.response and outcome.terminated


def test_a_reward_fn_that_raises_fails_loudly_and_changes_nothing(chunk_env, tokenizer):
    calls = {"n": 0}

    def broken(outcome: EpisodeOutcome) -> float:
        calls["n"] += 1
        raise KeyError("gold")

    env = chunk_env(reward_fn=broken)
    env.reset(options={"index": 0})
    env.step(tokenizer.encode(SEARCH))
    before = env_state(env)
    last = tokenizer.encode(GOOD_RIGHT[1])
    with pytest.raises(RewardError, match="raised KeyError"):
        env.step(last)
    assert env_state(env) == before and calls["n"] == 1
    env.episode_reward_fn = lambda outcome: outcome.components["em"]  # fixed: retry
    obs, reward, term, trunc, info = env.step(last)
    assert term and reward == 1.0


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_non_finite_reward_fails_loudly(chunk_env, tokenizer, value):
    env = chunk_env(reward_fn=lambda outcome: value)
    with pytest.raises(RewardError, match="returned"):
        run(env, tokenizer, GOOD_RIGHT)


def test_vector_step_with_a_raising_reward_is_undone(tokenizer):
    retriever = MemoryRetriever(PASSAGES)

    def broken(outcome: EpisodeOutcome) -> float:
        raise ValueError("bad reward")

    envs = [
        SearchQAEnv(QUESTIONS, retriever, tokenizer, action_mode="chunk", reward_fn=broken)
        for _ in range(2)
    ]
    vec = SearchQAVectorEnv(2, envs=envs, autoreset_mode="disabled")
    vec.reset(options={"index": np.array([0, 2])})
    search = tokenizer.encode(SEARCH)
    answer = tokenizer.encode("<answer> Oslo </answer>")
    before = vec_state(vec)
    with pytest.raises(RewardError, match="bad reward"):
        vec.step([answer, search])  # sub-env 0 ends; sub-env 1 searched: both undone
    assert vec_state(vec) == before and retriever.calls == [["capital of Norway"]]
    for env in vec.envs:
        env.episode_reward_fn = lambda outcome: outcome.components["em"]
    out = plain(vec.step([answer, search]))
    assert out[1] == [1.0, 0.0] and out[4]["reward_components"]["em"] == [1.0, 0.0]


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"reward": "nope"}, ValueError, "unknown reward kind"),
        ({"reward": 3}, TypeError, "RewardConfig"),
        ({"reward": "em", "reward_metric": "f1"}, TypeError, "not both"),
        ({"reward": "em", "reward_fn": lambda o: 0.0}, TypeError, "not both"),
        ({"reward_fn": 3}, TypeError, "callable"),
        ({"reward_metric": "bleu"}, ValueError, "unknown reward metric"),
    ],
)
def test_bad_reward_arguments(make_env, kwargs, error, match):
    with pytest.raises(error, match=match):
        make_env(**kwargs)


@pytest.mark.parametrize(
    "fields, match",
    [
        ({"kind": "weighted"}, "needs weights"),
        ({"weights": {"emm": 1.0}}, "unknown reward components"),
        ({"format_score": 2.0}, "format_score"),
        ({"invalid_penalty": float("nan")}, "invalid_penalty"),
        ({"autorefine_metric": "x"}, "autorefine_metric"),
    ],
)
def test_bad_reward_configs(fields, match):
    with pytest.raises(ValueError, match=match):
        RewardConfig(**fields)


def test_a_reward_config_as_a_dict_is_the_same_reward(chunk_env, tokenizer):
    # what a saved JSON training config holds for rollout.env_kwargs.reward
    as_dict = {"kind": "weighted", "weights": {"em": 1.0, "retrieval_hit": 0.5}}
    env = chunk_env(reward=as_dict)
    assert env.reward_config == RewardConfig(kind="weighted", weights=as_dict["weights"])
    obs, reward, term, trunc, info = run(env, tokenizer, GOOD_WRONG)
    comps = info["reward_components"]
    assert reward == pytest.approx(comps["em"] + 0.5 * comps["retrieval_hit"])
    with pytest.raises(TypeError, match=r"unknown reward config key\(s\) \['wieghts'\]"):
        chunk_env(reward={"kind": "weighted", "wieghts": {}})
