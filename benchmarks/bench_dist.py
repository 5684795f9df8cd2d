"""Step time of the tiny model's update on 1 vs 2 ranks (gloo on the CPU, FSDP2).

    python benchmarks/bench_dist.py [--steps 8] [--rows 16] [--width 128]

Launches ``torchrun --standalone --nproc-per-node N`` on this file for each variant:
1 rank without FSDP (what the single-process loop does today), 1 rank with FSDP2 (the
sharding overhead alone), and 2 ranks with FSDP2 (each rank half of the same global
batch). A step is the forward, backward, gradient clipping and AdamW step of one
global mini-batch, with the global-token-count normalisation of
:mod:`agents.distributed.collectives`. The global loss of the first step is reported
for each variant (the same batch: it must agree). Writes
``benchmarks/results/dist_scaling.json``.

On a CPU this measures overhead, not speed-up: the 2 ranks share the machine's cores,
and gloo all-gathers and reduce-scatters every layer through memory.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

VARIANTS = [("1 rank, no FSDP", 1, False), ("1 rank, FSDP2", 1, True), ("2 ranks, FSDP2", 2, True)]


def worker(args: argparse.Namespace) -> None:
    """One rank of a variant (run under torchrun)."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from agents.config.schema import FSDPConfig
    from agents.distributed import (
        dp_aggregate,
        init_distributed,
        loss_denominator,
        reduce_metrics,
        shard_model,
    )

    torch.set_num_threads(1)
    ctx = init_distributed(device="cpu")
    config = Qwen2Config(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=2 * args.hidden,
        max_position_embeddings=args.width,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config)
    if args.fsdp:
        model = shard_model(model, ctx, FSDPConfig())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, args.vocab, (args.rows, args.width), generator=g)
    mask = torch.ones_like(ids)
    share = args.rows // ctx.world_size
    mine, own_mask = (
        ids[ctx.rank * share : (ctx.rank + 1) * share],
        mask[ctx.rank * share : (ctx.rank + 1) * share],
    )
    times, first_loss = [], None
    for step in range(args.warmup + args.steps):
        start = time.perf_counter()
        logits = model(input_ids=mine, attention_mask=own_mask).logits[:, :-1].float()
        logp = torch.log_softmax(logits, -1).gather(-1, mine[:, 1:, None])[..., 0]
        denom = loss_denominator(own_mask[:, 1:], "token-mean", ctx)
        loss = dp_aggregate(-logp, own_mask[:, 1:], "token-mean", denom)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        elapsed = reduce_metrics({"step_time": time.perf_counter() - start}, ctx)["step_time"]
        if step == 0:
            first_loss = reduce_metrics({"loss": float(loss.detach())}, ctx)["loss"]
        if step >= args.warmup:
            times.append(elapsed)
    if ctx.is_main:
        Path(args.out).write_text(json.dumps({"times": times, "first_loss": first_loss}))
    ctx.destroy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--fsdp", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", default="", help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rows", type=int, default=16, help="global batch rows")
    parser.add_argument("--width", type=int, default=128, help="tokens per row")
    parser.add_argument("--hidden", type=int, default=128, help="the tiny-cpu preset's width")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--vocab", type=int, default=1024)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    from benchmarks.common import save_results

    rows = []
    shape = [
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
        "--rows",
        str(args.rows),
        "--width",
        str(args.width),
        "--hidden",
        str(args.hidden),
        "--layers",
        str(args.layers),
        "--vocab",
        str(args.vocab),
    ]
    load_before = os.getloadavg()
    for name, ranks, fsdp in VARIANTS:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "result.json"
            command = [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--standalone",
                "--nproc-per-node",
                str(ranks),
                __file__,
                "--worker",
                "--out",
                str(out),
                *shape,
            ]
            if fsdp:
                command.append("--fsdp")
            env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
            subprocess.run(command, check=True, env=env, cwd=REPO_ROOT)
            result = json.loads(out.read_text())
        times = result["times"]
        rows.append(
            {
                "variant": name,
                "ranks": ranks,
                "fsdp": fsdp,
                "step_s_median": statistics.median(times),
                "step_s_min": min(times),
                "first_loss": result["first_loss"],
            }
        )
    base = rows[0]["step_s_median"]
    for row in rows:
        row["speedup_vs_1_rank"] = base / row["step_s_median"]
    save_results(
        "dist_scaling",
        {
            "note": (
                "gloo on a 2-core CPU machine shared with other jobs (run under nice -n 10; "
                "load averages before/after below): the 2 ranks share 2 busy cores, so this is "
                "FSDP2 + gloo overhead, not the GPU scaling"
            ),
            "load_average_before": load_before,
            "load_average_after": os.getloadavg(),
            "model": {"hidden": args.hidden, "layers": args.layers, "vocab": args.vocab},
            "global_batch": {"rows": args.rows, "tokens_per_row": args.width},
            "steps_timed": args.steps,
            "variants": rows,
        },
    )


if __name__ == "__main__":
    main()
