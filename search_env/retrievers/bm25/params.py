"""BM25 parameters and the choice of search backend and thread count."""

from __future__ import annotations

from dataclasses import dataclass

from search_env.retrievers._index_files import available_cpus

__all__ = [
    "BACKENDS",
    "METHODS",
    "PRUNABLE_METHODS",
    "TOKEN_PATTERN",
    "BM25Params",
    "resolve_backend",
    "resolve_threads",
    "resolve_workers",
]

TOKEN_PATTERN = r"(?u)\b\w\w+\b"  # bm25s' default: words of two or more characters
METHODS = ("lucene", "robertson", "atire", "bm25l", "bm25+")
PRUNABLE_METHODS = ("lucene", "atire")
"""Methods the pruned backend can score: term scores >= 0 and no per-document baseline
(robertson's idf goes negative for common terms; bm25l/bm25+ give every passage a score)."""
BACKENDS = ("auto", "pruned", "exhaustive", "numpy")
"""Search backends:

* ``pruned``: exact top-k by MaxScore dynamic pruning (numba), the default;
* ``exhaustive``: bm25s' numba scorer, a corpus-sized score array per query (the reference);
* ``numpy``: bm25s' numpy scorer (no numba compile; tiny corpora);
* ``auto``: ``pruned`` when numba is installed and the method allows it, else
  ``exhaustive``, else ``numpy``.
"""


@dataclass(frozen=True)
class BM25Params:
    """BM25 scoring and text-analysis parameters (Pyserini's defaults)."""

    k1: float = 0.9
    """Term-frequency saturation."""
    b: float = 0.4
    """Document-length normalization."""
    method: str = "lucene"
    """bm25s scoring variant: lucene, robertson, atire, bm25l or bm25+."""
    stemmer: str | None = "english"
    """PyStemmer (Snowball) language, or None for no stemming."""
    stopwords: str | None = "en"
    """bm25s stopword list name ("en", "de", ...), or None to keep every word."""

    def __post_init__(self) -> None:
        if self.k1 < 0:
            raise ValueError(f"k1 must be >= 0, got {self.k1}")
        if not 0 <= self.b <= 1:
            raise ValueError(f"b must be in [0, 1], got {self.b}")
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")


def has_numba() -> bool:
    """Whether numba imports (it comes with ``bm25s[core]``)."""
    try:
        import numba  # noqa: F401
    except ImportError:  # pragma: no cover - depends on the environment
        return False
    return True


def resolve_backend(backend: str, method: str) -> str:
    """The concrete backend for ``backend`` (see `BACKENDS`) and a scoring ``method``.

    Raises:
        ValueError: For an unknown name, or ``pruned`` with a method it cannot score.
        ImportError: For ``pruned``/``exhaustive`` without numba.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        if not has_numba():  # pragma: no cover - depends on the environment
            return "numpy"
        return "pruned" if method in PRUNABLE_METHODS else "exhaustive"
    if backend == "pruned" and method not in PRUNABLE_METHODS:
        raise ValueError(
            f"backend 'pruned' scores methods {PRUNABLE_METHODS}, not {method!r}; "
            "use backend='exhaustive'"
        )
    if backend != "numpy" and not has_numba():  # pragma: no cover - depends on the environment
        raise ImportError(f"backend {backend!r} needs numba: pip install numba")
    return backend


def resolve_threads(n_threads: int) -> int:
    """Turns ``-1`` into all usable cores, capped by numba's thread pool size."""
    if isinstance(n_threads, bool) or not isinstance(n_threads, int):
        raise TypeError(f"n_threads must be an int, got {type(n_threads).__name__}")
    if n_threads == -1:
        n_threads = available_cpus()
    if n_threads < 1:
        raise ValueError(f"n_threads must be >= 1 or -1 (all cores), got {n_threads}")
    if has_numba():
        import numba

        n_threads = min(n_threads, numba.config.NUMBA_NUM_THREADS)
    return n_threads


def resolve_workers(n_workers: int) -> int:
    """Tokenizer processes for an index build: ``-1`` means all usable cores.

    Raises:
        TypeError: If ``n_workers`` is not an int.
        ValueError: If it is not >= 1 or -1.
    """
    if isinstance(n_workers, bool) or not isinstance(n_workers, int):
        raise TypeError(f"n_workers must be an int, got {type(n_workers).__name__}")
    if n_workers == -1:
        return available_cpus()
    if n_workers < 1:
        raise ValueError(f"n_workers must be >= 1 or -1 (all cores), got {n_workers}")
    return n_workers
