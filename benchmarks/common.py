"""Helpers shared by the benchmark scripts: synthetic data, timing, result files.

Run benchmarks from the repository root, e.g. ``python benchmarks/bench_bm25_raw.py``;
results go to ``benchmarks/results/{name}.json`` together with a description of the
machine, and a readable table is printed.
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # let scripts run without installing the package
    sys.path.insert(0, str(REPO_ROOT))

from search_env.types import Passage  # noqa: E402

RESULTS_DIR = Path(__file__).resolve().parent / "results"
VOCAB_SIZE = 50_000
ZIPF_EXPONENT = 1.07
WORDS_PER_DOC = 60
# The most frequent "words" are real English stopwords, so that the tokenizer drops
# them as it would in real text instead of leaving posting lists covering every doc.
_HEAD_WORDS = (
    "the of and in to a is was for on as by with he that at from his it an were are which "
    "this be or has had its first also after new their one two who but not they been her "
    "she other into more all when there than most"
).split()
_SYLLABLES = (
    "ba be bi bo bu da de di do du fa fe fi fo ga ge gi go ka ke ki ko ku la le li lo lu "
    "ma me mi mo mu na ne ni no nu pa pe pi po ra re ri ro ru sa se si so su ta te ti to "
    "tu va ve vi vo za ze zi zo kar len mor tis vel dan rin sol tur wen"
).split()
_PACKAGES = ("search-env", "bm25s", "numpy", "numba", "PyStemmer", "orjson", "tqdm", "scipy")


@lru_cache(maxsize=4)
def _vocabulary(size: int = VOCAB_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Fixed pseudo-word vocabulary (independent of any seed) and its Zipf weights."""
    rng = np.random.default_rng(20250101)
    words = list(_HEAD_WORDS)
    seen = set(words)
    while len(words) < size:
        n = int(rng.integers(2, 5))
        word = "".join(_SYLLABLES[i] for i in rng.integers(0, len(_SYLLABLES), n))
        if word not in seen:
            seen.add(word)
            words.append(word)
    weights = 1.0 / np.arange(1, size + 1) ** ZIPF_EXPONENT
    return np.array(words, dtype=object), weights / weights.sum()


def _sample_words(rng: np.random.Generator, n: int) -> np.ndarray:
    words, probs = _vocabulary()
    return words[rng.choice(len(words), size=n, p=probs)]


def synthetic_corpus(
    n_docs: int, seed: int = 0, words_per_doc: int = WORDS_PER_DOC
) -> list[Passage]:
    """Random wiki-18 style passages over a Zipf-distributed pseudo-word vocabulary.

    Each passage has a two-word title of mid-frequency words and a text of about
    ``words_per_doc`` words (+-25%). Ids are ``"0"``, ``"1"``, ...
    """
    rng = np.random.default_rng(seed)
    words, _ = _vocabulary()
    lengths = rng.integers(int(words_per_doc * 0.75), int(words_per_doc * 1.25) + 1, n_docs)
    flat = _sample_words(rng, int(lengths.sum()))
    titles = words[rng.integers(200, 20_000, size=(n_docs, 2))]
    ends = np.cumsum(lengths)
    out = []
    for i in range(n_docs):
        text = " ".join(flat[ends[i] - lengths[i] : ends[i]])
        title = f"{titles[i, 0].capitalize()} {titles[i, 1]}"
        out.append(Passage(str(i), f'"{title}"\n{text}'))
    return out


def synthetic_queries(n: int, seed: int = 1, min_words: int = 4, max_words: int = 8) -> list[str]:
    """Random queries of ``min_words``..``max_words`` words from the corpus' distribution."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(min_words, max_words + 1, n)
    flat = _sample_words(rng, int(lengths.sum()))
    ends = np.cumsum(lengths)
    return [" ".join(flat[e - n_words : e]) for e, n_words in zip(ends, lengths)]


def timed(
    fn: Callable[[], Any], repeat: int = 3, stat: Literal["best", "median"] = "best"
) -> float:
    """Runs ``fn`` ``repeat`` times; returns the best (or median) wall time in seconds."""
    if repeat < 1:
        raise ValueError(f"repeat must be >= 1, got {repeat}")
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times) if stat == "best" else statistics.median(times)


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _memory_gb() -> float | None:
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9, 1)
    except (ValueError, OSError, AttributeError):
        return None


def machine_info() -> dict[str, Any]:
    """CPU, memory, Python, platform and installed versions of the relevant packages."""
    versions = {}
    for name in _PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    try:
        usable: int | None = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {
        "cpu_count": os.cpu_count(),
        "usable_cpus": usable,
        "cpu_model": _cpu_model(),
        "memory_gb": _memory_gb(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": versions,
    }


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 100 else f"{value:,.0f}"
    return str(value)


def format_table(rows: list[dict[str, Any]]) -> str:
    """Renders a list of dicts as an aligned text table (columns in first-seen order)."""
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    cells = [[_fmt(row.get(c, "")) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.rjust(w) for v, w in zip(r, widths)) for r in cells]
    return "\n".join(lines)


def save_results(name: str, results: dict[str, Any]) -> Path:
    """Writes ``benchmarks/results/{name}.json`` (with machine info) and prints a table.

    List-of-dict values in ``results`` are printed as tables, everything else as
    ``key: value`` lines.

    Returns:
        The path of the JSON file.
    """
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    m = machine_info()
    payload = {
        "name": name,
        "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": m,
        "results": results,
    }
    path = RESULTS_DIR / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)

    print(f"\n== {name} ({m['usable_cpus']} cpus, {m['cpu_model']}, python {m['python']}) ==")
    for key, value in results.items():
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            print(f"\n{key}:\n{format_table(value)}")
        else:
            print(f"{key}: {_fmt(value)}")
    print(f"\nsaved {path}")
    return path


# ------------------------------------------- the warm-started tiny-recipe benchmarks
def rebuild_table(name: str, note: str, markdown: Callable[[dict[str, Any]], str]) -> int:
    """``--rebuild``: rewrite ``{name}.md`` from the saved ``{name}.json`` (with ``note``
    stored in its settings when given), print the table; returns the exit code 0."""
    path = RESULTS_DIR / f"{name}.json"
    payload = json.loads(path.read_text())
    if note:
        payload["results"]["settings"]["note"] = note
        path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    (RESULTS_DIR / f"{name}.md").write_text(markdown(payload["results"]) + "\n")
    print(markdown(payload["results"]))
    return 0


def tiny_recipe_base(args: Any) -> tuple[Any, dict[str, Any], Path]:
    """The ``tiny-cpu`` config of a side-by-side run (``args``: ``quick``, ``sft_steps``,
    ``steps``, ``set``, ``out``), evaluated at step 0 and after the last step only, no
    checkpoints; logging on, the output directory made, torch's threads set. Returns the
    config, the overrides applied and the output directory."""
    import logging

    import torch

    from agents.cli_args import parse_set
    from agents.config import TrainConfig, apply_overrides, tiny_cpu
    from agents.recipe import QUICK
    from search_env.logs import configure_logging

    configure_logging(logging.INFO)
    overrides: dict[str, Any] = dict(QUICK) if args.quick else {}
    overrides.update({"sft.steps": args.sft_steps, "steps": args.steps})
    overrides.update(parse_set(TrainConfig, args.set))
    base = apply_overrides(tiny_cpu(), {**overrides, "eval_every": 0, "checkpoint_every": 0})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if base.threads:
        torch.set_num_threads(base.threads)
    return base, overrides, out
