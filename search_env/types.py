"""Typed records shared across the package."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Passage:
    """One corpus passage, as stored in a wiki-18 style corpus.

    ``contents`` keeps the corpus field as it is: the first line is the title, the rest
    is the text (``"Title"\\ntext`` in wiki-18, quotes included).
    """

    id: str
    contents: str
    score: float | None = None

    @property
    def title(self) -> str:
        return self.contents.split("\n", 1)[0]

    @property
    def text(self) -> str:
        parts = self.contents.split("\n", 1)
        return parts[1] if len(parts) > 1 else ""

    def with_score(self, score: float | None) -> Passage:
        return Passage(self.id, self.contents, score)


@dataclass(frozen=True)
class QAExample:
    """One question with its gold answers (FlashRAG fields)."""

    id: str
    question: str
    golden_answers: tuple[str, ...]
    metadata: dict = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        if not isinstance(self.question, str) or not self.question.strip():
            raise ValueError(f"QAExample {self.id!r}: question must be a non-empty string")
        if isinstance(self.golden_answers, str):
            object.__setattr__(self, "golden_answers", (self.golden_answers,))
        else:
            object.__setattr__(self, "golden_answers", tuple(str(a) for a in self.golden_answers))
