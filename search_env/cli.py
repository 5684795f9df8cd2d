"""The ``search-env`` command line: the env commands, and the hook other packages add theirs by.

This layer owns ``envs``, ``eval`` (scripted agents), ``synth``, ``index``, ``serve`` and
``download``. Other packages (this distribution's ``agents``: ``train``, ``recipe``,
``eval --model``) add commands through the :data:`COMMANDS_GROUP` entry points, so nothing
here imports them; only the entry points named by the command being run are loaded.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import platform
import sys
import time
from collections.abc import Callable, Sequence
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

SCRIPTED_AGENTS = ("oracle", "no-search", "random")
SYNTH_ID = "SearchQA-Synth-v0"
DEFAULT_AGENTS = ",".join(SCRIPTED_AGENTS)

EvalRunner = Callable[[argparse.Namespace, list[str], dict[str, Any]], int | None]
"""An ``eval`` extension: ``(args, env ids, env kwargs)`` -> exit status, or None to leave
the command to the next runner and, last, to the scripted agents."""

BeforeParse = Callable[[list[str]], int | None]
"""A command's first look at its arguments (those after its name), before any parsing:
an exit status when it handled them itself, None to have them parsed."""

COMMANDS_GROUP = "search_env.commands"
"""Entry-point group of the commands other packages add. An entry point's name is the
command it adds (or, for an env command, extends); it loads to a callable that takes the
:class:`CommandLine` and adds its parsers to it."""


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


def _eval_scripted(
    args: argparse.Namespace,
    env_id: str,
    agents: Sequence[str],
    env_args: dict[str, Any],
    retriever: Any,
) -> dict[str, Any] | None:
    """Scripted agents on one env: prints the table; returns the JSON payload (None: error)."""
    import gymnasium as gym
    from tqdm import tqdm

    import search_env  # noqa: F401  (registers the ids)
    from search_env.evaluate import eval_env_kwargs, evaluate
    from search_env.vector import SearchQAVectorEnv

    kwargs = eval_env_kwargs(
        env_id,
        split=args.split,
        size=args.size,
        qa_dir=args.qa_dir,
        retriever=retriever,
        extra=env_args,
    )
    kwargs["action_mode"] = "chunk"
    split = kwargs.get("split")
    t0 = time.perf_counter()
    try:
        vec = gym.make_vec(env_id, num_envs=args.num_envs, autoreset_mode="disabled", **kwargs)
    except Exception as exc:  # unknown id, offline dataset, missing retriever, bad kwargs
        print(f"error: could not make {env_id}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return None
    if not isinstance(vec, SearchQAVectorEnv):  # another package's id: no dataset, no codec
        print(
            f"error: {env_id} is not a search-env id (gym.make_vec gave {type(vec).__name__})",
            file=sys.stderr,
        )
        vec.close()
        return None
    setup = time.perf_counter() - t0
    n = len(vec.dataset) if args.limit is None else min(args.limit, len(vec.dataset))
    indices = list(range(n))
    print(
        f"{env_id} [{split or 'default split'}]: {n} questions, {args.num_envs} envs, set up in {setup:.1f}s"
    )
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


def cmd_eval(args: argparse.Namespace, runners: Sequence[EvalRunner] = ()) -> int:
    """``eval``: each of ``runners`` first (see :meth:`CommandLine.extend_eval`), else the
    scripted agents."""
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
    for run in runners:
        code = run(args, env_ids, env_args)
        if code is not None:
            return code

    agents = [a.strip() for a in (args.agents or DEFAULT_AGENTS).split(",") if a.strip()]
    for a in agents:
        if a not in SCRIPTED_AGENTS:
            print(
                f"error: unknown agent {a!r}; choose from {', '.join(SCRIPTED_AGENTS)}",
                file=sys.stderr,
            )
            return 2
    others = [e for e in env_ids if e != SYNTH_ID]
    if "oracle" in agents and others:  # checked before any env runs
        rest = ",".join(a for a in agents if a != "oracle")
        how = (
            f"run --agents {rest}" if rest else "leave out --agents oracle"
        ) + f" on {', '.join(others)}"
        default = " (it is one of the default agents)" if args.agents is None else ""
        print(
            f"error: the oracle agent needs the synthetic world's reasoning paths{default}: {how}",
            file=sys.stderr,
        )
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


def _env_parser() -> tuple[argparse.ArgumentParser, Any, argparse.ArgumentParser]:
    """The parser of the env commands: ``(parser, its subparsers, the eval parser)``."""
    parser = argparse.ArgumentParser(
        prog="search-env", description="The ``search-env`` command line."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)

    ev = sub.add_parser("eval", help="evaluate agents on SearchQA envs (scripted ones: --agents)")
    arg = ev.add_argument
    arg("--env", default="SearchQA-Synth-v0", help="registered SearchQA ids, comma-separated")
    arg(
        "--agents",
        default=None,
        help=f"scripted agents, comma-separated: oracle (Synth only), "
        f"no-search, random (default: {DEFAULT_AGENTS})",
    )
    arg(
        "--split",
        default=None,
        help="dataset split (default: test for Synth, the Search-R1 eval split otherwise)",
    )
    arg("--size", default=None, help="synthetic world size: tiny, small (default), medium, large")
    arg(
        "--qa-dir",
        default=None,
        help="FlashRAG directory of the seven datasets ({dir}/{config}/{split}.jsonl), "
        "as `search-env download qa` writes it",
    )
    arg(
        "--retriever",
        default=None,
        help="for every env but Synth: index directory, server URL or .jsonl corpus",
    )
    arg(
        "--env-arg",
        action="append",
        default=[],
        metavar="[ENV_ID:]KEY=VALUE",
        help="env kwarg (VALUE parsed as JSON): topk=5, SearchQA-NQ-v0:dataset=nq.jsonl",
    )
    arg("--num-envs", type=int, default=32, help="episodes run (and searches batched) together")
    arg("--limit", type=int, default=None, help="at most this many questions per env")
    arg("--seed", type=int, default=0)
    arg(
        "--out",
        default=None,
        help="JSON results path (default: runs/eval-scripted.json for scripted agents; '' to skip)",
    )
    arg("--quiet", action="store_true", help="no progress bar")

    envs = sub.add_parser("envs", help="list the registered env ids")
    envs.set_defaults(func=cmd_envs)

    synth = sub.add_parser(
        "synth", help="build (or find) a cached synthetic world; prints its directory"
    )
    synth.add_argument("--size", default="small")
    synth.add_argument("--num-entities", type=int, default=None)
    synth.add_argument("--seed", type=int, default=0)
    synth.set_defaults(func=cmd_synth)

    from search_env.download import add_download_arguments, run_download
    from search_env.server.launch import add_serve_arguments, run_serve

    serve = sub.add_parser("serve", help="serve an index over HTTP (Search-R1's POST /retrieve)")
    add_serve_arguments(serve)
    serve.set_defaults(func=run_serve)

    download = sub.add_parser(
        "download", help="download the wiki-18 corpus, its indexes and the QA datasets"
    )
    add_download_arguments(download)
    download.set_defaults(func=run_download)

    from search_env.audit import add_audit_arguments, run_audit

    audit = sub.add_parser("audit", help="corpus coverage: gold answers in the corpus, recall@k")
    add_audit_arguments(audit)
    audit.set_defaults(func=run_audit)

    index = sub.add_parser("index", help="index a corpus")
    index_sub = index.add_subparsers(dest="index_command", required=True)
    build = index_sub.add_parser(
        "build", help="build an index directory from a wiki-18 style JSONL corpus"
    )
    build.add_argument("--corpus", required=True)
    build.add_argument("--out", required=True)
    build.add_argument("--kind", default="bm25", choices=["bm25", "dense"])
    build.add_argument(
        "--backend", default="auto", choices=["auto", "numba", "numpy"], help="bm25s backend"
    )
    build.add_argument(
        "--encoder",
        default="offline",
        help="dense: 'offline' (bundled MiniLM), 'e5' (Search-R1's e5-base-v2), or an HF name/path",
    )
    build.add_argument(
        "--index-type", default="flat", choices=["flat", "hnsw", "ivfpq"], help="dense faiss index"
    )
    build.add_argument("--device", default="auto", help="dense encoder device: auto, cpu, cuda")
    build.add_argument("--batch-size", type=int, default=128, help="dense encoder batch size")
    build.add_argument(
        "--overwrite", action="store_true", help="replace an existing index directory"
    )
    build.set_defaults(func=cmd_index)
    return parser, sub, ev


class CommandLine:
    """The ``search-env`` parser as the :data:`COMMANDS_GROUP` entry points see it."""

    def __init__(self) -> None:
        self.parser, self._sub, self._eval = _env_parser()
        self.env_commands = frozenset(self._sub.choices)
        self.before_parse: dict[str, BeforeParse] = {}
        self.eval_runners: list[EvalRunner] = []
        self._eval.set_defaults(func=functools.partial(cmd_eval, runners=self.eval_runners))

    def add_command(
        self,
        name: str,
        *,
        help: str,
        before_parse: BeforeParse | None = None,
        add_help: bool = True,
    ) -> argparse.ArgumentParser:
        """Add the command ``name``; returns its parser (give it a ``func`` default, the
        ``args -> exit status`` that runs it).

        Raises:
            ValueError: a command of that name exists already.
        """
        if name in self._sub.choices:
            raise ValueError(f"search-env already has a {name!r} command")
        parser = self._sub.add_parser(name, help=help, add_help=add_help)
        if before_parse is not None:
            self.before_parse[name] = before_parse
        return parser

    def extend_eval(self, run: EvalRunner) -> argparse.ArgumentParser:
        """Have ``eval`` try ``run`` before its scripted agents; returns the ``eval`` parser
        (for ``run``'s options)."""
        self.eval_runners.append(run)
        return self._eval

    @property
    def commands(self) -> tuple[str, ...]:
        """The commands it has now."""
        return tuple(self._sub.choices)

    def load(self, command: str | None) -> str | None:
        """Load the entry points named ``command``, or every one when none is (or no command
        is given: the help lists them all).

        Returns:
            Why the command ``command`` (not an env command) could not be imported, or None.
            The other entry points that cannot be imported are logged and skipped: the env
            commands work without the packages that extend them.
        """
        every = entry_points(group=COMMANDS_GROUP)
        named = [ep for ep in every if ep.name == command]
        failed = None
        for ep in named if named or command in self.env_commands else every:
            try:
                register = ep.load()
            except ImportError as exc:  # a package (or one of its dependencies) is missing
                problem = (
                    f"the {ep.name!r} command's entry point {_provider(ep)} could not "
                    f"be imported: {exc}"
                )
                if ep.name == command and command not in self.env_commands:
                    failed = problem
                else:
                    logger.warning("%s", problem)
                continue
            register(self)
        return failed


def _provider(ep: EntryPoint) -> str:
    """``module:attr (package NAME)``: where the entry point ``ep`` comes from."""
    dist = getattr(ep, "dist", None)
    return ep.value + (f" (package {dist.name})" if dist is not None else "")


def build_parser() -> argparse.ArgumentParser:
    """The whole ``search-env`` parser: the env commands and every contributed one."""
    cli = CommandLine()
    cli.load(None)
    return cli.parser


def _command_of(argv: Sequence[str]) -> tuple[str | None, list[str]]:
    """``(command, the arguments after it)``; None when ``argv`` names none."""
    argv = list(argv)
    while argv and argv[0] in ("-v", "--verbose"):  # the global flag may come first
        argv = argv[1:]
    if not argv or argv[0].startswith("-"):
        return None, []
    return argv[0], argv[1:]


def main(argv: Sequence[str] | None = None) -> int:
    """``search-env ARGV`` (default: the process's arguments); returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command, rest = _command_of(argv)
    cli = CommandLine()
    failed = cli.load(command)
    if failed is not None:
        print(f"error: {failed}", file=sys.stderr)
        return 2
    if command is not None and command not in cli.commands:
        cli.parser.error(
            f"no command {command!r} (choose from {', '.join(cli.commands)}); other packages "
            f"add commands through the {COMMANDS_GROUP!r} entry points, and none installed adds "
            f"{command!r} (in a source checkout, `pip install -e .` registers them)"
        )
    if command in cli.before_parse:
        code = cli.before_parse[command](rest)
        if code is not None:
            return int(code)
    args = cli.parser.parse_args(argv)
    from search_env.logs import configure_logging

    configure_logging(logging.INFO if args.verbose else logging.WARNING)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
