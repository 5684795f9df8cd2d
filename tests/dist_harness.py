"""Run a function on W ranks of a gloo process group on the CPU, from a pytest test.

:func:`run_ranks` starts W processes the way ``torchrun`` describes them (``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT`` in the environment),
each calls :func:`agents.distributed.init_distributed` and then ``fn(ctx, *args)``; the
return values come back in rank order. Processes come from a fork server that has
imported torch and transformers once, so a test pays that import once, not per rank.
A rank that raises fails the test with its traceback; a job past ``timeout`` is killed.

Also the reference 2-rank training step (:func:`train_sharded`, :func:`train_plain`):
a clipped policy-gradient loss on a fixed global batch of the tiny model, the same
mini-batches, gradient clipping and AdamW, that the lead may later replace by the real
GRPO loop.
"""

from __future__ import annotations

import multiprocessing
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

PRELOAD = [
    "torch",
    "torch.distributed.fsdp",
    "torch.distributed.checkpoint",
    # the model class pulls in transformers.generation (and sklearn): seconds, once
    "transformers.models.qwen2.modeling_qwen2",
    "agents.distributed",
    "dist_harness",
]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 just now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _worker(
    rank: int, fn: Callable[..., Any], world: int, port: int, out: str, args: tuple
) -> None:
    os.environ.update(
        {
            "RANK": str(rank),
            "WORLD_SIZE": str(world),
            "LOCAL_RANK": str(rank),
            "LOCAL_WORLD_SIZE": str(world),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "OMP_NUM_THREADS": "1",
        }
    )
    import datetime

    from agents.distributed import init_distributed

    torch.set_num_threads(1)
    ctx = init_distributed(device="cpu", timeout=datetime.timedelta(seconds=60))
    try:
        result = fn(ctx, *args)
        torch.save(result, Path(out) / f"result_{rank}.pt")
    finally:
        ctx.destroy()


def run_ranks(
    fn: Callable[..., Any], world_size: int, out_dir: str | Path, *args: Any, timeout: float = 90
) -> list[Any]:
    """``[fn(ctx_0, *args), ..., fn(ctx_{W-1}, *args)]``, run on W gloo ranks.

    ``fn`` must be importable (a module-level function); ``args`` picklable.
    """
    import torch.multiprocessing as mp

    multiprocessing.set_forkserver_preload(PRELOAD)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    job = mp.start_processes(
        _worker,
        args=(fn, world_size, free_port(), str(out), args),
        nprocs=world_size,
        join=False,
        start_method="forkserver",
    )
    deadline = time.monotonic() + timeout
    try:
        while not job.join(timeout=max(0.1, min(2.0, deadline - time.monotonic()))):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{fn.__name__} on {world_size} ranks took over {timeout} s")
    finally:
        for p in job.processes:
            if p.is_alive():
                p.kill()
                p.join(5)
    return [torch.load(out / f"result_{r}.pt", weights_only=False) for r in range(world_size)]


# ------------------------------------------------------------- the tiny model
@dataclass
class StubTokenizer:
    """What :func:`agents.tiny_model.make_tiny_qwen2` reads of a tokenizer."""

    vocab: int = 96
    eos_token_id: int = 1
    pad_token_id: int = 0
    bos_token_id: int | None = None

    def __len__(self) -> int:
        return self.vocab


def tiny_model(seed: int = 0, layers: int = 2) -> Any:
    """The tiny Qwen2 (fp32, CPU), the same weights for the same seed in every process."""
    from agents.tiny_model import make_tiny_qwen2

    return make_tiny_qwen2(StubTokenizer(), layers=layers, max_positions=64, seed=seed)


@dataclass(frozen=True)
class GlobalBatch:
    """A fixed global batch ``# (B, T)`` and its per-row advantage ``# (B,)``."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    loss_mask: torch.Tensor
    advantages: torch.Tensor

    def rows(self, rows: torch.Tensor | slice) -> GlobalBatch:
        return GlobalBatch(
            *(
                t[rows]
                for t in (self.input_ids, self.attention_mask, self.loss_mask, self.advantages)
            )
        )


def make_batch(rows: int = 8, width: int = 12, vocab: int = 96, seed: int = 0) -> GlobalBatch:
    """Right-padded random sequences of varied length; the loss mask covers a random part
    of each row's real tokens after the first (one row has none: an empty sequence)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, vocab, (rows, width), generator=g)
    lengths = torch.randint(width // 2, width + 1, (rows,), generator=g)
    attn = (torch.arange(width)[None, :] < lengths[:, None]).long()
    ids = torch.where(attn.bool(), ids, torch.zeros_like(ids))
    loss = (torch.rand(rows, width, generator=g) < 0.6).long() * attn
    loss[:, 0] = 0
    loss[1] = 0  # a row without agent tokens
    adv = torch.randn(rows, generator=g)
    return GlobalBatch(ids, attn, loss, adv)


def token_logprobs(
    model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """``# (B, T)``: position ``t`` holds log p(token t | prefix), 0 at position 0 and
    padding; through the model's own forward (the FSDP root's hooks run)."""
    positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    logits = model(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=positions
    ).logits
    logp = torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, input_ids[:, 1:, None])[..., 0]
    logp = logp * attention_mask[:, 1:]
    return torch.cat([logp.new_zeros(logp.shape[0], 1), logp], dim=1)


def clipped_loss(
    logp: torch.Tensor, input_ids: torch.Tensor, adv: torch.Tensor, clip: float = 0.2
) -> torch.Tensor:
    """Per-token PPO surrogate ``# (B, T)`` against "old" log-probs: a detached copy of
    ``logp`` shifted by an offset that depends on each token and its position only (so it
    is the same however rows are split, the ratio is not 1 and the clip bites)."""
    column = torch.arange(logp.shape[1], dtype=torch.float32)[None, :]
    old = logp.detach() + 0.3 * torch.sin(1.7 * input_ids.float() + column)
    ratio = torch.exp(logp - old)
    a = adv[:, None]
    return torch.maximum(-a * ratio, -a * ratio.clamp(1 - clip, 1 + clip))


@dataclass(frozen=True)
class StepConfig:
    """The reference update: mini-batches, micro-batches, aggregation, optimiser."""

    agg: str = "token-mean"
    minibatch_size: int = 3
    micro_rows: int = 1
    epochs: int = 2
    lr: float = 1e-3
    grad_clip: float = 0.5
    shuffle_seed: int = 0


def train_plain(model: Any, batch: GlobalBatch, cfg: StepConfig) -> list[float]:
    """The 1-rank reference: whole mini-batches, :func:`agents.losses.aggregate`."""
    from agents.losses import aggregate
    from agents.optim import minibatches

    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01)
    gen = torch.Generator().manual_seed(cfg.shuffle_seed)
    losses = []
    for _ in range(cfg.epochs):
        for rows in minibatches(len(batch.advantages), cfg.minibatch_size, gen):
            mb = batch.rows(rows)
            logp = token_logprobs(model, mb.input_ids, mb.attention_mask)
            loss = aggregate(clipped_loss(logp, mb.input_ids, mb.advantages), mb.loss_mask, cfg.agg)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            losses.append(float(loss.detach()))
    return losses


def train_sharded(
    ctx: Any, model: Any, batch: GlobalBatch, cfg: StepConfig, opt: Any = None
) -> tuple[list[float], int]:
    """The same update on this rank's rows of ``batch``, micro-batched: the global
    mini-batch's denominator, padded micro-batch counts, FSDP's gradient averaging.

    Returns the global losses (the same on every rank) and the number of mini-batches in
    which this rank held no rows (ran a stand-in).
    """
    from agents.distributed import (
        dp_aggregate,
        loss_denominator,
        max_over_ranks,
        rank_minibatches,
        reduce_metrics,
    )

    local_n = len(batch.advantages) // ctx.world_size
    mine = batch.rows(slice(ctx.rank * local_n, (ctx.rank + 1) * local_n))
    if opt is None:
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01)
    gen = torch.Generator().manual_seed(cfg.shuffle_seed)
    losses, standins = [], 0
    for _ in range(cfg.epochs):
        for part in rank_minibatches(local_n, cfg.minibatch_size, gen, ctx):
            mb = mine.rows(part.rows)
            mask = mb.loss_mask if part.live else torch.zeros_like(mb.loss_mask)
            standins += not part.live
            # the whole mini-batch, all ranks (a stand-in row is no row)
            denom = loss_denominator(mask, cfg.agg, ctx, rows=len(part.rows) if part.live else 0)
            n = len(part.rows)
            micro = [
                (torch.arange(i, min(i + cfg.micro_rows, n)), True)
                for i in range(0, n, cfg.micro_rows)
            ]
            # Every rank runs as many forward/backward passes as the busiest one.
            pad = max_over_ranks(len(micro), ctx) - len(micro)
            micro += [(torch.zeros(1, dtype=torch.long), False)] * pad
            opt.zero_grad(set_to_none=True)
            total = 0.0
            for rows, live in micro:
                sub = mb.rows(rows)
                sub_mask = mask[rows] if live else torch.zeros_like(mask[rows])
                logp = token_logprobs(model, sub.input_ids, sub.attention_mask)
                loss = dp_aggregate(
                    clipped_loss(logp, sub.input_ids, sub.advantages), sub_mask, cfg.agg, denom
                )
                loss.backward()
                total += float(loss.detach())
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            losses.append(reduce_metrics({"loss": total}, ctx)["loss"])
    return losses, standins
