"""A quick check that a ``torchrun`` job works, before a long run is started on it.

    torchrun --nproc-per-node 2 -m agents.distributed.check

Every rank joins the process group, the ranks sum their ranks, a tiny random Qwen2 is
sharded with FSDP2 and takes one AdamW step on a batch split over the ranks, and its
gathered weights are compared with every other rank's. Rank 0 prints one JSON line
(``"ok": true`` when all of it worked); a failure exits non-zero on the failing rank.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch


def _tiny_model() -> torch.nn.Module:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=128,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        tie_word_embeddings=True,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return Qwen2ForCausalLM(config)


def run_check(device: str = "auto") -> dict[str, object]:
    """Run the check on this rank; the report (the same on every rank)."""
    from agents.config.schema import FSDPConfig
    from agents.distributed import (
        gather_objects,
        init_distributed,
        iter_full_state,
        reduce_metrics,
        shard_model,
    )

    start = time.perf_counter()
    ctx = init_distributed(device=device)
    try:
        ranks = reduce_metrics({"rank_sum": float(ctx.rank)}, ctx, ops={"rank_sum": "sum"})
        model = _tiny_model()
        if ctx.is_distributed:
            model = shard_model(model, ctx, FSDPConfig())
        model.to(ctx.device)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(0, 128, (2 * ctx.world_size, 16), generator=g)
        mine = ids[2 * ctx.rank : 2 * ctx.rank + 2].to(ctx.device)
        loss = model(input_ids=mine, labels=mine).loss
        loss.backward()
        opt.step()
        digest = sum(float(t.double().sum()) for _, t in iter_full_state(model))
        digests = gather_objects(digest, ctx)
        report: dict[str, object] = {
            "ok": ranks["rank_sum"] == ctx.world_size * (ctx.world_size - 1) / 2
            and len(set(digests)) == 1,
            "world_size": ctx.world_size,
            "backend": ctx.backend,
            "device": str(ctx.device),
            "rank_sum": ranks["rank_sum"],
            "loss": reduce_metrics({"loss": float(loss.detach())}, ctx)["loss"],
            "weights_agree": len(set(digests)) == 1,
            "seconds": round(time.perf_counter() - start, 3),
        }
    finally:
        ctx.destroy()
    if ctx.is_main:
        print(json.dumps(report), flush=True)
    return report


def main(argv: list[str] | None = None) -> int:
    """``python -m agents.distributed.check [--device auto|cpu|cuda]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    args = parser.parse_args(argv)
    return 0 if run_check(args.device)["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
