"""How agent tokens become turns in :class:`~search_env.env.SearchQAEnv`.

`TurnLogic` (a base of the env, over :class:`~search_env.episode.EpisodeState`) holds
the step logic below the Gymnasium API: token mode pushes one id at a time and scans for
a closing tag as it goes; chunk mode takes a whole turn and finds where it ends at once,
with the same outcome. A finished turn is parsed (search, answer or invalid), and a
search's results become the information block's token ids.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from search_env.codec import TokenCodec
from search_env.episode import EpisodeState, Turn
from search_env.protocol import parse_queries, parse_turn


class TurnLogic(EpisodeState):
    """Agent tokens in, turn ends out; the subclass sets ``codec`` and ``protocol``."""

    codec: TokenCodec

    def _init_turn_logic(self) -> None:
        """Tokenize the fixed environment texts once (``codec`` and ``protocol`` set)."""
        self._invalid_ids = self.codec.encode(self.protocol.invalid_message)
        head, _, tail = self.protocol.information_format.partition("{docs}")
        self._info_head, self._info_tail = head, tail

    def _push(self, tid: int) -> str | None:
        """Add one agent token; return why the turn ended, or None."""
        self._tokens[self._len] = tid
        self._mask[self._len] = 1
        self._len += 1
        turn = self._turn
        turn.tokens += 1
        codec = self.codec
        if tid in codec.eos_ids:
            return "eos"
        data = codec.table[tid]
        if data:
            turn.scan_state, end = codec.scan(turn.scan_state, tid)
            if end >= 0 and self.protocol.max_queries_per_turn > 1:
                end = self._multi_query_end(turn, data, end)
            if end >= 0:
                turn.cut = len(turn.data) + end
                turn.data += data
                return "tag"
            turn.data += data
        if turn.tokens >= self.protocol.max_response_length:
            return "budget"
        if self._len >= self.protocol.max_prompt_length:
            return "context"
        return None

    def _multi_query_end(self, turn: Turn, data: bytes, end: int) -> int:
        """Where a turn of several searches ends in this token's bytes, or -1.

        A closing search tag before the ``max_queries_per_turn``-th lets the turn go on:
        the scan resumes after it, within the same token.
        """
        close = self.protocol.search_tags[1].encode("utf-8")
        scanner = self.codec.scanner
        while True:
            seen = (bytes(turn.data[-len(close) :]) + data[:end])[-len(close) :]
            if seen != close:
                return end  # an answer's closing tag
            turn.search_closes += 1
            if turn.search_closes >= self.protocol.max_queries_per_turn:
                return end
            turn.scan_state, more = scanner.feed(turn.scan_state, data[end:])
            if more < 0:
                return -1
            end += more

    def _chunk_cut(self, data: bytes) -> int:
        """Byte offset just past the closing tag that ends a chunk's turn, or -1."""
        cut = -1
        if self.protocol.max_queries_per_turn == 1:
            for tag in self.codec.scanner.patterns:
                pos = data.find(tag)
                if pos >= 0 and (cut < 0 or pos + len(tag) < cut):
                    cut = pos + len(tag)
            return cut
        search, answer = (t.encode("utf-8") for t in self.protocol.stop_strings)
        pos = data.find(answer)
        if pos >= 0:
            cut = pos + len(answer)
        start = 0
        for _ in range(self.protocol.max_queries_per_turn):
            pos = data.find(search, start)
            if pos < 0:
                return cut
            start = pos + len(search)
        return start if cut < 0 else min(cut, start)

    def _push_chunk(self, ids: np.ndarray) -> tuple[str, int]:
        """Add one whole turn at once: the same outcome as :meth:`_push` token by token.

        A chunk is always a complete turn, so the scan starts fresh: find where the turn
        ends (first closing tag, EOS, turn budget or context limit) with bytes.find and
        numpy instead of a Python loop over tokens.
        """
        codec = self.codec
        budget = self.protocol.max_response_length
        room = self.protocol.max_prompt_length - self._len
        limit = min(len(ids), budget, room)
        head = ids[:limit].tolist()
        ends: list[tuple[int, int, str]] = []  # (token index, priority, reason)
        eos_at = [head.index(e) for e in codec.eos_ids if e in head]
        if eos_at:
            ends.append((min(eos_at), 0, "eos"))
            head = head[: min(eos_at) + 1]
        table = codec.table
        pieces = [table[t] for t in head]
        data = b"".join(pieces)
        cut = self._chunk_cut(data)
        if cut >= 0:
            seen = 0
            for index, piece in enumerate(pieces):
                seen += len(piece)
                if seen >= cut:
                    break
            ends.append((index, 0, "tag"))
        if limit == budget:
            ends.append((limit - 1, 1, "budget"))
        if limit == room:
            ends.append((limit - 1, 2, "context"))
        index, _, reason = min(ends) if ends else (len(ids) - 1, 3, "chunk_end")
        used = index + 1
        self._tokens[self._len : self._len + used] = ids[:used]
        self._mask[self._len : self._len + used] = 1
        self._len += used
        turn = self._turn
        turn.tokens += used
        turn.data += data if used == len(pieces) else b"".join(pieces[:used])
        turn.cut = cut if reason == "tag" else -1
        return reason, used

    def _end_turn(self, reason: str, info: dict[str, Any]) -> tuple[str, ...]:
        """Parse the finished turn, record it in ``info``; return the queries to run."""
        turn = self._turn
        data = turn.data if turn.cut < 0 else turn.data[: turn.cut]
        text = bytes(data).decode("utf-8", errors="replace")
        parsed = parse_turn(text, self.protocol)
        final_turn = self._turn_index >= self.protocol.max_turns
        self._turn_index += 1
        info.update(
            turn=self._turn_index,
            action=parsed.kind,
            end_reason=reason,
            tag_count=parsed.tag_count,
            final_turn=final_turn,
        )
        queries: tuple[str, ...] = ()
        if parsed.kind == "answer":
            self._answer = parsed.content
        elif parsed.kind == "search":
            assert parsed.content is not None
            wanted = [parsed.content]
            if self.protocol.max_queries_per_turn > 1:
                wanted = parse_queries(text, self.protocol)
                info["turn_queries"] = len(wanted)
            cap = self.protocol.max_query_chars
            info["query_truncated"] = any(len(q) > cap for q in wanted)
            queries = tuple(q[:cap] for q in wanted)
            info["query"] = queries[0]
            if final_turn or self._len >= self.protocol.max_prompt_length:
                info["search_skipped"] = True
                queries = ()
            else:
                self._searches += len(queries)
                self._queries.extend(queries)
        else:
            self._invalid_turns += 1
            if not final_turn and self._len < self.protocol.max_prompt_length:
                self._append(self._invalid_ids, agent=False)
        info["searches"] = self._searches
        self._turn = Turn()
        return queries

    def _information_ids(self, lines: Sequence[str]) -> np.ndarray:
        """Token ids of an information block, cut to ``max_obs_length`` keeping its closing tag.

        The head, each document line and the tail are tokenized separately (and cached by
        the codec), so the ids can differ from tokenizing the block as one string at the
        seams; they are environment tokens, never re-tokenized, so only consistency matters.
        """
        head, *docs, tail = self.codec.encode_pieces([self._info_head, *lines, self._info_tail])
        body = np.concatenate([head, *docs]) if docs else head
        budget = min(self.protocol.max_obs_length, self.protocol.max_prompt_length - self._len)
        if len(body) + len(tail) <= budget:
            return np.concatenate([body, tail])
        keep = max(budget - len(tail), 0)
        return np.concatenate([body[:keep], tail[:budget]])
