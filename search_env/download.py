"""Download the Search-R1 data: the wiki-18 corpus, its indexes and the QA datasets.

Every artifact is one :class:`Artifact` record in :data:`ARTIFACTS`: which hub repo and
files it comes from, where it goes under the destination directory, and how it is
finished after the download (gunzip, or concatenating split parts). :func:`download`
fetches one artifact with ``huggingface_hub`` (which resumes interrupted downloads and
shows progress bars), checks every file against the sha256 the hub publishes for it,
post-processes it atomically, and records the sha256 of the final files in
``download_manifest.json``. Calling it again when the final files exist does nothing.

Without internet (``HF_HUB_OFFLINE`` set, or the hub unreachable) it fails at once with a
:class:`DownloadUnavailableError` that says which files to fetch elsewhere, the command
to fetch them, and where to put them. The ``search-env download`` command wraps it
(:func:`add_download_arguments`, :func:`run_download`).

Layout under ``dest_dir`` (default ``data/``), as in the Search-R1 README::

    wiki-18.jsonl                  wiki18-corpus
    e5_Flat.index                  wiki18-e5-index
    wiki18-bm25-lucene/bm25/       wiki18-bm25-index (Pyserini/Lucene; not read by search-env)
    flashrag/<config>/<split>.jsonl  nq, triviaqa, popqa, hotpotqa, ...
    nq_hotpotqa_train/{train,test}.parquet
    download_manifest.json
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import enum
import fnmatch
import gzip
import hashlib
import importlib
import inspect
import json
import logging
import os
import shutil
import sys
import tarfile
import tempfile
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import IO, Any, BinaryIO, Protocol

from search_env.data.qa import DATASETS, DatasetUnavailableError, get_dataset_info
from search_env.hub import hub_reachable, unreachable_reason

__all__ = [
    "ARTIFACTS",
    "MANIFEST_NAME",
    "Artifact",
    "ChecksumMismatchError",
    "DownloadError",
    "DownloadUnavailableError",
    "HubClient",
    "HuggingFaceHub",
    "PostProcess",
    "RemoteFile",
    "RemoteListing",
    "add_download_arguments",
    "artifact_table",
    "download",
    "get_artifact",
    "resolve_names",
    "run_download",
    "unavailable_message",
]

logger = logging.getLogger(__name__)

MANIFEST_NAME = "download_manifest.json"
"""File in ``dest_dir`` recording what was downloaded, from which commit, with sha256s."""

DEFAULT_DEST = "data"
_CHUNK = 8 << 20  # 8 MiB: large enough for fast copies, small enough for smooth progress
_INSTALL_HINT = "pip install 'search-env[data]'"
_GB = 1_000_000_000
_MB = 1_000_000


class DownloadError(RuntimeError):
    """A download failed for a reason other than missing internet (see the message)."""


class ChecksumMismatchError(DownloadError):
    """A downloaded file does not match the sha256 the hub publishes for it."""


class DownloadUnavailableError(DatasetUnavailableError):
    """The hub cannot be reached (offline mode or no connection).

    The message says what to fetch on a machine with internet, with which command, where
    to put it, and how to point search-env at it afterwards.
    """


class PostProcess(str, enum.Enum):
    """What is done to the downloaded files to produce the final artifact."""

    NONE = "none"
    """The downloaded files are the artifact."""
    GUNZIP = "gunzip"
    """Decompress the single ``.gz`` file; a gzipped tar of one file is unpacked too."""
    CONCAT = "concat"
    """Concatenate the downloaded parts, in the order listed, into one file."""


@dataclass(frozen=True)
class Artifact:
    """One downloadable artifact.

    Attributes:
        name: CLI name (``"wiki18-corpus"``).
        title: One-line description for ``--list``.
        repo_id: Hugging Face hub repository.
        target: Path of the finished artifact relative to ``dest_dir`` (a file, or a
            directory for multi-file artifacts); what :func:`download` returns.
        approx_bytes: Approximate download size.
        files: Exact hub paths to download (in order: CONCAT joins them in this order).
        allow_patterns: Glob patterns of hub paths, used when ``files`` is empty (the
            file list is not known in advance).
        subdir: Directory under ``dest_dir`` the hub files are downloaded into, keeping
            their hub paths.
        repo_type: Hub repository type.
        postprocess: How the downloaded files become ``target``.
        approx_final_bytes: Approximate size after post-processing, if it differs.
        revision: Hub revision; ``None`` is the default branch (the commit actually
            downloaded is recorded in the manifest).
        notes: Longer description: provenance, caveats.
        usage: How to use it, with ``{dest}`` standing for ``dest_dir``.
    """

    name: str
    title: str
    repo_id: str
    target: str
    approx_bytes: int
    files: tuple[str, ...] = ()
    allow_patterns: tuple[str, ...] = ()
    subdir: str = ""
    repo_type: str = "dataset"
    postprocess: PostProcess = PostProcess.NONE
    approx_final_bytes: int | None = None
    revision: str | None = None
    notes: str = ""
    usage: str = ""

    def __post_init__(self) -> None:
        if bool(self.files) == bool(self.allow_patterns):
            raise ValueError(f"{self.name}: give exactly one of files or allow_patterns")
        if self.postprocess is PostProcess.GUNZIP and len(self.files) != 1:
            raise ValueError(f"{self.name}: gunzip needs exactly one file")
        if self.postprocess is PostProcess.CONCAT and len(self.files) < 2:
            raise ValueError(f"{self.name}: concat needs at least two files")

    @property
    def checksums(self) -> str:
        """Where the checksums come from (for docs and ``--list``)."""
        return "sha256 of every file from the hub's LFS metadata (git blob sha1 for non-LFS files)"

    def local_dir(self, dest_dir: str | Path) -> Path:
        """The directory the hub files are downloaded into."""
        return Path(dest_dir) / self.subdir if self.subdir else Path(dest_dir)

    def target_path(self, dest_dir: str | Path) -> Path:
        """The finished artifact's path."""
        return Path(dest_dir) / self.target

    def download_paths(self, dest_dir: str | Path) -> list[Path]:
        """Local paths of the hub files (only for artifacts with explicit ``files``)."""
        return [self.local_dir(dest_dir) / f for f in self.files]

    def size_text(self) -> str:
        """Approximate size, e.g. ``"5.1 GB"`` or ``"5.1 GB (14 GB unpacked)"``."""
        text = _human(self.approx_bytes)
        if self.approx_final_bytes and self.approx_final_bytes != self.approx_bytes:
            text += f" ({_human(self.approx_final_bytes)} unpacked)"
        return text


def _human(n: int) -> str:
    for unit, scale in (("GB", _GB), ("MB", _MB), ("kB", 1000)):
        if n >= scale:
            value = n / scale
            return f"{value:.0f} {unit}" if value >= 10 else f"{value:.1f} {unit}"
    return f"{n} B"


# --------------------------------------------------------------------------- registry

_TOKENIZER_ARG = 'tokenizer="qwen2.5"'
"""Qwen2.5's tokenizer, built offline (the same ids as Qwen/Qwen2.5-3B's; see search_env.data.qwen)."""
_GYM_EXAMPLE = (
    'gym.make("SearchQA-NQ-v0", dataset="{dest}/flashrag/nq/test.jsonl", '
    'corpus="{dest}/wiki-18.jsonl", ' + _TOKENIZER_ARG + ")"
)

# Approximate sizes of the FlashRAG files. nq, triviaqa, popqa and bamboogle are the
# published byte sizes of their files; hotpotqa, 2wikimultihopqa and musique (whose
# records carry supporting paragraphs in `metadata`) are rough estimates.
_QA_APPROX_BYTES = {
    "nq": 11_521_308,
    "triviaqa": 41_464_552,
    "popqa": 8_526_089,
    "hotpotqa": 500 * _MB,
    "2wikimultihopqa": 200 * _MB,
    "musique": 300 * _MB,
    "bamboogle": 17_031,
}


def _qa_artifact(key: str) -> Artifact:
    info = DATASETS[key]
    return Artifact(
        name=info.config,
        title=f"{info.name} QA (FlashRAG; splits {', '.join(info.splits)})",
        repo_id=info.repo,
        files=tuple(f"{info.config}/{split}.jsonl" for split in info.splits),
        subdir="flashrag",
        target=f"flashrag/{info.config}",
        approx_bytes=_QA_APPROX_BYTES.get(info.config, 50 * _MB),
        notes=(
            f"FlashRAG JSONL {{id, question, golden_answers, metadata}}; Search-R1 evaluates "
            f"on the {info.eval_split} split ({info.sizes[info.eval_split]:,} rows)."
        ),
        usage=(
            f'gym.make("SearchQA-{info.name}-v0", dataset="{{dest}}/flashrag/{info.config}/'
            f'{info.eval_split}.jsonl", corpus="{{dest}}/wiki-18.jsonl", {_TOKENIZER_ARG})'
        ),
    )


def _build_registry() -> Mapping[str, Artifact]:
    artifacts = [
        Artifact(
            name="wiki18-corpus",
            title="wiki-18 corpus: 21,015,324 passages of ~100 words (JSONL)",
            repo_id="PeterJinGo/wiki-18-corpus",
            files=("wiki-18.jsonl.gz",),
            target="wiki-18.jsonl",
            postprocess=PostProcess.GUNZIP,
            approx_bytes=5_130 * _MB,
            approx_final_bytes=14 * _GB,
            notes=(
                "The Search-R1 README downloads wiki-18.jsonl.gz and runs `gzip -d`. The file "
                "is a gzipped tar holding one member (data00/jiajie_jin/flashrag_indexes/"
                "wiki_dpr_100w/wiki_dump.jsonl); it is unpacked to plain JSONL here."
            ),
            usage=(
                _GYM_EXAMPLE + "; or build a BM25 index once: search-env index build "
                "--corpus {dest}/wiki-18.jsonl --out {dest}/wiki18-bm25s"
            ),
        ),
        Artifact(
            name="wiki18-e5-index",
            title="e5-base-v2 faiss flat inner-product index of wiki-18 (fp32)",
            repo_id="PeterJinGo/wiki-18-e5-index",
            files=("part_aa", "part_ab"),
            target="e5_Flat.index",
            postprocess=PostProcess.CONCAT,
            approx_bytes=65 * _GB,
            notes=(
                "Two split parts that the Search-R1 README joins with "
                "`cat part_* > e5_Flat.index`. Needs the wiki18-corpus for the passage text. "
                "Peak disk use is about twice the index size while the parts are joined."
            ),
            usage=(
                'retriever=DenseRetriever.from_published("{dest}/e5_Flat.index", '
                '"{dest}/wiki-18.jsonl") (search_env.retrievers.dense; e5-base-v2 queries), or '
                "the reference's retrieval_server.py --index_path {dest}/e5_Flat.index "
                "--corpus_path {dest}/wiki-18.jsonl"
            ),
        ),
        Artifact(
            name="wiki18-bm25-index",
            title="Pyserini/Lucene BM25 index of wiki-18 (not read by search-env)",
            repo_id="PeterJinGo/wiki-18-bm25-index",
            allow_patterns=("bm25/*",),
            subdir="wiki18-bm25-lucene",
            target="wiki18-bm25-lucene/bm25",
            approx_bytes=2_300 * _MB,
            notes=(
                "The reference's BM25 retriever: a Pyserini (Lucene) index directory `bm25/` "
                "used by its retrieval_server.py with --retriever_name bm25 and the corpus. "
                "search-env's BM25 is bm25s and cannot read Lucene indexes: build one with "
                "`search-env index build --corpus <dest>/wiki-18.jsonl --out <dest>/wiki18-bm25s`."
            ),
            usage=(
                "Pyserini LuceneSearcher('{dest}/wiki18-bm25-lucene/bm25'); for search-env run "
                "search-env index build --corpus {dest}/wiki-18.jsonl --out {dest}/wiki18-bm25s "
                'and pass retriever="{dest}/wiki18-bm25s"'
            ),
        ),
        *(_qa_artifact(key) for key in DATASETS),
        Artifact(
            name="nq-hotpotqa-train",
            title="Search-R1's processed NQ+HotpotQA train (169,615 rows) and 7-dataset test",
            repo_id="PeterJinGo/nq_hotpotqa_train",
            files=("train.parquet", "test.parquet"),
            subdir="nq_hotpotqa_train",
            target="nq_hotpotqa_train",
            approx_bytes=426 * _MB,
            notes=(
                "Parquet rows: data_source, prompt=[{role, content}], ability, "
                "reward_model.ground_truth.target, extra_info={split, index}; test.parquet "
                "holds the 51,713 evaluation rows of the seven datasets."
            ),
            usage=(
                'gym.make("SearchQA-v0", dataset="{dest}/nq_hotpotqa_train/train.parquet", '
                'corpus="{dest}/wiki-18.jsonl", ' + _TOKENIZER_ARG + ")"
            ),
        ),
    ]
    registry = {a.name: a for a in artifacts}
    if len(registry) != len(artifacts):
        raise RuntimeError("duplicate artifact names")  # pragma: no cover - static data
    return MappingProxyType(registry)


ARTIFACTS: Mapping[str, Artifact] = _build_registry()
"""Every downloadable artifact, keyed by name."""

GROUPS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {"qa": tuple(info.config for info in DATASETS.values())}
)
"""Names that stand for several artifacts (``qa``: the seven FlashRAG datasets)."""


def get_artifact(name: str) -> Artifact:
    """An artifact by name; QA datasets also by their short name (``NQ``, ``2Wiki``).

    Raises:
        ValueError: Unknown name; the message lists the valid names.
    """
    key = name.strip().lower()
    if key in ARTIFACTS:
        return ARTIFACTS[key]
    try:
        return ARTIFACTS[get_dataset_info(key).config]
    except ValueError:
        pass
    raise ValueError(f"unknown artifact {name!r}; valid names: {', '.join(_valid_names())}")


def _valid_names() -> list[str]:
    return [*ARTIFACTS, *GROUPS]


def resolve_names(names: Sequence[str]) -> list[Artifact]:
    """Artifacts for CLI names (groups expanded, duplicates dropped, order kept).

    Raises:
        ValueError: If any name is unknown; the message lists all unknown and valid names.
    """
    out: dict[str, Artifact] = {}
    unknown = []
    for name in names:
        group = GROUPS.get(name.strip().lower())
        for member in group or (name,):
            try:
                artifact = get_artifact(member)
            except ValueError:
                unknown.append(name)
                continue
            out.setdefault(artifact.name, artifact)
    if unknown:
        raise ValueError(
            f"unknown artifact(s): {', '.join(unknown)}; valid names: {', '.join(_valid_names())}"
        )
    return list(out.values())


def artifact_table(dest_dir: str | Path = DEFAULT_DEST) -> str:
    """A plain-text table of all artifacts: name, what, approximate size, where it goes."""
    rows = [("NAME", "SIZE", "GOES TO", "WHAT")]
    for a in ARTIFACTS.values():
        rows.append(
            (a.name, a.size_text(), str(a.target_path(dest_dir)), f"{a.title} [{a.repo_id}]")
        )
    for group, members in GROUPS.items():
        rows.append((group, "", "", f"all of: {', '.join(members)}"))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = ["  ".join(r[i].ljust(widths[i]) for i in range(3)) + "  " + r[3] for r in rows]
    return "\n".join(line.rstrip() for line in lines)


# --------------------------------------------------------------------------- hub access


@dataclass(frozen=True)
class RemoteFile:
    """A file on the hub, with the checksums the hub publishes for it.

    Attributes:
        path: Path in the repository.
        size: Size in bytes, if known.
        sha256: sha256 of the content (published for LFS files).
        blob_id: Git blob id (sha1 of ``b"blob <size>\\0" + content``), for non-LFS files.
    """

    path: str
    size: int | None = None
    sha256: str | None = None
    blob_id: str | None = None


@dataclass(frozen=True)
class RemoteListing:
    """The files of a hub repository at one commit."""

    revision: str | None
    files: tuple[RemoteFile, ...]


class HubClient(Protocol):
    """What :func:`download` needs from the hub (implemented by :class:`HuggingFaceHub`).

    Implementations raise ``ConnectionError`` (or a transport error) when the hub is
    unreachable, and :class:`DownloadError` for other failures (missing repo, denied).
    """

    def list_files(self, repo_id: str, *, repo_type: str, revision: str | None) -> RemoteListing:
        """All files of the repository, with sizes and checksums."""
        ...

    def download_file(
        self,
        repo_id: str,
        filename: str,
        *,
        repo_type: str,
        revision: str | None,
        local_dir: Path,
        force: bool,
        progress: bool,
    ) -> Path:
        """Download one file to ``local_dir / filename`` (resuming); returns its path."""
        ...

    def download_snapshot(
        self,
        repo_id: str,
        *,
        repo_type: str,
        revision: str | None,
        allow_patterns: Sequence[str],
        local_dir: Path,
        force: bool,
        progress: bool,
    ) -> Path:
        """Download the files matching ``allow_patterns`` under ``local_dir``."""
        ...


def _import_hub() -> Any:
    try:
        return importlib.import_module("huggingface_hub")
    except ImportError as e:
        raise ImportError(
            "Downloading from the Hugging Face hub needs huggingface_hub "
            f"({_INSTALL_HINT}; it also comes with transformers)."
        ) from e


class HuggingFaceHub:
    """:class:`HubClient` on ``huggingface_hub`` (imported on first use)."""

    def __init__(self, token: str | bool | None = None) -> None:
        self.token = token

    def _call(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Calls ``fn``, turning hub HTTP errors into ConnectionError (5xx) or DownloadError."""
        http_error, entry_missing = _hub_error_classes()
        try:
            return fn(*args, **kwargs)
        except _network_errors():
            raise
        except Exception as e:
            if http_error is not None and isinstance(e, http_error):
                status = getattr(getattr(e, "response", None), "status_code", None)
                if status is not None and (status >= 500 or status == 429):
                    # The hub is down or rate limiting: for the user, that is "unreachable".
                    raise ConnectionError(f"the hub answered HTTP {status} to {what}") from e
                raise DownloadError(f"{what} failed: {type(e).__name__}: {e}") from e
            if entry_missing is not None and isinstance(e, entry_missing):
                raise DownloadError(f"{what} failed: {e}") from e
            raise

    def list_files(self, repo_id: str, *, repo_type: str, revision: str | None) -> RemoteListing:
        """One request: the repo's commit and every file with its size and checksums."""
        hub = _import_hub()
        api = hub.HfApi(token=self.token)
        info = self._call(
            f"listing {repo_type} repo {repo_id}",
            api.repo_info,
            repo_id,
            repo_type=repo_type,
            revision=revision,
            files_metadata=True,
        )
        files = []
        for sibling in getattr(info, "siblings", None) or ():
            lfs = getattr(sibling, "lfs", None)
            sha256 = lfs.get("sha256") if isinstance(lfs, Mapping) else getattr(lfs, "sha256", None)
            files.append(
                RemoteFile(
                    path=sibling.rfilename,
                    size=getattr(sibling, "size", None),
                    sha256=sha256,
                    blob_id=None if lfs else getattr(sibling, "blob_id", None),
                )
            )
        return RemoteListing(revision=getattr(info, "sha", None), files=tuple(files))

    @staticmethod
    def _progress_kwargs(fn: Callable[..., Any], progress: bool) -> dict[str, Any]:
        if progress or "tqdm_class" not in inspect.signature(fn).parameters:
            return {}
        return {"tqdm_class": _silent_tqdm_class()}

    def download_file(
        self,
        repo_id: str,
        filename: str,
        *,
        repo_type: str,
        revision: str | None,
        local_dir: Path,
        force: bool,
        progress: bool,
    ) -> Path:
        """``hf_hub_download`` into ``local_dir`` (resumes ``.incomplete`` files)."""
        hub = _import_hub()
        path = self._call(
            f"downloading {filename} from {repo_id}",
            hub.hf_hub_download,
            repo_id=repo_id,
            filename=filename,
            repo_type=repo_type,
            revision=revision,
            local_dir=str(local_dir),
            force_download=force,
            token=self.token,
            **self._progress_kwargs(hub.hf_hub_download, progress),
        )
        return Path(path)

    def download_snapshot(
        self,
        repo_id: str,
        *,
        repo_type: str,
        revision: str | None,
        allow_patterns: Sequence[str],
        local_dir: Path,
        force: bool,
        progress: bool,
    ) -> Path:
        """``snapshot_download`` of the matching files into ``local_dir``."""
        hub = _import_hub()
        path = self._call(
            f"downloading {', '.join(allow_patterns)} from {repo_id}",
            hub.snapshot_download,
            repo_id=repo_id,
            repo_type=repo_type,
            revision=revision,
            allow_patterns=list(allow_patterns),
            local_dir=str(local_dir),
            force_download=force,
            token=self.token,
            **self._progress_kwargs(hub.snapshot_download, progress),
        )
        return Path(path)


def _hub_error_classes() -> tuple[type[BaseException] | None, type[BaseException] | None]:
    """``HfHubHTTPError`` and ``EntryNotFoundError``, wherever this hub version keeps them."""
    _import_hub()
    found: list[type[BaseException] | None] = []
    for name in ("HfHubHTTPError", "EntryNotFoundError"):
        cls = None
        for module in ("huggingface_hub.errors", "huggingface_hub.utils"):
            with contextlib.suppress(ImportError):
                cls = getattr(importlib.import_module(module), name, None)
            if cls is not None:
                break
        found.append(cls)
    return found[0], found[1]


def _silent_tqdm_class() -> type:
    from tqdm.auto import tqdm

    class SilentTqdm(tqdm):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)

    return SilentTqdm


def _network_errors() -> tuple[type[BaseException], ...]:
    """Exceptions meaning "the hub cannot be reached", for whichever HTTP stack is present.

    Not OSError as a whole: a full disk must not be reported as missing internet.
    """
    import socket

    errors: list[type[BaseException]] = [ConnectionError, TimeoutError, socket.gaierror]
    for module, names in (
        ("httpx", ("TransportError",)),
        ("httpx2", ("TransportError",)),  # huggingface_hub >= 2
        ("requests.exceptions", ("ConnectionError", "Timeout")),  # huggingface_hub < 1
        # hf_hub_download turns a failed connection into this when nothing is cached.
        ("huggingface_hub.errors", ("LocalEntryNotFoundError",)),
        ("huggingface_hub.utils", ("LocalEntryNotFoundError",)),
    ):
        mod = sys.modules.get(module)
        if mod is None:
            continue  # not imported, so nothing of it can have been raised
        for name in names:
            cls = getattr(mod, name, None)
            if isinstance(cls, type) and issubclass(cls, BaseException):
                errors.append(cls)
    return tuple(dict.fromkeys(errors))


def _offline_mode() -> bool:
    """``HF_HUB_OFFLINE`` as huggingface_hub reads it, but read now, not at import time."""
    value = os.environ.get("HF_HUB_OFFLINE", "")
    return value.strip().upper() in {"1", "ON", "YES", "TRUE"}


# --------------------------------------------------------------------------- messages


def _fetch_commands(artifact: Artifact, dest_dir: Path) -> list[str]:
    local_dir = artifact.local_dir(dest_dir)
    if artifact.files:
        selection = " ".join(artifact.files)
    else:
        selection = " ".join(f"--include '{p}'" for p in artifact.allow_patterns)
    args = (
        f"{artifact.repo_id} {selection} --repo-type {artifact.repo_type} --local-dir {local_dir}"
    )
    revision = f" --revision {artifact.revision}" if artifact.revision else ""
    return [f"hf download {args}{revision}", f"huggingface-cli download {args}{revision}"]


def _finish_steps(artifact: Artifact, dest_dir: Path) -> list[str]:
    """The offline steps after copying the raw files into place."""
    local = artifact.local_dir(dest_dir)
    target = artifact.target_path(dest_dir)
    rerun = f"    search-env download {artifact.name} --dest {dest_dir}"
    if artifact.postprocess is PostProcess.GUNZIP:
        return [
            f"copy it into {local}/ here and run",
            rerun,
            f"which finds it and unpacks {local / artifact.files[0]} into {target}.",
        ]
    if artifact.postprocess is PostProcess.CONCAT:
        parts = " + ".join(str(local / f) for f in artifact.files)
        return [
            f"copy them into {local}/ here and run",
            rerun,
            f"which finds them and joins {parts}, in this order, into {target}.",
        ]
    if artifact.files:
        return [f"and copy them into {local}/ here; nothing else is needed."]
    return [
        f"copy them into {local}/ here and run",
        rerun,
        f"which records the files under {target}.",
    ]


def unavailable_message(artifact: Artifact, dest_dir: str | Path, reason: str) -> str:
    """What to do when ``artifact`` cannot be downloaded here.

    Names the hub repo, its type, the files, the size, where the files go, the commands
    to fetch them on a machine with internet, and how to use them afterwards.
    """
    dest = Path(dest_dir)
    local_dir = artifact.local_dir(dest)
    target = artifact.target_path(dest)
    if artifact.files:
        files = ", ".join(artifact.files)
    else:
        files = f"everything matching {', '.join(artifact.allow_patterns)}"
    hf_cmd, legacy_cmd = _fetch_commands(artifact, dest)
    lines = [
        f"Cannot download {artifact.name!r}: {reason}.",
        "",
        (
            f"What to fetch: {artifact.title}: hub repo {artifact.repo_id} "
            f"(repo type: {artifact.repo_type}), file(s): {files}; about {artifact.size_text()}."
        ),
        (
            f"Where it goes: the files into {local_dir}/ (keeping their hub paths); "
            f"the finished artifact is {target}."
        ),
        "",
        "On a machine with internet, either run",
        f"    search-env download {artifact.name} --dest {dest}",
        f"and copy {target} to the same place here, or fetch the raw files with",
        f"    {hf_cmd}",
        f"    (older clients: {legacy_cmd})",
        *_finish_steps(artifact, dest),
    ]
    if artifact.postprocess is not PostProcess.NONE or not artifact.files:
        lines.append("(Checksums cannot be checked against the hub offline.)")
    if artifact.usage:
        lines += ["", "Then use it: " + artifact.usage.format(dest=dest)]
    return "\n".join(lines)


# --------------------------------------------------------------------------- files


class _Digest:
    """sha256 of a byte stream, plus the git blob sha1 when the size is known in advance."""

    def __init__(self, size: int | None = None) -> None:
        self.sha256 = hashlib.sha256()
        self.git = None
        if size is not None:
            self.git = hashlib.sha1(usedforsecurity=False)
            self.git.update(b"blob %d\0" % size)
        self.size = 0

    def update(self, data: bytes) -> None:
        self.sha256.update(data)
        if self.git is not None:
            self.git.update(data)
        self.size += len(data)


class _HashingReader:
    """A read-only file wrapper that hashes and counts what passes through it."""

    def __init__(self, raw: BinaryIO, digest: _Digest, on_read: Callable[[int], Any]) -> None:
        self._raw = raw
        self._digest = digest
        self._on_read = on_read

    def read(self, n: int = -1, /) -> bytes:
        data = self._raw.read(n)
        self._digest.update(data)
        self._on_read(len(data))
        return data

    def readable(self) -> bool:
        return True


class _PrefixedReader:
    """Replays ``head`` and then reads on from ``stream`` (tarfile's stream mode needs read())."""

    def __init__(self, head: bytes, stream: IO[bytes]) -> None:
        self._head = head
        self._stream = stream

    def read(self, n: int = -1, /) -> bytes:
        if not self._head:
            return self._stream.read(n)
        if n is None or n < 0:
            data, self._head = self._head + self._stream.read(), b""
            return data
        data, self._head = self._head[:n], self._head[n:]
        if len(data) < n:
            data += self._stream.read(n - len(data))
        return data


def _is_tar_header(block: bytes) -> bool:
    return len(block) >= 512 and block[257:262] == b"ustar"


@contextlib.contextmanager
def _atomic_file(final: Path) -> Iterator[IO[bytes]]:
    """Write to a temporary sibling of ``final``; rename it over ``final`` only on success."""
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _progress_bar(total: int | None, desc: str, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(
        total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, disable=not enabled
    )


def _check(path: Path, digest: _Digest, remote: RemoteFile | None) -> bool:
    """Compares ``digest`` with the hub's checksum; returns whether one was checked.

    Raises:
        ChecksumMismatchError: On a mismatch; ``path`` (the bad download) is deleted first.
    """
    if remote is None:
        return False
    expected = actual = None
    kind = ""
    if remote.sha256:
        kind, expected, actual = "sha256", remote.sha256, digest.sha256.hexdigest()
    elif remote.blob_id and digest.git is not None:
        kind, expected, actual = "git blob sha1", remote.blob_id, digest.git.hexdigest()
    if expected is None:
        return False
    if expected.lower() != actual:
        path.unlink(missing_ok=True)
        raise ChecksumMismatchError(
            f"{path.name} from {remote.path!r}: {kind} {actual} does not match the hub's "
            f"{expected} (size {digest.size} bytes, hub says {remote.size}). The bad file was "
            "deleted; run the download again (it may have been cut off or corrupted)."
        )
    return True


def _hash_file(path: Path, progress: bool, desc: str) -> _Digest:
    size = path.stat().st_size
    digest = _Digest(size)
    with path.open("rb") as f, _progress_bar(size, desc, progress and size > _CHUNK) as bar:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
            bar.update(len(chunk))
    return digest


def _gunzip(
    src: Path, dst: Path, remote: RemoteFile | None, progress: bool
) -> tuple[_Digest, _Digest, bool]:
    """Stream-decompress ``src`` into ``dst`` atomically, checking ``src`` on the way.

    A gzipped tar (the wiki-18 corpus is one) is unpacked instead: its first ``.jsonl``
    (or ``.json``) member becomes ``dst``.

    Returns:
        The digests of ``dst`` and ``src``, and whether ``src`` was checked against the hub.
    """
    try:
        return _gunzip_unchecked(src, dst, remote, progress)
    except (gzip.BadGzipFile, EOFError, zlib.error, tarfile.TarError) as e:
        raise DownloadError(
            f"{src} is not a complete gzip file ({type(e).__name__}: {e}); nothing was written "
            f"to {dst}. Delete {src} and download again."
        ) from e


def _gunzip_unchecked(
    src: Path, dst: Path, remote: RemoteFile | None, progress: bool
) -> tuple[_Digest, _Digest, bool]:
    size = src.stat().st_size
    src_digest = _Digest(size)
    out_digest = _Digest()
    with (
        src.open("rb") as raw,
        _progress_bar(size, f"gunzip {src.name}", progress) as bar,
        _atomic_file(dst) as out,
    ):
        reader = _HashingReader(raw, src_digest, bar.update)
        with gzip.GzipFile(fileobj=reader, mode="rb") as gz:  # type: ignore[call-overload]
            head = gz.read(512)
            if _is_tar_header(head):
                stream: IO[bytes] = _tar_member_stream(_PrefixedReader(head, gz), src)
            else:
                out.write(head)
                out_digest.update(head)
                stream = gz  # type: ignore[assignment]
            for chunk in iter(lambda: stream.read(_CHUNK), b""):
                out.write(chunk)
                out_digest.update(chunk)
            # Read to the end (tar padding, gzip trailer) so that gzip checks its CRC
            # and the whole compressed file is hashed.
            while gz.read(_CHUNK):
                pass
        while reader.read(_CHUNK):
            pass
        checked = _check(src, src_digest, remote)
    return out_digest, src_digest, checked


def _tar_member_stream(fileobj: Any, src: Path) -> IO[bytes]:
    # Not a `with`: the member stream returned reads through this (stream-mode) archive.
    tar = tarfile.open(fileobj=fileobj, mode="r|")  # noqa: SIM115
    for member in tar:
        if member.isfile() and (member.name.endswith(".jsonl") or member.name.endswith(".json")):
            logger.info(
                "%s is a gzipped tar; unpacking its member %s (the reference's `gzip -d` leaves "
                "the tar, which `datasets` unpacks on load)",
                src.name,
                member.name,
            )
            stream = tar.extractfile(member)
            if stream is not None:
                return stream
    raise DownloadError(f"{src} is a gzipped tar without a .jsonl member; cannot unpack it")


def _concat(
    parts: Sequence[Path], dst: Path, remotes: Sequence[RemoteFile | None], progress: bool
) -> tuple[_Digest, list[_Digest], bool]:
    """Join ``parts`` in order into ``dst`` atomically, checking each part on the way."""
    total = sum(p.stat().st_size for p in parts)
    out_digest = _Digest()
    part_digests = []
    checked = True
    with _progress_bar(total, f"join -> {dst.name}", progress) as bar, _atomic_file(dst) as out:
        for part, remote in zip(parts, remotes):
            digest = _Digest(part.stat().st_size)
            with part.open("rb") as f:
                for chunk in iter(lambda: f.read(_CHUNK), b""):
                    digest.update(chunk)
                    out_digest.update(chunk)
                    out.write(chunk)
                    bar.update(len(chunk))
            checked = _check(part, digest, remote) and checked
            part_digests.append(digest)
    return out_digest, part_digests, checked


# --------------------------------------------------------------------------- manifest


def _read_manifest(dest_dir: Path) -> dict[str, Any]:
    path = dest_dir / MANIFEST_NAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {"version": 1, "artifacts": {}}
    except (OSError, json.JSONDecodeError) as e:
        logger.warning("ignoring unreadable %s (%s); it will be rewritten", path, e)
        return {"version": 1, "artifacts": {}}
    if not isinstance(data, dict) or not isinstance(data.get("artifacts"), dict):
        return {"version": 1, "artifacts": {}}
    return data


def _write_manifest_entry(dest_dir: Path, name: str, entry: Mapping[str, Any]) -> None:
    data = _read_manifest(dest_dir)
    data["artifacts"][name] = dict(entry)
    path = dest_dir / MANIFEST_NAME
    with _atomic_file(path) as f:
        f.write((json.dumps(data, indent=2, sort_keys=True) + "\n").encode("utf-8"))


def _file_entry(
    path: Path, dest_dir: Path, digest: _Digest, verified: bool
) -> tuple[str, dict[str, Any]]:
    rel = path.relative_to(dest_dir).as_posix()
    return rel, {
        "sha256": digest.sha256.hexdigest(),
        "size": digest.size,
        "verified_with_hub": verified,
    }


# --------------------------------------------------------------------------- download


@dataclass
class _Fetched:
    """The local downloads of an artifact and the hub's record of each."""

    paths: list[Path]
    remotes: list[RemoteFile | None]
    revision: str | None = None


def _is_complete(artifact: Artifact, dest_dir: Path) -> bool:
    target = artifact.target_path(dest_dir)
    if artifact.postprocess is not PostProcess.NONE:
        return target.is_file()
    if artifact.files:
        return all(p.is_file() for p in artifact.download_paths(dest_dir))
    # The file list of a pattern artifact is only known from the hub: trust the manifest,
    # which is written only after a complete download.
    entry = _read_manifest(dest_dir)["artifacts"].get(artifact.name)
    return entry is not None and target.is_dir()


def _unavailable(artifact: Artifact, dest_dir: Path, reason: str) -> DownloadUnavailableError:
    return DownloadUnavailableError(unavailable_message(artifact, dest_dir, reason))


def _select(artifact: Artifact, listing: RemoteListing) -> list[RemoteFile]:
    by_path = {f.path: f for f in listing.files}
    if artifact.files:
        missing = [f for f in artifact.files if f not in by_path]
        if missing:
            raise DownloadError(
                f"{artifact.repo_id} ({artifact.repo_type}) has no {', '.join(missing)} at "
                f"revision {listing.revision or artifact.revision or 'main'}; the hub layout may "
                "have changed (files there: "
                f"{', '.join(sorted(by_path)[:20]) or 'none'}{', ...' if len(by_path) > 20 else ''})."
            )
        return [by_path[f] for f in artifact.files]
    chosen = [
        f for f in listing.files if any(fnmatch.fnmatch(f.path, p) for p in artifact.allow_patterns)
    ]
    if not chosen:
        raise DownloadError(
            f"{artifact.repo_id} ({artifact.repo_type}) has no file matching "
            f"{', '.join(artifact.allow_patterns)}; the hub layout may have changed."
        )
    return sorted(chosen, key=lambda f: f.path)


def _fetch(
    artifact: Artifact, dest_dir: Path, hub: HubClient, force: bool, progress: bool
) -> _Fetched:
    """Lists the repo (the first hub call, which fails fast offline) and downloads."""
    local_dir = artifact.local_dir(dest_dir)
    # `except _network_errors()` is evaluated when an exception is matched, i.e. after
    # the hub client has imported its HTTP stack: evaluated earlier it would miss it.
    try:
        listing = hub.list_files(
            artifact.repo_id, repo_type=artifact.repo_type, revision=artifact.revision
        )
    except _network_errors() as e:
        raise _unavailable(
            artifact, dest_dir, f"the Hugging Face hub is unreachable ({type(e).__name__}: {e})"
        ) from e
    remotes = _select(artifact, listing)
    size = sum(r.size or 0 for r in remotes) or artifact.approx_bytes
    if artifact.postprocess is not PostProcess.NONE:  # raw files and the result coexist
        size += artifact.approx_final_bytes or size
    _warn_if_low_disk(local_dir, size)
    # Download the commit we listed, so the checksums match what we get.
    revision = listing.revision or artifact.revision
    try:
        if artifact.files:
            paths = [
                hub.download_file(
                    artifact.repo_id,
                    r.path,
                    repo_type=artifact.repo_type,
                    revision=revision,
                    local_dir=local_dir,
                    force=force,
                    progress=progress,
                )
                for r in remotes
            ]
        else:
            hub.download_snapshot(
                artifact.repo_id,
                repo_type=artifact.repo_type,
                revision=revision,
                allow_patterns=artifact.allow_patterns,
                local_dir=local_dir,
                force=force,
                progress=progress,
            )
            paths = [local_dir / r.path for r in remotes]
    except _network_errors() as e:
        raise _unavailable(
            artifact,
            dest_dir,
            f"the connection to the Hugging Face hub failed during the download "
            f"({type(e).__name__}: {e}); run the same command again to resume",
        ) from e
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise DownloadError(
            f"the hub client reported success but these files are missing: {missing}"
        )
    return _Fetched(paths=paths, remotes=list(remotes), revision=listing.revision)


def _use_local_files(artifact: Artifact, dest_dir: Path, reason: str) -> _Fetched:
    """Offline: use hub files already copied into place, else explain what to fetch."""
    paths = artifact.download_paths(dest_dir)
    if artifact.files and all(p.is_file() for p in paths):
        logger.warning(
            "%s: %s; using the files already in %s without checking their checksums",
            artifact.name,
            reason,
            artifact.local_dir(dest_dir),
        )
        return _Fetched(paths=paths, remotes=[None] * len(paths))
    target = artifact.target_path(dest_dir)
    if not artifact.files and target.is_dir() and any(target.iterdir()):
        logger.warning(
            "%s: %s; using %s as it is (its completeness cannot be checked)",
            artifact.name,
            reason,
            target,
        )
        return _Fetched(paths=[], remotes=[])
    raise _unavailable(artifact, dest_dir, reason)


def _warn_if_low_disk(directory: Path, needed: int) -> None:
    probe = directory
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        free = shutil.disk_usage(probe).free
    except OSError:
        return
    if free < needed:
        logger.warning(
            "%s has %s free but the download needs about %s", probe, _human(free), _human(needed)
        )


def download(
    name: str,
    dest_dir: str | Path = DEFAULT_DEST,
    *,
    force: bool = False,
    progress: bool = True,
    keep_downloads: bool = False,
    hub: HubClient | None = None,
) -> Path:
    """Download one artifact into ``dest_dir`` and finish it; returns its final path.

    Nothing is fetched when the final files already exist (unless ``force``). Otherwise
    the hub is asked once for the file list and checksums (failing at once when offline
    or unreachable), the files are downloaded (resuming partial downloads), checked
    against the hub's sha256, and post-processed into a temporary file that is renamed
    into place. The sha256 of the final files goes into ``dest_dir/download_manifest.json``.

    Args:
        name: An artifact name (see :data:`ARTIFACTS`, ``search-env download --list``);
            QA datasets also by short name (``NQ``).
        dest_dir: Destination directory.
        force: Download and post-process again even if the final files exist.
        progress: Show progress bars.
        keep_downloads: Keep the raw downloads (``.gz``, parts) after post-processing.
        hub: Hub client; default :class:`HuggingFaceHub`.

    Raises:
        ValueError: Unknown name.
        DownloadUnavailableError: Offline or the hub is unreachable (the message says
            what to fetch elsewhere and where to put it).
        ChecksumMismatchError: A file does not match the hub's checksum (it is deleted).
        DownloadError: Other failures (missing files on the hub, access denied).
        ImportError: ``huggingface_hub`` is not installed.
    """
    artifact = get_artifact(name)
    dest = Path(dest_dir)
    target = artifact.target_path(dest)
    if not force and _is_complete(artifact, dest):
        logger.info("%s: %s already exists; nothing to download", artifact.name, target)
        return target

    if _offline_mode():
        fetched = _use_local_files(artifact, dest, "offline mode is on (HF_HUB_OFFLINE is set)")
    elif hub is None and not hub_reachable():  # one quick probe instead of retries
        fetched = _use_local_files(artifact, dest, unreachable_reason())
    else:
        fetched = _fetch(
            artifact, dest, hub if hub is not None else HuggingFaceHub(), force, progress
        )

    files: dict[str, Any] = {}
    downloads: dict[str, Any] = {}
    if artifact.postprocess is PostProcess.GUNZIP:
        digest, src_digest, checked = _gunzip(
            fetched.paths[0], target, fetched.remotes[0], progress
        )
        rel, entry = _file_entry(target, dest, digest, False)
        files[rel] = entry
        downloads[artifact.files[0]] = {
            "sha256": src_digest.sha256.hexdigest(),
            "size": src_digest.size,
            "verified_with_hub": checked,
        }
    elif artifact.postprocess is PostProcess.CONCAT:
        digest, parts, checked = _concat(fetched.paths, target, fetched.remotes, progress)
        rel, entry = _file_entry(target, dest, digest, False)
        files[rel] = entry
        for remote_name, part_digest in zip(artifact.files, parts):
            downloads[remote_name] = {
                "sha256": part_digest.sha256.hexdigest(),
                "size": part_digest.size,
                "verified_with_hub": checked,
            }
    else:
        if fetched.paths:
            for path, remote in zip(fetched.paths, fetched.remotes):
                digest = _hash_file(path, progress, f"sha256 {path.name}")
                checked = _check(path, digest, remote)
                rel, entry = _file_entry(path, dest, digest, checked)
                files[rel] = entry
        else:  # offline, a directory copied by hand
            for path in sorted(p for p in target.rglob("*") if p.is_file()):
                rel, entry = _file_entry(path, dest, _hash_file(path, progress, path.name), False)
                files[rel] = entry

    if artifact.postprocess is not PostProcess.NONE and not keep_downloads:
        for path in fetched.paths:
            path.unlink(missing_ok=True)

    _write_manifest_entry(
        dest,
        artifact.name,
        {
            "repo_id": artifact.repo_id,
            "repo_type": artifact.repo_type,
            "revision": fetched.revision,
            "postprocess": artifact.postprocess.value,
            "target": artifact.target,
            "downloads": downloads,
            "files": files,
            "completed_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        },
    )
    logger.info("%s: ready at %s", artifact.name, target)
    return target


# --------------------------------------------------------------------------- CLI


def add_download_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``search-env download`` arguments to ``parser``."""
    parser.add_argument(
        "names",
        nargs="*",
        metavar="NAME",
        help="artifacts to download (see --list); 'qa' = the seven QA datasets",
    )
    parser.add_argument(
        "--dest", default=DEFAULT_DEST, help="destination directory (default: data)"
    )
    parser.add_argument(
        "--force", action="store_true", help="download and unpack again even if present"
    )
    parser.add_argument("--list", action="store_true", help="list the artifacts and exit")
    parser.add_argument(
        "--keep-downloads", action="store_true", help="keep .gz files and index parts"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run_download(args: argparse.Namespace) -> int:
    """Run ``search-env download``; returns the exit code.

    0 on success; 1 when a download failed (offline, checksum, hub error), with the
    reason on stderr; 2 on a usage error (no or unknown names).
    """
    dest = getattr(args, "dest", DEFAULT_DEST)
    if getattr(args, "list", False):
        print(artifact_table(dest))
        return 0
    names = list(getattr(args, "names", None) or ())
    if not names:
        print("error: name at least one artifact, or pass --list\n", file=sys.stderr)
        print(artifact_table(dest), file=sys.stderr)
        return 2
    try:
        artifacts = resolve_names(names)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    failed = 0
    for artifact in artifacts:
        try:
            path = download(
                artifact.name,
                dest,
                force=getattr(args, "force", False),
                progress=not getattr(args, "no_progress", False),
                keep_downloads=getattr(args, "keep_downloads", False),
            )
        except (DownloadError, DatasetUnavailableError, ImportError) as e:
            print(f"error: {e}\n", file=sys.stderr)
            failed += 1
            continue
        print(f"{artifact.name}: {path}")
    return 1 if failed else 0
