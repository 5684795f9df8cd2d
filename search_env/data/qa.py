"""QA datasets: FlashRAG JSONL, Search-R1 parquet, and the Hugging Face hub.

Everything here returns ``list[QAExample]``. The seven Search-R1 evaluation datasets are
registered in :data:`DATASETS` under the short names used by env ids (``NQ``,
``HotpotQA``, ...); :func:`load_qa` accepts either such a name or a local file/directory.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import json
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, TextIO

from search_env.types import QAExample

logger = logging.getLogger(__name__)

HUB_REPO = "RUC-NLPIR/FlashRAG_datasets"
"""Hugging Face hub dataset holding FlashRAG's preprocessed QA sets."""

JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".json")
PARQUET_SUFFIXES = (".parquet",)


class DatasetUnavailableError(RuntimeError):
    """A hub dataset could not be loaded (offline, hub unreachable, not cached)."""


@dataclass(frozen=True)
class DatasetInfo:
    """One registered QA dataset.

    Attributes:
        name: Short name used in env ids (``"NQ"``).
        config: FlashRAG hub config (``"nq"``); also the folder name in the hub repo.
        eval_split: The split Search-R1 evaluates on (``test`` if FlashRAG has one,
            else ``dev``).
        train_split: The split to train on, or ``None`` when FlashRAG has no train split.
        sizes: Row counts of every FlashRAG split, as published by FlashRAG. The eval
            sizes are the Search-R1 reference's test sizes (51,713 rows in all).
        repo: Hub dataset repository.
    """

    name: str
    config: str
    eval_split: str
    train_split: str | None
    sizes: Mapping[str, int] = field(hash=False)
    repo: str = HUB_REPO

    @property
    def splits(self) -> tuple[str, ...]:
        """The splits FlashRAG provides for this dataset."""
        return tuple(self.sizes)


def _info(
    name: str, config: str, eval_split: str, train_split: str | None, **sizes: int
) -> DatasetInfo:
    return DatasetInfo(name, config, eval_split, train_split, MappingProxyType(sizes))


# Sizes from FlashRAG's dataset table (docs/original_docs/dataset_intro and the hub card);
# they agree with the Search-R1 paper's test sizes and NQ+HotpotQA train = 169,615.
DATASETS: Mapping[str, DatasetInfo] = MappingProxyType(
    {
        info.name: info
        for info in (
            _info("NQ", "nq", "test", "train", train=79_168, dev=8_757, test=3_610),
            _info("TriviaQA", "triviaqa", "test", "train", train=78_785, dev=8_837, test=11_313),
            _info("PopQA", "popqa", "test", None, test=14_267),
            _info("HotpotQA", "hotpotqa", "dev", "train", train=90_447, dev=7_405),
            _info("2Wiki", "2wikimultihopqa", "dev", "train", train=15_000, dev=12_576),
            _info("Musique", "musique", "dev", "train", train=19_938, dev=2_417),
            _info("Bamboogle", "bamboogle", "test", None, test=125),
        )
    }
)
"""The seven Search-R1 datasets, keyed by short name."""

_BY_KEY: dict[str, DatasetInfo] = {
    key: info for info in DATASETS.values() for key in (info.name.lower(), info.config.lower())
}


def get_dataset_info(name: str) -> DatasetInfo:
    """Look up a registered dataset by short name or FlashRAG config, case-insensitively.

    Raises:
        ValueError: If the name is not registered; the message lists the valid names.
    """
    info = _BY_KEY.get(name.strip().lower())
    if info is None:
        valid = ", ".join(f"{i.name} ({i.config})" for i in DATASETS.values())
        raise ValueError(f"Unknown QA dataset {name!r}. Valid names: {valid}.")
    return info


# --------------------------------------------------------------------------- rows


def _as_answers(value: Any) -> tuple[str, ...]:
    """Gold answers as a tuple of strings; accepts a str, a sequence or a numpy array."""
    if isinstance(value, str):
        return (value,)
    if hasattr(value, "tolist"):  # numpy arrays, as pandas returns list columns
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        return tuple(str(a) for a in value)
    raise ValueError(f"gold answers must be a string or a list, got {type(value).__name__}")


def _flashrag_row(row: Any, default_id: str) -> QAExample:
    """Convert one FlashRAG record; raises ValueError with a short reason."""
    if not isinstance(row, Mapping):
        raise ValueError(f"expected a JSON object, got {type(row).__name__}")
    missing = [k for k in ("question", "golden_answers") if row.get(k) is None]
    if missing:
        raise ValueError(f"missing field(s) {', '.join(missing)}")
    answers = _as_answers(row["golden_answers"])
    if not answers:
        # An example without gold answers can only ever score 0: refuse it loudly.
        raise ValueError("golden_answers is empty")
    row_id = row.get("id")
    metadata = row.get("metadata")
    return QAExample(
        id=default_id if row_id is None else str(row_id),
        question=row["question"],
        golden_answers=answers,
        metadata=dict(metadata) if isinstance(metadata, Mapping) else {},
    )


def _open_text(path: Path) -> TextIO:
    if path.name.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8")
    return path.open("r", encoding="utf-8")


def _iter_json_records(path: Path) -> Iterator[tuple[str, Any]]:
    """Yield ``(location, record)``: JSONL lines, or the items of a top-level JSON array."""
    with _open_text(path) as f:
        text = f.read()
    if path.suffix == ".json" and text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: invalid JSON: {e}") from e
        for i, item in enumerate(items):
            yield f"{path}: item {i}", item
        return
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{line_no}: invalid JSON: {e.msg}") from e
        yield f"{path}:{line_no}", record


@functools.cache
def _log_loaded(count: int, path: str) -> None:
    """Log a file's example count once a process: every env built on it loads it again."""
    logger.info("Loaded %d QA examples from %s", count, path)


def load_flashrag_jsonl(path: str | Path) -> list[QAExample]:
    """Load a FlashRAG QA file (``.jsonl``, ``.jsonl.gz``, or a ``.json`` array/lines).

    Each record is ``{"id", "question", "golden_answers": [...], "metadata"?: {...}}``.
    An int id is turned into a string, a string ``golden_answers`` into one answer, and a
    missing id into the record's 0-based position.

    Raises:
        ValueError: On malformed JSON or a record without ``question``/``golden_answers``;
            the message names the file and line.
    """
    path = Path(path)
    examples: list[QAExample] = []
    for location, record in _iter_json_records(path):
        try:
            examples.append(_flashrag_row(record, default_id=str(len(examples))))
        except ValueError as e:
            raise ValueError(f"{location}: {e}") from e
    _log_loaded(len(examples), str(path))
    return examples


def _question_from_prompt(prompt: Any) -> str:
    """The question after the final ``"Question: "`` of the last user message."""
    if hasattr(prompt, "tolist"):
        prompt = prompt.tolist()
    users = [m for m in prompt or () if isinstance(m, Mapping) and m.get("role") == "user"]
    if not users:
        raise ValueError("prompt has no user message")
    content = str(users[-1].get("content") or "")
    _, sep, question = content.rpartition("Question: ")
    if not sep:
        raise ValueError("last user message has no 'Question: '")
    return question.strip()


def searchr1_example(row: Mapping[str, Any], position: int) -> QAExample:
    """Convert one Search-R1 processed row (works on pyarrow dicts and pandas rows)."""
    data_source = row.get("data_source") or "searchr1"
    extra = row.get("extra_info")
    extra = dict(extra) if isinstance(extra, Mapping) else {}
    question = row.get("question")
    if not isinstance(question, str) or not question.strip():
        question = _question_from_prompt(row.get("prompt"))
    reward_model = row.get("reward_model")
    ground_truth = reward_model.get("ground_truth") if isinstance(reward_model, Mapping) else None
    if isinstance(ground_truth, Mapping) and ground_truth.get("target") is not None:
        answers = _as_answers(ground_truth["target"])
    elif row.get("golden_answers") is not None:
        answers = _as_answers(row["golden_answers"])
    else:
        raise ValueError("missing reward_model.ground_truth.target")
    if not answers:
        raise ValueError("gold answer list is empty")
    row_id = row.get("id")
    if row_id is None:
        split, index = extra.get("split"), extra.get("index")
        has_index = index is not None
        row_id = f"{data_source}_{split}_{index}" if has_index else f"{data_source}_{position}"
    metadata = row.get("metadata")
    metadata = dict(metadata) if isinstance(metadata, Mapping) else {}
    metadata.update(data_source=data_source, extra_info=extra)
    return QAExample(id=str(row_id), question=question, golden_answers=answers, metadata=metadata)


def load_searchr1_parquet(path: str | Path) -> list[QAExample]:
    """Load a Search-R1 processed parquet file (e.g. ``PeterJinGo/nq_hotpotqa_train``).

    Rows hold ``data_source``, ``prompt`` (chat messages), ``reward_model.ground_truth.
    target`` (gold answers) and ``extra_info`` ({split, index}), and often the original
    FlashRAG ``id``/``question``/``golden_answers`` columns. The question column is used
    when present, else the text after the last ``"Question: "`` of the last user message.
    ``data_source`` and ``extra_info`` go into the example's metadata.

    Raises:
        ValueError: If a row has no usable question or gold answers; names file and row.
    """
    try:
        import pyarrow.parquet as pq
    except ImportError as e:
        raise ImportError(
            "Reading Search-R1 parquet files needs pyarrow: pip install 'search-env[data]'"
        ) from e

    path = Path(path)
    rows = pq.read_table(path).to_pylist()
    examples = []
    for i, row in enumerate(rows):
        try:
            examples.append(searchr1_example(row, i))
        except ValueError as e:
            raise ValueError(f"{path}: row {i}: {e}") from e
    _log_loaded(len(examples), str(path))
    return examples


# --------------------------------------------------------------------------- hub


def _unavailable_message(
    info: DatasetInfo, split: str, cause: BaseException, reason: str | None = None
) -> str:
    reason = reason or "the Hugging Face hub is unreachable or offline mode is on"
    return (
        f"Cannot load QA dataset {info.name}: hub dataset {info.repo!r}, config "
        f"{info.config!r}, split {split!r} is not cached and {reason} "
        f"({type(cause).__name__}: {cause}).\n"
        f"On a machine with internet, fetch it with\n"
        f"    hf download {info.repo} --repo-type dataset --include '{info.config}/*' "
        f"--local-dir data/flashrag\n"
        f"(older clients: huggingface-cli download {info.repo} --repo-type dataset "
        f"--include '{info.config}/*' --local-dir data/flashrag),\n"
        f"copy data/flashrag here and pass the local file instead, e.g. "
        f'dataset="data/flashrag/{info.config}/{split}.jsonl" '
        f"(any path/to/{split}.jsonl or a directory holding it works)."
    )


def _unavailable_errors() -> tuple[type[BaseException], ...]:
    """What a failed hub load raises: the HTTP stack's network errors, and OSErrors
    (DatasetNotFoundError, OfflineModeIsEnabled, LocalEntryNotFoundError are OSErrors)."""
    from search_env.hub import network_errors

    return (OSError, *network_errors())


def load_hub_dataset(
    name: str, split: str | None = None, *, cache_dir: str | Path | None = None
) -> list[QAExample]:
    """Load a registered dataset from ``RUC-NLPIR/FlashRAG_datasets`` via ``datasets``.

    Args:
        name: Short name (``"NQ"``) or FlashRAG config (``"nq"``), any case.
        split: FlashRAG split (``train``/``dev``/``test``); default: the eval split
            Search-R1 uses.
        cache_dir: Passed to ``datasets.load_dataset``.

    Raises:
        ValueError: Unknown name or a split FlashRAG does not provide.
        DatasetUnavailableError: Offline, or the hub is unreachable and nothing is cached.
        ImportError: ``datasets`` is not installed.
    """
    info = get_dataset_info(name)
    split = split or info.eval_split
    if split not in info.sizes:
        raise ValueError(
            f"{info.name} has no split {split!r}; FlashRAG provides {', '.join(info.splits)}."
        )
    try:
        import datasets
    except ImportError as e:
        raise ImportError(
            "Loading QA datasets from the hub needs the `datasets` package "
            "(pip install 'search-env[data]'), or pass a local FlashRAG .jsonl file instead."
        ) from e

    from search_env.hub import hub_offline, hub_reachable, unreachable_reason

    logger.info("Loading %s/%s split %s from the hub", info.repo, info.config, split)
    # Without a hub, `datasets` would retry for half a minute: read its cache instead.
    online = hub_reachable()
    try:
        cache = None if cache_dir is None else str(cache_dir)
        with contextlib.nullcontext() if online else hub_offline():
            table = datasets.load_dataset(info.repo, info.config, split=split, cache_dir=cache)
    except _unavailable_errors() as e:
        reason = None if online else unreachable_reason()
        raise DatasetUnavailableError(_unavailable_message(info, split, e, reason)) from e

    location = f"{info.repo}/{info.config}/{split}"
    examples = []
    for i, row in enumerate(table):
        try:
            examples.append(_flashrag_row(row, default_id=str(i)))
        except ValueError as e:
            raise ValueError(f"{location}: row {i}: {e}") from e
    expected = info.sizes[split]
    if len(examples) != expected:
        logger.warning(
            "%s split %s has %d rows; FlashRAG/Search-R1 report %d. Results may not be "
            "comparable with the reference.",
            info.name,
            split,
            len(examples),
            expected,
        )
    return examples


# --------------------------------------------------------------------------- dispatch


def _has_suffix(path: Path, suffixes: Sequence[str]) -> bool:
    return path.name.lower().endswith(tuple(suffixes))


def load_qa(source: str | Path, split: str | None = None) -> list[QAExample]:
    """Load QA examples from a file, a directory or a registered dataset name.

    Dispatch, in order:

    * an existing ``.jsonl``/``.jsonl.gz``/``.json`` file: :func:`load_flashrag_jsonl`;
    * an existing ``.parquet`` file: :func:`load_searchr1_parquet`;
    * an existing directory: ``{split}.jsonl`` (or ``.jsonl.gz``, ``.json``,
      ``.parquet``) inside it, ``split`` defaulting to ``"test"``;
    * a registered name (``"NQ"``, ``"nq"``, ``"2Wiki"``, ``"2wikimultihopqa"``, ...):
      :func:`load_hub_dataset` (``split`` defaulting to the Search-R1 eval split).

    ``split`` is ignored for a file.

    Raises:
        FileNotFoundError: A path-like source that does not exist, or a directory
            without the split's file; the message lists what was tried.
        ValueError: An unknown name or an unsupported file type.
        DatasetUnavailableError: A registered name while the hub is unreachable.
    """
    path = Path(source)
    if path.is_file():
        if _has_suffix(path, JSONL_SUFFIXES):
            return load_flashrag_jsonl(path)
        if _has_suffix(path, PARQUET_SUFFIXES):
            return load_searchr1_parquet(path)
        raise ValueError(
            f"{path}: unsupported QA file type; expected one of "
            f"{', '.join(JSONL_SUFFIXES + PARQUET_SUFFIXES)}."
        )
    if path.is_dir():
        split = split or "test"
        candidates = [path / f"{split}{s}" for s in JSONL_SUFFIXES + PARQUET_SUFFIXES]
        for candidate in candidates:
            if candidate.is_file():
                return load_qa(candidate)
        tried = ", ".join(str(c) for c in candidates)
        raise FileNotFoundError(f"No {split!r} split in QA directory {path}; tried {tried}.")
    if isinstance(source, str) and source.strip().lower() in _BY_KEY:
        return load_hub_dataset(source, split)
    valid = ", ".join(DATASETS)
    looks_like_path = isinstance(source, Path) or "/" in str(source) or "\\" in str(source)
    looks_like_path = looks_like_path or _has_suffix(path, JSONL_SUFFIXES + PARQUET_SUFFIXES)
    if looks_like_path:
        raise FileNotFoundError(
            f"QA source {str(source)!r} is not an existing file or directory "
            f"(registered dataset names: {valid})."
        )
    raise ValueError(
        f"QA source {str(source)!r} is neither an existing file or directory nor a "
        f"registered dataset name ({valid}; FlashRAG config names also work)."
    )
