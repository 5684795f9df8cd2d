"""The results table: methods (rows), datasets (columns), episode records and the report."""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

PAPER_COLUMNS: dict[str, str] = {
    "SearchQA-NQ-v0": "NQ",
    "SearchQA-TriviaQA-v0": "TriviaQA",
    "SearchQA-PopQA-v0": "PopQA",
    "SearchQA-HotpotQA-v0": "HotpotQA",
    "SearchQA-2Wiki-v0": "2wiki",
    "SearchQA-Musique-v0": "Musique",
    "SearchQA-Bamboogle-v0": "Bamboogle",
}
"""Env id -> column of the Search-R1 results table, in the paper's order."""

METHODS: tuple[str, ...] = ("search", "direct", "rag", "oracle")
BASELINES: tuple[str, ...] = ("direct", "rag", "oracle")
METHOD_LABELS: dict[str, str] = {
    "search": "search (Search-R1 protocol)",
    "direct": "direct answer (no search)",
    "rag": "RAG (retrieve on the question)",
    "oracle": "oracle (scripted)",
}
TABLE_METRICS: dict[str, tuple[str, str]] = {
    "em": ("EM", "score"),
    "f1": ("F1", "score"),
    "searches": ("Searches per episode", ".2f"),
    "response_length": ("Response length (agent tokens per episode)", ".1f"),
    "turns": ("Episode length (agent turns)", ".2f"),
    "context_length": ("Context length (tokens at the episode's end)", ".0f"),
}
"""Metric -> (markdown heading, number format); ``score`` prints ``.349`` as the paper."""


def column_name(env_id: str) -> str:
    """The table column of an env id: the paper's name, else the id's middle (``Synth``)."""
    if env_id in PAPER_COLUMNS:
        return PAPER_COLUMNS[env_id]
    match = re.fullmatch(r"SearchQA-(.+)-v\d+", env_id)
    return match.group(1) if match else env_id


def parse_methods(spec: str | Sequence[str], allowed: Sequence[str] = BASELINES) -> list[str]:
    """``"direct,rag"`` -> ``["direct", "rag"]``; unknown names raise ValueError."""
    names = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else list(spec)
    names = [n for n in names if n]
    for name in names:
        if name not in allowed:
            raise ValueError(f"unknown method {name!r}; choose from {', '.join(allowed)}")
    if len(set(names)) != len(names):
        raise ValueError(f"a method is named twice in {names}")
    return names


@dataclass(frozen=True)
class EpisodeRecord:
    """One evaluated episode.

    Attributes:
        index: the question's index in the env's dataset.
        id: the question's id.
        question: the question text.
        golden_answers: the gold answers.
        answer: what the agent answered (None: no answer).
        reward: the env's reward for the episode.
        em: exact match. f1: token F1. cover_em: gold answer contained in the answer.
        searches: searches the env executed.
        turns: agent turns played (the episode's length in chunk-mode steps).
        response_length: tokens the agent wrote.
        context_length: tokens in the whole context at the end (None where not measured).
        terminated: the agent answered (False: truncated).
        doc_ids: RAG only: ids of the passages put in the prompt.
    """

    index: int
    id: str
    question: str
    golden_answers: tuple[str, ...]
    answer: str | None
    reward: float
    em: float
    f1: float
    cover_em: float
    searches: int
    turns: int
    response_length: int
    context_length: int | None
    terminated: bool
    doc_ids: tuple[str, ...] | None = None


def _mean(values: Iterable[float]) -> float:
    values = list(values)
    return float(sum(values) / len(values)) if values else 0.0


@dataclass
class MethodResult:
    """One method on one env: its episodes and their means."""

    method: str
    env_id: str
    episodes: list[EpisodeRecord]
    seconds: float = 0.0

    @property
    def column(self) -> str:
        return column_name(self.env_id)

    def metrics(self) -> dict[str, Any]:
        """Means over the episodes (``context_length`` None when it was not measured)."""
        eps = self.episodes
        lengths = [e.context_length for e in eps]
        return {
            "episodes": len(eps),
            "em": _mean(e.em for e in eps),
            "f1": _mean(e.f1 for e in eps),
            "cover_em": _mean(e.cover_em for e in eps),
            "reward": _mean(e.reward for e in eps),
            "answered": _mean(float(e.terminated) for e in eps),
            "searches": _mean(e.searches for e in eps),
            "response_length": _mean(e.response_length for e in eps),
            "turns": _mean(e.turns for e in eps),
            "context_length": None if None in lengths else _mean(lengths),  # type: ignore[arg-type]
            "seconds": self.seconds,
        }


@dataclass
class EvalReport:
    """Everything one evaluation produced; JSON and markdown views.

    Attributes:
        model: a name for the evaluated model (row labels).
        results: one :class:`MethodResult` per (method, env) that ran.
        skipped: ``{"method", "env_id", "reason"}`` for each pair that could not run.
        settings: how it ran (limit, env kwargs, templates, ...), saved with the numbers.
    """

    model: str
    results: list[MethodResult] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)

    def methods(self) -> list[str]:
        """Methods in table order."""
        present = {r.method for r in self.results} | {s["method"] for s in self.skipped}
        return [m for m in METHODS if m in present]

    def columns(self) -> list[str]:
        """The paper's seven columns, then the other envs' in order of appearance."""
        extra: list[str] = []
        for env_id in [r.env_id for r in self.results] + [s["env_id"] for s in self.skipped]:
            col = column_name(env_id)
            if env_id not in PAPER_COLUMNS and col not in extra:
                extra.append(col)
        return list(PAPER_COLUMNS.values()) + extra

    def row_label(self, method: str) -> str:
        """A table row's label: the model name, then the method."""
        label = METHOD_LABELS[method]
        return label if method == "oracle" else f"{self.model} {label}"

    def avg_columns(self) -> list[str]:
        """The columns Avg averages: the paper's datasets evaluated, else every column evaluated."""
        done = {r.column for r in self.results}
        paper = [c for c in PAPER_COLUMNS.values() if c in done]
        return paper or [c for c in self.columns() if c in done]

    def table(self, metric: str) -> dict[str, dict[str, float | None]]:
        """``{method: {column: value or None, ..., "Avg": value or None}}``.

        Avg is the mean over :meth:`avg_columns`, and None for a row that lacks one of them
        (an average over fewer datasets would not compare with the other rows').
        """
        out: dict[str, dict[str, float | None]] = {}
        pool = self.avg_columns()
        for method in self.methods():
            row: dict[str, float | None] = dict.fromkeys(self.columns())
            for r in self.results:
                if r.method == method:
                    row[r.column] = r.metrics()[metric]
            values = [row[c] for c in pool]
            complete = [v for v in values if v is not None]
            row["Avg"] = _mean(complete) if pool and len(complete) == len(pool) else None
            out[method] = row
        return out

    def avg_note(self) -> str:
        """Which columns Avg covers, in words."""
        pool = self.avg_columns()
        if len(pool) == len(PAPER_COLUMNS) and set(pool) == set(PAPER_COLUMNS.values()):
            return "Avg: mean over the seven datasets."
        covered = ", ".join(pool) or "nothing"
        return f"Avg: mean over {covered} (the datasets evaluated; not the paper's seven)."

    def to_dict(self, episodes: bool = True) -> dict[str, Any]:
        """A JSON-able dict: settings, per-(method, env) metrics (and episodes), tables."""

        def result(r: MethodResult) -> dict[str, Any]:
            out = {
                "method": r.method,
                "env_id": r.env_id,
                "column": r.column,
                "metrics": r.metrics(),
            }
            if episodes:
                out["episodes"] = [dataclasses.asdict(e) for e in r.episodes]
            return out

        return {
            "model": self.model,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "settings": self.settings,
            "methods": {m: self.row_label(m) for m in self.methods()},
            "columns": self.columns() + ["Avg"],
            "tables": {metric: self.table(metric) for metric in TABLE_METRICS},
            "results": [result(r) for r in self.results],
            "skipped": self.skipped,
        }

    def markdown_table(self, metric: str = "em") -> str:
        """One metric as a markdown table: rows = methods, columns = datasets + Avg."""
        _, fmt = TABLE_METRICS[metric]
        cols = self.columns() + ["Avg"]
        lines = ["| Method | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
        for method, row in self.table(metric).items():
            cells = [_number(row[c], fmt) for c in cols]
            lines.append(f"| {self.row_label(method)} | " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def to_markdown(self) -> str:
        """Every table metric under its own heading, plus the settings that matter."""
        limit = self.settings.get("limit")
        scope = "all questions" if limit is None else f"the first {limit} questions"
        parts = [
            f"# Evaluation of {self.model}",
            "",
            f"Greedy decoding on {scope} of each dataset. {self.avg_note()} '–': not evaluated.",
        ]
        for metric, (title, _) in TABLE_METRICS.items():
            parts += ["", f"## {title}", "", self.markdown_table(metric)]
        if self.skipped:
            parts += ["", "Skipped:"] + [
                f"- {s['method']} on {s['env_id']}: {s['reason']}" for s in self.skipped
            ]
        return "\n".join(parts) + "\n"

    def save(self, json_path: str | Path | None, markdown_path: str | Path | None) -> None:
        """Write the JSON (with every episode) and/or the markdown."""
        if json_path:
            _write(json_path, json.dumps(self.to_dict(), indent=1) + "\n")
        if markdown_path:
            _write(markdown_path, self.to_markdown())


def _write(path: str | Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def _number(value: float | None, fmt: str) -> str:
    """A table cell: "–" for a missing value; scores as the paper prints them (``.349``)."""
    if value is None:
        return "–"
    if fmt == "score":
        text = f"{value:.3f}"
        return text[1:] if text.startswith("0.") else text
    return format(value, fmt)
