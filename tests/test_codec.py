"""Token byte tables and the incremental tag scanner."""

import random

from search_env.codec import TagScanner, TokenCodec, get_codec, token_bytes_table


def test_byte_table_matches_decode(tokenizer):
    table = token_bytes_table(tokenizer)
    assert len(table) == len(tokenizer)
    text = "<search> Zürich 東京 🙂 </search>\n<answer>x</answer>"
    ids = tokenizer.encode(text)
    assert b"".join(table[i] for i in ids).decode("utf-8") == tokenizer.decode(ids)
    assert table[tokenizer.eos_token_id] == b""


def test_vocab_size_override_pads_table(tokenizer):
    codec = get_codec(tokenizer, vocab_size=len(tokenizer) + 50)
    assert codec.vocab_size == len(tokenizer) + 50 and codec.table[-1] == b""


def test_codec_is_shared(tokenizer):
    assert get_codec(tokenizer) is get_codec(tokenizer)


def _first_end(patterns, data):
    best = None
    for p in patterns:
        pos = data.find(p)
        if pos >= 0 and (best is None or pos + len(p) < best):
            best = pos + len(p)
    return best


def test_scanner_agrees_with_find_on_random_chunks():
    patterns = (b"</search>", b"</answer>")
    scanner = TagScanner(patterns)
    rng = random.Random(0)
    alphabet = [
        b"<",
        b"/",
        b"s",
        b"e",
        b"a",
        b"r",
        b"c",
        b"h",
        b">",
        b"n",
        b"w",
        b" ",
        b"</",
        b"</sea",
    ]
    for _ in range(2000):
        data = b"".join(rng.choice(alphabet) for _ in range(rng.randint(1, 30)))
        cuts = sorted(rng.sample(range(1, len(data) + 1), k=min(len(data), rng.randint(1, 6))))
        state, seen, found = 0, 0, None
        prev = 0
        for cut in cuts + [len(data)]:
            chunk = data[prev:cut]
            prev = cut
            state, end = scanner.feed(state, chunk)
            if end >= 0:
                found = seen + end
                break
            seen += len(chunk)
        assert found == _first_end(patterns, data), data


def test_scanner_finds_a_pattern_inside_another_patterns_prefix():
    """``ab`` ends inside the prefix ``xab`` of ``xaby``: the scanner must still report it."""
    scanner = TagScanner((b"ab", b"xaby"))
    assert scanner.feed(0, b"xab")[1] == 3
    assert scanner.feed(0, b"zxabyab")[1] == 4
    state, end = scanner.feed(0, b"x")
    assert end == -1 and scanner.feed(state, b"ab")[1] == 2


def _feed_chunks(scanner, data, cuts):
    """Feed ``data`` cut at ``cuts``; the absolute end of the first match, or None."""
    state, seen, prev = 0, 0, 0
    for cut in [*cuts, len(data)]:
        chunk = data[prev:cut]
        prev = cut
        state, end = scanner.feed(state, chunk)
        if end >= 0:
            return seen + end
        seen += len(chunk)
    return None


def test_scanner_agrees_with_find_on_random_pattern_sets():
    """User stop strings go through the scanner: random pattern sets over a tiny alphabet,
    fed byte by byte and in random chunks, against a brute-force earliest end."""
    rng = random.Random(1)
    for _ in range(400):
        patterns = tuple(
            dict.fromkeys(
                bytes(rng.choice(b"abc") for _ in range(rng.randint(1, 4)))
                for _ in range(rng.randint(1, 4))
            )
        )
        scanner = TagScanner(patterns)
        for _ in range(10):
            data = bytes(rng.choice(b"abcd") for _ in range(rng.randint(0, 16)))
            want = _first_end(patterns, data)
            assert _feed_chunks(scanner, data, range(1, len(data))) == want, (patterns, data)
            cuts = sorted(rng.sample(range(1, len(data) + 1), k=min(len(data), rng.randint(0, 4))))
            assert _feed_chunks(scanner, data, cuts) == want, (patterns, data, cuts)


def test_codec_scan_agrees_with_find_on_random_stop_strings(tokenizer):
    """The cached token-by-token scan of a codec built for user stop strings."""
    rng = random.Random(2)
    table = token_bytes_table(tokenizer)
    vocab = tokenizer.get_vocab()
    words = ["<", "/", "a", "b", "ab", "ba", "aba", "</", ">", "x", "xa"]
    ids = [tokenizer.convert_tokens_to_ids(w) for w in words if w in vocab]
    assert len(ids) >= 6
    for _ in range(60):
        patterns = tuple(
            dict.fromkeys(
                "".join(rng.choice("ab</>x") for _ in range(rng.randint(1, 4))).encode()
                for _ in range(3)
            )
        )
        codec = TokenCodec(tokenizer, table, frozenset(), TagScanner(patterns))
        for _ in range(10):
            stream = [rng.choice(ids) for _ in range(rng.randint(1, 12))]
            data = b"".join(codec.table[t] for t in stream)
            state, seen, found = 0, 0, None
            for t in stream:
                state, end = codec.scan(state, t)
                if end >= 0:
                    found = seen + end
                    break
                seen += len(codec.table[t])
            assert found == _first_end(patterns, data), (patterns, data)


def test_sentencepiece_style_tokenizer_bytes():
    """Llama-style vocabularies: '▁' for spaces and <0xNN> byte fallback."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "</s>": 1}
    vocab.update({f"<0x{b:02X}>": 2 + b for b in range(256)})
    for piece in ["▁", *"thesarchngiuol</>", "▁the", "▁search", "▁</", "search>"]:
        vocab.setdefault(piece, len(vocab))
    merges = [("▁", "t"), ("▁t", "h"), ("▁th", "e")]
    tok = Tokenizer(
        models.BPE(
            vocab={**vocab, "▁t": len(vocab), "▁th": len(vocab) + 1},
            merges=merges,
            byte_fallback=True,
            unk_token="<unk>",
        )
    )
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Sequence(
        [
            decoders.Replace("▁", " "),
            decoders.ByteFallback(),
            decoders.Fuse(),
            decoders.Strip(" ", 1, 0),
        ]
    )
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", unk_token="<unk>")
    table = token_bytes_table(hf)
    text = "the search </search> Zürich"
    ids = hf.encode(text, add_special_tokens=False)
    joined = b"".join(table[i] for i in ids).decode("utf-8")
    assert joined.strip() == hf.decode(ids).strip() == text
    assert "</search>" in joined
    assert (
        sum(t.startswith("<0x") for t in hf.convert_ids_to_tokens(ids)) >= 3
    )  # Z and the 2 bytes of ü


def test_tokenizer_from_local_path(tmp_path, tokenizer):
    from search_env.registration import load_tokenizer

    tokenizer.save_pretrained(tmp_path)
    loaded = load_tokenizer(str(tmp_path))
    assert loaded.encode("<search> x </search>") == tokenizer.encode("<search> x </search>")
    assert get_codec(loaded).table == get_codec(tokenizer).table
