"""Padding-free packing: several trajectories in one row, positions reset per trajectory.

A right-padded batch spends compute on its padding; packed, each row holds whole
trajectories back to back (first-fit decreasing under a token budget) and no padding but
at the end of a row. ``transformers`` (5.x) keeps packed trajectories apart when it gets
``position_ids`` that restart at 0 and no ``attention_mask``: it derives the
block-causal mask from the restarts (``masking_utils.find_packed_sequence_indices``),
for every attention implementation, and flash-attention's varlen kernels on a GPU.

:func:`forward_tokens_packed` returns the same :class:`~agents.model.TokenOutputs` as
:func:`~agents.model.forward_tokens` on the padded batch, in the padded layout.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from agents.model import (
    LOGIT_CHUNK_TOKENS,
    TokenOutputs,
    ValueHead,
    final_hidden,
    logit_head,
    score_positions,
)


def pack_rows(lengths: Sequence[int], row_tokens: int) -> list[list[int]]:
    """Trajectories (by index) per packed row: first-fit decreasing under ``row_tokens``.

    A trajectory longer than ``row_tokens`` gets a row of its own.
    """
    if row_tokens < 1:
        raise ValueError(f"row_tokens must be >= 1, got {row_tokens}")
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: (-int(lengths[i]), i)):
        n = int(lengths[i])
        fit = next((r for r, left in enumerate(room) if left >= n), None)
        if fit is None:
            rows.append([i])
            room.append(row_tokens - n)
        else:
            rows[fit].append(i)
            room[fit] -= n
    return rows


def forward_tokens_packed(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    row_tokens: int,
    pad_id: int = 0,
    temperature: float = 1.0,
    entropy: bool = False,
    entropy_grad: bool = True,
    value_head: ValueHead | None = None,
    only: torch.Tensor | None = None,
    chunk_tokens: int = LOGIT_CHUNK_TOKENS,
) -> TokenOutputs:
    """:func:`~agents.model.forward_tokens` on packed rows, results in the padded layout.

    Args:
        model: a ``transformers`` causal LM (one that takes packed ``position_ids``).
        input_ids: ``# (B, T)`` right-padded, as for ``forward_tokens``.
        attention_mask: ``# (B, T)``.
        row_tokens: the longest packed row (tokens).
        pad_id: fills the end of packed rows.
        temperature, entropy, entropy_grad, value_head, only, chunk_tokens: as for
            :func:`~agents.model.forward_tokens`.

    Returns:
        ``# (B, T)`` outputs, 0 at position 0 of each trajectory and at padding.
    """
    device = next(model.parameters()).device
    lengths = attention_mask.sum(-1).tolist()
    rows = pack_rows(lengths, row_tokens)
    width = max(sum(int(lengths[i]) for i in row) for row in rows)
    packed = torch.full((len(rows), width), pad_id, dtype=torch.long)
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    # Where each predicted token (b, t), t >= 1, is predicted from: packed (row, column).
    src_row, src_col, dst_b, dst_t = [], [], [], []
    for r, row in enumerate(rows):
        offset = 0
        for b in row:
            n = int(lengths[b])
            packed[r, offset : offset + n] = input_ids[b, :n]
            positions[r, offset : offset + n] = torch.arange(n)
            src_row += [r] * (n - 1)
            src_col += range(offset, offset + n - 1)
            dst_b += [b] * (n - 1)
            dst_t += range(1, n)
            offset += n
        # The padding at the end is a sequence of its own (positions from 0 again): the
        # trajectories before it never attend to it (causal), nor it to them.
        positions[r, offset:] = torch.arange(width - offset)
    src = (torch.tensor(src_row, dtype=torch.long), torch.tensor(src_col, dtype=torch.long))
    dst = (torch.tensor(dst_b, dtype=torch.long), torch.tensor(dst_t, dtype=torch.long))
    hidden = final_hidden(model, packed.to(device), None, positions.to(device))  # (R, W, H)
    predictor = hidden[src[0].to(device), src[1].to(device)]  # (M, H)
    labels = input_ids.to(device)[dst[0].to(device), dst[1].to(device)]  # (M,)
    keep = torch.ones(len(dst_b), dtype=torch.bool, device=device)
    if only is not None:
        keep = only.to(device)[dst[0].to(device), dst[1].to(device)] != 0
    logp, ent = score_positions(
        logit_head(model),
        predictor[keep],
        labels[keep],
        temperature=temperature,
        entropy=entropy,
        entropy_grad=entropy_grad,
        chunk_tokens=chunk_tokens,
    )
    kept_dst = (dst[0].to(device)[keep], dst[1].to(device)[keep])

    def scatter(x: torch.Tensor, where: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        full = torch.zeros(input_ids.shape, dtype=x.dtype, device=x.device)
        return full.index_put(where, x)

    out = TokenOutputs(logprobs=scatter(logp, kept_dst))
    if ent is not None:
        out.entropy = scatter(ent, kept_dst)
    if value_head is not None:
        all_dst = (dst[0].to(device), dst[1].to(device))
        out.values = scatter(value_head(predictor), all_dst)
    return out
