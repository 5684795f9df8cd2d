"""The text env as an OpenEnv ``Environment`` (PyPI ``openenv-core``), with its server.

In process::

    from search_env.integrations.openenv import SearchQAAction, SearchQAEnvironment

    env = SearchQAEnvironment("SearchQA-Synth-v0")
    obs = env.reset(seed=0)                      # obs.text: the prompt
    obs = env.step(SearchQAAction(text="<search> ... </search>"))
    obs.text, obs.reward, obs.done, env.state    # the <information> block, 0.0, False

Served (OpenEnv's FastAPI app: ``/ws`` sessions, ``/reset``, ``/step``, ``/state``,
``/schema``, ``/health``; loopback only by default)::

    python -m search_env.integrations.openenv --env SearchQA-Synth-v0 --port 8000

and played with :class:`SearchQAClient` (``SearchQAClient(base_url=url).sync()``). An
episode needs the WebSocket session: OpenEnv's HTTP ``/reset`` and ``/step`` make a fresh
env for every request, so they cannot carry an episode over several turns.
"""

from __future__ import annotations

import argparse
import functools
import ipaddress
import json
import logging
import uuid
from collections.abc import Sequence
from typing import Any, Literal

import gymnasium as gym

try:
    from openenv.core.client_types import StepResult
    from openenv.core.env_client import EnvClient
    from openenv.core.env_server import Action, Environment, Observation, State, create_app
    from openenv.core.env_server.types import EnvironmentMetadata
    from pydantic import Field
except ImportError as exc:  # the [openenv] extra is not installed
    from search_env.integrations import missing_extra

    raise missing_extra("search_env.integrations.openenv", "openenv", exc) from exc

import search_env
from search_env.env import EpisodeOverError, SearchQAEnv
from search_env.integrations import make_text_env
from search_env.logs import TIMED_FORMAT, configure_logging
from search_env.types import QAExample

__all__ = [
    "SearchQAAction",
    "SearchQAClient",
    "SearchQAEnvironment",
    "SearchQAObservation",
    "SearchQAState",
    "create_search_app",
    "main",
]

logger = logging.getLogger(__name__)


class SearchQAAction(Action):
    """One assistant turn, e.g. ``<think> ... </think>\\n<search> query </search>``."""

    text: str = Field(
        description="the assistant's turn; text after its first closing tag is ignored"
    )


class SearchQAObservation(Observation):
    """What the env shows after a reset or a turn. ``reward`` and ``done`` are OpenEnv's."""

    text: str = Field(
        default="",
        description="the text the env appended: the prompt after a reset, the "
        "<information> block or the invalid-action message after a turn, '' at the end",
    )
    context: str = Field(default="", description="the whole conversation so far")
    question: str = Field(default="", description="the question of the episode")
    index: int = Field(default=-1, description="its position in the dataset")
    turn: int = Field(default=0, description="turns played")
    searches: int = Field(default=0, description="searches run")
    turn_kind: Literal["search", "answer", "invalid"] | None = Field(
        default=None, description="how the last turn was read (None after a reset)"
    )
    query: str | None = Field(default=None, description="the last turn's query, if it searched")
    truncated: bool = Field(
        default=False, description="done without an answer (turn or context budget spent)"
    )
    answer: str | None = Field(default=None, description="the agent's answer, at the end")
    golden_answers: list[str] | None = Field(default=None, description="at the end")
    scores: dict[str, float] | None = Field(
        default=None, description="every metric of the answer (em, f1, cover_em), at the end"
    )


class SearchQAState(State):
    """The episode in progress. ``episode_id`` and ``step_count`` are OpenEnv's."""

    env_id: str = Field(default="", description="the search-env id served")
    question: str | None = Field(default=None, description="None before the first reset")
    index: int | None = Field(default=None)
    turn: int = Field(default=0)
    searches: int = Field(default=0)
    done: bool = Field(default=True, description="True until a reset, and after the end")
    context: str = Field(default="")


_RESET_KEYS = ("index",)


class SearchQAEnvironment(Environment):
    """A search-env id, as a text env, under OpenEnv's ``Environment`` API.

    Each instance makes its own env (``gym.make(env_id, action_mode="chunk",
    **make_kwargs)`` behind :class:`~search_env.text.SearchQATextEnv`), so sessions do not
    share episodes; rewards, budgets and parsing are the token env's.

    Args:
        env_id: the search-env id (``SearchQA-Synth-v0``, ``SearchQA-NQ-v0``, ...).
        **make_kwargs: its ``gym.make`` keywords (``tokenizer=``, ``retriever=``, ...).
    """

    SUPPORTS_CONCURRENT_SESSIONS = True  # one env per instance; no episode state shared

    def __init__(self, env_id: str = "SearchQA-Synth-v0", **make_kwargs: Any) -> None:
        super().__init__()
        self.env_id = env_id
        self.text_env = make_text_env(env_id, **make_kwargs)
        self._state = SearchQAState(env_id=env_id)

    @property
    def dataset(self) -> Sequence[QAExample]:
        """The questions; an observation's ``index`` is the position of its question."""
        base = self.text_env.unwrapped
        assert isinstance(base, SearchQAEnv)  # SearchQATextEnv checked it
        return base.dataset

    @property
    def state(self) -> SearchQAState:
        """A copy of the episode's state."""
        state: SearchQAState = self._state.model_copy()
        return state

    def reset(
        self, seed: int | None = None, episode_id: str | None = None, **kwargs: Any
    ) -> SearchQAObservation:
        """Start an episode: on question ``index=`` if given, else one drawn with ``seed``.

        Raises:
            TypeError: an unknown keyword.
            ValueError: a bad ``index`` (nothing changes: the running episode goes on).
        """
        unknown = sorted(set(kwargs) - set(_RESET_KEYS))
        if unknown:
            raise TypeError(
                f"unknown reset arguments {unknown}; reset takes seed, episode_id, index"
            )
        options = {"index": kwargs["index"]} if kwargs.get("index") is not None else None
        text, info = self.text_env.reset(seed=seed, options=options)
        self._state = SearchQAState(
            env_id=self.env_id,
            episode_id=episode_id if episode_id is not None else uuid.uuid4().hex,
            step_count=0,
            question=info["question"],
            index=int(info["index"]),
            done=False,
            context=info["context"],
        )
        return SearchQAObservation(
            text=text,
            context=info["context"],
            question=info["question"],
            index=int(info["index"]),
            metadata=_metadata(info),
        )

    def step(
        self, action: SearchQAAction, timeout_s: float | None = None, **kwargs: Any
    ) -> SearchQAObservation:
        """Play one turn.

        ``timeout_s`` is accepted for OpenEnv's API and not enforced: a remote
        retriever's time limits are its own (``retriever_options=``). Other keywords
        (OpenEnv's HTTP step request passes its ``request_id``) are ignored.

        Raises:
            TypeError: ``action`` is not a :class:`SearchQAAction`.
            search_env.EpisodeOverError: no episode is running (reset first).
        """
        if not isinstance(action, SearchQAAction):
            raise TypeError(f"step takes a SearchQAAction, got {type(action).__name__}")
        if self._state.done:  # before the first reset too, where Gymnasium's error differs
            raise EpisodeOverError("no episode is running: call reset() first")
        text, reward, terminated, truncated, info = self.text_env.step(action.text)
        done = terminated or truncated
        state = self._state
        self._state = state.model_copy(
            update={
                "step_count": state.step_count + 1,
                "turn": int(info["turn"]),
                "searches": int(info["searches"]),
                "done": done,
                "context": info["context"],
            }
        )
        return SearchQAObservation(
            text=text,
            context=info["context"],
            question=state.question or "",
            index=state.index if state.index is not None else -1,
            turn=int(info["turn"]),
            searches=int(info["searches"]),
            turn_kind=info["action"],
            query=info.get("query"),
            truncated=bool(truncated) and not terminated,
            answer=info.get("answer") if done else None,
            golden_answers=list(info["golden_answers"]) if done else None,
            scores={k: float(v) for k, v in info["scores"].items()} if done else None,
            done=done,
            reward=float(reward),
            metadata=_metadata(info),
        )

    def get_metadata(self) -> EnvironmentMetadata:
        """Name, description and version, for OpenEnv's ``/metadata``."""
        return EnvironmentMetadata(
            name=f"search-env {self.env_id}",
            description=(
                "Question answering with a search engine (the Search-R1 protocol): "
                "<search> query </search> returns <information> documents; "
                "<answer> ... </answer> ends the episode with an exact-match reward."
            ),
            version=search_env.__version__,
        )

    def close(self) -> None:
        """Close the wrapped env."""
        self.text_env.close()


def _metadata(info: dict[str, Any]) -> dict[str, Any]:
    """The env's info for in-process users (OpenEnv does not send ``metadata`` over HTTP)."""
    return {k: v for k, v in info.items() if k != "context"}


class SearchQAClient(EnvClient):
    """A typed client of a served :class:`SearchQAEnvironment` (one WebSocket session).

    ``with SearchQAClient(base_url="http://127.0.0.1:8000").sync() as env:
    env.reset(index=0); env.step(SearchQAAction(text=...))``.
    """

    def _step_payload(self, action: SearchQAAction) -> dict[str, Any]:
        payload: dict[str, Any] = action.model_dump(exclude={"metadata"})
        return payload

    def _parse_result(self, payload: dict[str, Any]) -> StepResult:
        observation = SearchQAObservation(
            **payload.get("observation", {}),
            reward=payload.get("reward"),
            done=payload.get("done", False),
        )
        return StepResult(
            observation=observation, reward=payload.get("reward"), done=observation.done
        )

    def _parse_state(self, payload: dict[str, Any]) -> SearchQAState:
        return SearchQAState(**payload)


def create_search_app(
    env_id: str = "SearchQA-Synth-v0", max_sessions: int = 1, **make_kwargs: Any
) -> Any:
    """OpenEnv's FastAPI app (``openenv.core.env_server.create_app``) serving ``env_id``.

    Makes one env first, so that a bad id or missing data fails here, not on the first
    client. Every WebSocket session then gets its own env.

    Args:
        env_id: the search-env id.
        max_sessions: most concurrent WebSocket sessions.
        **make_kwargs: ``gym.make`` keywords of ``env_id``.
    """
    if max_sessions < 1:
        raise ValueError(f"max_sessions must be >= 1, got {max_sessions}")
    SearchQAEnvironment(env_id, **make_kwargs).close()
    factory = functools.partial(SearchQAEnvironment, env_id, **make_kwargs)
    return create_app(
        factory,
        SearchQAAction,
        SearchQAObservation,
        env_name="search-env",
        max_concurrent_envs=max_sessions,
    )


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m search_env.integrations.openenv",
        description="Serve a search-env id as an OpenEnv environment (HTTP + WebSocket).",
    )
    parser.add_argument("--env", default="SearchQA-Synth-v0", help="the search-env id")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (no authentication)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--max-sessions", type=int, default=1, help="concurrent sessions")
    parser.add_argument(
        "--env-kwargs",
        type=json.loads,
        default={},
        help='gym.make keywords as a JSON object, e.g. \'{"tokenizer": "qwen2.5", '
        '"corpus": "data/wiki-18.jsonl"}\'',
    )
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    if not isinstance(args.env_kwargs, dict):
        parser.error(f"--env-kwargs must be a JSON object, got {args.env_kwargs!r}")
    return args


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def main(argv: Sequence[str] | None = None) -> None:
    """Serve ``--env`` under uvicorn until interrupted."""
    import uvicorn  # an openenv-core dependency

    args = _parse_args(argv)
    configure_logging(getattr(logging, args.log_level.upper()), fmt=TIMED_FORMAT)
    if not _is_loopback(args.host):
        logger.warning("binding to %s: the env server has no authentication", args.host)
    try:
        app = create_search_app(args.env, args.max_sessions, **args.env_kwargs)
    except (gym.error.Error, OSError, RuntimeError, TypeError, ValueError) as exc:
        # an unknown id, missing data (MissingPiecesError lists every piece), bad keywords
        raise SystemExit(f"error: cannot serve {args.env}: {exc}") from exc
    logger.info(
        "serving %s as an OpenEnv environment on http://%s:%d", args.env, args.host, args.port
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)


if __name__ == "__main__":
    main()
