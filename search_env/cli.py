"""The ``search-env`` command line."""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

SCRIPTED_AGENTS = ("oracle", "no-search", "random")
SYNTH_ID = "SearchQA-Synth-v0"
DEFAULT_AGENTS = ",".join(SCRIPTED_AGENTS)


def _agent_factory(name: str, vocab_size: int, seed: int) -> Callable[[], Any]:
    from search_env.baselines import NoSearchAgent, RandomTokenAgent
    from search_env.synth.oracle import OracleAgent

    counter = iter(range(10**9))
    if name == "oracle":
        return OracleAgent
    if name == "no-search":
        return lambda: NoSearchAgent(seed=seed + next(counter))
    if name == "random":
        return lambda: RandomTokenAgent(vocab_size, seed=seed + next(counter))
    raise ValueError(f"unknown agent {name!r}; choose from {', '.join(SCRIPTED_AGENTS)}")


def _format_table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str, str]]) -> str:
    header = "| " + " | ".join(title for _, title, _ in columns) + " |"
    rule = "|" + "|".join("---" for _ in columns) + "|"
    lines = [header, rule]
    for row in rows:
        lines.append("| " + " | ".join(format(row[key], fmt) for key, _, fmt in columns) + " |")
    return "\n".join(lines)


def _parse_env_args(items: Sequence[str]) -> dict[str, Any]:
    """``["topk=5", "SearchQA-NQ-v0:dataset=nq.jsonl"]`` -> kwargs (values parsed as JSON)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--env-arg needs [ENV_ID:]KEY=VALUE, got {item!r}")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def _load_shared_retriever(spec: str | None) -> Any:
    """``--retriever`` loaded once for every env but Synth (a ``.jsonl`` corpus is indexed)."""
    if spec is None:
        return None
    from search_env.registration import load_retriever

    if spec.endswith((".jsonl", ".jsonl.gz")):
        return load_retriever(corpus=spec)
    return load_retriever(spec)


def _eval_scripted(args: argparse.Namespace, env_id: str, agents: Sequence[str],
                   env_args: dict[str, Any], retriever: Any) -> dict[str, Any] | None:
    """Scripted agents on one env: prints the table; returns the JSON payload (None: error)."""
    import gymnasium as gym
    from tqdm import tqdm

    import search_env  # noqa: F401  (registers the ids)
    from search_env.evaluate import eval_env_kwargs, evaluate

    kwargs = eval_env_kwargs(env_id, split=args.split, size=args.size, qa_dir=args.qa_dir,
                             retriever=retriever, extra=env_args)
    kwargs["action_mode"] = "chunk"
    split = kwargs.get("split")
    t0 = time.perf_counter()
    try:
        vec = gym.make_vec(env_id, num_envs=args.num_envs, autoreset_mode="disabled", **kwargs)
    except Exception as exc:  # unknown id, offline dataset, missing retriever, bad kwargs
        print(f"error: could not make {env_id}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return None
    setup = time.perf_counter() - t0
    n = len(vec.dataset) if args.limit is None else min(args.limit, len(vec.dataset))
    indices = list(range(n))
    print(f"{env_id} [{split or 'default split'}]: {n} questions, {args.num_envs} envs, set up in {setup:.1f}s")
    results = []
    for name in agents:
        make = _agent_factory(name, vec.envs[0].codec.vocab_size, args.seed)
        with tqdm(total=n, desc=f"{name:>9}", unit="ep", disable=args.quiet) as bar:
            res = evaluate(name, make, vec, indices, progress=bar.update)
        results.append(res)
    rows = [r.summary() for r in results]
    print()
    print(
        _format_table(
            rows,
            [
                ("agent", "agent", "s"),
                ("episodes", "episodes", "d"),
                ("em", "EM", ".3f"),
                ("f1", "F1", ".3f"),
                ("searches_per_episode", "searches/ep", ".2f"),
                ("turns_per_episode", "turns/ep", ".2f"),
                ("episodes_per_second", "episodes/s", ".1f"),
                ("turns_per_second", "turns/s", ".1f"),
                ("retrieval_seconds", "retrieval s", ".2f"),
            ],
        )
    )
    vec.close()
    return {
        "env": env_id,
        "split": split,
        "dataset": kwargs["dataset"] if isinstance(kwargs.get("dataset"), str) else None,
        "retriever": args.retriever if env_id != SYNTH_ID else None,
        "num_envs": args.num_envs,
        "setup_seconds": setup,
        "python": platform.python_version(),
        "results": rows,
    }


def _eval_model(args: argparse.Namespace, env_ids: Sequence[str], env_args: dict[str, Any]) -> int:
    """``eval --model``: the model on the search protocol plus the requested baselines."""
    try:
        import torch
    except ImportError:
        print("error: evaluating a model needs torch: pip install 'search-env[torch]'",
              file=sys.stderr)
        return 2
    from agents.evaluation import EvalSetupError, evaluate_model, parse_methods

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        baselines = parse_methods(args.baselines)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        report = evaluate_model(
            args.model, env_ids, baselines=baselines, limit=args.limit, num_envs=args.num_envs,
            split=args.split, size=args.size, qa_dir=args.qa_dir, retriever=args.retriever,
            env_kwargs=env_args, max_new_tokens=args.max_new_tokens, device=args.device,
            dtype=args.dtype, progress=not args.quiet,
        )
    except (EvalSetupError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print()
    print(report.markdown_table("em"))
    print(report.avg_note())
    out = "runs/eval-model.json" if args.out is None else args.out
    markdown = args.markdown
    if markdown is None:
        markdown = str(Path(out).with_suffix(".md")) if out else ""
    report.save(out or None, markdown or None)
    for path in (out, markdown):
        if path:
            print(f"wrote {path}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    env_ids = [e.strip() for e in args.env.split(",") if e.strip()]
    if not env_ids or len(set(env_ids)) != len(env_ids):
        print(f"error: --env must name each env id once, got {args.env!r}", file=sys.stderr)
        return 2
    if args.limit is not None and args.limit < 1:
        print(f"error: --limit must be >= 1, got {args.limit}", file=sys.stderr)
        return 2
    try:
        env_args = _parse_env_args(args.env_arg)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.model:
        return _eval_model(args, env_ids, env_args)
    if args.baselines:
        print("error: --baselines needs --model (scripted agents: --agents)", file=sys.stderr)
        return 2

    agents = [a.strip() for a in (args.agents or DEFAULT_AGENTS).split(",") if a.strip()]
    for a in agents:
        if a not in SCRIPTED_AGENTS:
            print(f"error: unknown agent {a!r}; choose from {', '.join(SCRIPTED_AGENTS)}", file=sys.stderr)
            return 2
    others = [e for e in env_ids if e != SYNTH_ID]
    if "oracle" in agents and others:  # checked before any env runs
        rest = ",".join(a for a in agents if a != "oracle")
        how = (f"run --agents {rest}" if rest else "leave out --agents oracle") + f" on {', '.join(others)}"
        default = " (it is one of the default agents)" if args.agents is None else ""
        print(f"error: the oracle agent needs the synthetic world's reasoning paths{default}: {how}",
              file=sys.stderr)
        return 2
    try:
        retriever = _load_shared_retriever(args.retriever) if others else None
    except Exception as exc:  # missing directory, unreadable index, bad corpus
        print(f"error: could not load --retriever {args.retriever!r}: {exc}", file=sys.stderr)
        return 2
    payloads = []
    for env_id in env_ids:
        payload = _eval_scripted(args, env_id, agents, env_args, retriever)
        if payload is None:
            return 2
        payloads.append(payload)
    out = "runs/eval-scripted.json" if args.out is None else args.out
    if out:
        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        text = payloads[0] if len(payloads) == 1 else {"envs": payloads}
        path.write_text(json.dumps(text, indent=2))
        print(f"\nwrote {path}")
    return 0


def cmd_envs(args: argparse.Namespace) -> int:
    from search_env.registration import ENV_IDS

    print("\n".join(ENV_IDS))
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    from search_env.synth.files import synth_world_dir

    path = synth_world_dir(args.size, args.num_entities, args.seed)
    print(path)
    return 0


def cmd_index(args: argparse.Namespace) -> int:
    # Checked here, before a build that may take hours, and worded for the command line
    # (the library's own check says overwrite=True, and BM25's runs only once it has built).
    if Path(args.out).exists() and not args.overwrite:
        print(f"error: {args.out} already exists; pass --overwrite to replace it", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    if args.kind == "bm25":
        from search_env.retrievers.bm25 import BM25Retriever

        # spool beside the destination (same file system), not in the system temp dir
        retriever: Any = BM25Retriever.build(
            args.corpus, backend=args.backend, tmp_dir=Path(args.out).resolve().parent
        )
        retriever.save(args.out, overwrite=args.overwrite)
    else:
        from search_env.retrievers.dense import DenseRetriever

        retriever = DenseRetriever.build(
            args.corpus,
            args.out,
            encoder=args.encoder,
            index_type=args.index_type,
            device=args.device,
            batch_size=args.batch_size,
            overwrite=args.overwrite,
        )
    print(f"indexed {len(retriever)} passages into {args.out} in {time.perf_counter() - t0:.1f}s")
    return 0


def _needs_torch(func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            import torch  # noqa: F401
        except ImportError:
            print("error: training needs torch: pip install 'search-env[torch]' "
                  "(on a CPU-only machine: pip install torch==2.13.0)", file=sys.stderr)
            return 2
        return func(args)

    return run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="search-env", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)

    ev = sub.add_parser(
        "eval", help="evaluate scripted agents, or a model (--model) and baselines, on SearchQA envs"
    )
    arg = ev.add_argument
    arg("--env", default="SearchQA-Synth-v0", help="registered SearchQA ids, comma-separated")
    arg("--agents", default=None,
        help=f"scripted agents (without --model), comma-separated: oracle (Synth only), "
             f"no-search, random (default: {DEFAULT_AGENTS})")
    arg("--model", default=None,
        help="a Hugging Face model directory, a `search-env train` run directory or one of its "
             "checkpoints: greedy evaluation on the search protocol (needs torch)")
    arg("--baselines", default="",
        help="with --model, also run these, comma-separated: direct (no search), "
             "rag (retrieve on the question), oracle (scripted; Synth only)")
    arg("--split", default=None,
        help="dataset split (default: test for Synth, the Search-R1 eval split otherwise)")
    arg("--size", default=None, help="synthetic world size: tiny, small (default), medium, large")
    arg("--qa-dir", default=None,
        help="FlashRAG directory of the seven datasets ({dir}/{config}/{split}.jsonl), "
             "as `search-env download qa` writes it")
    arg("--retriever", default=None,
        help="for every env but Synth: index directory, server URL or .jsonl corpus")
    arg("--env-arg", action="append", default=[], metavar="[ENV_ID:]KEY=VALUE",
        help="env kwarg (VALUE parsed as JSON): topk=5, SearchQA-NQ-v0:dataset=nq.jsonl")
    arg("--num-envs", type=int, default=32, help="episodes run (and searches batched) together")
    arg("--limit", type=int, default=None, help="at most this many questions per env")
    arg("--max-new-tokens", type=int, default=None,
        help="--model: one turn's token budget (default: the run's, else the protocol's)")
    arg("--device", default="auto", help="--model: auto, cpu or cuda")
    arg("--dtype", default="auto", choices=("auto", "float32", "bfloat16"),
        help="--model: parameter dtype (auto: bfloat16 on CUDA, else float32)")
    arg("--threads", type=int, default=0, help="--model: torch threads (0: torch's default)")
    arg("--seed", type=int, default=0)
    arg("--out", default=None,
        help="JSON results path (default runs/eval-scripted.json, with --model "
             "runs/eval-model.json; '' to skip)")
    arg("--markdown", default=None,
        help="--model: markdown tables path (default: the JSON path with .md; '' to skip)")
    arg("--quiet", action="store_true", help="no progress bar")
    ev.set_defaults(func=cmd_eval)

    envs = sub.add_parser("envs", help="list the registered env ids")
    envs.set_defaults(func=cmd_envs)

    synth = sub.add_parser("synth", help="build (or find) a cached synthetic world; prints its directory")
    synth.add_argument("--size", default="small")
    synth.add_argument("--num-entities", type=int, default=None)
    synth.add_argument("--seed", type=int, default=0)
    synth.set_defaults(func=cmd_synth)

    from search_env.download import add_download_arguments, run_download
    from search_env.server.launch import add_serve_arguments, run_serve

    serve = sub.add_parser("serve", help="serve an index over HTTP (Search-R1's POST /retrieve)")
    add_serve_arguments(serve)
    serve.set_defaults(func=run_serve)

    download = sub.add_parser("download", help="download the wiki-18 corpus, its indexes and the QA datasets")
    add_download_arguments(download)
    download.set_defaults(func=run_download)

    from agents.train import add_train_arguments, run_train

    train = sub.add_parser("train", help="train an LLM policy with GRPO or PPO (agents package)")
    add_train_arguments(train)
    train.add_argument("--backend", choices=["native", *TRAIN_BACKENDS], default="native",
                       help="native: this package's GRPO/PPO; rllib / sb3: every other option goes "
                            "to `python -m agents.rllib.train` / `agents.sb3.train` (see their --help)")
    train.set_defaults(func=_needs_torch(run_train))

    recipe = sub.add_parser(
        "recipe", add_help=False,
        help="the tiny-cpu recipe: SFT warm start, then GRPO, GRPO without the loss mask and "
             "PPO on the offline world (`python -m agents.recipe`; see `recipe --help`)")
    recipe.set_defaults(func=None)

    index = sub.add_parser("index", help="index a corpus")
    index_sub = index.add_subparsers(dest="index_command", required=True)
    build = index_sub.add_parser("build", help="build an index directory from a wiki-18 style JSONL corpus")
    build.add_argument("--corpus", required=True)
    build.add_argument("--out", required=True)
    build.add_argument("--kind", default="bm25", choices=["bm25", "dense"])
    build.add_argument("--backend", default="auto", choices=["auto", "numba", "numpy"], help="bm25s backend")
    build.add_argument("--encoder", default="offline",
                       help="dense: 'offline' (bundled MiniLM), 'e5' (Search-R1's e5-base-v2), or an HF name/path")
    build.add_argument("--index-type", default="flat", choices=["flat", "hnsw", "ivfpq"], help="dense faiss index")
    build.add_argument("--device", default="auto", help="dense encoder device: auto, cpu, cuda")
    build.add_argument("--batch-size", type=int, default=128, help="dense encoder batch size")
    build.add_argument("--overwrite", action="store_true", help="replace an existing index directory")
    build.set_defaults(func=cmd_index)
    return parser


TRAIN_BACKENDS = {"rllib": "agents.rllib.train", "sb3": "agents.sb3.train"}
"""``search-env train --backend NAME``: the module whose ``main(argv)`` trains."""


def _train_backend(argv: Sequence[str]) -> tuple[str, list[str]] | None:
    """``(module, other args)`` when ``argv`` is ``train ... --backend rllib|sb3 ...`` or
    ``recipe ...``."""
    argv = list(argv)
    while argv and argv[0] in ("-v", "--verbose"):  # the global flag may come first
        argv = argv[1:]
    if argv and argv[0] == "recipe":
        return "agents.recipe", argv[1:]
    if not argv or argv[0] != "train":
        return None
    rest = argv[1:]
    for i, arg in enumerate(rest):
        if arg == "--backend" and i + 1 < len(rest):
            name, drop = rest[i + 1], 2
        elif arg.startswith("--backend="):
            name, drop = arg.partition("=")[2], 1
        else:
            continue
        if name in TRAIN_BACKENDS:
            return TRAIN_BACKENDS[name], rest[:i] + rest[i + drop :]
        return None
    return None


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    delegated = _train_backend(argv)
    if delegated is not None:
        import importlib

        module, rest = delegated
        try:
            entry = importlib.import_module(module).main
        except ImportError as exc:
            print(f"error: {module} needs a missing package ({exc}); the recipe and native "
                  "training need 'search-env[torch]' (on a CPU-only machine: pip install "
                  "torch==2.13.0 first)", file=sys.stderr)
            return 2
        return int(entry(rest))
    args = build_parser().parse_args(argv)
    from search_env.logs import configure_logging

    configure_logging(logging.INFO if args.verbose else logging.WARNING)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
