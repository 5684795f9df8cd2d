"""BM25Retriever: ranking, batching, persistence and corruption detection."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from search_env.data.corpus import corpus_fingerprint, write_corpus
from search_env.retrievers.base import CorruptIndexError, Retriever
from search_env.retrievers.bm25 import BM25Retriever, analyzer, building, files
from search_env.types import Passage

PASSAGES = [
    Passage("0", '"Oslo"\nOslo is the capital and most populous city of Norway.'),
    Passage("1", '"Marathon"\nA marathon runner runs 42 kilometres in the race.'),
    Passage("2", '"Photosynthesis"\nPlants convert sunlight into chemical energy in chloroplasts.'),
    Passage(
        "3", '"Eiffel Tower"\nThe Eiffel Tower is a wrought-iron lattice tower in Paris, France.'
    ),
    Passage(
        "4", '"Python (language)"\nPython is a programming language created by Guido van Rossum.'
    ),
    Passage(
        "5", '"Mount Everest"\nEverest is the highest mountain above sea level, in the Himalayas.'
    ),
    Passage("6", '"Jazz"\nJazz music originated in New Orleans with blues and ragtime roots.'),
    Passage("7", '"Bergen"\nBergen is a rainy city on the west coast of Norway.'),
    Passage("8", '"Blank"\n'),
]
QUERIES = {
    "capital of Norway": "0",
    "who created the python programming language": "4",
    "tallest mountain in the himalayas": "5",
    "lattice tower paris": "3",
    "how do plants turn sunlight into energy": "2",
    "origins of jazz music": "6",
}
FAST = {"backend": "numpy", "show_progress": False}


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "corpus.jsonl"
    write_corpus(PASSAGES, path)
    return path


@pytest.fixture(scope="module")
def retriever(corpus_file) -> BM25Retriever:
    return BM25Retriever.build(corpus_file, **FAST)


@pytest.fixture(scope="module")
def saved_index(retriever, tmp_path_factory) -> Path:
    return retriever.save(tmp_path_factory.mktemp("idx") / "bm25")


@pytest.fixture
def index_copy(saved_index, tmp_path) -> Path:
    """A private copy of the saved index that a test may damage."""
    return Path(shutil.copytree(saved_index, tmp_path / "bm25"))


def _ids(results: list[list[Passage]]) -> list[list[str]]:
    return [[p.id for p in hits] for hits in results]


def test_is_a_retriever(retriever):
    assert isinstance(retriever, Retriever)
    assert len(retriever) == len(PASSAGES)


@pytest.mark.parametrize("query, expected", sorted(QUERIES.items()))
def test_right_passage_ranks_first(retriever, query, expected):
    (hits,) = retriever.search([query], k=3)
    assert hits[0].id == expected
    assert hits[0].contents == PASSAGES[int(expected)].contents


def test_results_sorted_positive_and_at_most_k(retriever):
    for hits in retriever.search(list(QUERIES), k=2):
        assert 1 <= len(hits) <= 2
        scores = [p.score for p in hits]
        assert all(isinstance(s, float) and s > 0 for s in scores)
        assert scores == sorted(scores, reverse=True)


def test_batch_equals_one_by_one(retriever):
    queries = [*QUERIES, "", "norway city", "xyzzy", "capital of Norway"]
    batch = retriever.search(queries, k=4)
    single = [retriever.search([q], k=4)[0] for q in queries]
    assert batch == single


def test_threads_do_not_change_results(retriever):
    queries = list(QUERIES) * 3
    assert retriever.search(queries, k=3, n_threads=1) == retriever.search(
        queries, k=3, n_threads=2
    )


def test_query_stemmed_like_the_corpus(retriever):
    # "running" never occurs in the corpus; only its stem "run" (from "runs") does.
    (hits,) = retriever.search(["running"], k=3)
    assert [p.id for p in hits] == ["1"]
    (hits,) = retriever.search(["RUNNERS Marathons"], k=3)
    assert hits[0].id == "1"


def test_query_encoding_matches_bm25s_tokenizer(retriever):
    queries = [
        "Running marathons!",
        "the of and",
        "",
        "Norway's capitals",
        "unknownword city",
        "É café",
    ]
    expected = retriever._tokenizer.tokenize(
        queries, update_vocab=False, allow_empty=False, show_progress=False
    )
    assert [retriever._encoder.encode(q) for q in queries] == expected


def test_query_word_cache_is_bounded(retriever, monkeypatch):
    expected = retriever.search(list(QUERIES), k=3)
    monkeypatch.setattr(analyzer, "WORD_CACHE_SIZE", 3)
    retriever._encoder._word_ids.clear()
    assert retriever.search(list(QUERIES), k=3) == expected
    assert len(retriever._encoder._word_ids) <= 3


def test_without_stemmer_inflections_do_not_match():
    r = BM25Retriever.build(PASSAGES, stemmer=None, **FAST)
    assert r.search(["running"], k=3) == [[]]
    assert r.search(["runs"], k=3)[0][0].id == "1"


@pytest.mark.parametrize("query", ["", "   \n\t", "the of and is", "xyzzy qwerty", "a ! ?"])
def test_empty_stopword_or_unknown_query_gets_no_results(retriever, query):
    results = retriever.search([query, "capital of Norway"], k=3)
    assert results[0] == []
    assert results[1][0].id == "0"


def test_all_empty_batch_and_empty_list(retriever):
    assert retriever.search(["", "the"], k=3) == [[], []]
    assert retriever.search([], k=3) == []


def test_k_larger_than_corpus_returns_every_match(retriever):
    (hits,) = retriever.search(["norway city"], k=1000)
    assert sorted(p.id for p in hits) == ["0", "7"]
    everything = " ".join(p.contents for p in PASSAGES)
    (hits,) = retriever.search([everything], k=1000)
    assert sorted(p.id for p in hits) == [p.id for p in PASSAGES]


@pytest.mark.parametrize("k", [0, -1])
def test_k_below_one_is_rejected(retriever, k):
    with pytest.raises(ValueError, match="k must be >= 1"):
        retriever.search(["norway"], k=k)


def test_bad_argument_types(retriever):
    with pytest.raises(TypeError):
        retriever.search("capital of Norway", k=3)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        retriever.search(["norway"], k=2.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        retriever.search([None], k=2)  # type: ignore[list-item]


def test_get_by_id(retriever):
    assert retriever.get("3") == PASSAGES[3]
    with pytest.raises(KeyError):
        retriever.get("99")
    named = BM25Retriever.from_passages(
        [Passage("b", '"B"\nbeta'), Passage("a", '"A"\nalpha')], **FAST
    )
    assert named.get("a").contents == '"A"\nalpha'


def test_empty_corpus_is_rejected():
    with pytest.raises(ValueError, match="empty corpus"):
        BM25Retriever.build([], **FAST)


def test_invalid_parameters_are_rejected():
    with pytest.raises(ValueError, match="method"):
        BM25Retriever.build(PASSAGES, method="tfidf", **FAST)
    with pytest.raises(ValueError, match="backend"):
        BM25Retriever.build(PASSAGES, backend="gpu", show_progress=False)


def test_gz_corpus_builds_the_same_index(corpus_file, retriever, tmp_path):
    gz = tmp_path / "corpus.jsonl.gz"
    write_corpus(PASSAGES, gz)
    from_gz = BM25Retriever.build(gz, **FAST)
    assert from_gz.search(list(QUERIES), k=3) == retriever.search(list(QUERIES), k=3)
    assert from_gz.corpus_info["sha256"] == corpus_fingerprint(gz)


def test_build_from_file_and_from_passages_agree(retriever):
    mem = BM25Retriever.from_passages(PASSAGES, **FAST)
    assert mem.search(list(QUERIES), k=5) == retriever.search(list(QUERIES), k=5)
    assert mem.corpus_info is None


@pytest.mark.parametrize("mmap", [True, False])
def test_save_load_round_trip(retriever, saved_index, mmap):
    loaded = BM25Retriever.load(saved_index, mmap=mmap, backend="numpy")
    queries = [*QUERIES, "running", "", "norway"]
    assert loaded.search(queries, k=4) == retriever.search(queries, k=4)
    assert len(loaded) == len(retriever)
    assert loaded.params == retriever.params
    assert loaded.get("5") == PASSAGES[5]
    assert isinstance(loaded._model.scores["data"], np.memmap) == mmap


def test_manifest_contents(saved_index, corpus_file):
    manifest = json.loads((saved_index / "manifest.json").read_text())
    assert manifest["format_version"] == files.FORMAT_VERSION
    assert manifest["package"] == "search_env"
    assert manifest["num_passages"] == len(PASSAGES)
    assert manifest["params"] == {
        "k1": 0.9,
        "b": 0.4,
        "method": "lucene",
        "stemmer": "english",
        "stopwords": "en",
    }
    assert manifest["corpus"]["sha256"] == corpus_fingerprint(corpus_file)
    listed = set(manifest["files"])
    assert listed == {p.name for p in saved_index.iterdir()} - {"manifest.json"}
    assert set(files.REQUIRED_FILES) <= listed
    assert all(rec["hash"] == "full" for rec in manifest["files"].values())


def test_expected_corpus_matches(saved_index, corpus_file, retriever):
    """The corpus the index was built from is accepted, and the index loads whole."""
    recorded = json.loads((saved_index / "manifest.json").read_text())["corpus"]
    assert recorded["sha256"] == corpus_fingerprint(corpus_file)
    loaded = BM25Retriever.load(saved_index, expected_corpus=corpus_file, backend="numpy")
    assert len(loaded) == len(retriever) == len(PASSAGES)
    results = loaded.search(list(QUERIES), k=3)
    assert [hits[0].id for hits in results] == list(QUERIES.values())
    assert _ids(results) == _ids(retriever.search(list(QUERIES), k=3))


def test_saved_index_of_a_loaded_index_loads(saved_index, tmp_path):
    again = BM25Retriever.load(saved_index, backend="numpy").save(tmp_path / "again")
    assert BM25Retriever.load(again, backend="numpy").search(["norway"], k=2)[0][0].id in {"0", "7"}


def test_save_is_atomic_and_refuses_to_overwrite(retriever, tmp_path, monkeypatch):
    target = tmp_path / "idx"
    retriever.save(target)
    with pytest.raises(FileExistsError):
        retriever.save(target)
    retriever.save(target, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx"]

    def crash(path):
        raise OSError("disk full")

    monkeypatch.setattr(files, "file_record", crash)
    with pytest.raises(OSError, match="disk full"):
        retriever.save(tmp_path / "new")
    with pytest.raises(OSError, match="disk full"):
        retriever.save(target, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx"]  # no partial index, no temp dir
    monkeypatch.undo()
    BM25Retriever.load(target, backend="numpy")


def test_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError):
        BM25Retriever.load(tmp_path / "nope")


# ---------------------------------------------------------------- corruption
def _load(index_dir: Path, **kwargs) -> BM25Retriever:
    return BM25Retriever.load(index_dir, backend="numpy", **kwargs)


@pytest.mark.parametrize(
    "name", ["data.csc.index.npy", "vocab.tokenizer.json", "passages.jsonl", "passages.offsets.npy"]
)
def test_deleted_file(index_copy, name):
    (index_copy / name).unlink()
    with pytest.raises(CorruptIndexError, match=f"missing file {name}") as err:
        _load(index_copy)
    assert str(index_copy) in str(err.value)


def test_missing_manifest(index_copy):
    (index_copy / "manifest.json").unlink()
    with pytest.raises(CorruptIndexError, match="missing manifest.json"):
        _load(index_copy)


def test_unreadable_manifest(index_copy):
    (index_copy / "manifest.json").write_text("{not json")
    with pytest.raises(CorruptIndexError, match="unreadable manifest.json"):
        _load(index_copy)


@pytest.mark.parametrize("name", ["indices.csc.index.npy", "passages.jsonl", "vocab.index.json"])
def test_truncated_file(index_copy, name):
    path = index_copy / name
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(CorruptIndexError, match=f"size mismatch for {name}"):
        _load(index_copy)


@pytest.mark.parametrize(
    "name", ["data.csc.index.npy", "passages.jsonl", "stopwords.tokenizer.json"]
)
def test_flipped_bytes(index_copy, name):
    path = index_copy / name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptIndexError, match=f"sha256 mismatch for {name}"):
        _load(index_copy)


@pytest.mark.parametrize("version", [2, 0, None, "1"])
def test_wrong_format_version(index_copy, version):
    path = index_copy / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["format_version"] = version
    path.write_text(json.dumps(manifest))
    with pytest.raises(CorruptIndexError, match="unsupported format version"):
        _load(index_copy)


def test_manifest_missing_a_required_entry(index_copy):
    path = index_copy / "manifest.json"
    manifest = json.loads(path.read_text())
    del manifest["files"]["indptr.csc.index.npy"]
    path.write_text(json.dumps(manifest))
    with pytest.raises(CorruptIndexError, match="does not list required file indptr.csc.index.npy"):
        _load(index_copy)


def test_different_corpus_fingerprint(index_copy, tmp_path):
    other = tmp_path / "other.jsonl"
    write_corpus([*PASSAGES, Passage("9", '"Extra"\nOne more passage.')], other)
    with pytest.raises(CorruptIndexError, match="corpus fingerprint mismatch"):
        _load(index_copy, expected_corpus=other)


def test_no_fingerprint_to_compare(tmp_path, corpus_file):
    index_dir = BM25Retriever.from_passages(PASSAGES, **FAST).save(tmp_path / "mem")
    with pytest.raises(CorruptIndexError, match="no corpus fingerprint"):
        _load(index_dir, expected_corpus=corpus_file)


def _rewrite_with_manifest(index_dir: Path, name: str, data: bytes) -> None:
    """Replaces a file *and* its manifest entry, so only the loader can notice."""
    (index_dir / name).write_bytes(data)
    path = index_dir / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["files"][name] = files.file_record(index_dir / name)
    path.write_text(json.dumps(manifest))


@pytest.mark.parametrize(
    "name, data",
    [
        ("data.csc.index.npy", b"\x93NUMPY garbage"),
        ("params.index.json", b"{broken"),
        ("vocab.tokenizer.json", b"[]"),
        ("passages.offsets.npy", b"not an array"),
    ],
)
def test_loader_errors_become_corrupt_index_error(index_copy, name, data):
    _rewrite_with_manifest(index_copy, name, data)
    with pytest.raises(CorruptIndexError, match="cannot load index files") as err:
        _load(index_copy)
    assert str(index_copy) in str(err.value)


def test_consistent_hashes_but_wrong_passage_count(index_copy):
    lines = (index_copy / "passages.jsonl").read_bytes().splitlines(keepends=True)
    _rewrite_with_manifest(index_copy, "passages.jsonl", b"".join(lines[:-1]))
    with pytest.raises(CorruptIndexError, match="passage offsets do not match"):
        _load(index_copy)


def test_large_files_hash_head_and_tail(retriever, tmp_path, monkeypatch):
    monkeypatch.setattr(files, "FULL_HASH_MAX_BYTES", 64)
    monkeypatch.setattr(files, "SAMPLE_BYTES", 16)
    index_dir = retriever.save(tmp_path / "idx")
    manifest = json.loads((index_dir / "manifest.json").read_text())
    assert manifest["files"]["passages.jsonl"]["hash"] == "head-tail-1MiB"
    _load(index_dir)
    path = index_dir / "passages.jsonl"
    data = bytearray(path.read_bytes())
    data[3] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptIndexError, match="sha256 mismatch for passages.jsonl"):
        _load(index_dir)


@pytest.mark.slow
def test_exhaustive_numba_backend_matches_numpy(retriever, saved_index):
    pytest.importorskip("numba")
    queries = [*QUERIES, "running", "", "norway city"]
    built = BM25Retriever.build(PASSAGES, backend="exhaustive", show_progress=False)
    loaded = BM25Retriever.load(saved_index, backend="exhaustive")
    expected = retriever.search(queries, k=3)
    assert built.search(queries, k=3) == expected
    assert loaded.search(queries, k=3, n_threads=2) == expected
    assert loaded.search(queries, k=100) == retriever.search(queries, k=100)


# ---------------------------------------------------------------- manifest file names
@pytest.mark.parametrize("name", ["../outside.bin", "/etc/hostname", "sub/file.npy", "..", "."])
def test_manifest_names_only_plain_files(index_copy, tmp_path, name):
    (tmp_path / "outside.bin").write_bytes(b"secret")
    path = index_copy / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["files"][name] = {"size": 6, "sha256": "0" * 64, "hash": "full"}
    path.write_text(json.dumps(manifest))
    with pytest.raises(CorruptIndexError, match="only plain file names") as err:
        _load(index_copy)
    assert repr(name) in str(err.value)


# ---------------------------------------------------------------- files left behind
def dead_pid() -> int:
    """The PID of a process that has exited (and been reaped)."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _stale_dir(parent: Path, prefix: str, pid: int) -> Path:
    import socket

    path = parent / f"{prefix}{socket.gethostname()}-{pid}-abc123"
    path.mkdir(parents=True)
    (path / "passages.jsonl").write_bytes(b"left by a killed process\n")
    return path


def test_build_spools_in_tmp_dir_and_removes_a_killed_builds_spool(corpus_file, tmp_path):
    import os

    stale = _stale_dir(tmp_path, building.SPOOL_PREFIX, dead_pid())
    alive = _stale_dir(tmp_path, building.SPOOL_PREFIX, os.getpid())  # a concurrent build
    r = BM25Retriever.build(corpus_file, tmp_dir=tmp_path, **FAST)
    assert not stale.exists() and alive.exists()
    spool = Path(r._store.path).parent
    assert spool.parent == tmp_path and spool.name.startswith(building.SPOOL_PREFIX)
    assert str(os.getpid()) in spool.name
    del r
    import gc

    gc.collect()
    assert not spool.exists()


def test_save_removes_a_killed_saves_staging_dir(retriever, tmp_path):
    stale = _stale_dir(tmp_path, ".idx.tmp-", dead_pid())
    stale_old = _stale_dir(tmp_path, ".idx.old-", dead_pid())
    other = _stale_dir(tmp_path, ".other.tmp-", dead_pid())  # another index's: not ours to judge
    retriever.save(tmp_path / "idx")
    retriever.save(tmp_path / "idx", overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["idx", other.name])
    assert not stale.exists() and not stale_old.exists()


def test_a_build_killed_mid_corpus_leaves_a_spool_the_next_build_removes(corpus_file, tmp_path):
    import subprocess
    import sys

    script = f"""
import os, signal
from search_env.retrievers.bm25 import BM25Retriever
from search_env.types import Passage

def passages():
    for i in range(100):
        if i == 50:
            os.kill(os.getpid(), signal.SIGKILL)  # no cleanup code runs
        yield Passage(str(i), "passage number " + str(i))

BM25Retriever.build(passages(), tmp_dir={str(tmp_path)!r}, backend="numpy", show_progress=False)
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True)
    assert proc.returncode == -9, proc.stderr.decode()
    (left,) = tmp_path.iterdir()  # the killed build's corpus copy
    assert left.name.startswith(building.SPOOL_PREFIX) and (left / "passages.jsonl").is_file()
    r = BM25Retriever.build(corpus_file, tmp_dir=tmp_path, **FAST)
    assert [p.name for p in tmp_path.iterdir()] == [Path(r._store.path).parent.name]
