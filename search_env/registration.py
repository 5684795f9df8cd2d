"""Environment ids, and the factories behind them.

``SearchQA-Synth-v0`` runs fully offline on the built-in synthetic world.
``SearchQA-{NQ,TriviaQA,PopQA,HotpotQA,2Wiki,Musique,Bamboogle}-v0`` load a FlashRAG
dataset (hub or ``dataset=`` local file) and need a retriever (``retriever=`` or
``corpus=``) and, by default, the Qwen2.5 tokenizer Search-R1 uses (``Qwen/Qwen2.5-3B``;
with no hub, the identical copy built offline, ``tokenizer="qwen2.5"``).
``SearchQA-v0`` takes everything from the caller.

When pieces are missing (no network, no local files), one :class:`MissingPiecesError`
lists them all, with the ``gym.make(...)`` call that works once they are in place.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gymnasium as gym

from search_env.env import SearchQAEnv
from search_env.files import cache_dir
from search_env.hub import hub_offline, hub_reachable, unreachable_reason
from search_env.types import QAExample
from search_env.vector import SearchQAVectorEnv

if TYPE_CHECKING:
    from search_env.retrievers.base import Retriever

logger = logging.getLogger(__name__)

DATASET_NAMES = ("NQ", "TriviaQA", "PopQA", "HotpotQA", "2Wiki", "Musique", "Bamboogle")
DEFAULT_TOKENIZER = "Qwen/Qwen2.5-3B"


class TokenizerUnavailableError(RuntimeError):
    """A tokenizer named by hub id or path could not be loaded (offline, missing files)."""


class MissingPiecesError(RuntimeError):
    """Pieces a dataset env needs (tokenizer, dataset, retriever) are missing.

    Attributes:
        problems: piece name (``"tokenizer"``, ``"dataset"``, ``"retriever"``) -> the
            error that piece raised. The message lists every one, then the ``gym.make``
            call to run once they are in place.
    """

    def __init__(self, env_id: str, problems: dict[str, BaseException], call: str) -> None:
        self.problems = dict(problems)
        noun = "piece is" if len(problems) == 1 else f"{len(problems)} pieces are"
        lines = [f"cannot make {env_id}: the following {noun} missing."]
        for number, (piece, exc) in enumerate(problems.items(), start=1):
            lines += ["", f"{number}. {piece}: {exc}"]
        them = "it" if len(problems) == 1 else "them"
        lines += ["", f"With {them} in place, make the env with", f"    {call}"]
        super().__init__("\n".join(lines))


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
    """Resolve ``tokenizer=``.

    A tokenizer object is used as is; ``"synth"`` is the built-in synthetic-world BPE;
    ``"qwen2.5"`` / ``"qwen2.5-instruct"`` are Qwen2.5's tokenizers built offline (see
    :mod:`search_env.data.qwen`); anything else is a local directory or a hub id. When
    the hub cannot be reached, a hub id is looked up in the local cache only (at once,
    no retries). A general Qwen2.5 model's name that cannot be loaded falls back to the
    offline copy of its tokenizer, with a warning.
    """
    if not isinstance(spec, (str, Path)):
        return spec
    name = str(spec)
    if name == "synth":
        from search_env.synth.tokenizer import load_synth_tokenizer

        return load_synth_tokenizer()
    from search_env.data import qwen

    if name in qwen.VARIANTS:
        return qwen.load_qwen_tokenizer(name)
    local = Path(name).exists()
    reachable = local or hub_reachable()
    try:
        if reachable:
            return _from_pretrained(name)
        with hub_offline():
            return _from_pretrained(name)
    except Exception as exc:  # offline, missing repo, corrupt files
        fallback = None if local else qwen.offline_spec_for(name)
        if fallback is not None:
            why = (
                f"{unreachable_reason()} and it is not cached"
                if not reachable
                else f"loading it failed ({type(exc).__name__}: {exc})"
            )
            logger.warning(
                "tokenizer %r: %s; using its offline copy, tokenizer=%r "
                "(built from qwen-tokenizer's BPE ranks: the same ids)",
                name,
                why,
                fallback,
            )
            return qwen.load_qwen_tokenizer(fallback)
        why = "" if reachable else f"{unreachable_reason()}, and "
        raise TokenizerUnavailableError(
            f"could not load tokenizer {name!r}: {why}{type(exc).__name__}: {exc}. "
            "Without internet, download it elsewhere (`hf download Qwen/Qwen2.5-3B "
            "--include 'tokenizer*' --local-dir qwen-tok`) and pass tokenizer='qwen-tok'; "
            "use tokenizer='qwen2.5' (Qwen2.5's tokenizer, built offline); "
            "or pass a tokenizer object: "
            "gym.make(id, tokenizer=AutoTokenizer.from_pretrained(...))."
        ) from exc


NO_RETRIEVER = (
    "this env needs a retriever: pass retriever=<Retriever object, index directory or "
    "server URL> or corpus=<wiki-18 style JSONL> (a BM25 index is built and cached); "
    "`search-env download wiki18-corpus` fetches the Search-R1 corpus"
)


def load_retriever(
    retriever: Any = None,
    corpus: str | Path | None = None,
    *,
    backend: str = "auto",
    options: dict[str, Any] | None = None,
) -> Retriever:
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
        raise ValueError(NO_RETRIEVER)
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
        raise ValueError(
            "SearchQA-v0 needs dataset=<FlashRAG JSONL, Search-R1 parquet or directory>"
        )
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
    """Tokenizer, examples and retriever; every missing one is reported in one error.

    The retriever is only built (a BM25 index of ``corpus=`` can take long) once the
    tokenizer and the dataset are there.
    """
    from search_env.data.qa import DatasetUnavailableError

    if retriever is not None and corpus is not None:  # bad input: fail before any loading
        raise ValueError("pass retriever= or corpus=, not both")
    missing = (TokenizerUnavailableError, DatasetUnavailableError, FileNotFoundError, ImportError)
    problems: dict[str, BaseException] = {}
    tok: Any = None
    examples: Sequence[QAExample] | None = None
    try:
        tok = load_tokenizer(tokenizer)
    except missing as exc:
        problems["tokenizer"] = exc
    try:
        examples = load_dataset_examples(name, dataset, split)
    except missing as exc:
        problems["dataset"] = exc
    except ValueError as exc:
        if dataset is not None or name is not None:
            raise  # a bad file or split, not a missing piece
        problems["dataset"] = exc
    retriever_problem = _retriever_problem(retriever, corpus)
    if retriever_problem is not None:
        problems["retriever"] = retriever_problem
    if problems:
        raise MissingPiecesError(
            _env_id(name), problems, _make_call(name, dataset, split, corpus, retriever, tokenizer)
        ) from next(iter(problems.values()))
    assert examples is not None  # loaded, or problems["dataset"] raised above
    return (
        examples,
        load_retriever(retriever, corpus, backend=retriever_backend, options=retriever_options),
        tok,
    )


def _env_id(name: str | None) -> str:
    return "SearchQA-v0" if name is None else f"SearchQA-{name}-v0"


def _retriever_problem(retriever: Any, corpus: str | Path | None) -> BaseException | None:
    """Why ``retriever=``/``corpus=`` cannot give a retriever, checked without building it."""
    if retriever is None and corpus is None:
        return ValueError(NO_RETRIEVER)
    if corpus is not None and retriever is None and not Path(corpus).is_file():
        return FileNotFoundError(
            f"corpus={str(corpus)!r} is not a file; `search-env download wiki18-corpus "
            "--dest data` fetches the Search-R1 corpus to data/wiki-18.jsonl"
        )
    if isinstance(retriever, (str, Path)) and "://" not in str(retriever):
        if not Path(retriever).exists():
            return FileNotFoundError(
                f"retriever={str(retriever)!r} is neither an index directory nor a server URL"
            )
    return None


def _make_call(
    name: str | None,
    dataset: Any,
    split: str | None,
    corpus: str | Path | None,
    retriever: Any,
    tokenizer: Any,
) -> str:
    """The ``gym.make(...)`` line with every piece: the caller's, or where the data goes."""

    def shown(value: Any) -> str:
        if isinstance(value, (str, Path)):
            return repr(str(value))
        return f"<your {type(value).__name__} object>"

    args = [repr(_env_id(name))]
    if dataset is not None:
        args.append(f"dataset={shown(dataset)}")
    elif name is not None:
        from search_env.data.qa import get_dataset_info

        info = get_dataset_info(name)
        args.append(f"dataset='data/flashrag/{info.config}/{split or info.eval_split}.jsonl'")
    else:
        args.append("dataset='path/to/test.jsonl'")
    if split is not None and dataset is not None:
        args.append(f"split={split!r}")
    if retriever is not None:
        args.append(f"retriever={shown(retriever)}")
    else:
        args.append(f"corpus={shown(corpus if corpus is not None else 'data/wiki-18.jsonl')}")
    args.append(f"tokenizer={shown(tokenizer)}")
    return f"gym.make({', '.join(args)})"


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
    from search_env.synth.config import SynthConfig
    from search_env.synth.files import synth_world_dir
    from search_env.synth.questions import of_types
    from search_env.synth.tokenizer import world_tokenizer, world_tokenizer_spec

    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    config = SynthConfig.of_size(size, num_entities, seed)
    world_dir = synth_world_dir(size, num_entities, seed)
    examples = load_flashrag_jsonl(world_dir / f"{split}.jsonl")
    if question_types is not None:
        examples = of_types(examples, question_types)
    if retriever is None:
        retriever = _cached_bm25(world_dir / "corpus.jsonl", world_dir / "bm25", retriever_backend)
    vocab = world_tokenizer_spec(tokenizer) if isinstance(tokenizer, str) else None
    if vocab is not None:
        tok = world_tokenizer(config, world_dir, vocab)
    else:
        tok = load_tokenizer(tokenizer)
    retriever = load_retriever(retriever, backend=retriever_backend, options=retriever_options)
    return examples, retriever, tok


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


_SYNTH_KEYS = (
    "split",
    "size",
    "num_entities",
    "seed",
    "tokenizer",
    "retriever",
    "retriever_backend",
    "question_types",
    "retriever_options",
)
_DATA_KEYS = (
    "dataset",
    "split",
    "corpus",
    "retriever",
    "tokenizer",
    "retriever_backend",
    "retriever_options",
)


def _split_kwargs(
    kwargs: dict[str, Any], keys: Sequence[str]
) -> tuple[dict[str, Any], dict[str, Any]]:
    ours = {k: kwargs.pop(k) for k in list(kwargs) if k in keys}
    return ours, kwargs


def make_synth_env(**kwargs: Any) -> SearchQAEnv:
    """``SearchQA-Synth-v0``: the offline synthetic world with BM25 and the built-in tokenizer."""
    parts, env_kwargs = _split_kwargs(kwargs, _SYNTH_KEYS)
    examples, retriever, tok = _synth_parts(**parts)
    return SearchQAEnv(examples, retriever, tok, **env_kwargs)


def make_synth_vector_env(
    num_envs: int = 1, autoreset_mode: str = "next_step", **kwargs: Any
) -> SearchQAVectorEnv:
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
