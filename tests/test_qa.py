"""Tests for search_env.data.qa: local formats, dispatch, registry, offline hub errors."""

from __future__ import annotations

import gzip
import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from search_env.data import qa
from search_env.data.qa import (
    DATASETS,
    DatasetUnavailableError,
    get_dataset_info,
    load_flashrag_jsonl,
    load_hub_dataset,
    load_qa,
    load_searchr1_parquet,
)
from search_env.types import QAExample

ROWS = [
    {"id": "test_0", "question": "who wrote hamlet", "golden_answers": ["Shakespeare", "W. S."]},
    {"id": 7, "question": "capital of france?", "golden_answers": "Paris", "metadata": {"k": 1}},
]

PROMPT = "Answer the given question. ... For example, <answer> Beijing </answer>. Question: {q}\n"


def _write_jsonl(path: Path, rows: list, opener=open) -> Path:
    with opener(path, "wt", encoding="utf-8") as f:
        for row in rows:
            f.write((row if isinstance(row, str) else json.dumps(row)) + "\n")
    return path


def _searchr1_table(with_question: bool) -> pa.Table:
    """Two rows in the schema of Search-R1's qa_search_*_merge.py output."""
    questions = ["who wrote hamlet?", "capital of france?"]
    data = {
        "data_source": ["nq", "hotpotqa"],
        "prompt": [[{"role": "user", "content": PROMPT.format(q=q)}] for q in questions],
        "ability": ["fact-reasoning"] * 2,
        "reward_model": [
            {"style": "rule", "ground_truth": {"target": ["Shakespeare"]}},
            {"style": "rule", "ground_truth": {"target": ["Paris", "Paris, France"]}},
        ],
        "extra_info": [{"split": "train", "index": 0}, {"split": "train", "index": 5}],
    }
    if with_question:
        data = {
            "id": ["train_0", "train_5"],
            "question": questions,
            "golden_answers": [["Shakespeare"], ["Paris", "Paris, France"]],
            **data,
        }
    return pa.table(data)


# --------------------------------------------------------------------------- FlashRAG


def test_jsonl_basic_and_tolerant_fields(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "test.jsonl", ROWS + [""])  # trailing blank line
    examples = load_flashrag_jsonl(path)
    assert examples == [
        QAExample("test_0", "who wrote hamlet", ("Shakespeare", "W. S.")),
        QAExample("7", "capital of france?", ("Paris",)),  # int id, string answer
    ]
    assert examples[1].metadata == {"k": 1}
    assert examples[0].metadata == {}


def test_jsonl_gz_and_json_array(tmp_path: Path) -> None:
    gz = _write_jsonl(tmp_path / "test.jsonl.gz", ROWS, opener=gzip.open)
    arr = tmp_path / "test.json"
    arr.write_text(json.dumps(ROWS))
    assert load_flashrag_jsonl(gz) == load_flashrag_jsonl(arr)
    assert [e.id for e in load_flashrag_jsonl(gz)] == ["test_0", "7"]


def test_jsonl_missing_id_gets_position(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "x.jsonl", [{"question": "q", "golden_answers": [1990]}])
    (ex,) = load_flashrag_jsonl(path)
    assert ex.id == "0" and ex.golden_answers == ("1990",)


@pytest.mark.parametrize(
    ("bad_line", "reason"),
    [
        ('{"id": 1, "question": "q"', "invalid JSON"),
        ('{"id": 1, "golden_answers": ["a"]}', "question"),
        ('{"id": 1, "question": "q"}', "golden_answers"),
        ('{"id": 1, "question": "q", "golden_answers": []}', "empty"),
        ('{"id": 1, "question": "  ", "golden_answers": ["a"]}', "question"),
        ('["not", "an", "object"]', "JSON object"),
    ],
)
def test_jsonl_malformed_names_file_and_line(tmp_path: Path, bad_line: str, reason: str) -> None:
    path = _write_jsonl(tmp_path / "bad.jsonl", [ROWS[0], "", bad_line])
    with pytest.raises(ValueError, match=reason) as err:
        load_flashrag_jsonl(path)
    assert f"{path}:3" in str(err.value)


# --------------------------------------------------------------------------- Search-R1


@pytest.mark.parametrize("with_question", [True, False])
def test_searchr1_parquet(tmp_path: Path, with_question: bool) -> None:
    path = tmp_path / "train.parquet"
    pq.write_table(_searchr1_table(with_question), path)
    examples = load_searchr1_parquet(path)
    assert [e.question for e in examples] == ["who wrote hamlet?", "capital of france?"]
    assert [e.golden_answers for e in examples] == [("Shakespeare",), ("Paris", "Paris, France")]
    expected_ids = ["train_0", "train_5"] if with_question else ["nq_train_0", "hotpotqa_train_5"]
    assert [e.id for e in examples] == expected_ids
    assert examples[1].metadata["data_source"] == "hotpotqa"
    assert examples[1].metadata["extra_info"] == {"split": "train", "index": 5}


def test_searchr1_rows_from_pandas_numpy_arrays(tmp_path: Path) -> None:
    # pandas returns list columns as numpy arrays; the row converter must cope.
    path = tmp_path / "test.parquet"
    pq.write_table(_searchr1_table(with_question=False), path)
    df = pq.read_table(path).to_pandas()
    assert type(df.iloc[1]["reward_model"]["ground_truth"]["target"]).__name__ == "ndarray"
    ex = qa.searchr1_example(df.iloc[1].to_dict(), 1)
    assert ex.question == "capital of france?"
    assert ex.golden_answers == ("Paris", "Paris, France")


def test_searchr1_string_target_and_last_question_marker() -> None:
    row = {
        "data_source": "nq",
        "prompt": [
            {"role": "system", "content": "Question: not this"},
            {"role": "user", "content": "Example. Question: old\nQuestion:  the real one? \n"},
        ],
        "reward_model": {"ground_truth": {"target": "42"}},
    }
    ex = qa.searchr1_example(row, 3)
    assert (ex.id, ex.question, ex.golden_answers) == ("nq_3", "the real one?", ("42",))


def test_searchr1_bad_row_names_file_and_row(tmp_path: Path) -> None:
    path = tmp_path / "bad.parquet"
    pq.write_table(
        pa.table(
            {
                "data_source": ["nq"],
                "prompt": [[{"role": "user", "content": "hi"}]],
                "reward_model": [{"ground_truth": {"target": ["a"]}}],
            }
        ),
        path,
    )
    with pytest.raises(ValueError, match=r"bad\.parquet: row 0: .*Question: "):
        load_searchr1_parquet(path)


# --------------------------------------------------------------------------- dispatch


def test_load_qa_dispatches_files_and_directories(tmp_path: Path) -> None:
    _write_jsonl(tmp_path / "test.jsonl", ROWS)
    pq.write_table(_searchr1_table(with_question=False), tmp_path / "train.parquet")
    assert load_qa(tmp_path / "test.jsonl") == load_flashrag_jsonl(tmp_path / "test.jsonl")
    assert load_qa(str(tmp_path / "train.parquet"))[0].id == "nq_train_0"
    assert [e.id for e in load_qa(tmp_path)] == ["test_0", "7"]  # default split "test"
    assert [e.id for e in load_qa(tmp_path, split="train")] == ["nq_train_0", "hotpotqa_train_5"]
    with pytest.raises(FileNotFoundError, match=r"'dev'.*dev\.jsonl.*dev\.parquet"):
        load_qa(tmp_path, split="dev")


def test_load_qa_unknown_sources(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="neither an existing file.*NQ.*Bamboogle"):
        load_qa("not_a_dataset")
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        load_qa(tmp_path / "missing.jsonl")
    other = tmp_path / "x.csv"
    other.write_text("a,b\n")
    with pytest.raises(ValueError, match="unsupported QA file type"):
        load_qa(other)


def test_load_qa_name_goes_to_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def fake_hub(name, split=None):
        calls.append((name, split))

    monkeypatch.setattr(qa, "load_hub_dataset", fake_hub)
    load_qa("hotpotqa")
    load_qa("2WIKI", split="train")
    assert calls == [("hotpotqa", None), ("2WIKI", "train")]


# --------------------------------------------------------------------------- registry / hub


def test_registry_matches_reference() -> None:
    names = ["NQ", "TriviaQA", "PopQA", "HotpotQA", "2Wiki", "Musique", "Bamboogle"]
    assert list(DATASETS) == names
    eval_sizes = {n: i.sizes[i.eval_split] for n, i in DATASETS.items()}
    assert eval_sizes == {
        "NQ": 3610,
        "TriviaQA": 11313,
        "PopQA": 14267,
        "HotpotQA": 7405,
        "2Wiki": 12576,
        "Musique": 2417,
        "Bamboogle": 125,
    }
    assert sum(eval_sizes.values()) == 51_713
    assert DATASETS["NQ"].sizes["train"] + DATASETS["HotpotQA"].sizes["train"] == 169_615
    assert {i.eval_split for i in DATASETS.values()} == {"test", "dev"}
    assert get_dataset_info("2wikimultihopqa") is get_dataset_info("2wiki") is DATASETS["2Wiki"]
    assert DATASETS["PopQA"].train_split is None and DATASETS["PopQA"].splits == ("test",)


def test_unknown_name_and_split() -> None:
    with pytest.raises(ValueError, match="Valid names: NQ \\(nq\\).*Bamboogle \\(bamboogle\\)"):
        load_hub_dataset("squadv9")
    with pytest.raises(ValueError, match="PopQA has no split 'train'; FlashRAG provides test"):
        load_hub_dataset("popqa", "train")


def _fake_load_dataset(rows):
    def fake(repo, config, split=None, cache_dir=None):
        fake.calls.append((repo, config, split))
        return rows

    fake.calls = []
    return fake


def test_hub_rows_and_size_warning(monkeypatch, caplog) -> None:
    datasets = pytest.importorskip("datasets")

    fake = _fake_load_dataset(ROWS)
    monkeypatch.setattr(datasets, "load_dataset", fake)
    with caplog.at_level(logging.WARNING, logger=qa.__name__):
        examples = load_hub_dataset("Musique")
    assert fake.calls == [("RUC-NLPIR/FlashRAG_datasets", "musique", "dev")]
    assert [e.id for e in examples] == ["test_0", "7"]
    assert "Musique split dev has 2 rows" in caplog.text and "2417" in caplog.text


def test_hub_connection_error_becomes_clear_error(monkeypatch) -> None:
    datasets = pytest.importorskip("datasets")

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'RUC-NLPIR/FlashRAG_datasets' on the Hub")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DatasetUnavailableError) as err:
        load_qa("NQ")
    msg = str(err.value)
    assert isinstance(err.value, RuntimeError)
    for needle in (
        "'RUC-NLPIR/FlashRAG_datasets'",
        "config 'nq'",
        "split 'test'",
        "--repo-type dataset --include 'nq/*'",
        "huggingface-cli download",
        'dataset="data/flashrag/nq/test.jsonl"',
        "ConnectionError",
    ):
        assert needle in msg


def test_real_datasets_offline_mode_fails_fast(tmp_path: Path) -> None:
    """The real ``datasets.load_dataset`` in offline mode, in a subprocess (env read at import)."""
    pytest.importorskip("datasets")
    code = textwrap.dedent(
        f"""
        from search_env.data.qa import load_hub_dataset, DatasetUnavailableError
        try:
            load_hub_dataset("HotpotQA", cache_dir={str(tmp_path / "cache")!r})
        except DatasetUnavailableError as e:
            print("UNAVAILABLE", e)
        """
    )
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf_home"),
    }
    root = Path(__file__).resolve().parents[1]
    env["PYTHONPATH"] = os.pathsep.join([str(root), env.get("PYTHONPATH", "")])
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60, cwd=root
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("UNAVAILABLE")
    assert "config 'hotpotqa', split 'dev'" in out.stdout
