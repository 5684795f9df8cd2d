"""Every registered id: make, make_vec, check_env, seeded determinism, clear errors."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import search_env
from search_env import hub
from search_env.data.qa import DatasetUnavailableError
from search_env.registration import (
    DATASET_NAMES,
    ENV_IDS,
    MissingPiecesError,
    TokenizerUnavailableError,
    load_tokenizer,
)
from search_env.vector import SearchQAVectorEnv
from tests.conftest import PASSAGES, QUESTIONS


@pytest.fixture(scope="module")
def local_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    qa = root / "test.jsonl"
    qa.write_text(
        "".join(
            json.dumps(
                {"id": q.id, "question": q.question, "golden_answers": list(q.golden_answers)}
            )
            + "\n"
            for q in QUESTIONS
        )
    )
    corpus = root / "corpus.jsonl"
    corpus.write_text(
        "".join(json.dumps({"id": p.id, "contents": p.contents}) + "\n" for p in PASSAGES)
    )
    return qa, corpus


def kwargs_for(env_id, tokenizer, local_files):
    if env_id == "SearchQA-Synth-v0":
        return {"size": "tiny"}
    qa, corpus = local_files
    return {
        "dataset": str(qa),
        "corpus": str(corpus),
        "tokenizer": tokenizer,
        "retriever_backend": "numpy",
    }


def test_all_ids_registered():
    assert set(ENV_IDS) <= set(gym.registry)
    assert {f"SearchQA-{n}-v0" for n in DATASET_NAMES} <= set(ENV_IDS)


@pytest.mark.parametrize("env_id", ENV_IDS)
@pytest.mark.parametrize("mode", ["token", "chunk"])
def test_check_env_every_id(env_id, mode, tokenizer, local_files):
    env = gym.make(env_id, action_mode=mode, **kwargs_for(env_id, tokenizer, local_files))
    check_env(env.unwrapped, skip_render_check=True)
    env.close()


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_seeded_rollouts_are_identical(env_id, tokenizer, local_files):
    def rollout():
        env = gym.make(env_id, action_mode="chunk", **kwargs_for(env_id, tokenizer, local_files))
        env.action_space.seed(5)
        obs, info = env.reset(seed=11)
        trace = [info["index"]]
        for _ in range(12):
            obs, r, term, trunc, info = env.step(
                np.asarray(env.action_space.sample(), dtype=np.int64)
            )
            trace.append((obs["tokens"][: int(obs["length"][0])].tolist(), r, term, trunc))
            if term or trunc:
                obs, info = env.reset()
                trace.append(info["index"])
        return trace

    assert rollout() == rollout()


def test_make_vec_gives_batched_vector_env(tokenizer, local_files):
    vec = gym.make_vec("SearchQA-Synth-v0", num_envs=3, size="tiny", action_mode="chunk")
    assert isinstance(vec, SearchQAVectorEnv) and vec.num_envs == 3
    obs, _ = vec.reset(seed=0)
    assert obs["tokens"].shape[0] == 3
    vec2 = gym.make_vec(
        "SearchQA-NQ-v0", num_envs=2, **kwargs_for("SearchQA-NQ-v0", tokenizer, local_files)
    )
    assert vec2.envs[0].retriever is vec2.envs[1].retriever


def test_namespaced_module_id(tokenizer, local_files):
    env = gym.make("search_env:SearchQA-Synth-v0", size="tiny")
    assert isinstance(env.unwrapped, search_env.SearchQAEnv)


def test_hub_tokenizer_offline_error(local_files, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    qa, corpus = local_files
    with pytest.raises(MissingPiecesError, match="pass tokenizer=") as err:
        gym.make(
            "SearchQA-NQ-v0",
            dataset=str(qa),
            corpus=str(corpus),
            tokenizer="Qwen/Qwen2.5-3B-not-cached",
        )
    assert list(err.value.problems) == ["tokenizer"]
    assert isinstance(err.value.problems["tokenizer"], TokenizerUnavailableError)
    assert "offline mode is on" in str(err.value) and "tokenizer='qwen2.5'" in str(err.value)
    assert (
        f"gym.make('SearchQA-NQ-v0', dataset={str(qa)!r}, corpus={str(corpus)!r}, "
        "tokenizer='Qwen/Qwen2.5-3B-not-cached')"
    ) in str(err.value)


def test_missing_retriever_and_dataset_errors(tokenizer, local_files):
    qa, corpus = local_files
    with pytest.raises(MissingPiecesError, match="needs a retriever") as err:
        gym.make("SearchQA-NQ-v0", dataset=str(qa), tokenizer=tokenizer)
    assert list(err.value.problems) == ["retriever"]
    assert "corpus='data/wiki-18.jsonl', tokenizer=<your " in str(err.value)
    with pytest.raises(MissingPiecesError, match="needs dataset=") as err:
        gym.make("SearchQA-v0", corpus=str(corpus), tokenizer=tokenizer)
    assert list(err.value.problems) == ["dataset"]
    with pytest.raises(ValueError, match="both"):  # bad input is not a missing piece
        gym.make(
            "SearchQA-NQ-v0",
            dataset=str(qa),
            corpus=str(corpus),
            retriever="x",
            tokenizer=tokenizer,
        )


def test_default_tokenizer_offline_is_the_built_qwen_copy(local_files, caplog):
    """HF_HUB_OFFLINE is set (tests/conftest.py): Qwen/Qwen2.5-3B is not cached here."""
    qa, corpus = local_files
    with caplog.at_level(logging.WARNING, logger="search_env.registration"):
        env = gym.make(
            "SearchQA-NQ-v0", dataset=str(qa), corpus=str(corpus), retriever_backend="numpy"
        )
    tok = env.unwrapped.tokenizer
    assert len(tok) == 151_665 and tok.encode(" </search>") == [690, 1836, 29]
    assert "offline mode is on" in caplog.text and "tokenizer='qwen2.5'" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="search_env.registration"):
        explicit = load_tokenizer("qwen2.5")
    assert explicit is tok and not caplog.text  # asked for by name: nothing to warn about


@pytest.fixture
def hub_unreachable(monkeypatch):
    """No offline flag, and a hub endpoint nothing listens on (the probe is refused at once);
    every sleep (huggingface_hub's retry back-off) is recorded."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    for key in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setattr(hub, "_probe_cache", {})
    sleeps: list[float] = []
    monkeypatch.setattr(time, "sleep", sleeps.append)
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    return port, sleeps


def test_unreachable_hub_reports_every_missing_piece_at_once(hub_unreachable, tmp_path):
    port, sleeps = hub_unreachable
    pytest.importorskip("datasets")
    with pytest.raises(MissingPiecesError) as err:
        gym.make(
            "SearchQA-NQ-v0",
            tokenizer="Qwen/Qwen2.5-7B-not-cached",
            corpus=str(tmp_path / "missing.jsonl"),
        )
    problems = err.value.problems
    assert list(problems) == ["tokenizer", "dataset", "retriever"]
    assert isinstance(problems["dataset"], DatasetUnavailableError)
    assert isinstance(problems["retriever"], FileNotFoundError)
    message = str(err.value)
    assert message.count(f"no connection to 127.0.0.1:{port}") == 2  # tokenizer and dataset
    assert "3 pieces are missing" in message and "search-env download wiki18-corpus" in message
    assert (
        f"gym.make('SearchQA-NQ-v0', dataset='data/flashrag/nq/test.jsonl', "
        f"corpus={str(tmp_path / 'missing.jsonl')!r}, "
        "tokenizer='Qwen/Qwen2.5-7B-not-cached')"
    ) in message
    assert sleeps == []  # no retry with back-off: the hub was never asked
    import huggingface_hub.constants as constants

    assert constants.HF_HUB_OFFLINE is False  # the offline switch was put back


def test_unreachable_hub_falls_back_to_the_offline_qwen_tokenizer(hub_unreachable, caplog):
    port, sleeps = hub_unreachable
    with caplog.at_level(logging.WARNING, logger="search_env.registration"):
        tok = load_tokenizer("Qwen/Qwen2.5-3B")
    assert len(tok) == 151_665 and sleeps == []
    assert f"unreachable (no connection to 127.0.0.1:{port})" in caplog.text


def test_hub_probe(monkeypatch):
    monkeypatch.setattr(hub, "_probe_cache", {})
    for key in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert not hub.hub_reachable() and "HF_HUB_OFFLINE" in hub.unreachable_reason()
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
        assert hub.hub_reachable()
    assert hub.hub_reachable()  # kept: the probe is not repeated at once
    monkeypatch.setattr(hub, "_probe_cache", {})
    assert not hub.hub_reachable()  # the port is closed now
    # through a proxy the first connection goes to the proxy
    monkeypatch.setenv("HF_ENDPOINT", "https://huggingface.co")
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    assert hub._probe_address() == ("proxy.internal", 3128)
    monkeypatch.setenv("NO_PROXY", "example.com,.huggingface.co")
    assert hub._probe_address() == ("huggingface.co", 443)


def test_hub_offline_switch_is_restored_after_an_error():
    import huggingface_hub.constants as constants

    before = constants.HF_HUB_OFFLINE
    with pytest.raises(KeyError):
        with hub.hub_offline():
            assert constants.HF_HUB_OFFLINE is True
            raise KeyError("boom")
    assert constants.HF_HUB_OFFLINE == before
    with pytest.raises(ValueError, match="size"):
        gym.make("SearchQA-Synth-v0", size="huge")


def test_retriever_object_is_used_as_is(tokenizer):
    from tests.conftest import MemoryRetriever

    r = MemoryRetriever(PASSAGES)
    env = gym.make("SearchQA-v0", dataset=QUESTIONS, retriever=r, tokenizer=tokenizer)
    assert env.unwrapped.retriever is r


def test_gymnasium_finds_ids_without_importing_the_package():
    """The installed .pth hook registers the ids when Gymnasium is imported."""
    try:
        import _search_env_gym_hook  # noqa: F401
    except ImportError:
        pytest.skip("package not installed (pip install -e .): no start-up hook")
    code = (
        "import sys, gymnasium as gym; "
        "print('SearchQA-NQ-v0' in gym.registry, 'SearchQA-Synth-v0' in gym.registry)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "True"]


def test_synth_question_type_filter():
    every = gym.make("SearchQA-Synth-v0", size="tiny", split="train").unwrapped.dataset
    types = {ex.metadata["type"] for ex in every}
    assert types == {"single", "bridge", "comparison"}
    for kind in types:
        kept = gym.make(
            "SearchQA-Synth-v0", size="tiny", split="train", question_types=[kind]
        ).unwrapped.dataset
        assert [ex.id for ex in kept] == [ex.id for ex in every if ex.metadata["type"] == kind]
    vec = gym.make_vec("SearchQA-Synth-v0", num_envs=2, size="tiny", question_types=["single"])
    assert all(ex.metadata["type"] == "single" for ex in vec.envs[0].dataset)
    with pytest.raises(ValueError, match="question_types"):
        gym.make("SearchQA-Synth-v0", size="tiny", question_types=["single", "riddle"])
    with pytest.raises(ValueError, match="question_types"):
        gym.make("SearchQA-Synth-v0", size="tiny", question_types=[])


def test_synth_world_tokenizer_is_trained_on_the_world_and_cached():
    from search_env.synth.tokenizer import load_synth_tokenizer

    kwargs = {"num_entities": 1200, "split": "train", "question_types": ["single"]}
    shipped = gym.make("SearchQA-Synth-v0", **kwargs).unwrapped
    own = gym.make("SearchQA-Synth-v0", tokenizer="world:8192", **kwargs).unwrapped
    assert len(own.tokenizer) == 8192 and own.tokenizer is not load_synth_tokenizer()
    names = [ex.golden_answers[0] for ex in own.dataset]

    def pieces(tok):
        return sum(len(tok.encode(" " + n, add_special_tokens=False)) for n in names)

    assert pieces(own.tokenizer) < 0.8 * pieces(shipped.tokenizer)  # names stay whole
    text = own.dataset[0].question
    assert own.tokenizer.decode(own.tokenizer.encode(text)) == text
    world_dirs = [
        p
        for p in (Path(os.environ["SEARCH_ENV_CACHE"]) / "synth").iterdir()
        if any((t / "tokenizer.json").is_file() for t in p.glob("tokenizer-8192-*"))
    ]
    assert len(world_dirs) == 1
    again = gym.make("SearchQA-Synth-v0", tokenizer="world:8192", **kwargs).unwrapped
    assert again.tokenizer is own.tokenizer  # loaded once
    with pytest.raises(ValueError, match="world"):
        gym.make("SearchQA-Synth-v0", size="tiny", tokenizer="world:big")
