"""The artifact registry: every downloadable artifact as one `Artifact` record.

An artifact names the hub repo and files it comes from, where it goes under the
destination directory, and how it is finished after the download (`PostProcess`).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from search_env.data.qa import DATASETS, get_dataset_info

__all__ = [
    "ARTIFACTS",
    "DEFAULT_DEST",
    "GROUPS",
    "Artifact",
    "PostProcess",
    "artifact_table",
    "get_artifact",
    "human_size",
    "resolve_names",
]

DEFAULT_DEST = "data"
_GB = 1_000_000_000
_MB = 1_000_000


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
        text = human_size(self.approx_bytes)
        if self.approx_final_bytes and self.approx_final_bytes != self.approx_bytes:
            text += f" ({human_size(self.approx_final_bytes)} unpacked)"
        return text


def human_size(n: int) -> str:
    """``n`` bytes in decimal units, e.g. ``"5.1 GB"`` or ``"17 kB"``."""
    for unit, scale in (("GB", _GB), ("MB", _MB), ("kB", 1000)):
        if n >= scale:
            value = n / scale
            return f"{value:.0f} {unit}" if value >= 10 else f"{value:.1f} {unit}"
    return f"{n} B"


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
