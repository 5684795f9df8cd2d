"""The text env as an OpenEnv ``Environment``: scripted episodes in process and over the
server (OpenEnv's FastAPI app under uvicorn on a free 127.0.0.1 port, stopped by its fixture).

Every test but the first needs the [openenv] extra (``openenv-core``) and skips without it.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from search_env.baselines import answer_turn, search_turn
from search_env.env import EpisodeOverError
from search_env.synth.oracle import OracleAgent

ROOT = Path(__file__).resolve().parent.parent


def test_without_openenv_the_import_error_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "openenv", None)  # None in sys.modules: "No module named"
    monkeypatch.delitem(sys.modules, "search_env.integrations.openenv", raising=False)
    with pytest.raises(ImportError, match=r"pip install 'search-env\[openenv\]'") as caught:
        importlib.import_module("search_env.integrations.openenv")
    # the missing module's name, so tests/test_layering.py skips the module as an extra
    assert caught.value.name.split(".")[0] == "openenv"


@pytest.fixture(scope="module")
def oe():
    """``search_env.integrations.openenv``."""
    pytest.importorskip("openenv")
    return importlib.import_module("search_env.integrations.openenv")


@pytest.fixture(scope="module")
def env(oe):
    env = oe.SearchQAEnvironment("SearchQA-Synth-v0")
    yield env
    env.close()


def play_oracle(reset, step, act, example):
    """Play the oracle; returns every observation, the reset's first."""
    agent = OracleAgent()
    agent.reset(example)
    observations = [reset()]
    while not observations[-1].done:
        observations.append(step(act(text=agent.act(observations[-1].text))))
    return observations


def test_oracle_episode_in_process(oe, env):
    for index in (0, 4, 6):  # bridge, single-hop, comparison
        example = env.dataset[index]
        seen = play_oracle(
            lambda: env.reset(index=index, episode_id=f"ep-{index}"),
            env.step,
            oe.SearchQAAction,
            example,
        )
        first, *turns, last = seen
        assert first.text.endswith(f"Question: {example.question}\n")
        assert (first.reward, first.done, first.index) == (None, False, index)
        for n, obs in enumerate(turns, start=1):
            assert obs.text.startswith("\n\n<information>Doc 1(Title: ")
            assert obs.text.endswith("</information>\n\n") and obs.text in obs.context
            assert (obs.turn_kind, obs.searches, obs.turn) == ("search", n, n)
            assert (obs.reward, obs.done, obs.answer, obs.golden_answers) == (
                0.0,
                False,
                None,
                None,
            )
        assert (last.reward, last.done, last.truncated, last.text) == (1.0, True, False, "")
        assert last.turn_kind == "answer" and last.answer in example.golden_answers
        assert last.golden_answers == list(example.golden_answers)
        assert last.scores == {"em": 1.0, "f1": 1.0, "cover_em": 1.0}
        state = env.state
        assert (state.episode_id, state.step_count, state.done) == (
            f"ep-{index}",
            len(turns) + 1,
            True,
        )
        assert (state.question, state.index, state.searches) == (
            example.question,
            index,
            len(turns),
        )
        assert state.context == last.context


def test_wrong_answer_truncation_and_invalid_turns(oe, env):
    env.reset(index=1)
    obs = env.step(oe.SearchQAAction(text="no tags"))
    assert "My previous action is invalid" in obs.text and obs.turn_kind == "invalid"
    assert (obs.reward, obs.done) == (0.0, False)
    obs = env.step(oe.SearchQAAction(text=answer_turn("a guess", "Nobody")))
    assert (obs.reward, obs.done, obs.truncated, obs.answer) == (0.0, True, False, "Nobody")
    assert obs.scores is not None and obs.scores["em"] == 0.0

    short = oe.SearchQAEnvironment("SearchQA-Synth-v0", max_turns=1)
    short.reset(index=0)
    assert not short.step(oe.SearchQAAction(text=search_turn("one", "a query"))).done
    obs = short.step(oe.SearchQAAction(text=search_turn("two", "b query")))
    assert (obs.reward, obs.done, obs.truncated, obs.searches) == (0.0, True, True, 1)


def test_bad_input_fails_clearly_and_changes_nothing(oe):
    env = oe.SearchQAEnvironment("SearchQA-Synth-v0")
    assert env.state.done and env.state.question is None
    with pytest.raises(EpisodeOverError, match="call reset"):
        env.step(oe.SearchQAAction(text="<answer> x </answer>"))
    env.reset(index=2, episode_id="kept")
    before = env.state
    with pytest.raises(TypeError, match=r"unknown reset arguments \['options'\]"):
        env.reset(options={"index": 0})
    with pytest.raises(ValueError, match=r"options\['index'\]"):
        env.reset(index=10**6)
    with pytest.raises(TypeError, match="SearchQAAction"):
        env.step("<answer> x </answer>")
    with pytest.raises(Exception, match="text"):  # pydantic's ValidationError
        oe.SearchQAAction(txt="typo")
    assert env.state == before  # the episode goes on
    gold = env.dataset[2].golden_answers[0]
    obs = env.step(oe.SearchQAAction(text=answer_turn("so", gold)))
    assert (obs.reward, obs.index, env.state.episode_id) == (1.0, 2, "kept")
    with pytest.raises(EpisodeOverError, match="call reset"):
        env.step(oe.SearchQAAction(text="late"))
    with pytest.raises(ValueError, match="action_mode must be 'chunk'"):
        oe.SearchQAEnvironment("SearchQA-Synth-v0", action_mode="token")
    with pytest.raises(ValueError, match="max_sessions"):
        oe.create_search_app(max_sessions=0)


@pytest.fixture(scope="module")
def server(oe):
    from search_env.server import ServerThread

    with ServerThread(oe.create_search_app("SearchQA-Synth-v0", max_sessions=2)) as srv:
        yield srv


def test_oracle_episode_over_the_server_matches_in_process(oe, env, server):
    example = env.dataset[0]
    local = play_oracle(lambda: env.reset(index=0), env.step, oe.SearchQAAction, example)
    with oe.SearchQAClient(base_url=server.url).sync() as client:
        remote = play_oracle(
            lambda: client.reset(index=0).observation,
            lambda action: client.step(action).observation,
            oe.SearchQAAction,
            example,
        )
        state = client.state()
    drop = {"metadata"}  # OpenEnv does not send metadata over the wire
    assert [o.model_dump(exclude=drop) for o in remote] == [
        o.model_dump(exclude=drop) for o in local
    ]
    assert remote[-1].reward == 1.0 and remote[-1].done
    assert (state.step_count, state.index, state.done) == (len(remote) - 1, 0, True)


def test_two_sessions_play_their_own_episodes(oe, env, server):
    golds = {i: env.dataset[i].golden_answers[0] for i in (3, 5)}
    with (
        oe.SearchQAClient(base_url=server.url).sync() as a,
        oe.SearchQAClient(base_url=server.url).sync() as b,
    ):
        assert a.reset(index=3).observation.index == 3
        assert b.reset(index=5).observation.index == 5
        wrong = b.step(oe.SearchQAAction(text=answer_turn("hm", golds[3])))
        right = a.step(oe.SearchQAAction(text=answer_turn("so", golds[3])))
        assert (right.reward, wrong.reward) == (1.0, 0.0)
        assert (a.state().index, b.state().index) == (3, 5)
        with pytest.raises(RuntimeError, match="reset"):  # the server's error, passed on
            a.step(oe.SearchQAAction(text="late"))


def test_http_endpoints(server):
    httpx = pytest.importorskip("httpx")
    with httpx.Client(base_url=server.url) as http:
        assert http.get("/health").json()["status"] == "healthy"
        schema = http.get("/schema").json()
        assert "text" in schema["action"]["properties"]
        assert {"text", "context", "golden_answers"} <= set(schema["observation"]["properties"])
        assert "search-env" in http.get("/metadata").json()["name"]
        # one-shot HTTP reset (a fresh env per request, as OpenEnv's REST routes do)
        reply = http.post("/reset", json={"index": 4}).json()
        assert reply["observation"]["index"] == 4 and reply["done"] is False
        bad = http.post("/step", json={"action": {"txt": "typo"}})
        assert bad.status_code == 422


@pytest.mark.slow
def test_python_m_serves_on_loopback(oe, tmp_path):
    """``python -m search_env.integrations.openenv`` serves until stopped."""
    import socket

    httpx = pytest.importorskip("httpx")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "search_env.integrations.openenv", "--port", str(port)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    log = (tmp_path / "server.log").open("w")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, (tmp_path / "server.log").read_text()
            try:
                reply = httpx.get(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "the server did not start in 120 s"
                time.sleep(0.2)
        assert reply.json()["status"] == "healthy"
        with oe.SearchQAClient(base_url=f"http://127.0.0.1:{port}").sync() as client:
            assert client.reset(index=0).observation.question
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def test_cli_arguments(oe):
    args = oe._parse_args(["--env-kwargs", '{"max_turns": 2}'])
    assert (args.env, args.host, args.port, args.env_kwargs) == (
        "SearchQA-Synth-v0",
        "127.0.0.1",
        8000,
        {"max_turns": 2},
    )
    with pytest.raises(SystemExit):
        oe._parse_args(["--env-kwargs", "[1, 2]"])


def test_main_reports_what_it_cannot_serve(oe):
    with pytest.raises(SystemExit, match="error: cannot serve NoSuchEnv-v0"):
        oe.main(["--env", "NoSuchEnv-v0"])
    with pytest.raises(SystemExit, match="unknown SearchQAEnv arguments"):
        oe.main(["--env-kwargs", '{"no_such_option": 1}'])
