"""A small transformer over the env's token buffer (torch only, no Ray).

The token env's observation is a fixed-size buffer ``tokens`` (int ids), its loss
``mask`` (1 = agent token, 0 = environment token) and the context ``length``. The
encoder reads the last ``window`` tokens of the context, embeds each token id, its kind
(agent / environment) and its distance from the end, and returns the hidden state at the
newest token: the state from which the next agent token is predicted. The RLlib module
and the SB3 features extractor share it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class EncoderConfig:
    """Size of the token encoder."""

    d_model: int = 64
    """Width of embeddings and hidden states."""
    layers: int = 2
    """Transformer blocks."""
    heads: int = 4
    """Attention heads; must divide ``d_model``."""
    ff: int = 128
    """Width of each block's MLP."""
    window: int = 64
    """The newest ``window`` context tokens are read (older ones are dropped)."""
    dropout: float = 0.0
    """Dropout in the blocks (0: PPO's old and new log-probs stay comparable)."""

    def __post_init__(self) -> None:
        if min(self.d_model, self.layers, self.heads, self.ff, self.window) < 1:
            raise ValueError("d_model, layers, heads, ff and window must be >= 1")
        if self.d_model % self.heads:
            raise ValueError(f"heads ({self.heads}) must divide d_model ({self.d_model})")


def last_window(
    tokens: torch.Tensor, mask: torch.Tensor, length: torch.Tensor, window: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The newest ``window`` entries of each context, right-aligned.

    Args:
        tokens: ``(B, L)`` token ids (any numeric dtype; only the first ``length`` count).
        mask: ``(B, L)`` 1 for agent tokens, 0 for environment tokens.
        length: ``(B,)`` or ``(B, 1)`` context lengths (>= 1).
        window: how many positions to keep.

    Returns:
        ``ids (B, W)`` long, ``kinds (B, W)`` long (0 env, 1 agent), ``valid (B, W)`` bool
        (False left of the context start); position ``W - 1`` is the newest token.
    """
    length = length.reshape(-1).long().clamp(min=1, max=tokens.shape[1])  # (B,)
    offsets = torch.arange(window - 1, -1, -1, device=tokens.device)  # (W,): W-1 .. 0
    index = length[:, None] - 1 - offsets[None, :]  # (B, W)
    valid = index >= 0
    index = index.clamp(min=0)
    ids = torch.gather(tokens.long(), 1, index) * valid
    kinds = torch.gather(mask.long(), 1, index).clamp(0, 1) * valid
    return ids, kinds, valid


class TokenEncoder(nn.Module):
    """Embeds the newest ``window`` tokens and returns the newest token's hidden state.

    Attention is bidirectional within the window: only the last position is read out, so
    a causal mask would change nothing it can see and only cost time.
    """

    def __init__(self, vocab_size: int, config: EncoderConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or EncoderConfig()
        self.vocab_size = vocab_size
        self.token_emb = nn.Embedding(vocab_size, config.d_model)
        self.kind_emb = nn.Embedding(2, config.d_model)  # environment / agent token
        self.pos_emb = nn.Embedding(config.window, config.d_model)  # distance from the end
        layer = nn.TransformerEncoderLayer(
            config.d_model,
            config.heads,
            config.ff,
            config.dropout,
            batch_first=True,
            norm_first=True,
        )
        self.blocks = nn.TransformerEncoder(layer, config.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(config.d_model)

    @property
    def out_dim(self) -> int:
        return self.config.d_model

    def forward(
        self, tokens: torch.Tensor, mask: torch.Tensor, length: torch.Tensor
    ) -> torch.Tensor:
        """``(B, L)`` buffers and ``(B, 1)`` lengths -> ``(B, d_model)`` features."""
        window = self.config.window
        ids, kinds, valid = last_window(tokens, mask, length, window)  # (B, W) each
        if ids.numel() and int(ids.max()) >= self.vocab_size:
            raise ValueError(f"token id {int(ids.max())} out of range for vocab {self.vocab_size}")
        positions = torch.arange(window - 1, -1, -1, device=ids.device)  # distance from end
        x = self.token_emb(ids) + self.kind_emb(kinds) + self.pos_emb(positions)[None]
        x = self.blocks(x, src_key_padding_mask=~valid)  # (B, W, D)
        return self.norm(x[:, -1])  # (B, D): the newest token
