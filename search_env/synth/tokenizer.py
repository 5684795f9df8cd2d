"""A tiny byte-level BPE tokenizer for the synthetic world, shipped with the package.

Trained on the default SearchQA-Synth corpus and questions, the Search-R1 protocol
strings and sample oracle turns, so that tiny random-init models can run the real
protocol on a CPU. Byte-level: any Unicode text round-trips. Special tokens:
``<|endoftext|>`` (EOS) and ``<|pad|>`` (padding); no BOS, no chat template.

A world's own tokenizer (``tokenizer="world:VOCAB"``, :func:`world_tokenizer`) is
cached under a hash of its training texts, so editing the world, the protocol text or the
oracle's wording trains a new one instead of reusing a stale one.

Regenerate the shipped files with ``python -m search_env.synth.tokenizer``.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from search_env.files import build_dir
from search_env.protocol import (
    INVALID_ACTION_MESSAGE,
    SEARCH_R1_TEMPLATE,
    ProtocolConfig,
    clean_question,
    format_documents,
    parse_turn,
)

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

    from search_env.synth.config import SynthConfig
    from search_env.synth.world import SynthWorld

ASSET_DIR = Path(__file__).parent / "assets" / "synth-bpe"
"""Where the trained tokenizer ships."""
EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"


def _oracle_turns(world: SynthWorld, protocol: ProtocolConfig, limit: int) -> Iterator[str]:
    """Whole oracle episodes (prompt, turns, gold information blocks) as text."""
    from search_env.synth.oracle import OracleAgent

    by_id = {p.id: p for p in world.passages}
    agent = OracleAgent(max_searches=protocol.max_turns)
    examples = world.questions["train"][:limit]
    for example in examples:
        gold = [by_id[h["passage_id"]] for h in example.metadata["hops"]]
        agent.reset(example)
        observation = protocol.template.format(question=clean_question(example.question))
        episode = [observation]
        for _ in range(protocol.max_turns + 1):
            turn = agent.act(observation)
            episode.append(turn)
            action = parse_turn(turn)
            if action.kind != "search":
                break
            observation = protocol.information_format.format(docs=format_documents(gold, protocol))
            episode.append(observation)
        yield "".join(episode) + EOS_TOKEN


def training_texts(world: SynthWorld | None = None) -> Iterator[str]:
    """The texts a synthetic-world tokenizer is trained on, in a fixed order.

    Args:
        world: the world whose corpus and questions are used; ``None``: the default world
            (the shipped tokenizer's).
    """
    from search_env.synth.world import generate_world

    world = generate_world() if world is None else world
    protocol = ProtocolConfig()
    for _ in range(20):  # the protocol text should become few tokens
        yield SEARCH_R1_TEMPLATE
        yield INVALID_ACTION_MESSAGE
        yield protocol.information_format
    for p in world.passages:
        yield p.contents
    for split in ("train", "test"):
        for example in world.questions[split]:
            yield example.question + " " + " ".join(example.golden_answers)
    yield from _oracle_turns(world, protocol, limit=200)
    # a few non-ASCII strings so their common bytes get merges
    yield "Zürich Genève São Paulo Kraków 東京 北京 Москва 🙂 — “quotes” ‘single’ …"


def train_synth_tokenizer(
    out_dir: Path, vocab_size: int = 4096, world: SynthWorld | None = None
) -> None:
    """Train the byte-level BPE and save it as a ``transformers`` tokenizer directory.

    Writes ``tokenizer.json``, ``tokenizer_config.json`` and ``special_tokens_map.json``
    so that ``AutoTokenizer.from_pretrained(out_dir)`` loads it offline.

    Args:
        out_dir: directory to write (created if missing).
        vocab_size: vocabulary size including the 256 byte symbols and 2 specials.
        world: train on this world's texts (see :func:`training_texts`).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if vocab_size < 258:
        raise ValueError(f"vocab_size must be >= 258 (bytes + specials), got {vocab_size}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN, PAD_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(training_texts(world), trainer)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok.save(str(out_dir / "tokenizer.json"), pretty=False)
    specials = {"eos_token": EOS_TOKEN, "pad_token": PAD_TOKEN}
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **specials,
        "bos_token": None,
        "unk_token": None,
        "add_prefix_space": False,
        # decode must give back exactly what was encoded
        "clean_up_tokenization_spaces": False,
        "model_max_length": 4096,
    }
    _write_json(out_dir / "tokenizer_config.json", config)
    _write_json(out_dir / "special_tokens_map.json", specials)


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


@functools.cache
def load_synth_tokenizer(directory: Path = ASSET_DIR) -> PreTrainedTokenizerFast:
    """The shipped tokenizer (or one written by :func:`train_synth_tokenizer` to
    ``directory``), loaded once (offline; needs ``transformers``)."""
    from transformers import PreTrainedTokenizerFast

    if not (Path(directory) / "tokenizer.json").is_file():
        raise FileNotFoundError(
            f"{directory} has no tokenizer.json; run `python -m search_env.synth.tokenizer`"
        )
    return PreTrainedTokenizerFast(
        tokenizer_file=str(Path(directory) / "tokenizer.json"),
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        clean_up_tokenization_spaces=False,
        model_max_length=4096,
    )


WORLD_VOCAB_SIZE = 8192
"""Default vocabulary of a world's own tokenizer (whole-word names up to a few thousand
entities)."""


def texts_digest(texts: Iterable[str]) -> str:
    """A hash of a sequence of training texts (each one length-prefixed, so that moving a
    boundary between two texts changes it)."""
    digest = hashlib.sha256()
    for text in texts:
        data = text.encode("utf-8")
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()[:16]


@functools.lru_cache(maxsize=16)
def _world_digest(config: SynthConfig) -> str:
    # generating the texts of a 2,000-entity world takes a moment: once per process
    from search_env.synth.world import generate_world

    return texts_digest(training_texts(generate_world(config)))


def world_tokenizer(
    config: SynthConfig, world_dir: Path, vocab_size: int = WORLD_VOCAB_SIZE
) -> PreTrainedTokenizerFast:
    """A BPE trained on the world of ``config``, cached in ``world_dir`` (built on first use).

    The shipped tokenizer was trained on the default (400-entity) world, whose names are
    one or two whole-word tokens; a bigger world's names break into many pieces. Its own
    tokenizer keeps them whole, which a tiny from-scratch model needs to copy them. It is
    kept in ``world_dir/tokenizer-<vocab_size>-<hash of the training texts>``.
    """
    from search_env.synth.world import generate_world

    target = Path(world_dir) / f"tokenizer-{vocab_size}-{_world_digest(config)}"
    if not (target / "tokenizer.json").is_file():
        build_dir(
            target, lambda tmp: train_synth_tokenizer(tmp, vocab_size, world=generate_world(config))
        )
    return load_synth_tokenizer(target)


def world_tokenizer_spec(spec: str) -> int | None:
    """The vocabulary size of ``tokenizer="world"`` / ``"world:VOCAB"``; None for any other
    spec.

    Raises:
        ValueError: ``spec`` starts with ``world:`` but VOCAB is not a number.
    """
    kind, _, vocab = spec.partition(":")
    if kind != "world":
        return None
    if vocab and not vocab.isdigit():
        raise ValueError(f"tokenizer={spec!r}: expected 'world' or 'world:<vocab size>'")
    return int(vocab) if vocab else WORLD_VOCAB_SIZE


def main(argv: list[str] | None = None) -> None:
    """CLI: regenerate the shipped tokenizer files."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=ASSET_DIR)
    parser.add_argument("--vocab-size", type=int, default=4096)
    args = parser.parse_args(argv)
    train_synth_tokenizer(args.out_dir, args.vocab_size)
    print(f"wrote {args.out_dir}")


if __name__ == "__main__":
    main()
