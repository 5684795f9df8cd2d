"""Tiny random-init Qwen2 models for CPU tests and smoke runs (the nanoGPT "baby" preset).

A model made here and saved with :func:`save_tiny_model` is an ordinary local model
directory: ``AutoModelForCausalLM.from_pretrained(path)`` and
``search_env.registration.load_tokenizer(path)`` load it offline (plain ``AutoTokenizer``
would pick ``Qwen2Tokenizer`` by model type, which splits text differently), and so can a
vLLM back end.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import Qwen2ForCausalLM


def make_tiny_qwen2(
    tokenizer: Any,
    *,
    hidden_size: int = 64,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    intermediate: int = 128,
    max_positions: int = 4096,
    seed: int = 0,
) -> Qwen2ForCausalLM:
    """A randomly initialised ``Qwen2ForCausalLM`` sized for a laptop CPU.

    Args:
        tokenizer: the tokenizer the model will use; the vocabulary is ``len(tokenizer)``
            and the EOS / pad ids are taken from it.
        hidden_size: model width; must be divisible by ``heads``.
        layers: transformer blocks.
        heads: attention heads; must be divisible by ``kv_heads``.
        kv_heads: key/value heads (grouped-query attention, as in Qwen2.5).
        intermediate: MLP width.
        max_positions: ``max_position_embeddings``; keep it >= the env's
            ``max_prompt_length`` (4096 by default).
        seed: seed of the weights; the global torch RNG is left untouched.

    Returns:
        The model in eval mode, fp32, on the CPU.
    """
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    if hidden_size % heads or heads % kv_heads:
        raise ValueError(
            f"hidden_size ({hidden_size}) must be divisible by heads ({heads}), "
            f"and heads by kv_heads ({kv_heads})"
        )
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no eos_token_id")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        intermediate_size=intermediate,
        max_position_embeddings=max_positions,
        eos_token_id=eos,
        pad_token_id=pad,
        bos_token_id=tokenizer.bos_token_id,
        # Small Qwen2.5 models tie the embeddings too; it halves the parameters here.
        tie_word_embeddings=True,
    )
    # fork_rng: seeding must not change the caller's random stream.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config)
    model.generation_config.eos_token_id = eos
    model.generation_config.pad_token_id = pad
    return model.eval()


def save_tiny_model(model: Any, tokenizer: Any, path: str | Path) -> Path:
    """Save model and tokenizer into one directory that loads offline.

    Args:
        model: a ``transformers`` causal LM (e.g. from :func:`make_tiny_qwen2`).
        tokenizer: its tokenizer.
        path: directory to write (created if missing).

    Returns:
        The directory, as a ``Path``.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
