"""Dense retrieval: a faiss index over passage embeddings.

`DenseRetriever.build` encodes a corpus chunk by chunk and writes an index directory::

    index.faiss                             the faiss index (flat, HNSW or IVF-PQ; inner product)
    passages.jsonl, passages.offsets.npy    the passages, found by byte offset
    manifest.json                           format version, encoder, index parameters, sizes, hashes

The build is resumable: each encoded chunk is saved under ``{index_dir}.partial/`` as
soon as it is done, named by its position and the sha256 of its passages, so a crash
loses at most the chunk being encoded and a rerun encodes only what is missing. The
flat index file is written by streaming the chunks to disk, so building it needs the
memory of one chunk, not of the whole index.

`DenseRetriever.load` verifies the manifest and memory-maps the index. With a GPU, a
flat index is copied to the GPU(s) in fp16, chunk by chunk (never the whole fp32 array
at once: see Search-R1 issues #54/#57), through faiss GPU when installed, else as
fp16 torch tensors searched by matmul + top-k. `DenseRetriever.from_published` reads
Search-R1's published ``e5_Flat.index`` and wiki-18 JSONL as they are.

Modules:

* ``retriever``: `DenseRetriever` (load, search);
* ``build``: the chunked, resumable build;
* ``flat_file``: the streamed writer of faiss' flat file layout;
* ``placement``: GPU/CPU placement and the torch matmul search;
* ``published``: Search-R1's published index and corpus;
* ``faiss_io``: the faiss import, threads and file reading;
* ``spec``: `IndexSpec` and the format constants.
"""

from search_env.retrievers.dense.published import published_corpus_offsets
from search_env.retrievers.dense.retriever import DenseRetriever
from search_env.retrievers.dense.spec import FORMAT_VERSION, IndexSpec

__all__ = ["DenseRetriever", "IndexSpec", "FORMAT_VERSION", "published_corpus_offsets"]
