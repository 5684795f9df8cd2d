"""The chunked tokenizer gives bm25s' ``streaming_tokenize`` ids exactly, for any workers."""

from __future__ import annotations

import multiprocessing as mp

import numpy as np
import pytest

pytest.importorskip("bm25s")
pytest.importorskip("Stemmer")
pytest.importorskip("numba")

import bm25s  # noqa: E402

from search_env.retrievers.bm25 import building, tokenizing  # noqa: E402
from search_env.retrievers.bm25.analyzer import make_tokenizer  # noqa: E402
from search_env.retrievers.bm25.params import BM25Params, resolve_workers  # noqa: E402
from search_env.retrievers.bm25.tokenizing import (  # noqa: E402
    ChunkSplitter,
    VocabMerger,
    tokenize_chunks,
)
from search_env.types import Passage  # noqa: E402

TRICKY = [
    "",
    "   \t\n ",
    "a b c d e",  # only one-letter words: an empty passage for bm25s
    "the of and a an",  # only stopwords
    "The THE tHe running Runs RUNNER ran",
    "don't can't rock'n'roll O'Neill l'homme it's",
    "state-of-the-art e-mail x-ray well--known -leading trailing-",
    "snake_case __init__ _a a_ __ _",
    "1 22 333 4.5 3,000,000 1e10 0x1F 2nd 10th 007",
    "Café naïve résumé façade Zürich São Paulo Ærø",
    "ΟΔΥΣΣΕΥΣ Σίσυφος ΣΑΣ σς",  # final sigma depends on context
    "İstanbul ı I ß STRASSE ﬁne ǅ",  # lower() changes length
    "東京 北京市 日本語のテキスト",
    "٣٤٥ ١٢ مرحبا بالعالم",
    "e\u0301cole cafe\u0301 n\u0303",  # combining marks
    "zero\u200bwidth joi\u200dner soft\u00adhyphen",
    "emoji 😀😀 a😀b xx😀yy",
    "𝐁𝐨𝐥𝐝 𝔉𝔯𝔞𝔨𝔱𝔲𝔯 ①② ²³ ½",
    "nul\x00byte ctrl\x01char\x7fdel",
    "tabs\tand\nnewlines\r\nmixed\x0bvt\x0cff",
    "<html><b>bold</b> &amp; entities</html> http://example.com/a_b?c=d",
    "running " * 3000,  # a very long passage
    " ".join(f"w{i}" for i in range(5000)),  # many distinct words
]

WORDS = "running runs runner alpha beta gamma the of and city cities norway x Café".split()


@pytest.fixture(autouse=True)
def workers_from_the_second_chunk(monkeypatch):
    """Workers start after one chunk (not LOCAL_CHUNKS), so small corpora exercise them."""
    monkeypatch.setattr(tokenizing, "LOCAL_CHUNKS", 1)


def test_a_corpus_of_few_chunks_starts_no_process(monkeypatch):
    monkeypatch.setattr(tokenizing, "LOCAL_CHUNKS", 4)

    def no_pool(n: int) -> None:
        raise AssertionError("a worker pool was started")

    monkeypatch.setattr(tokenizing, "_WorkerPool", no_pool)
    chunks = [["alpha beta", "gamma"]] * 4
    ids = [i for i, _ in tokenize_chunks(chunks, VocabMerger((), None), 2)]
    assert len(ids) == 4
    with pytest.raises(AssertionError, match="worker pool"):
        list(tokenize_chunks(chunks + [["delta"]], VocabMerger((), None), 2))


def _random_texts(seed: int, n: int) -> list[str]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        k = int(rng.integers(0, 30))
        out.append(" ".join(rng.choice(WORDS + TRICKY[:12], k)))
    return out


def _reference(texts: list[str], params: BM25Params) -> tuple[list[list[int]], dict[str, int]]:
    tok = make_tokenizer(params)
    ids = list(tok.streaming_tokenize(texts, update_vocab=True, allow_empty=True))
    return ids, tok.get_vocab_dict()


def _ours(
    texts: list[str], params: BM25Params, chunk: int, workers: int
) -> tuple[list[list[int]], dict[str, int]]:
    tok = make_tokenizer(params)
    merger = VocabMerger(tok.stopwords or (), tok.stemmer)
    chunks = [texts[i : i + chunk] for i in range(0, len(texts), chunk)]
    docs: list[list[int]] = []
    for ids, lengths in tokenize_chunks(chunks, merger, workers):
        assert ids.dtype == np.int32 and lengths.dtype == np.int64
        ends = np.cumsum(lengths)
        docs.extend(ids[e - n : e].tolist() for e, n in zip(ends, lengths))
    return docs, merger.vocab


PARAMS = [
    BM25Params(),
    BM25Params(stemmer=None),
    BM25Params(stopwords=None),
    BM25Params(stemmer=None, stopwords=None),
]


@pytest.mark.parametrize("params", PARAMS, ids=["stem+stop", "stop", "stem", "plain"])
@pytest.mark.parametrize(("chunk", "workers"), [(1000, 1), (3, 1), (3, 2), (1, 3)])
def test_tricky_and_random_text_gives_bm25s_ids(params, chunk, workers):
    texts = TRICKY + _random_texts(0, 200) + TRICKY[::-1]
    want_ids, want_vocab = _reference(texts, params)
    got_ids, got_vocab = _ours(texts, params, chunk, workers)
    assert got_ids == want_ids
    assert list(got_vocab.items()) == list(want_vocab.items())  # same ids, same order


@pytest.mark.parametrize("text", TRICKY)
def test_each_tricky_passage_alone(text):
    for params in PARAMS:
        assert _ours([text], params, 1, 1) == _reference([text], params)


def test_word_cache_resets_keep_the_ids(monkeypatch):
    # Tiny caches: the splitters and the merger start afresh many times.
    monkeypatch.setattr(tokenizing, "WORD_CACHE_LIMIT", 5)
    texts = _random_texts(1, 300) + TRICKY
    params = BM25Params()
    assert _ours(texts, params, 4, 1) == _reference(texts, params)
    splitter = ChunkSplitter(cache_limit=2)
    splitter.split(["alpha beta gamma"])
    assert splitter.split(["delta"]).reset


def _build(passages, **kwargs):
    return building.build_index(
        passages, BM25Params(), bm25s_backend="numpy", show_progress=False, tmp_dir=None, **kwargs
    )


def _bm25s_model(texts: list[str], params: BM25Params) -> bm25s.BM25:
    ids, vocab = _reference(texts, params)
    model = bm25s.BM25(k1=params.k1, b=params.b, method=params.method, backend="numpy")
    model.index(bm25s.tokenization.Tokenized(ids=ids, vocab=vocab), show_progress=False)
    return model


@pytest.mark.parametrize("workers", [1, 2])
def test_built_index_equals_bm25s_for_1_and_2_workers(monkeypatch, workers):
    monkeypatch.setattr(building, "CHUNK_PASSAGES", 7)  # many chunks, so workers start
    texts = _random_texts(2, 150) + TRICKY
    passages = [Passage(str(i), t) for i, t in enumerate(texts)]
    built = _build(passages, n_workers=workers)
    try:
        ref = _bm25s_model(texts, BM25Params())
        for name in ("data", "indices", "indptr"):
            np.testing.assert_array_equal(built.model.scores[name], ref.scores[name], name)
        assert list(built.model.vocab_dict.items()) == list(ref.vocab_dict.items())
        assert built.tokenizer.word_to_stem == {} and built.tokenizer.word_to_id == {}
        assert built.store.passage(len(texts) - 1).contents == texts[-1]
    finally:
        del built.store
        building.shutil.rmtree(built.spool_dir)
    assert not mp.active_children()


def test_dead_worker_raises_and_leaves_no_process():
    tok = make_tokenizer(BM25Params())
    merger = VocabMerger(tok.stopwords or (), tok.stemmer)
    # A non-str kills the worker that splits it (the build only sends str).
    chunks = [["alpha beta"], ["gamma"], [123], ["delta"]]
    with pytest.raises(RuntimeError, match="worker process died"):
        list(tokenize_chunks(chunks, merger, 2))  # type: ignore[arg-type]
    assert not mp.active_children()


def test_failing_corpus_with_workers_leaves_no_spool_or_process(monkeypatch, tmp_path):
    monkeypatch.setattr(building, "CHUNK_PASSAGES", 2)

    def passages():
        for i in range(20):
            yield Passage(str(i), f"alpha beta {i}")
        raise OSError("disk gone")

    with pytest.raises(OSError, match="disk gone"):
        building.build_index(
            passages(),
            BM25Params(),
            bm25s_backend="numpy",
            show_progress=False,
            tmp_dir=tmp_path,
            n_workers=2,
        )
    assert list(tmp_path.iterdir()) == []
    assert not mp.active_children()


@pytest.mark.parametrize("bad", [0, -2, 1.5, True, "2"])
def test_bad_worker_count_is_refused(bad):
    with pytest.raises((TypeError, ValueError), match="n_workers"):
        resolve_workers(bad)
    with pytest.raises((TypeError, ValueError), match="n_workers"):
        _build([Passage("0", "alpha")], n_workers=bad)


def test_all_cores_worker_count():
    assert resolve_workers(-1) >= 1


@pytest.mark.parametrize("params", PARAMS[:2], ids=["stem+stop", "stop"])
def test_query_encoder_fast_split_matches_bm25s(params):
    from search_env.retrievers.bm25.analyzer import QueryEncoder

    texts = TRICKY + _random_texts(3, 100)
    tok = make_tokenizer(params)
    list(tok.streaming_tokenize(texts, update_vocab=True, allow_empty=True))
    encoder = QueryEncoder(tok)
    assert encoder._fast_split
    queries = [q[:300] for q in TRICKY] + ["What is x-ray's Café?", "a b c", "I İ ß"]
    expected = tok.tokenize(queries, update_vocab=False, allow_empty=False, show_progress=False)
    assert [encoder.encode(q) for q in queries] == expected
    assert [encoder.encode(q) for q in queries] == expected  # from the word cache


def test_chunks_larger_than_a_pipe_buffer_do_not_deadlock():
    # Chunks and results of ~0.5 MB each, many more chunks than workers: a pool that
    # sends a worker its next chunk before reading its result blocks both for ever.
    import threading

    texts = [" ".join(f"w{i}x{j}" for j in range(60)) for i in range(3000)]
    chunks = [texts[i : i + 500] for i in range(0, len(texts), 500)]
    params = BM25Params(stemmer=None, stopwords=None)
    tok = make_tokenizer(params)
    merger = VocabMerger((), None)
    out: list[list[int]] = []

    def run() -> None:
        for ids, lengths in tokenize_chunks(chunks, merger, 2):
            ends = np.cumsum(lengths)
            out.extend(ids[e - n : e].tolist() for e, n in zip(ends, lengths))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout=120)
    assert not thread.is_alive(), "tokenize_chunks deadlocked"
    ref = list(tok.streaming_tokenize(texts, update_vocab=True, allow_empty=True))
    assert out == ref
