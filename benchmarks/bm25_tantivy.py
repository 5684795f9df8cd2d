"""tantivy as an engine of ``bench_bm25_scale.py`` (pip install 'search-env[bm25-bench]').

tantivy's BM25 has k1=1.2, b=0.75 fixed; its analyzer is configured like search-env's:
the same token pattern, lower-case, bm25s' English stopwords, Snowball English stemmer.
A passage's row in the corpus is stored with it.
"""

from __future__ import annotations

import os
import resource
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from benchmarks.bm25_corpus import passage_texts


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _tantivy_analyzer() -> Any:
    import tantivy
    from bm25s.stopwords import STOPWORDS_EN

    from search_env.retrievers.bm25.params import TOKEN_PATTERN

    return (
        tantivy.TextAnalyzerBuilder(tantivy.Tokenizer.regex(TOKEN_PATTERN.replace("(?u)", "")))
        .filter(tantivy.Filter.lowercase())
        .filter(tantivy.Filter.custom_stopword(list(STOPWORDS_EN)))
        .filter(tantivy.Filter.stemmer("english"))
        .build()
    )


def _tantivy_schema() -> Any:
    import tantivy

    sb = tantivy.SchemaBuilder()
    sb.add_text_field("body", stored=False, tokenizer_name="se")
    sb.add_unsigned_field("row", stored=True)
    return sb.build()


def build_tantivy(corpus: str, out: str) -> dict[str, Any]:
    import tantivy

    base = _peak_rss_mb()
    start = time.perf_counter()
    os.makedirs(out, exist_ok=True)
    index = tantivy.Index(_tantivy_schema(), path=out)
    index.register_tokenizer("se", _tantivy_analyzer())
    writer = index.writer(heap_size=256_000_000, num_threads=2)
    for row, text in enumerate(passage_texts(Path(corpus))):
        writer.add_document(tantivy.Document(body=text, row=row))
    writer.commit()
    writer.wait_merging_threads()
    return {
        "build_s": time.perf_counter() - start,
        "rss_before_mb": base,
        "peak_rss_mb": _peak_rss_mb(),
    }


class Tantivy:
    name = "tantivy"

    def __init__(self, index_dir: Path) -> None:
        import tantivy

        start = time.perf_counter()
        self.index = tantivy.Index.open(str(index_dir))
        self.index.register_tokenizer("se", _tantivy_analyzer())
        self.index.reload()
        self.searcher = self.index.searcher()
        self.load_s = time.perf_counter() - start

    def _one(self, query: str, k: int) -> list[tuple[int, float]]:
        try:
            q = self.index.parse_query(query, ["body"])
        except ValueError:
            return []
        hits = self.searcher.search(q, k).hits
        return [(int(self.searcher.doc(addr)["row"][0]), float(s)) for s, addr in hits]

    def run(
        self, queries: list[str], k: int, threads: int, batch: int
    ) -> list[list[tuple[int, float]]]:
        if threads == 1:
            return [self._one(q, k) for q in queries]
        with ThreadPoolExecutor(threads) as pool:
            return list(pool.map(lambda q: self._one(q, k), queries, chunksize=64))
