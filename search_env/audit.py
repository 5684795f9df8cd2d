"""Corpus coverage audit: can the corpus answer the dataset at all, and does the retriever find it?

For each dataset, :func:`audit_dataset` reports

* ``gold_in_corpus``: the share of questions whose gold answer appears in some passage
  of the corpus, and
* ``recall_at_k``: answer recall at k, the share whose gold answer appears in one of the
  top-k passages the retriever returns for the question itself (as DPR, Karpukhin et al.,
  arXiv 2004.04906, Table 2, reports it: BM25 top-20 59.1 on NQ test).

"Appears" is DPR's ``has_answer`` rule: the normalised answer (``rewards.normalize``:
lower case, no punctuation or articles) as a whole-word token sequence of the normalised
passage (title and text), so "us" does not match inside "music".

A corpus that misses the supporting passages caps every method trained on it: a recent
study (arXiv 2605.27881) found wiki-18 lacks them for many multi-hop questions, and that
fixing coverage mattered more than the RL algorithm. :func:`add_supporting_passages`
writes a corpus with given passages (say, the datasets' own context paragraphs) added,
each new record carrying its provenance in a ``source`` field.

``search-env audit --dataset ID --corpus PATH [--k 20] [--json PATH]`` runs it.
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any, cast

from search_env.data.corpus import iter_corpus
from search_env.files import atomic_file
from search_env.retrievers.base import Retriever
from search_env.rewards import normalize
from search_env.types import Passage, QAExample

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AuditResult:
    """The coverage of one dataset by one corpus and retriever."""

    dataset: str
    questions: int
    """Questions audited (those with at least one non-empty gold answer)."""
    gold_in_corpus: float
    """Share of questions whose gold answer is in some passage of the corpus."""
    recall_at_k: dict[int, float]
    """k -> share whose gold answer is in the retriever's top-k for the question."""
    missing: tuple[str, ...] = field(default=())
    """Ids of the questions whose gold answer is in no passage (the first 100)."""

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["recall_at_k"] = {str(k): v for k, v in self.recall_at_k.items()}
        out["missing"] = list(self.missing)
        return out


def _tokens(text: str) -> tuple[str, ...]:
    return tuple(normalize(text).split())


def has_answer(passage_text: str, golds: Iterable[str]) -> bool:
    """DPR's ``has_answer``: a normalised gold is a whole-word run of the normalised text."""
    words = _tokens(passage_text)
    for gold in golds:
        g = _tokens(gold)
        if g and any(words[i : i + len(g)] == g for i in range(len(words) - len(g) + 1)):
            return True
    return False


def _gold_index(examples: Sequence[QAExample]) -> tuple[dict[tuple[str, ...], list[int]], int]:
    """Every gold token sequence -> the questions it answers, and the longest length."""
    index: dict[tuple[str, ...], list[int]] = {}
    for q, example in enumerate(examples):
        for gold in example.golden_answers:
            g = _tokens(gold)
            if g:
                index.setdefault(g, []).append(q)
    return index, max((len(g) for g in index), default=0)


def gold_in_corpus(examples: Sequence[QAExample], passages: Iterable[Passage]) -> list[bool]:
    """For each question, whether its gold answer appears in some passage.

    One pass over the corpus: each passage's word n-grams (up to the longest gold
    answer) are looked up in a set of the gold sequences, so the cost grows with the
    corpus, not with corpus x questions.
    """
    index, longest = _gold_index(examples)
    found = [False] * len(examples)
    remaining = set(index)
    for passage in passages:
        if not remaining:
            break
        words = _tokens(passage.contents)
        for n in range(1, longest + 1):
            for i in range(len(words) - n + 1):
                gram = words[i : i + n]
                if gram in remaining:
                    remaining.discard(gram)
                    for q in index[gram]:
                        found[q] = True
    return found


def recall_at_k(
    examples: Sequence[QAExample],
    retriever: Retriever,
    ks: Sequence[int],
    batch_size: int = 256,
) -> dict[int, float]:
    """Answer recall at each k of ``ks``: one batched ``retriever.search`` per batch."""
    if not ks or any(k < 1 for k in ks):
        raise ValueError(f"ks must be positive ints, got {list(ks)}")
    top = max(ks)
    first_hit: list[int | None] = []
    for start in range(0, len(examples), batch_size):
        batch = examples[start : start + batch_size]
        results = retriever.search([e.question for e in batch], top)
        if len(results) != len(batch):
            raise RuntimeError(f"retriever returned {len(results)} lists for {len(batch)} queries")
        for example, passages in zip(batch, results):
            rank = next(
                (
                    r
                    for r, p in enumerate(passages)
                    if has_answer(p.contents, example.golden_answers)
                ),
                None,
            )
            first_hit.append(rank)
    n = max(len(examples), 1)
    return {k: sum(r is not None and r < k for r in first_hit) / n for k in sorted(set(ks))}


def audit_dataset(
    name: str,
    examples: Sequence[QAExample],
    corpus: str | Path | Sequence[Passage],
    retriever: Retriever | None,
    k: int = 20,
) -> AuditResult:
    """Coverage of ``examples`` by ``corpus`` and answer recall at 1, 5 and ``k``.

    Args:
        name: the dataset's name in the report.
        examples: the questions; those without a non-empty gold answer are skipped.
        corpus: a wiki-18 style JSONL file, or the passages themselves.
        retriever: the configured retriever; None reports no recall.
        k: the largest k of recall at k.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be an int >= 1, got {k!r}")
    usable = [e for e in examples if any(_tokens(g) for g in e.golden_answers)]
    passages = iter_corpus(corpus) if isinstance(corpus, (str, Path)) else corpus
    found = gold_in_corpus(usable, passages)
    recall = (
        {}
        if retriever is None
        else recall_at_k(usable, retriever, sorted({1, 5, k} & set(range(1, k + 1))))
    )
    n = max(len(usable), 1)
    missing = tuple(e.id for e, hit in zip(usable, found) if not hit)[:100]
    return AuditResult(name, len(usable), sum(found) / n, recall, missing)


def format_table(results: Sequence[AuditResult]) -> str:
    """A Markdown table of audit results, one row per dataset."""
    ks = sorted({k for r in results for k in r.recall_at_k})
    header = ["dataset", "questions", "gold in corpus", *(f"recall@{k}" for k in ks)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in results:
        cells = [r.dataset, str(r.questions), f"{r.gold_in_corpus:.3f}"]
        cells += [f"{r.recall_at_k[k]:.3f}" if k in r.recall_at_k else "-" for k in ks]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_report(results: Sequence[AuditResult], path: str | Path, **meta: Any) -> Path:
    """Write the results (and ``meta``: corpus, retriever, k) as JSON."""
    path = Path(path)
    payload = {**meta, "results": [r.as_dict() for r in results]}
    with atomic_file(path) as f:
        f.write((json.dumps(payload, indent=2, sort_keys=True) + "\n").encode("utf-8"))
    return path


def _open_corpus(path: Path) -> IO[bytes]:
    """The corpus bytes, gunzipped when the file starts with gzip's magic."""
    with open(path, "rb") as f:
        magic = f.read(2)
    if magic == b"\x1f\x8b":
        return cast(IO[bytes], gzip.open(path, "rb"))
    return open(path, "rb")


def add_supporting_passages(
    corpus: str | Path,
    passages: Iterable[Mapping[str, Any]],
    out: str | Path,
    *,
    default_source: str = "added",
) -> int:
    """Write ``out``: the corpus as it is, then each given passage not already in it.

    Args:
        corpus: a wiki-18 style JSONL corpus (read, never changed).
        passages: records with ``contents`` (or ``title`` and ``text``) and optionally
            ``id`` and ``source`` (provenance, e.g. ``"hotpotqa:train:5a8b57f2"``).
        out: the new corpus; written atomically.
        default_source: the ``source`` of records that give none.

    Returns:
        How many passages were added (duplicates of corpus contents, or of each other,
        are skipped). Every added record is ``{"id", "contents", "source"}``; its id is
        the given one, or ``added-<n>``; an id already in the corpus raises ValueError.
    """
    corpus, out = Path(corpus), Path(out)
    if corpus.resolve() == out.resolve():
        raise ValueError("out must differ from corpus: the corpus is read while out is written")
    seen_ids: set[str] = set()
    seen_contents: set[str] = set()
    for p in iter_corpus(corpus):
        seen_ids.add(p.id)
        seen_contents.add(p.contents)
    added = 0
    with atomic_file(out) as f:
        with _open_corpus(corpus) as src:
            for line in src:
                if line.strip():
                    f.write(line if line.endswith(b"\n") else line + b"\n")
        for n, record in enumerate(passages):
            if "contents" in record:
                contents = str(record["contents"])
            elif "title" in record and "text" in record:
                contents = f'"{record["title"]}"\n{record["text"]}'
            else:
                raise ValueError(f"passage {n}: needs 'contents' or 'title' and 'text'")
            if contents in seen_contents:
                continue
            pid = str(record.get("id", f"added-{n}"))
            if pid in seen_ids:
                raise ValueError(f"passage {n}: id {pid!r} is already in the corpus")
            source = str(record.get("source", default_source))
            row = {"id": pid, "contents": contents, "source": source}
            f.write((json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8"))
            seen_ids.add(pid)
            seen_contents.add(contents)
            added += 1
    logger.info("added %d supporting passages to %s, wrote %s", added, corpus, out)
    return added


# ------------------------------------------------------------------------ CLI
def add_audit_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``search-env audit``."""
    parser.add_argument(
        "--dataset",
        action="append",
        required=True,
        help="a QA dataset: hub name (nq, hotpotqa, ...) or FlashRAG JSONL / parquet path; repeatable",
    )
    parser.add_argument("--corpus", required=True, help="wiki-18 style JSONL corpus")
    parser.add_argument(
        "--retriever",
        default=None,
        help="index directory or server URL (default: BM25 over --corpus, built and cached)",
    )
    parser.add_argument("--split", default=None, help="dataset split (default: its eval split)")
    parser.add_argument("--k", type=int, default=20, help="largest k of recall@k (also 1 and 5)")
    parser.add_argument("--limit", type=int, default=None, help="audit the first N questions")
    parser.add_argument("--no-retrieval", action="store_true", help="coverage only, no recall")
    parser.add_argument("--json", default=None, help="write the results to this JSON file")


def _known_dataset(name: str) -> bool:
    from search_env.data.qa import get_dataset_info

    try:
        get_dataset_info(name)
    except ValueError:
        return False
    return True


def run_audit(args: argparse.Namespace) -> int:
    """``search-env audit``: print the table (and write JSON); exit status 0."""
    from search_env.registration import load_dataset_examples, load_retriever

    if args.k < 1:
        raise SystemExit("search-env audit: --k must be >= 1")
    retriever = None
    if not args.no_retrieval:
        retriever = (
            load_retriever(args.retriever) if args.retriever else load_retriever(corpus=args.corpus)
        )
    results = []
    for spec in args.dataset:
        hub = not Path(spec).exists() and _known_dataset(spec)
        examples = load_dataset_examples(spec if hub else None, None if hub else spec, args.split)
        if args.limit is not None:
            examples = list(examples)[: args.limit]
        name = spec if hub else Path(spec).name
        results.append(audit_dataset(name, examples, args.corpus, retriever, k=args.k))
    print(format_table(results))
    if args.json:
        meta = {"corpus": str(args.corpus), "retriever": args.retriever or "bm25", "k": args.k}
        print(f"wrote {write_report(results, args.json, **meta)}")
    return 0
