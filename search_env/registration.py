"""Environment ids, and the factories behind them.

``SearchQA-Synth-v0`` runs fully offline on the built-in synthetic world.
``SearchQA-{NQ,TriviaQA,PopQA,HotpotQA,2Wiki,Musique,Bamboogle}-v0`` load a FlashRAG
dataset (hub or ``dataset=`` local file) and need a retriever (``retriever=`` or
``corpus=``) and, by default, the Qwen2.5 tokenizer Search-R1 uses.
``SearchQA-v0`` takes everything from the caller.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import gymnasium as gym

from search_env.env import SearchQAEnv
from search_env.types import QAExample
from search_env.vector import SearchQAVectorEnv

if TYPE_CHECKING:
    from search_env.data.synth import SynthConfig

logger = logging.getLogger(__name__)

DATASET_NAMES = ("NQ", "TriviaQA", "PopQA", "HotpotQA", "2Wiki", "Musique", "Bamboogle")
DEFAULT_TOKENIZER = "Qwen/Qwen2.5-3B"
SYNTH_SIZES = {"tiny": 100, "small": 400, "medium": 5_000, "large": 100_000}


class TokenizerUnavailableError(RuntimeError):
    """A tokenizer named by hub id or path could not be loaded (offline, missing files)."""


def cache_dir() -> Path:
    """Where built worlds and indexes are kept: ``$SEARCH_ENV_CACHE`` or ``~/.cache/search_env``."""
    return Path(os.environ.get("SEARCH_ENV_CACHE") or Path.home() / ".cache" / "search_env")


_GENERIC_TOKENIZERS = ("TokenizersBackend", "PreTrainedTokenizerFast")


def _from_pretrained(name: str) -> Any:
    """``AutoTokenizer``, except for a local directory saved from a generic fast tokenizer.

    transformers 5 loads a directory's tokenizer by the *model* type in ``config.json``:
    a tiny Qwen2 saved with the synthetic BPE would come back as ``Qwen2Tokenizer``,
    whose pre-tokenizer splits text differently. The class the tokenizer was saved as
    wins here.
    """
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    config = Path(name) / "tokenizer_config.json"
    if config.is_file() and (Path(name) / "tokenizer.json").is_file():
        if json.loads(config.read_text()).get("tokenizer_class") in _GENERIC_TOKENIZERS:
            return PreTrainedTokenizerFast.from_pretrained(name)
    return AutoTokenizer.from_pretrained(name)


def load_tokenizer(spec: Any) -> Any:
    """A tokenizer object as is; ``"synth"`` for the built-in one; else a hub id or local path."""
    if not isinstance(spec, (str, Path)):
        return spec
    if str(spec) == "synth":
        from search_env.data.tokenizer import load_synth_tokenizer

        return load_synth_tokenizer()
    try:
        return _from_pretrained(str(spec))
    except Exception as exc:  # offline, missing repo, corrupt files
        raise TokenizerUnavailableError(
            f"could not load tokenizer {str(spec)!r} ({type(exc).__name__}: {exc}). "
            "Without internet, download it elsewhere (`hf download Qwen/Qwen2.5-3B "
            "--include 'tokenizer*' --local-dir qwen-tok`) and pass tokenizer='qwen-tok', "
            "or pass a tokenizer object: gym.make(id, tokenizer=AutoTokenizer.from_pretrained(...))."
        ) from exc


def load_retriever(
    retriever: Any = None,
    corpus: str | Path | None = None,
    *,
    backend: str = "auto",
    options: dict[str, Any] | None = None,
) -> Any:
    """Resolve ``retriever=`` / ``corpus=`` into a :class:`~search_env.retrievers.Retriever`.

    ``retriever`` may be an object with ``search``, the URL of a retrieval server
    (``http://127.0.0.1:8000``), or an index directory (BM25 or dense, by its manifest).
    ``corpus`` (a wiki-18 JSONL) builds a BM25 index once and caches it, keyed by the
    corpus hash. ``options`` (``retriever_options=`` of ``gym.make``) are keyword
    arguments of `RemoteRetriever` for a URL: ``timeout``, ``retries``, ``backoff``,
    ``max_backoff``, ``retry_window``, ``max_batch``, ``return_scores``.
    """
    if retriever is not None and corpus is not None:
        raise ValueError("pass retriever= or corpus=, not both")
    is_url = isinstance(retriever, str) and retriever.startswith(("http://", "https://"))
    if options is not None and not is_url:
        raise ValueError(
            "retriever_options= configures the client of a retrieval server: it needs "
            f"retriever='http://host:port', got retriever={retriever!r}"
        )
    if retriever is not None and not isinstance(retriever, (str, Path)):
        return retriever
    if retriever is not None:
        spec = str(retriever)
        if is_url:
            from search_env.retrievers.remote import RemoteRetriever

            return RemoteRetriever(spec, **(options or {}))
        from search_env.retrievers.loading import index_info, load_index

        kind = index_info(spec)["kind"]
        return load_index(spec, **({"backend": backend} if kind == "bm25" else {}))
    if corpus is None:
        raise ValueError(
            "this env needs a retriever: pass retriever=<Retriever object, index directory or "
            "server URL> or corpus=<wiki-18 style JSONL> (a BM25 index is built and cached)"
        )
    from search_env.data.corpus import corpus_fingerprint

    index_dir = cache_dir() / "bm25" / corpus_fingerprint(corpus)[:16]
    return _cached_bm25(Path(corpus), index_dir, backend, show_progress=True)


def load_dataset_examples(name: str | None, dataset: Any, split: str | None) -> Sequence[QAExample]:
    """Examples from ``dataset=`` (file, directory or list) or the hub name of ``name``."""
    from search_env.data.qa import get_dataset_info, load_qa

    if dataset is not None and not isinstance(dataset, (str, Path)):
        examples = list(dataset)
        if not all(isinstance(e, QAExample) for e in examples):
            raise TypeError("dataset= must be a path, a hub name or a sequence of QAExample")
        return examples
    if dataset is not None:
        return load_qa(dataset, split)
    if name is None:
        raise ValueError("SearchQA-v0 needs dataset=<FlashRAG JSONL, Search-R1 parquet or directory>")
    info = get_dataset_info(name)
    return load_qa(name, split or info.eval_split)


def _dataset_parts(
    name: str | None,
    dataset: Any = None,
    split: str | None = None,
    corpus: str | Path | None = None,
    retriever: Any = None,
    tokenizer: Any = DEFAULT_TOKENIZER,
    retriever_backend: str = "auto",
    retriever_options: dict[str, Any] | None = None,
) -> tuple[Sequence[QAExample], Any, Any]:
    tok = load_tokenizer(tokenizer)
    examples = load_dataset_examples(name, dataset, split)
    retriever = load_retriever(
        retriever, corpus, backend=retriever_backend, options=retriever_options
    )
    return examples, retriever, tok


def _synth_parts(
    split: str = "test",
    size: str = "small",
    num_entities: int | None = None,
    seed: int = 0,
    tokenizer: Any = "synth",
    retriever: Any = None,
    retriever_backend: str = "auto",
    question_types: Sequence[str] | None = None,
    retriever_options: dict[str, Any] | None = None,
) -> tuple[Sequence[QAExample], Any, Any]:
    from search_env.data.qa import load_flashrag_jsonl

    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    world_dir = synth_world_dir(size, num_entities, seed)
    examples = load_flashrag_jsonl(world_dir / f"{split}.jsonl")
    if question_types is not None:
        examples = _of_types(examples, question_types)
    if retriever is None:
        retriever = _cached_bm25(world_dir / "corpus.jsonl", world_dir / "bm25", retriever_backend)
    if isinstance(tokenizer, str) and tokenizer.split(":")[0] == "world":
        tok = _world_tokenizer(tokenizer, synth_config(size, num_entities, seed), world_dir)
    else:
        tok = load_tokenizer(tokenizer)
    retriever = load_retriever(retriever, backend=retriever_backend, options=retriever_options)
    return examples, retriever, tok


def _world_tokenizer(spec: str, config: SynthConfig, world_dir: Path) -> Any:
    """``tokenizer="world"`` or ``"world:VOCAB"``: a BPE trained on this synthetic world."""
    from search_env.data.tokenizer import WORLD_VOCAB_SIZE, world_tokenizer

    _, _, vocab = spec.partition(":")
    if vocab and not vocab.isdigit():
        raise ValueError(f"tokenizer={spec!r}: expected 'world' or 'world:<vocab size>'")
    return world_tokenizer(config, world_dir, int(vocab) if vocab else WORLD_VOCAB_SIZE)


SYNTH_QUESTION_TYPES = ("single", "bridge", "comparison")


def _of_types(examples: Sequence[QAExample], types: Sequence[str]) -> list[QAExample]:
    """The synthetic questions whose ``metadata["type"]`` is one of ``types``."""
    if isinstance(types, str):
        types = [types]
    bad = sorted(set(types) - set(SYNTH_QUESTION_TYPES))
    if bad or not types:
        raise ValueError(
            f"question_types must be a non-empty subset of {SYNTH_QUESTION_TYPES}, "
            f"got {list(types)!r}"
        )
    kept = [ex for ex in examples if ex.metadata.get("type") in types]
    if not kept:
        raise ValueError(f"no synthetic question of type {list(types)} in this split")
    return kept


def _cached_bm25(corpus: Path, index_dir: Path, backend: str, show_progress: bool = False) -> Any:
    """Load the BM25 index of ``corpus`` from ``index_dir``, building it on first use."""
    from search_env.retrievers.bm25 import BM25Retriever

    if not (index_dir / "manifest.json").exists():
        logger.info("building a BM25 index of %s in %s", corpus, index_dir)
        built = BM25Retriever.build(corpus, backend=backend, show_progress=show_progress)
        try:
            built.save(index_dir)
        except FileExistsError:  # another process saved it first: use theirs
            pass
    return BM25Retriever.load(index_dir, expected_corpus=corpus, backend=backend)


def synth_config(
    size: str = "small", num_entities: int | None = None, seed: int = 0
) -> SynthConfig:
    """The world config of ``size`` (or of ``num_entities``, when given)."""
    from search_env.data.synth import SynthConfig

    if size not in SYNTH_SIZES:
        raise ValueError(f"size must be one of {sorted(SYNTH_SIZES)}, got {size!r}")
    return SynthConfig(seed=seed, num_entities=num_entities or SYNTH_SIZES[size])


def synth_world_dir(size: str = "small", num_entities: int | None = None, seed: int = 0) -> Path:
    """The cached directory of a synthetic world (built on first use)."""
    from search_env.data.synth import build_cached

    config = synth_config(size, num_entities, seed)
    return build_cached(config, cache_dir() / "synth")


_SYNTH_KEYS = (
    "split", "size", "num_entities", "seed", "tokenizer", "retriever", "retriever_backend",
    "question_types", "retriever_options",
)
_DATA_KEYS = (
    "dataset", "split", "corpus", "retriever", "tokenizer", "retriever_backend",
    "retriever_options",
)


def _split_kwargs(kwargs: dict[str, Any], keys: Sequence[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    ours = {k: kwargs.pop(k) for k in list(kwargs) if k in keys}
    return ours, kwargs


def make_synth_env(**kwargs: Any) -> SearchQAEnv:
    """``SearchQA-Synth-v0``: the offline synthetic world with BM25 and the built-in tokenizer."""
    parts, env_kwargs = _split_kwargs(kwargs, _SYNTH_KEYS)
    examples, retriever, tok = _synth_parts(**parts)
    return SearchQAEnv(examples, retriever, tok, **env_kwargs)


def make_synth_vector_env(num_envs: int = 1, autoreset_mode: str = "next_step", **kwargs: Any) -> SearchQAVectorEnv:
    parts, env_kwargs = _split_kwargs(kwargs, _SYNTH_KEYS)
    examples, retriever, tok = _synth_parts(**parts)
    envs = [SearchQAEnv(examples, retriever, tok, **env_kwargs) for _ in range(num_envs)]
    return SearchQAVectorEnv(num_envs, envs=envs, autoreset_mode=autoreset_mode)


def make_dataset_env(name: str | None = None, **kwargs: Any) -> SearchQAEnv:
    """``SearchQA-{name}-v0`` and ``SearchQA-v0``."""
    parts, env_kwargs = _split_kwargs(kwargs, _DATA_KEYS)
    examples, retriever, tok = _dataset_parts(name, **parts)
    return SearchQAEnv(examples, retriever, tok, **env_kwargs)


def make_dataset_vector_env(
    name: str | None = None, num_envs: int = 1, autoreset_mode: str = "next_step", **kwargs: Any
) -> SearchQAVectorEnv:
    parts, env_kwargs = _split_kwargs(kwargs, _DATA_KEYS)
    examples, retriever, tok = _dataset_parts(name, **parts)
    envs = [SearchQAEnv(examples, retriever, tok, **env_kwargs) for _ in range(num_envs)]
    return SearchQAVectorEnv(num_envs, envs=envs, autoreset_mode=autoreset_mode)


ENV_IDS: tuple[str, ...] = (
    "SearchQA-Synth-v0",
    *(f"SearchQA-{n}-v0" for n in DATASET_NAMES),
    "SearchQA-v0",
)


def register_envs() -> None:
    """Register every id with Gymnasium (idempotent)."""
    here = "search_env.registration"
    specs: list[tuple[str, str, str, dict[str, Any]]] = [
        ("SearchQA-Synth-v0", "make_synth_env", "make_synth_vector_env", {}),
        ("SearchQA-v0", "make_dataset_env", "make_dataset_vector_env", {}),
    ]
    specs += [
        (f"SearchQA-{n}-v0", "make_dataset_env", "make_dataset_vector_env", {"name": n})
        for n in DATASET_NAMES
    ]
    for env_id, single, vector, kwargs in specs:
        if env_id not in gym.registry:
            gym.register(
                id=env_id,
                entry_point=f"{here}:{single}",
                vector_entry_point=f"{here}:{vector}",
                kwargs=kwargs,
            )
