"""Corpus reading, writing and fingerprinting."""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

import pytest

from search_env.data.corpus import corpus_fingerprint, iter_corpus, write_corpus
from search_env.types import Passage

PASSAGES = [
    Passage("0", '"Oslo"\nOslo is the capital of Norway.'),
    Passage("1", '"Zürich"\nZürich is the largest city in Switzerland.'),
    Passage("doc-2", '"Empty"\n'),
]


def _write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_reads_jsonl_with_int_and_str_ids_and_skips_blank_lines(tmp_path):
    path = _write_lines(
        tmp_path / "c.jsonl",
        [
            json.dumps({"id": 7, "contents": '"A"\nalpha'}),
            "",
            "   ",
            json.dumps({"id": "x8", "contents": '"B"\nbeta'}),
        ],
    )
    got = list(iter_corpus(path))
    assert got == [Passage("7", '"A"\nalpha'), Passage("x8", '"B"\nbeta')]
    assert got[0].title == '"A"' and got[0].text == "alpha"


def test_title_and_text_records_become_wiki18_contents(tmp_path):
    path = _write_lines(
        tmp_path / "c.jsonl", [json.dumps({"id": 1, "title": "Oslo", "text": "A city."})]
    )
    (p,) = iter_corpus(path)
    assert p.contents == '"Oslo"\nA city.'


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz"])
def test_write_then_read_round_trip(tmp_path, suffix):
    path = tmp_path / f"sub/corpus{suffix}"
    assert write_corpus(iter(PASSAGES), path) == len(PASSAGES)
    assert list(iter_corpus(path)) == PASSAGES
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == suffix.endswith(".gz")
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left


def test_gzip_is_detected_by_content_not_suffix(tmp_path):
    path = tmp_path / "corpus.data"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write(json.dumps({"id": 1, "contents": '"T"\nx'}) + "\n")
    assert list(iter_corpus(path)) == [Passage("1", '"T"\nx')]


def test_scores_are_not_written(tmp_path):
    path = tmp_path / "c.jsonl"
    write_corpus([PASSAGES[0].with_score(3.5)], path)
    assert json.loads(path.read_text(encoding="utf-8")) == {
        "id": "0",
        "contents": PASSAGES[0].contents,
    }


@pytest.mark.parametrize(
    "bad_line, expected",
    [
        ('{"id": 3, "contents": "x"', "line 3"),
        ('{"id": 3}', "contents"),
        ('{"contents": "x"}', "'id'"),
        ('{"id": 3, "contents": 5}', "contents"),
        ('{"id": [3], "contents": "x"}', "'id'"),
        ("[1, 2]", "JSON object"),
    ],
)
def test_malformed_line_names_file_and_line(tmp_path, bad_line, expected):
    good = json.dumps({"id": 1, "contents": '"T"\nx'})
    path = _write_lines(tmp_path / "bad.jsonl", [good, good, bad_line, good])
    with pytest.raises(ValueError) as err:
        list(iter_corpus(path))
    msg = str(err.value)
    assert "bad.jsonl" in msg and "line 3" in msg and expected in msg


def test_invalid_utf8_names_the_line(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_bytes(b'{"id": 1, "contents": "ok"}\n{"id": 2, "contents": "\xff\xfe"}\n')
    with pytest.raises(ValueError, match="line 2"):
        list(iter_corpus(path))


def test_truncated_gzip_raises_value_error(tmp_path):
    path = tmp_path / "c.jsonl.gz"
    write_corpus(PASSAGES * 50, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="gzip"):
        list(iter_corpus(path))


def test_missing_file_names_the_path(tmp_path):
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        list(iter_corpus(missing))
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        corpus_fingerprint(missing)


def test_fingerprint_is_sha256_of_the_bytes(tmp_path):
    path = tmp_path / "c.jsonl"
    write_corpus([Passage(str(i), f'"T{i}"\n' + "word " * 100) for i in range(5000)], path)
    assert path.stat().st_size > 2 << 20  # several read chunks
    assert corpus_fingerprint(path) == hashlib.sha256(path.read_bytes()).hexdigest()
    before = corpus_fingerprint(path)
    with open(path, "ab") as f:
        f.write(b"\n")
    assert corpus_fingerprint(path) != before
