"""The text-level wrapper."""

import pytest

from search_env.env import SearchQAEnv
from search_env.text import SearchQATextEnv
from tests.conftest import PASSAGES, QUESTIONS, MemoryRetriever


def test_text_episode(tokenizer):
    env = SearchQATextEnv(
        SearchQAEnv(QUESTIONS, MemoryRetriever(PASSAGES), tokenizer, action_mode="chunk")
    )
    prompt, info = env.reset(options={"index": 0})
    assert prompt.endswith("Question: What is the capital of Norway?\n")
    obs, r, term, trunc, info = env.step(
        "<think> hm </think>\n<search> capital of Norway </search>"
    )
    assert obs.startswith('\n\n<information>Doc 1(Title: "Oslo")') and obs.endswith(
        "</information>\n\n"
    )
    obs, r, term, trunc, info = env.step("<answer> Oslo </answer>")
    assert term and r == 1.0 and obs == ""
    assert info["context"].startswith(prompt) and info["context"].endswith(
        "<answer> Oslo </answer>"
    )
    assert env.observation_space.contains(prompt)


def test_text_env_rejects_token_mode_and_bad_actions(tokenizer):
    token_env = SearchQAEnv(QUESTIONS, MemoryRetriever(PASSAGES), tokenizer)
    with pytest.raises(ValueError, match="chunk"):
        SearchQATextEnv(token_env)
    env = SearchQATextEnv(
        SearchQAEnv(QUESTIONS, MemoryRetriever(PASSAGES), tokenizer, action_mode="chunk")
    )
    env.reset(options={"index": 0})
    with pytest.raises(TypeError):
        env.step([1, 2])


def test_empty_turn_is_an_invalid_turn(tokenizer):
    env = SearchQATextEnv(
        SearchQAEnv(QUESTIONS, MemoryRetriever(PASSAGES), tokenizer, action_mode="chunk")
    )
    env.reset(options={"index": 0})
    obs, r, term, trunc, info = env.step("")
    assert info["end_reason"] == "eos" and info["action"] == "invalid"
    assert "My previous action is invalid" in obs
