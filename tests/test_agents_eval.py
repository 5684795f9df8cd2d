"""The evaluation harness: model + baselines per dataset, JSON / markdown, the CLI, the docs."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="needs the [torch] extra")

from agents.config import TINY_WORLD, apply_overrides, save_config, tiny_cpu
from agents.evaluation import (
    DIRECT_TEMPLATE,
    PAPER_COLUMNS,
    RAG_TEMPLATE,
    EvalSetupError,
    env_kwargs_for,
    evaluate_model,
    evaluate_policy,
    load_model_for_eval,
    open_env,
    parse_methods,
)
from agents.policy import ScriptedPolicy
from agents.tiny_model import make_tiny_qwen2, save_tiny_model
from search_env.cli import main
from search_env.protocol import clean_question, format_documents

SYNTH = "SearchQA-Synth-v0"
HEADER = "| Method | NQ | TriviaQA | PopQA | HotpotQA | 2wiki | Musique | Bamboogle | Synth | Avg |"


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py: one torch thread


@pytest.fixture(scope="module")
def vec():
    env = open_env(SYNTH, 4, env_kwargs_for(SYNTH, size="tiny"))
    yield env
    env.close()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tok):
    model = make_tiny_qwen2(
        tok, hidden_size=32, layers=1, heads=2, kv_heads=1, intermediate=64, seed=0
    )
    return save_tiny_model(model, tok, tmp_path_factory.mktemp("models") / "tiny")


def half_right(dataset, contexts: list[str]):
    """A script: search the question once when the prompt offers a search engine, then
    answer; right on even-indexed questions, wrong on odd ones. Records every context."""
    by_question = {clean_question(e.question): (i, e) for i, e in enumerate(dataset)}

    def respond(context: str) -> str:
        contexts.append(context)
        question = re.findall(r"Question: (.*?)\n", context)[-1]
        i, example = by_question[question]
        if "call a search engine" in context and "<information>Doc" not in context:
            return f"<think> look it up </think>\n<search> {question} </search>"
        answer = example.golden_answers[0] if i % 2 == 0 else "Nobody Knows"
        return f"<answer> {answer} </answer>"

    return respond


# ------------------------------------------------------------------- the harness
def test_numbers_match_the_episodes(vec, tok):
    contexts: list[str] = []
    policy = ScriptedPolicy(tok, half_right(vec.dataset, contexts), trim=True)
    report = evaluate_policy(
        policy,
        {SYNTH: vec},
        methods=["search", "direct", "rag", "oracle"],
        limit=8,
        model_name="script",
        progress=False,
    )
    by = {r.method: r for r in report.results}
    assert set(by) == {"search", "direct", "rag", "oracle"} and not report.skipped
    for method in ("search", "direct", "rag"):
        eps, m = by[method].episodes, by[method].metrics()
        assert [e.index for e in eps] == list(range(8))
        assert [e.em for e in eps] == [1.0, 0.0] * 4  # exactly the even ones
        assert m["em"] == np.mean([e.reward for e in eps]) == 0.5
        assert m["answered"] == 1.0 and m["f1"] >= m["em"]
        assert m["response_length"] == np.mean([e.response_length for e in eps])
    # search: one search and two turns each; the baselines: one turn, no search.
    assert all(e.searches == 1 and e.turns == 2 for e in by["search"].episodes)
    for method in ("direct", "rag"):
        assert all(e.searches == 0 and e.turns == 1 for e in by[method].episodes)
        for e in by[method].episodes:  # the response is exactly the answer turn
            turn = f"<answer> {e.answer} </answer>"
            assert e.response_length == len(tok.encode(turn, add_special_tokens=False))
    assert by["oracle"].metrics()["em"] == 1.0
    assert by["oracle"].metrics()["searches"] >= 1

    # The baselines' prompts: the direct one has no documents, the RAG one has exactly
    # the retriever's top-k for the question, in the protocol's document format.
    protocol = vec.envs[0].protocol
    direct = [c for c in contexts if c.startswith(DIRECT_TEMPLATE.split("{")[0])]
    rag = [c for c in contexts if c.startswith(RAG_TEMPLATE.split("{")[0])]
    assert len(direct) == len(rag) == 8
    assert not any("Doc 1(Title:" in c for c in direct)
    for e, context in zip(by["rag"].episodes, rag):
        passages = vec.retriever.search([vec.dataset[e.index].question], protocol.topk)[0]
        assert context == RAG_TEMPLATE.format(
            documents=format_documents(passages, protocol), question=clean_question(e.question)
        )
        assert e.doc_ids == tuple(p.id for p in passages) and len(e.doc_ids) == protocol.topk

    # Tables and JSON agree with the results.
    table = report.table("em")
    assert table["search"]["Synth"] == 0.5 and table["search"]["Avg"] == 0.5
    assert table["oracle"]["Synth"] == 1.0 and table["direct"]["NQ"] is None
    assert report.table("searches")["rag"]["Synth"] == 0.0
    md = report.markdown_table("em")
    assert md.splitlines()[0] == HEADER
    assert "| script search (Search-R1 protocol) | – | – | – | – | – | – | – | .500 | .500 |" in md
    data = json.loads(json.dumps(report.to_dict()))
    assert data["columns"] == [*PAPER_COLUMNS.values(), "Synth", "Avg"]
    for r in data["results"]:
        assert r["metrics"]["episodes"] == len(r["episodes"]) == 8
        assert r["metrics"]["em"] == pytest.approx(np.mean([e["em"] for e in r["episodes"]]))
        assert data["tables"]["em"][r["method"]]["Synth"] == r["metrics"]["em"]


def test_avg_uses_the_paper_datasets_and_needs_all_of_them(tmp_path, model_dir):
    """A local NQ file and corpus (FlashRAG layout) fill the NQ column; the oracle cannot
    run there, so its row has no Avg; Avg covers the paper's datasets only."""
    nq = tmp_path / "flashrag" / "nq"
    nq.mkdir(parents=True)
    rows = [
        {"id": f"q{i}", "question": q, "golden_answers": [a]}
        for i, (q, a) in enumerate(
            [
                ("What is the capital of Norway", "Oslo"),
                ("Largest city of Switzerland?", "Zurich"),
                ("What is the capital of France?", "Paris"),
            ]
        )
    ]
    (nq / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    corpus = tmp_path / "corpus.jsonl"
    docs = [
        '"Oslo"\nOslo is the capital of Norway.',
        '"Zurich"\nZurich is the largest city.',
        '"Paris"\nParis is the capital of France.',
        '"Bergen"\nBergen is a city in Norway.',
    ]
    corpus.write_text(
        "".join(json.dumps({"id": str(i), "contents": d}) + "\n" for i, d in enumerate(docs))
    )
    report = evaluate_model(
        model_dir,
        ["SearchQA-NQ-v0", SYNTH],
        baselines=["rag", "oracle"],
        limit=3,
        num_envs=3,
        size="tiny",
        qa_dir=tmp_path / "flashrag",
        retriever=corpus,
        max_new_tokens=4,
        progress=False,
    )
    nq_rag = next(r for r in report.results if r.method == "rag" and r.env_id == "SearchQA-NQ-v0")
    assert [e.id for e in nq_rag.episodes] == ["q0", "q1", "q2"]
    assert nq_rag.episodes[0].doc_ids[0] == "0"  # "Oslo" for the Norway question
    assert report.skipped == [
        {
            "method": "oracle",
            "env_id": "SearchQA-NQ-v0",
            "reason": "the oracle needs the gold hops of SearchQA-Synth-v0 questions",
        }
    ]
    assert report.avg_columns() == ["NQ"]
    table = report.table("response_length")
    assert table["search"]["Avg"] == table["search"]["NQ"] > 0
    assert table["oracle"]["Synth"] > 0 and table["oracle"]["Avg"] is None
    assert "Avg: mean over NQ" in report.to_markdown()


def test_model_from_a_training_run(tmp_path, tok):
    """A run directory loads its latest checkpoint and brings its own prompt and budgets."""
    from agents.checkpoint import save_checkpoint
    from agents.model import load_model
    from agents.rollout import make_env

    cfg = apply_overrides(
        tiny_cpu(),
        {
            "model.hidden_size": 32,
            "model.intermediate": 64,
            "model.layers": 1,
            **TINY_WORLD,
            "out_dir": str(tmp_path / "run"),
            "rollout.env_kwargs.tokenizer": "world:1024",  # a tokenizer spec, not a path
        },
    )
    run = Path(cfg.out_dir)
    tok = make_env(cfg.rollout, "test", 1).envs[0].tokenizer
    assert len(tok) == 1024
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model_for_eval(run)
    save_config(cfg, run / "config.json")  # as the trainer does before its first step
    with pytest.raises(EvalSetupError, match="no checkpoint"):
        load_model_for_eval(run)
    model, _ = load_model(cfg.model, tok)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5)  # not the freshly initialised weights
    path = save_checkpoint(run, 7, cfg, {"model": model})
    for where in (run, path):
        loaded = load_model_for_eval(where, device="cpu")
        assert loaded.name == "run@step7" and loaded.env_id == SYNTH
        for name, value in model.state_dict().items():
            assert torch.equal(loaded.model.state_dict()[name], value)
    report = evaluate_model(run, [SYNTH], limit=2, num_envs=2, progress=False, device="cpu")
    protocol = report.settings["protocol"][SYNTH]
    assert protocol["template"] == "Question: {question}\n" and protocol["max_turns"] == 2
    assert report.settings["limit"] == 2 and report.results[0].metrics()["episodes"] == 2
    # the run's turn budget (48 tokens) holds
    assert all(e.response_length <= 48 * e.turns for e in report.results[0].episodes)


def _relative_run(work: Path, model_dir: Path, model_path: str, **env_kwargs: str) -> Path:
    """A run saved as ``search-env train`` run from ``work``: ``out_dir`` and ``model.path``
    relative to it, a checkpoint of the model in ``model_dir`` (copied to ``work/models/sft``)."""
    import shutil

    from agents.checkpoint import save_checkpoint
    from agents.model import load_model

    shutil.copytree(model_dir, work / "models" / "sft")
    cfg = apply_overrides(
        tiny_cpu(),
        {
            **TINY_WORLD,
            "model.path": model_path,
            "out_dir": "runs/grpo",
            **{f"rollout.env_kwargs.{k}": v for k, v in env_kwargs.items()},
        },
    )
    save_config(cfg, work / "runs" / "grpo" / "config.json")
    model, _ = load_model(dataclasses.replace(cfg.model, path=str(work / "models" / "sft")), None)
    save_checkpoint(work / "runs" / "grpo", 3, cfg, {"model": model})
    return work / "runs" / "grpo"


def test_run_with_a_relative_model_path_loads_from_any_directory(tmp_path, model_dir, monkeypatch):
    """The run config keeps ``model.path`` as typed (relative to where training ran)."""
    run = _relative_run(tmp_path / "work", model_dir, "models/sft", corpus="models/sft/config.json")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    for where in (run, run / "checkpoints" / "step_00000003"):
        loaded = load_model_for_eval(where, device="cpu")
        assert loaded.name == "grpo@step3"
        # env paths too; the env gets the model's own tokenizer, as in training
        assert loaded.env_kwargs["corpus"] == str(
            tmp_path / "work" / "models" / "sft" / "config.json"
        )
        assert "tokenizer" not in loaded.env_kwargs
    # also through a relative --model path
    monkeypatch.chdir(tmp_path)
    assert load_model_for_eval(Path("work/runs/grpo"), device="cpu").name == "grpo@step3"


def test_cli_eval_of_a_relative_run_from_another_directory(
    tmp_path, model_dir, monkeypatch, capsys
):
    run = _relative_run(tmp_path / "work", model_dir, "models/sft")
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "eval.json"
    assert (
        main(
            [
                "eval",
                "--model",
                str(run),
                "--limit",
                "2",
                "--num-envs",
                "2",
                "--max-new-tokens",
                "4",
                "--device",
                "cpu",
                "--quiet",
                "--out",
                str(out),
                "--markdown",
                "",
            ]
        )
        == 0
    )
    data = json.loads(out.read_text())
    assert data["model"] == "grpo@step3" and data["results"][0]["metrics"]["episodes"] == 2


def test_tiny_run_with_a_relative_tokenizer_path_loads_from_any_directory(
    tmp_path, tok, monkeypatch
):
    """A tiny model is rebuilt on the run's env tokenizer: its relative path resolves too."""
    from agents.checkpoint import save_checkpoint
    from agents.model import load_model

    work = tmp_path / "work"
    tok.save_pretrained(work / "tok")
    cfg = apply_overrides(
        tiny_cpu(),
        {
            "model.hidden_size": 32,
            "model.intermediate": 64,
            "model.layers": 1,
            **TINY_WORLD,
            "rollout.env_kwargs.tokenizer": "tok",
            "out_dir": "runs/tiny",
        },
    )
    model, _ = load_model(cfg.model, tok)
    save_config(cfg, work / "runs" / "tiny" / "config.json")
    save_checkpoint(work / "runs" / "tiny", 2, cfg, {"model": model})
    monkeypatch.chdir(tmp_path)
    loaded = load_model_for_eval(work / "runs" / "tiny", device="cpu")
    assert loaded.env_kwargs["tokenizer"] == str(work / "tok") and len(loaded.tokenizer) == len(tok)
    for name, value in model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[name], value)
    (work / "tok" / "tokenizer.json").unlink()  # gone: one EvalSetupError, not a traceback
    with pytest.raises(EvalSetupError, match="could not make the env of run .*tokenizer"):
        load_model_for_eval(work / "runs" / "tiny", device="cpu")


@pytest.mark.parametrize(
    "path, why",
    [("models/gone/final", "nor a hub id"), ("no-such-model", "loading it as a hub id failed")],
)
def test_run_with_a_missing_model_path_is_one_clear_line(
    tmp_path, model_dir, monkeypatch, capsys, path, why
):
    run = _relative_run(tmp_path / "work", model_dir, path)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(
        EvalSetupError, match=f"model.path '{path}' of .* is not a directory .*{why}"
    ):
        load_model_for_eval(run, device="cpu")
    capsys.readouterr()  # the fixture's weight-loading bar
    assert main(["eval", "--model", str(run), "--size", "tiny", "--quiet", "--out", ""]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert f"model.path '{path}'" in err and "Traceback" not in err
    assert "HFValidationError" not in err


def test_a_damaged_checkpoint_is_refused_not_evaluated(tmp_path, model_dir, monkeypatch):
    run = _relative_run(tmp_path / "work", model_dir, "models/sft")
    monkeypatch.chdir(tmp_path / "work")
    assert load_model_for_eval(run, device="cpu").name.endswith("@step3")
    (state,) = (run / "checkpoints").glob("step_*/state.pt")
    data = bytearray(state.read_bytes())
    data[len(data) // 2] ^= 0x10  # one flipped bit
    state.write_bytes(bytes(data))
    with pytest.raises(EvalSetupError, match="state.pt"):
        load_model_for_eval(run, device="cpu")


def test_env_kwargs_routing_and_method_names():
    extra = {"topk": 2, "size": "medium", "SearchQA-NQ-v0:dataset": "nq.jsonl"}
    synth = env_kwargs_for(SYNTH, size="tiny", extra=extra)
    assert synth == {"split": "test", "size": "medium", "topk": 2}
    nq = env_kwargs_for("SearchQA-NQ-v0", qa_dir="data/flashrag", retriever="R", extra=extra)
    assert nq == {"dataset": "nq.jsonl", "split": "test", "retriever": "R", "topk": 2}
    hotpot = env_kwargs_for("SearchQA-HotpotQA-v0", qa_dir="data/flashrag")
    assert hotpot == {"dataset": str(Path("data/flashrag/hotpotqa")), "split": "dev"}
    assert parse_methods("direct, rag") == ["direct", "rag"]
    with pytest.raises(ValueError, match="unknown method 'search'"):
        parse_methods("search")
    with pytest.raises(ValueError, match="twice"):
        parse_methods("rag,rag")


# ------------------------------------------------------------------------ the CLI
def test_cli_model_eval_writes_json_and_markdown(tmp_path, model_dir, capsys):
    out = tmp_path / "eval" / "tiny.json"
    code = main(
        [
            "eval",
            "--model",
            str(model_dir),
            "--size",
            "tiny",
            "--limit",
            "4",
            "--num-envs",
            "4",
            "--baselines",
            "direct,rag,oracle",
            "--max-new-tokens",
            "6",
            "--env-arg",
            "topk=2",
            "--device",
            "cpu",
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert HEADER in printed and "oracle (scripted)" in printed
    data = json.loads(out.read_text())
    assert list(data["methods"]) == ["search", "direct", "rag", "oracle"]
    assert data["columns"] == [*PAPER_COLUMNS.values(), "Synth", "Avg"]
    assert data["settings"]["protocol"][SYNTH]["topk"] == 2
    results = {r["method"]: r for r in data["results"]}
    for method, r in results.items():
        eps = r["episodes"]
        assert len(eps) == r["metrics"]["episodes"] == 4
        assert r["metrics"]["em"] == pytest.approx(np.mean([e["reward"] for e in eps]))
        assert r["metrics"]["searches"] == pytest.approx(np.mean([e["searches"] for e in eps]))
        if method != "oracle":
            assert all(e["response_length"] <= 6 * e["turns"] for e in eps)
    assert all(e["searches"] == 0 and e["turns"] == 1 for e in results["direct"]["episodes"])
    assert all(len(e["doc_ids"]) == 2 for e in results["rag"]["episodes"])
    assert results["oracle"]["metrics"]["em"] == 1.0
    md = out.with_suffix(".md").read_text()
    assert md.count(HEADER) == 6 and "## EM" in md and "## Searches per episode" in md
    assert "| oracle (scripted) | – | – | – | – | – | – | – | 1.000 | 1.000 |" in md


def test_cli_model_eval_errors(tmp_path, model_dir, capsys):
    base = ["eval", "--size", "tiny", "--quiet", "--out", ""]
    assert main(base + ["--model", str(model_dir), "--baselines", "direct,magic"]) == 2
    assert "unknown method 'magic'" in capsys.readouterr().err
    assert main(base + ["--model", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(base + ["--baselines", "rag"]) == 2
    assert "--baselines needs --model" in capsys.readouterr().err
    assert main(base + ["--model", str(model_dir), "--env-arg", "topk"]) == 2
    assert "KEY=VALUE" in capsys.readouterr().err
    # Offline, a hub dataset fails at once, naming the env (nothing ran before).
    assert main(base + ["--model", str(model_dir), "--env", f"{SYNTH},SearchQA-NQ-v0"]) == 2
    out, err = capsys.readouterr()
    assert "could not make SearchQA-NQ-v0" in err and "Cannot load QA dataset NQ" in err
    assert HEADER not in out


# ----------------------------------------------------------------------- the docs
def test_docs_examples_run(tmp_path, monkeypatch, capsys):
    """Every ```python block of docs/agents.md runs, in order, in one namespace."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "agents.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.DOTALL)
    assert len(blocks) >= 6
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for i, block in enumerate(blocks):
        exec(compile(block, f"docs/agents.md block {i}", "exec"), namespace)
    printed = capsys.readouterr().out
    assert "search Baldra Dordra 1" in printed and "4 [1 1 1 1]" in printed
    assert HEADER in printed
    saved = json.loads((tmp_path / "runs" / "search-once.json").read_text())
    assert {r["method"] for r in saved["results"]} == {"search", "rag", "oracle"}
    assert all(t.searches == 1 for t in namespace["trajectories"])
