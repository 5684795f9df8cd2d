"""The scripted oracle of the synthetic world: it follows a question's gold hops
(``metadata["hops"]``) but must read each hop's answer from what the search returned,
so its exact match measures retrieval quality."""

from __future__ import annotations

from search_env.baselines import answer_turn, search_turn
from search_env.synth.relations import find_fact
from search_env.types import QAExample


class OracleAgent:
    """Follows the gold hops, reading every bridge entity from the retrieved text.

    For a single-hop or bridge question it searches hop by hop: the query of hop ``i`` is
    the gold query with the gold subject replaced by the entity it read at hop ``i - 1``
    (via :func:`~search_env.synth.relations.find_fact`). For a comparison it looks up each
    entity's year and answers the earlier one. When a fact is not in the results it
    retries once with the bare subject as query, then answers its best guess: the last
    entity it found (for a comparison, the earliest year it found).

    Args:
        max_searches: searches it allows itself before it must answer (the protocol's
            ``max_turns``).
        retries: extra searches per hop when the fact was not found.
        quote_evidence: open the turn after a successful search by quoting the sentence
            that states the fact (``<think> Zelny Textiles is headquartered in Faven.
            </think>``) instead of a fixed phrase: demonstrations that show where the
            answer comes from.
    """

    def __init__(
        self, max_searches: int = 4, retries: int = 1, quote_evidence: bool = False
    ) -> None:
        if max_searches < 0 or retries < 0:
            raise ValueError("max_searches and retries must be >= 0")
        self.max_searches = max_searches
        self.retries = retries
        self.quote_evidence = quote_evidence
        self._hops: list[dict[str, str]] = []

    def reset(self, example: QAExample) -> None:
        hops = example.metadata.get("hops")
        if not hops:
            raise ValueError(f"question {example.id!r} has no metadata['hops']")
        self._hops = list(hops)
        self._comparison = example.metadata.get("type") == "comparison"
        self._step = 0  # the hop being looked up
        self._subject = self._hops[0]["subject"]
        self._attempts = 0
        self._searches = 0
        self._pending = False  # True when the last turn was a search
        self._found: dict[str, str] = {}  # comparison: subject -> year
        self._evidence = ""  # the fact sentence read by the last search, if quoting

    def act(self, observation: str) -> str:
        if self._pending:
            self._read(observation)
        if self._step >= len(self._hops):
            return self._answer()
        if self._attempts > self.retries or self._searches >= self.max_searches:
            if not self._comparison or self._searches >= self.max_searches:
                return self._answer()
            self._step += 1  # give up on this entity, try the next one
            self._attempts = 0
            if self._step >= len(self._hops):
                return self._answer()
        hop = self._hops[self._step]
        subject = hop["subject"] if self._comparison else self._subject
        if self._attempts == 0:
            query = hop["query"].replace(hop["subject"], subject)
            if subject not in query:
                query = f"{subject} {hop['relation'].replace('_', ' ')}"
        else:
            query = subject
        self._pending = True
        self._searches += 1
        thought = f"I need the {hop['relation'].replace('_', ' ')} of {subject}."
        return search_turn(self._quoted(thought), query)

    def _quoted(self, thought: str) -> str:
        """``thought``, after the evidence sentence when the last search found one."""
        evidence, self._evidence = self._evidence, ""
        return f"{evidence} {thought}" if evidence else thought

    def _read(self, observation: str) -> None:
        self._pending = False
        hop = self._hops[self._step]
        subject = hop["subject"] if self._comparison else self._subject
        found = find_fact(hop["relation"], subject, observation)
        if found is None:
            self._attempts += 1
            return
        value, sentence = found
        if self.quote_evidence:
            self._evidence = sentence
        if self._comparison:
            self._found[subject] = value
        else:
            self._subject = value
        self._step += 1
        self._attempts = 0

    def _answer(self) -> str:
        if self._comparison:
            years = {s: int(y) for s, y in self._found.items() if y.isdigit()}
            answer = min(years, key=years.__getitem__) if years else self._hops[0]["subject"]
            return answer_turn(self._quoted(f"{answer} comes first."), answer)
        done = self._step >= len(self._hops)
        if done and self._evidence:  # the quote says it all
            thought, self._evidence = self._evidence, ""
        else:
            thought = self._quoted(
                "I found the answer." if done else "I could not find it; my best guess:"
            )
        return answer_turn(thought, self._subject)
