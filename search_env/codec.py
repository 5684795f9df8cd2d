"""Token ids <-> bytes, and the incremental closing-tag scanner.

The env never re-tokenizes agent tokens. To find ``</search>`` / ``</answer>`` as tokens
arrive it maps each token id to the raw bytes it decodes to (once per tokenizer) and feeds
those bytes through a small automaton: O(token length) work per token, whatever the
context length, and correct when a tag is split across tokens, merged with neighbouring
text, or when a multi-byte UTF-8 character is split across tokens.
"""

from __future__ import annotations

import json
import re
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from search_env.protocol import STOP_STRINGS

_BYTE_TOKEN = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


def _byte_level_alphabet() -> dict[str, int]:
    """The GPT-2 byte-level map, inverted: printable stand-in character -> byte."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars)}


def _decoder_kind(tokenizer: Any) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return "generic"
    decoder = json.loads(backend.to_str()).get("decoder") or {}
    kinds = {decoder.get("type")} | {d.get("type") for d in decoder.get("decoders", []) or []}
    if "ByteLevel" in kinds:
        return "byte_level"
    if "ByteFallback" in kinds or "Metaspace" in kinds or "Replace" in kinds:
        return "sentencepiece"
    return "generic"


def token_bytes_table(tokenizer: Any, vocab_size: int | None = None) -> list[bytes]:
    """The bytes each token id decodes to; special tokens decode to ``b""``.

    Handles byte-level BPE (GPT-2, Qwen, Llama-3), SentencePiece-style vocabularies
    (``▁`` for space, ``<0xNN>`` byte fallback) and, as a fallback, per-token decode.
    """
    n = len(tokenizer)
    size = max(n, vocab_size or 0)
    tokens = tokenizer.convert_ids_to_tokens(list(range(n)))
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    added = {
        i: t.content for i, t in (getattr(tokenizer, "added_tokens_decoder", {}) or {}).items()
    }
    kind = _decoder_kind(tokenizer)
    alphabet = _byte_level_alphabet()
    table: list[bytes] = [b""] * size
    for i, tok in enumerate(tokens):
        if i in special or tok is None:
            continue
        if i in added:
            table[i] = added[i].encode("utf-8")
        elif kind == "byte_level":
            try:
                table[i] = bytes(alphabet[c] for c in tok)
            except KeyError:
                table[i] = tok.encode("utf-8")
        elif kind == "sentencepiece":
            m = _BYTE_TOKEN.match(tok)
            table[i] = bytes([int(m.group(1), 16)]) if m else tok.replace("▁", " ").encode("utf-8")
        else:
            table[i] = tokenizer.decode([i]).encode("utf-8")
    return table


class TagScanner:
    """A byte automaton that reports where any of a few patterns first ends.

    ``feed(state, data)`` returns ``(new_state, end)`` where ``end`` is the offset in
    ``data`` just past the first completed pattern, or -1.
    """

    def __init__(self, patterns: Sequence[bytes]) -> None:
        if not patterns or any(not p for p in patterns):
            raise ValueError("patterns must be non-empty byte strings")
        self.patterns = tuple(patterns)
        # States are the distinct prefixes of the patterns (Aho-Corasick goto + fail, as a DFA).
        prefixes = sorted({p[:i] for p in patterns for i in range(len(p) + 1)}, key=len)
        self._index = {pre: i for i, pre in enumerate(prefixes)}
        # A state accepts when any pattern is a suffix of its prefix, not only when it is
        # a whole pattern: with ("ab", "xaby"), reading "xab" sits in state "xab", and
        # "ab" has ended there (Aho-Corasick's output links, folded into the DFA).
        self.accepting = frozenset(
            i for pre, i in self._index.items() if any(pre.endswith(p) for p in self.patterns)
        )
        self._delta: list[list[int]] = []
        for pre in prefixes:
            row = []
            for b in range(256):
                s = pre + bytes([b])
                while s not in self._index:
                    s = s[1:]
                row.append(self._index[s])
            self._delta.append(row)

    def feed(self, state: int, data: bytes) -> tuple[int, int]:
        delta, accepting = self._delta, self.accepting
        for pos, byte in enumerate(data):
            state = delta[state][byte]
            if state in accepting:
                return state, pos + 1
        return state, -1


@dataclass
class TokenCodec:
    """What the env needs from a tokenizer, computed once and shared by every env."""

    tokenizer: Any
    table: list[bytes]
    eos_ids: frozenset[int]
    scanner: TagScanner

    piece_cache_size: int = 50_000
    """Environment text pieces (document lines, fixed strings) whose ids are kept."""

    def __post_init__(self) -> None:
        self._scan_cache: dict[int, tuple[int, int]] = {}
        self._piece_cache: dict[str, np.ndarray] = {}

    def scan(self, state: int, token_id: int) -> tuple[int, int]:
        """Advance the tag scanner over one token; cached per (state, token)."""
        key = state * len(self.table) + token_id
        hit = self._scan_cache.get(key)
        if hit is None:
            hit = self.scanner.feed(state, self.table[token_id])
            if len(self._scan_cache) < 2_000_000:
                self._scan_cache[key] = hit
        return hit

    @property
    def vocab_size(self) -> int:
        return len(self.table)

    def encode(self, text: str) -> list[int]:
        """Tokenize environment text (special-token strings in it are honoured)."""
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def turn_ids(self, text: str) -> list[int]:
        """Token ids of an agent turn given as text; an empty turn is a bare EOS."""
        ids = self.encode(text)
        if ids:
            return ids
        if not self.eos_ids:
            raise ValueError("empty turn text, and the tokenizer has no EOS token to stand for it")
        return [min(self.eos_ids)]

    def encode_pieces(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Token ids (int64 arrays) of each text, tokenized on its own and cached.

        Texts not seen before are tokenized in one batch call (parallel in fast
        tokenizers). Retrieved documents recur often (popular passages, GRPO groups,
        epochs), so the cache saves most of the cost of tokenizing information blocks.
        """
        cache = self._piece_cache
        misses = list(dict.fromkeys(t for t in texts if t not in cache))
        if misses:
            if len(cache) + len(misses) > self.piece_cache_size:
                cache.clear()
            encoded = self.tokenizer(misses, add_special_tokens=False)["input_ids"]
            for text, ids in zip(misses, encoded):
                cache[text] = np.asarray(ids, dtype=np.int64)
        return [cache[t] for t in texts]

    def decode(self, ids: Iterable[int]) -> str:
        """Decode agent tokens exactly as the byte table sees them."""
        table = self.table
        return b"".join(table[i] for i in ids).decode("utf-8", errors="replace")


_CODECS: weakref.WeakKeyDictionary[Any, dict[tuple, TokenCodec]] = weakref.WeakKeyDictionary()


STOP_TAGS: tuple[bytes, ...] = tuple(tag.encode("utf-8") for tag in STOP_STRINGS)


def get_codec(
    tokenizer: Any,
    vocab_size: int | None = None,
    eos_ids: Iterable[int] | None = None,
    stop_tags: Sequence[bytes] = STOP_TAGS,
) -> TokenCodec:
    """Build (or reuse) the codec of a tokenizer, scanning for ``stop_tags``.

    A codec passed in is reused as it is when it scans for the same tags; for others
    (a protocol preset's) its table and EOS ids get a scanner of their own.
    """
    if isinstance(tokenizer, TokenCodec):
        if tokenizer.scanner.patterns == tuple(stop_tags):
            return tokenizer
        codec = tokenizer
        return TokenCodec(codec.tokenizer, codec.table, codec.eos_ids, TagScanner(stop_tags))
    eos = set(eos_ids or [])
    if tokenizer.eos_token_id is not None:
        eos.add(int(tokenizer.eos_token_id))
    key = (vocab_size, tuple(sorted(eos)), tuple(stop_tags))
    try:
        per_tok = _CODECS.setdefault(tokenizer, {})
    except TypeError:  # not weak-referenceable: no caching
        per_tok = {}
    if key not in per_tok:
        table = token_bytes_table(tokenizer, vocab_size)
        if any(not 0 <= e < len(table) for e in eos):
            raise ValueError(f"eos token ids {sorted(eos)} out of range for vocab {len(table)}")
        per_tok[key] = TokenCodec(tokenizer, table, frozenset(eos), TagScanner(stop_tags))
    return per_tok[key]
