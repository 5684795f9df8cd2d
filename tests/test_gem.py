"""The text env in GEM's registry: scripted episodes through ``gem.make`` / ``gem.make_vec``.

Every test but the first needs the [gem] extra (``gem-llm``) and skips without it.
"""

from __future__ import annotations

import importlib
import sys

import pytest

from search_env.baselines import answer_turn, search_turn
from search_env.env import EpisodeOverError
from search_env.integrations import make_text_env
from search_env.registration import ENV_IDS
from search_env.synth.oracle import OracleAgent

ORACLE_INDICES = range(7)  # bridge, single-hop and comparison questions of the test split


def test_without_gem_the_import_error_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "gem", None)  # None in sys.modules: "No module named"
    monkeypatch.delitem(sys.modules, "search_env.integrations.gem", raising=False)
    with pytest.raises(ImportError, match=r"pip install 'search-env\[gem\]'") as caught:
        importlib.import_module("search_env.integrations.gem")
    assert caught.value.name == "gem"  # so tests/test_layering.py skips it as an extra


@pytest.fixture(scope="module")
def sgem():
    """``search_env.integrations.gem`` (importing it registers the ids)."""
    pytest.importorskip("gem")
    return importlib.import_module("search_env.integrations.gem")


@pytest.fixture(scope="module")
def env(sgem):
    env = sgem.gem.make("searchqa:Synth", seed=0)
    yield env
    env.close()


@pytest.fixture(scope="module")
def plain():
    """The text env the GEM env wraps, made directly: the reference for every step."""
    return make_text_env("SearchQA-Synth-v0")


def test_every_search_env_id_has_a_gem_id(sgem):
    from gem.envs.registration import ENV_REGISTRY

    assert sorted(sgem.GEM_IDS.values()) == sorted(ENV_IDS)
    assert sgem.gem_id("SearchQA-Synth-v0") == "searchqa:Synth"
    assert sgem.gem_id("SearchQA-NQ-v0") == "searchqa:NQ"
    assert sgem.gem_id("SearchQA-v0") == "searchqa:Custom"
    for name, gym_id in sgem.GEM_IDS.items():
        assert ENV_REGISTRY[name].kwargs == {"gym_id": gym_id}
    sgem.register_gem()  # again: GEM raises on a duplicate id, so this must skip them
    with pytest.raises(ValueError, match="not a search-env id"):
        sgem.gem_id("CartPole-v1")


def test_gem_make_gives_a_gem_env(sgem, env):
    assert isinstance(env, sgem.gem.Env)
    assert env.env_id == "searchqa:Synth" and env.gym_id == "SearchQA-Synth-v0"
    assert len(env.dataset) > 0


def test_oracle_episodes_score_1_and_match_the_text_env(sgem, env, plain):
    for index in ORACLE_INDICES:
        obs, info = env.reset(idx=index)
        expected, _ = plain.reset(options={"index": index})
        assert obs == expected and obs.endswith(f"Question: {info['question']}\n")
        agent = OracleAgent()
        agent.reset(env.dataset[index])
        searches = 0
        while True:
            turn = agent.act(obs)
            obs, reward, terminated, truncated, info = env.step(turn)
            want, want_reward, want_term, want_trunc, want_info = plain.step(turn)
            assert (reward, terminated, truncated) == (want_reward, want_term, want_trunc)
            assert info["context"] == want_info["context"]
            if terminated or truncated:
                break
            searches += 1
            assert obs == want  # the information block, exactly as the text env shows it
            assert obs.startswith("\n\n<information>Doc 1(Title: ")
            assert obs.endswith("</information>\n\n")
            assert obs in info["context"]
        assert obs == sgem.TERMINAL_STATE
        assert terminated and not truncated and reward == 1.0, (index, info["answer"])
        assert info["answer"] in info["golden_answers"]
        assert info["searches"] == searches >= 1


def test_the_information_block_holds_what_the_search_found(env):
    obs, info = env.reset(idx=4)  # a single-hop question
    hop = env.dataset[4].metadata["hops"][0]
    obs, reward, terminated, truncated, info = env.step(search_turn("look it up", hop["query"]))
    assert (reward, terminated, truncated) == (0.0, False, False)
    assert info["action"] == "search" and info["query"] == hop["query"]
    assert "<information>" in obs and env.dataset[4].golden_answers[0] in obs


def test_a_wrong_answer_scores_0_and_a_gold_one_1(sgem, env):
    env.reset(idx=0)
    obs, reward, terminated, truncated, info = env.step(answer_turn("a guess", "Nobody"))
    assert (obs, reward, terminated, truncated) == (sgem.TERMINAL_STATE, 0.0, True, False)
    assert info["answer"] == "Nobody" and info["scores"]["em"] == 0.0
    env.reset(idx=0)
    gold = env.dataset[0].golden_answers[0]
    obs, reward, terminated, truncated, info = env.step(answer_turn("I know it", gold))
    assert (reward, terminated, truncated) == (1.0, True, False)


def test_an_invalid_turn_gets_the_message_and_goes_on(env):
    env.reset(idx=0)
    obs, reward, terminated, truncated, info = env.step("no tags at all")
    assert "My previous action is invalid" in obs
    assert (reward, terminated, truncated, info["action"]) == (0.0, False, False, "invalid")


def test_out_of_turns_is_truncated(sgem):
    env = sgem.gem.make("searchqa:Synth", max_turns=1)
    env.reset(idx=0)
    obs, reward, terminated, truncated, _ = env.step(search_turn("first", "a query"))
    assert "<information>" in obs and not (terminated or truncated)
    obs, reward, terminated, truncated, info = env.step(search_turn("again", "b query"))
    assert (obs, reward, terminated, truncated) == (sgem.TERMINAL_STATE, 0.0, False, True)
    assert info["searches"] == 1  # the final turn's search is not run
    with pytest.raises(EpisodeOverError):
        env.step(answer_turn("late", "x"))


def test_the_constructor_seed_seeds_the_first_reset(sgem, env):
    first = [sgem.gem.make("searchqa:Synth", seed=5).reset()[1]["index"] for _ in range(2)]
    assert first[0] == first[1] == env.reset(seed=5)[1]["index"]
    # a later reset without a seed draws on from the same generator
    again = sgem.gem.make("searchqa:Synth", seed=5)
    again.reset()
    drawn = [again.reset()[1]["index"] for _ in range(3)]
    env.reset(seed=5)
    assert drawn == [env.reset()[1]["index"] for _ in range(3)]


def test_bad_arguments_fail_clearly_and_change_nothing(sgem, env):
    with pytest.raises(TypeError, match="seed must be an int"):
        sgem.gem.make("searchqa:Synth", seed="0")
    with pytest.raises(TypeError, match="world_seed= is an argument of SearchQA-Synth-v0"):
        sgem.gem.make("searchqa:NQ", world_seed=1)
    with pytest.raises(ValueError, match="action_mode must be 'chunk'"):
        sgem.gem.make("searchqa:Synth", action_mode="token")
    obs, info = env.reset(idx=2)
    with pytest.raises(ValueError, match=r"options\['index'\]"):
        env.reset(idx=len(env.dataset))
    with pytest.raises(TypeError, match="str action"):
        env.step([1, 2, 3])
    # the running episode is untouched: it still plays to its normal end
    gold = env.dataset[2].golden_answers[0]
    _, reward, terminated, _, info = env.step(answer_turn("so", gold))
    assert (reward, terminated, info["index"]) == (1.0, True, 2)


def test_gem_vector_env_and_observation_wrapper(sgem):
    from gem.wrappers.observation_wrapper import ObservationWrapper

    wrap = [lambda e: ObservationWrapper(e, include_action=True, include_chat_template=False)]
    vec = sgem.gem.make_vec(["searchqa:Synth"] * 2, wrappers=wrap, seed=0)
    prompts, reset_infos = vec.reset()
    assert all(p.startswith("Answer the given question.") for p in prompts)
    turns = [search_turn("look", "Valduncai married"), "no tags"]
    obs, rewards, terminated, truncated, infos = vec.step(turns)
    assert list(rewards) == [0.0, 0.0] and not terminated.any() and not truncated.any()
    for i in range(2):
        added = infos[i]["context"][len(prompts[i]) + len(turns[i]) :]
        # GEM's wrapper joins prompt, turn and env text, adding a newline after the turn
        assert obs[i] == prompts[i] + turns[i] + "\n" + added
    assert added.startswith("\nMy previous action is invalid")
    assert "<information>" in obs[0]
    golds = [vec.envs[i].dataset[reset_infos[i]["index"]].golden_answers[0] for i in range(2)]
    obs, rewards, terminated, truncated, infos = vec.step([answer_turn("so", g) for g in golds])
    assert list(rewards) == [1.0, 1.0] and terminated.all()
