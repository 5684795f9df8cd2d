"""A synthetic world on disk: the corpus and QA writers and the build-once cache.

``synth_world_dir(size, num_entities, seed)`` is the world of ``SearchQA-Synth-v0``:
``$SEARCH_ENV_CACHE/synth/synth-<config hash>/`` with ``corpus.jsonl``, ``train.jsonl``,
``test.jsonl`` and ``config.json``. The same config always gives byte-identical files.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

from search_env.files import build_dir
from search_env.files import cache_dir as default_cache_dir
from search_env.synth.config import FORMAT_VERSION, SynthConfig
from search_env.synth.world import SynthWorld, generate_world
from search_env.types import QAExample


def _open_write(path: Path) -> io.TextIOBase:
    if path.suffix == ".gz":
        # mtime=0 and no file name in the header keep the bytes reproducible
        raw = open(path, "wb")
        gz = gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0)
        return _ClosingTextWrapper(gz, raw)
    return open(path, "w", encoding="utf-8", newline="\n")


class _ClosingTextWrapper(io.TextIOWrapper):
    def __init__(self, gz: gzip.GzipFile, raw: io.BufferedWriter) -> None:
        super().__init__(gz, encoding="utf-8", newline="\n")
        self._raw = raw

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._raw.close()


def write_corpus(world: SynthWorld, path: str | Path) -> Path:
    """Write the corpus as JSONL ``{"id", "contents"}`` lines (gzip if ``.gz``)."""
    path = Path(path)
    with _open_write(path) as f:
        for p in world.iter_passages():
            f.write(json.dumps({"id": p.id, "contents": p.contents}, ensure_ascii=False) + "\n")
    return path


def _qa_row(example: QAExample) -> str:
    row = {
        "id": example.id,
        "question": example.question,
        "golden_answers": list(example.golden_answers),
        "metadata": example.metadata,
    }
    return json.dumps(row, ensure_ascii=False) + "\n"


def write_qa(world: SynthWorld, directory: str | Path) -> dict[str, Path]:
    """Write FlashRAG JSONL files ``train.jsonl`` and ``test.jsonl``; returns their paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = {split: directory / f"{split}.jsonl" for split in ("train", "test")}
    files = {split: open(p, "w", encoding="utf-8", newline="\n") for split, p in paths.items()}
    try:
        if "questions" in world.__dict__:  # already built: reuse
            pairs: Iterator[tuple[str, QAExample]] = (
                (s, q) for s, qs in world.questions.items() for q in qs
            )
        else:
            pairs = world.iter_questions()
        for split, example in pairs:
            files[split].write(_qa_row(example))
    finally:
        for f in files.values():
            f.close()
    return paths


def config_hash(config: SynthConfig) -> str:
    """A stable hash of the config and the generator's format version."""
    payload = json.dumps({"format": FORMAT_VERSION, **asdict(config)}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def build_cached(config: SynthConfig, cache_dir: Path | None = None) -> Path:
    """Write corpus and QA for ``config`` once, and return the directory holding them.

    The directory ``<cache_dir>/synth-<config hash>`` holds ``corpus.jsonl``,
    ``train.jsonl``, ``test.jsonl`` and ``config.json``. It is written to a temporary
    directory and renamed into place, so a reader never sees a half-written world; a later
    call with the same config returns it without regenerating.
    """
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = root / f"synth-{config_hash(config)}"
    if (target / "config.json").is_file():
        return target

    def build(tmp: Path) -> None:
        world = generate_world(config)
        write_corpus(world, tmp / "corpus.jsonl")
        write_qa(world, tmp)
        meta = {
            "format": FORMAT_VERSION,
            "config": asdict(config),
            "num_passages": world.num_passages,
        }
        (tmp / "config.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")

    return build_dir(target, build)


def synth_world_dir(size: str = "small", num_entities: int | None = None, seed: int = 0) -> Path:
    """The cached directory of the world of :meth:`SynthConfig.of_size` (built on first use),
    under ``<cache_dir()>/synth`` (``search_env.files.cache_dir``)."""
    config = SynthConfig.of_size(size, num_entities, seed)
    return build_cached(config, default_cache_dir() / "synth")
