"""The text env in GEM's registry (PyPI ``gem-llm``, repo axon-rl/gem).

Importing this module registers one GEM id per search-env id, so that GEM's trainers
and those that consume GEM's registry can make them::

    import gem
    import search_env.integrations.gem  # registers searchqa:Synth, searchqa:NQ, ...

    env = gem.make("searchqa:Synth")
    obs, info = env.reset(seed=0)
    obs, reward, terminated, truncated, info = env.step("<search> ... </search>")

GEM has no plugin mechanism (its registry is a dict filled by ``gem.register``), hence
the import. Ids: ``searchqa:<Name>`` for ``SearchQA-<Name>-v0`` (``searchqa:Synth``,
``searchqa:NQ``, ..., ``searchqa:Bamboogle``) and ``searchqa:Custom`` for
``SearchQA-v0`` (bring your own ``dataset=`` and retriever). Keyword arguments of
``gem.make`` are those of ``gym.make`` (see :mod:`search_env.registration`), except two:
``seed`` is GEM's (the seed of the first reset; ``gem.make_vec`` passes ``seed + i``),
and the synthetic world's own ``seed`` is therefore spelled ``world_seed``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

try:
    import gem
    from gem.core import Env as _GemEnv
    from gem.envs.registration import ENV_REGISTRY
    from gem.utils.constants import TERMINAL_STATE
except ImportError as exc:  # the [gem] extra is not installed
    from search_env.integrations import missing_extra

    raise missing_extra(__name__, "gem", exc) from exc

from search_env.env import SearchQAEnv
from search_env.integrations import make_text_env
from search_env.registration import ENV_IDS
from search_env.text import SearchQATextEnv
from search_env.types import QAExample

__all__ = ["GEM_IDS", "TERMINAL_STATE", "SearchQAGemEnv", "gem_id", "register_gem"]


def gem_id(gym_id: str) -> str:
    """GEM's id for a search-env Gymnasium id: ``SearchQA-NQ-v0`` -> ``searchqa:NQ``."""
    if gym_id == "SearchQA-v0":
        return "searchqa:Custom"
    prefix, suffix = "SearchQA-", "-v0"
    if not (gym_id.startswith(prefix) and gym_id.endswith(suffix)):
        raise ValueError(f"{gym_id!r} is not a search-env id (SearchQA-<Name>-v0)")
    return "searchqa:" + gym_id[len(prefix) : -len(suffix)]


GEM_IDS: dict[str, str] = {gem_id(i): i for i in ENV_IDS}
"""GEM id -> the Gymnasium id it makes."""


class SearchQAGemEnv(_GemEnv):
    """The Search-R1 text env as a ``gem.Env``: strings in, strings out, one turn per step.

    ## Description
    A :class:`~search_env.text.SearchQATextEnv` (the token env in chunk mode, seen as
    text) under GEM's API. Protocol, budgets, parsing, documents and rewards are the
    token env's, unchanged.

    ## Observation
    ``reset`` returns the prompt (through the tokenizer's chat template when it has
    one); ``step`` returns the text the env appended after the turn: the
    ``<information>`` block of a search or the invalid-action message. When the episode
    ends, GEM's ``TERMINAL_STATE`` marker, as GEM's own QA envs return. The whole
    conversation, exactly as the token env holds it, is ``info["context"]``.

    ## Action
    The assistant's turn as a string. Text after its first closing tag is ignored.

    ## Rewards
    At the episode end, the env's metric (EM by default) of the answer against the gold
    answers; 0 on every other step.

    ## Episode End
    ``terminated`` when the agent answers; ``truncated`` after ``max_turns`` searches
    and a final turn without an answer, or when the context is full.

    ## Arguments
    ``gym_id`` (the search-env id to make, ``"SearchQA-Synth-v0"`` by default), ``seed``
    (seed of the first reset without one, GEM's convention), ``world_seed`` (the
    synthetic world's ``seed``), and any other ``gym.make`` keyword of that id.

    ## Info
    The token env's keys (``turn``, ``action``, ``query``, ``answer``,
    ``golden_answers``, ``scores``, ...; see :class:`~search_env.env.SearchQAEnv`) plus
    ``context``.
    """

    def __init__(
        self, gym_id: str = "SearchQA-Synth-v0", seed: int | None = None, **kwargs: Any
    ) -> None:
        super().__init__()
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise TypeError(f"seed must be an int or None, got {seed!r}")
        if "world_seed" in kwargs:
            if gym_id != "SearchQA-Synth-v0":
                raise TypeError(f"world_seed= is an argument of SearchQA-Synth-v0, not {gym_id}")
            kwargs["seed"] = kwargs.pop("world_seed")
        self.gym_id = gym_id
        self.text_env: SearchQATextEnv = make_text_env(gym_id, **kwargs)
        self._first_seed = seed

    @property
    def dataset(self) -> Sequence[QAExample]:
        """The questions; ``info["index"]`` of a reset is the position of its question."""
        base = self.text_env.unwrapped
        assert isinstance(base, SearchQAEnv)  # SearchQATextEnv checked it
        return base.dataset

    def reset(self, seed: int | None = None, idx: int | None = None) -> tuple[str, dict[str, Any]]:
        """Start an episode on a question drawn with the env's RNG, or on question ``idx``.

        Unlike ``gem.Env.reset``, it does not reseed Python's and NumPy's global RNGs:
        questions are drawn from the env's own generator.
        """
        if seed is None:
            seed = self._first_seed
        options = None if idx is None else {"index": idx}
        obs, info = self.text_env.reset(seed=seed, options=options)
        self._first_seed = None  # a reset that raised keeps it for the next try
        return obs, info

    def step(self, action: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        """Play one assistant turn. See the class docstring for what comes back."""
        obs, reward, terminated, truncated, info = self.text_env.step(action)
        if terminated or truncated:
            obs = TERMINAL_STATE
        return obs, reward, terminated, truncated, info

    def close(self) -> None:
        """Close the wrapped env (and its retriever client, if any)."""
        self.text_env.close()


def register_gem() -> None:
    """Register every id of :data:`GEM_IDS` in GEM's registry (idempotent)."""
    for name, gym_id in GEM_IDS.items():
        if name not in ENV_REGISTRY:
            gem.register(name, f"{__name__}:SearchQAGemEnv", gym_id=gym_id)


register_gem()
