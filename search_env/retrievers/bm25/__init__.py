"""BM25 retrieval over a passage corpus: bm25s' index, searched by exact dynamic pruning.

Defaults follow Pyserini's BM25 as Search-R1 uses it: Lucene scoring, ``k1=0.9``,
``b=0.4``, English Snowball stemming (PyStemmer) and English stopwords.

Modules:

* `params`: `BM25Params`, the backends (`params.BACKENDS`) and thread counts;
* `analyzer`: the one tokenizer for corpus and queries, and the query encoder;
* `building`: the streaming index build (passages spooled, token ids in one array);
* `csc`: the numba score-matrix builder (bm25s' arrays bit for bit, for ``lucene``);
* `files`: the index directory, its manifest and integrity checks;
* `bounds`: each term's and each block's largest score (the pruning bounds);
* `maxscore`: the numba block-max MaxScore kernel (exact top-k; why our own: its docstring);
* `scorers`: the pruned and exhaustive (bm25s) backends and threads per call;
* `retriever`: `BM25Retriever`.
"""

from search_env.retrievers.bm25.files import FORMAT_VERSION
from search_env.retrievers.bm25.params import BACKENDS, BM25Params
from search_env.retrievers.bm25.retriever import BM25Retriever

__all__ = ["BACKENDS", "BM25Params", "BM25Retriever", "FORMAT_VERSION"]
