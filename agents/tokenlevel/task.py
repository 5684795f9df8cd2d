"""The small synthetic task the RLlib and SB3 laptop configs learn (no Ray, no SB3).

:data:`TASK_ENV_CONFIG` and :data:`TASK_WORDS` are what the laptop configs learn in
minutes from a random start: the synth world's ``tiny`` split, a one-line prompt, two
8-token turns, single-token tags, truncations reported as terminations (see
:class:`~agents.tokenlevel.env.TruncationAsTermination`), and a policy restricted to the
four search/answer tags, EOS and three filler words. EM stays the reward (1 for a right
answer) and Search-R1's ``format_score`` (0.5) pays a well-formed but wrong answer, so the
return measures how reliably the agent learns to write ``<answer> ... </answer>``: about
0.07 for the random start, 0.5 for an agent that always answers. Build its env with
:func:`~agents.tokenlevel.env.make_search_env`.
"""

from __future__ import annotations

from typing import Any

from agents.tokenlevel.env import tagged_tokenizer, token_ids

TASK_ENV_ID = "SearchQA-Synth-v0"
TASK_ENV_CONFIG: dict[str, Any] = {
    "size": "tiny",
    "split": "train",
    "tag_tokens": True,
    "truncation_as_termination": True,
    "template": "Question: {question}\n",
    "max_turns": 1,
    "topk": 1,
    "max_response_length": 8,
    "max_obs_length": 32,
    "max_start_length": 64,
    "max_prompt_length": 128,
    "reward_metric": "em",
    "format_score": 0.5,
}
"""The small synthetic task: contexts stay under 128 tokens, episodes under 17 steps."""

TASK_WORDS: tuple[str, ...] = (
    "<search>",
    "</search>",
    "<answer>",
    "</answer>",
    "<|endoftext|>",
    " the",
    " a",
    " of",
)
"""The policy's vocabulary on the synthetic task (each must be one token)."""


def task_token_ids(tokenizer: Any | None = None) -> list[int]:
    """The synthetic task's vocabulary (:data:`TASK_WORDS`) as token ids."""
    return token_ids(tokenizer if tokenizer is not None else tagged_tokenizer("synth"), TASK_WORDS)
