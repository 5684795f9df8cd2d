"""Token-level pieces shared by the RLlib and SB3 trainers (neither imports the other).

- :mod:`agents.tokenlevel.env`: :func:`make_search_env` (``gym.make`` plus ``tag_tokens``
  and ``truncation_as_termination``), the tagged tokenizer, :class:`TruncationAsTermination`.
- :mod:`agents.tokenlevel.task`: the small synthetic task (env config and vocabulary).
- :mod:`agents.tokenlevel.encoder`: :class:`TokenEncoder`, a small transformer over the
  env's token buffer (torch only).

Nothing is imported here, so ``agents.tokenlevel.task`` loads without torch.
"""
