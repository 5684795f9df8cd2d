"""PPO's torch learner plus an audit: the loss sees agent tokens only, one row each.

In the token env each RLlib action is one token the agent wrote; the env's own tokens
(prompt, information blocks, invalid-action messages) arrive inside observations and are
never actions, so they can never be loss rows. :class:`TokenPPOTorchLearner` checks this
on every update rather than trusting it: the first piece of its learner connector reads
the train episodes and verifies that each action was appended to the context as an agent
token (mask 1, right after the previous context); the last piece, after GAE, counts the
batch rows that enter the loss (``LOSS_MASK``; the one artificial bootstrap step PPO
appends to each episode chunk is masked out) and raises if they differ from the agent
tokens written. Learner metrics (per iteration, under ``learners/__all_modules__``):
``agent_tokens``, ``env_tokens``, ``loss_rows``.
"""

from __future__ import annotations

from typing import Any

from ray.rllib.algorithms.ppo.torch.ppo_torch_learner import PPOTorchLearner
from ray.rllib.connectors.connector_v2 import ConnectorV2
from ray.rllib.core import ALL_MODULES
from ray.rllib.core.columns import Columns

from agents.rllib.audit import TokenAudit, TokenAuditError, audit_episodes

AUDIT_KEY = "_search_env_token_audit"


class AuditEpisodes(ConnectorV2):
    """First learner-connector piece: audit the train episodes before PPO extends them."""

    def __call__(
        self,
        *,
        rl_module: Any,
        batch: dict[str, Any],
        episodes: list[Any],
        explore: bool | None = None,
        shared_data: dict | None = None,
        metrics: Any = None,
        **kwargs: Any,
    ) -> Any:
        chunks = list(self.single_agent_episode_iterator(episodes, agents_that_stepped_only=False))
        if shared_data is not None:
            shared_data[AUDIT_KEY] = audit_episodes(chunks)
        return batch


class AuditLossRows(ConnectorV2):
    """Last learner-connector piece: the rows that enter the loss are the agent tokens."""

    def __call__(
        self,
        *,
        rl_module: Any,
        batch: dict[str, Any],
        episodes: list[Any],
        explore: bool | None = None,
        shared_data: dict | None = None,
        metrics: Any = None,
        **kwargs: Any,
    ) -> Any:
        audit: TokenAudit | None = (shared_data or {}).get(AUDIT_KEY)
        if audit is None:
            raise TokenAuditError("AuditLossRows needs AuditEpisodes earlier in the pipeline")
        rows = 0
        for module_batch in batch.values():
            loss_mask = module_batch.get(Columns.LOSS_MASK)
            actions = module_batch[Columns.ACTIONS]
            rows += int(loss_mask.sum()) if loss_mask is not None else len(actions)
        if rows != audit.agent_tokens or rows != audit.steps:
            raise TokenAuditError(
                f"{rows} loss rows for {audit.agent_tokens} agent tokens written in "
                f"{audit.steps} steps: only agent tokens may enter the loss"
            )
        if metrics is not None:
            for key, value in (
                ("agent_tokens", audit.agent_tokens),
                ("env_tokens", audit.env_tokens),
                ("loss_rows", rows),
            ):
                metrics.log_value((ALL_MODULES, key), value, reduce="sum")
        return batch


class TokenPPOTorchLearner(PPOTorchLearner):
    """RLlib's PPO torch learner with the token audit around its learner connector."""

    def build(self) -> None:
        super().build()
        if self._learner_connector is not None:
            self._learner_connector.prepend(AuditEpisodes())
            self._learner_connector.append(AuditLossRows())
