"""Text analysis: the one bm25s tokenizer for corpus and queries, and the query encoder.

One bm25s `Tokenizer` does both sides: it builds the vocabulary while the corpus is
indexed, and queries go through the same lower-casing, splitter, stopword list, stemmer
and vocabulary (`QueryEncoder`, a query-side copy of bm25s' logic that never grows the
vocabulary, tested against ``Tokenizer.tokenize(update_vocab=False)``). This avoids the
FlashRAG pitfall of indexing stemmed text and querying unstemmed text.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from search_env.retrievers.bm25.params import TOKEN_PATTERN, BM25Params
from search_env.retrievers.bm25.tokenizing import split_words

if TYPE_CHECKING:
    from bm25s.tokenization import Tokenizer

__all__ = ["WORD_CACHE_SIZE", "QueryEncoder", "import_bm25s", "make_tokenizer"]

WORD_CACHE_SIZE = 1 << 20
"""Query words whose ids `QueryEncoder` remembers (stemming is the slow part)."""
_UNSEEN: Any = object()


def import_bm25s() -> Any:
    """The bm25s module, or an ImportError naming what to install."""
    try:
        import bm25s
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("BM25Retriever needs bm25s: pip install bm25s PyStemmer") from e
    return bm25s


def make_tokenizer(params: BM25Params) -> Tokenizer:
    """The one tokenizer used for the corpus and for queries."""
    bm25s = import_bm25s()
    stemmer = None
    if params.stemmer is not None:
        try:
            import Stemmer
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise ImportError("stemming needs PyStemmer: pip install PyStemmer") from e
        stemmer = Stemmer.Stemmer(params.stemmer)
    return bm25s.tokenization.Tokenizer(
        lower=True, splitter=TOKEN_PATTERN, stopwords=params.stopwords, stemmer=stemmer
    )


class QueryEncoder:
    """Query text -> vocabulary ids, as bm25s' ``streaming_tokenize`` without growth.

    Stopwords and words outside the vocabulary are dropped; a repeated word keeps every
    occurrence (it counts once per occurrence in the score, as in bm25s and Lucene).
    """

    def __init__(self, tokenizer: Tokenizer) -> None:
        self._tokenizer = tokenizer
        self.vocab: dict[str, int] = tokenizer.get_vocab_dict()
        self._stopwords = frozenset(tokenizer.stopwords or ())
        self._word_ids: dict[str, int | None] = {}
        pattern = getattr(getattr(tokenizer.splitter, "__self__", None), "pattern", None)
        # split_words is bm25s' lower-case + regex split, done faster (plus one-letter
        # words, dropped in _word_id); any other splitter is called as bm25s would.
        self._fast_split = bool(tokenizer.lower) and pattern == TOKEN_PATTERN

    def encode(self, query: str) -> list[int]:
        """Token ids of ``query``.

        Raises:
            TypeError: If ``query`` is not a str.
        """
        if not isinstance(query, str):
            raise TypeError(f"each query must be a str, got {type(query).__name__}")
        if self._fast_split:
            words = split_words(query)
        else:
            words = self._tokenizer.splitter(query.lower() if self._tokenizer.lower else query)
        cache = self._word_ids
        ids = []
        for word in words:
            wid = cache.get(word, _UNSEEN)
            if wid is _UNSEEN:
                wid = self._word_id(word)
                if len(cache) >= WORD_CACHE_SIZE:
                    cache.clear()  # bounded, unlike bm25s' word_to_id, which grows with every query
                cache[word] = wid
            if wid is not None:
                ids.append(wid)
        return ids

    def _word_id(self, word: str) -> int | None:
        """The vocabulary id of one split word; None for stopwords and unknown words."""
        if len(word) < 2 or word in self._stopwords:
            return None
        stemmer = self._tokenizer.stemmer
        return self.vocab.get(stemmer(word) if stemmer is not None else word)
