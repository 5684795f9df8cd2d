"""Agents without a model, and the one loop that plays them through the vector env.

A :class:`TextAgent` knows nothing of the environment: :meth:`TextAgent.act` receives the
text the environment added last (the prompt at the start, then an ``<information>`` block
or the invalid-action message) and returns the agent's next turn. A :class:`TokenAgent`
does the same on token ids. :func:`play_episodes` plays either kind through a chunk-mode
:class:`~search_env.vector.SearchQAVectorEnv`, batching the searches of ``num_envs``
episodes; :func:`search_env.evaluate.evaluate` scores its episodes and
``agents.sft.scripted_trajectories`` trains on them.

Baselines that work on any env: :class:`NoSearchAgent` answers at once with an invented
guess (the floor of a searching agent), :class:`RandomTokenAgent` writes random tokens
(the floor of every metric). The synthetic world's oracle, which needs the gold hops, is
:class:`search_env.synth.oracle.OracleAgent`.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from search_env.synth.names import invented_name
from search_env.types import QAExample
from search_env.vector import SearchQAVectorEnv


@runtime_checkable
class TextAgent(Protocol):
    """An agent that plays one question at a time, one turn per :meth:`act`."""

    def reset(self, example: QAExample) -> None:
        """Start a new episode on ``example``."""
        ...

    def act(self, observation: str) -> str:
        """Return the next turn, given the text the environment added last."""
        ...


@runtime_checkable
class TokenAgent(Protocol):
    """Sees the new environment token ids; returns its next turn as token ids."""

    def reset(self, example: QAExample) -> None:
        """Start a new episode on ``example``."""
        ...

    def act_tokens(self, observation: np.ndarray) -> Sequence[int]:
        """Return the next turn's token ids, given the ids the environment added last."""
        ...


def search_turn(thought: str, query: str) -> str:
    """A protocol turn that thinks ``thought`` and searches ``query``."""
    return f"<think> {thought} </think>\n<search> {query} </search>"


def answer_turn(thought: str, answer: str) -> str:
    """A protocol turn that thinks ``thought`` and answers ``answer``."""
    return f"<think> {thought} </think>\n<answer> {answer} </answer>"


class NoSearchAgent:
    """Answers at once, without searching, with a plausible-looking invented guess.

    A year for "In what year ..." questions, an invented name otherwise; seeded per
    question, so runs are reproducible.

    Args:
        seed: seed of the guesses.
    """

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self._rng = random.Random(seed)
        self._question = ""

    def reset(self, example: QAExample) -> None:
        self._rng = random.Random(f"{self.seed}:{example.id}")
        self._question = example.question

    def act(self, observation: str) -> str:
        if self._question.lower().startswith("in what year"):
            guess = str(1800 + self._rng.randrange(220))
        else:
            guess = invented_name(self._rng)
        return answer_turn("I already know this.", guess)


class RandomTokenAgent:
    """Writes turns of uniformly random token ids (a floor for every metric).

    Its random stream runs on across episodes (``reset`` does not reseed it).
    """

    def __init__(self, vocab_size: int, max_tokens: int = 64, seed: int = 0) -> None:
        if vocab_size < 1 or max_tokens < 1:
            raise ValueError("vocab_size and max_tokens must be >= 1")
        self.vocab_size, self.max_tokens = vocab_size, max_tokens
        self.rng = np.random.default_rng(seed)

    def reset(self, example: QAExample) -> None:
        pass

    def act_tokens(self, observation: np.ndarray) -> list[int]:
        n = int(self.rng.integers(1, self.max_tokens + 1))
        return self.rng.integers(0, self.vocab_size, size=n).tolist()


@dataclass(frozen=True)
class Episode:
    """One finished episode of :func:`play_episodes`."""

    position: int
    """Where its question is in the ``indices`` played."""
    index: int
    """Dataset index of its question."""
    tokens: np.ndarray
    """The whole context, prompt included (``# (T,)``)."""
    loss_mask: np.ndarray
    """The env's mask: 1 on the agent's tokens (``# (T,)``)."""
    prompt_length: int
    reward: float
    scores: dict[str, float]
    """``info["scores"]`` of the last step (``em``, ``f1``, ``cover_em``, ...)."""
    answer: Any
    searches: int
    turns: int
    """``info["turn"]`` of the last step."""
    steps: int
    """``step()`` calls the episode took part in."""
    agent_tokens: int
    """Agent tokens the env consumed (ignored tokens after an answer left out)."""
    terminated: bool


def play_episodes(
    vec: SearchQAVectorEnv,
    indices: Sequence[int],
    make_agent: Callable[[], TextAgent | TokenAgent],
    on_step: Callable[[Any], None] | None = None,
) -> Iterator[Episode]:
    """Play one episode per question index, ``vec.num_envs`` at a time; yield each as it ends.

    Each sub-env gets one agent (``make_agent()``, called ``num_envs`` times), reset on
    every question it plays. A text agent's turn is encoded with the env's codec (an
    empty turn is a bare EOS); a token agent's ids are sent as they are.

    Args:
        vec: a chunk-mode vector env with autoreset disabled.
        indices: dataset indices of the questions, played in chunks of ``num_envs``.
        make_agent: builds one agent.
        on_step: called after every ``vec.step`` with ``vec.last_batch``.

    Raises:
        ValueError: ``vec`` is not in chunk mode with autoreset disabled.
    """
    if vec.action_mode != "chunk" or vec.autoreset_mode.name != "DISABLED":
        raise ValueError("playing agents needs a chunk-mode vector env with autoreset disabled")
    n = vec.num_envs
    agents = [make_agent() for _ in range(n)]
    codec = vec.envs[0].codec
    for lo in range(0, len(indices), n):
        chunk = [int(i) for i in indices[lo : lo + n]]
        live = len(chunk)
        padded = np.asarray(chunk + [chunk[0]] * (n - live))
        running = np.zeros(n, bool)
        running[:live] = True
        obs, _ = vec.reset(options={"index": padded, "reset_mask": running.copy()})
        seen = obs["length"][:, 0].copy()
        prompt_lengths = seen.copy()
        new_ids = [obs["tokens"][i, : seen[i]] for i in range(n)]
        new_text = [codec.tokenizer.decode(ids.tolist()) for ids in new_ids[:live]]
        for i in range(live):
            agents[i].reset(vec.dataset[chunk[i]])
        steps = np.zeros(n, np.int64)
        agent_tokens = np.zeros(n, np.int64)
        while running.any():
            actions: list[np.ndarray | None] = [None] * n
            for i in np.flatnonzero(running):
                agent = agents[i]
                if isinstance(agent, TokenAgent):
                    ids = list(agent.act_tokens(new_ids[i]))
                else:
                    ids = codec.turn_ids(agent.act(new_text[i]))
                actions[i] = np.asarray(ids, dtype=np.int64)
            obs, rewards, term, trunc, info = vec.step(actions)
            if on_step is not None:
                on_step(vec.last_batch)
            for i in np.flatnonzero(running):
                steps[i] += 1
                used = len(actions[i]) - int(info["ignored_tokens"][i])
                agent_tokens[i] += used
                length = int(obs["length"][i, 0])
                new_ids[i] = obs["tokens"][i, int(seen[i]) + used : length]
                new_text[i] = codec.tokenizer.decode(new_ids[i].tolist())
                seen[i] = length
                if term[i] or trunc[i]:
                    running[i] = False
                    yield Episode(
                        position=lo + int(i),
                        index=chunk[i],
                        tokens=obs["tokens"][i, :length].copy(),
                        loss_mask=obs["mask"][i, :length].copy(),
                        prompt_length=int(prompt_lengths[i]),
                        reward=float(rewards[i]),
                        scores={
                            k: float(v[i])
                            for k, v in info["scores"].items()
                            if not k.startswith("_")
                        },
                        answer=info["answer"][i],
                        searches=int(info["searches"][i]),
                        turns=int(info["turn"][i]),
                        steps=int(steps[i]),
                        agent_tokens=int(agent_tokens[i]),
                        terminated=bool(term[i]),
                    )
