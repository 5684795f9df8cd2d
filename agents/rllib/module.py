"""The RLModule: next-token logits and a value from the token env's observation.

RLlib's default encoders take flat float vectors; the token env observes a Dict of an
int token buffer, its env-token mask and the context length. :class:`TokenPolicyModule`
embeds the token ids with :class:`~agents.tokenlevel.encoder.TokenEncoder` and puts two heads
on the newest token's hidden state: logits over the vocabulary (the env's
``Discrete(vocab_size)`` action: one agent token per RLlib step) and a scalar value.

``model_config`` keys: the :class:`~agents.tokenlevel.encoder.EncoderConfig` fields, plus
``allowed_token_ids`` (optional list): the policy may only write these tokens (every
other logit is a large negative number, so it is never sampled and carries no entropy);
actions stay token ids of the full vocabulary.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from ray.rllib.core.columns import Columns
from ray.rllib.core.rl_module.apis import ValueFunctionAPI
from ray.rllib.core.rl_module.torch import TorchRLModule
from torch import nn

from agents.tokenlevel.encoder import EncoderConfig, TokenEncoder

MASKED_LOGIT = -1e9
"""Logit of a token outside ``allowed_token_ids``: probability exactly 0 in float32."""


def encoder_config(model_config: dict[str, Any] | None) -> EncoderConfig:
    """The encoder fields of an RLModule ``model_config``.

    Keys of RLlib's own ``DefaultModelConfig`` (algorithms add some, e.g. PPO's
    ``vf_share_layers``) are ignored; any other unknown key is a typo and raises.
    """
    from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig

    ours = {f.name for f in dataclasses.fields(EncoderConfig)}
    rllib_keys = {f.name for f in dataclasses.fields(DefaultModelConfig)}
    given = {k: v for k, v in (model_config or {}).items() if k != "allowed_token_ids"}
    unknown = set(given) - ours - rllib_keys
    if unknown:
        raise ValueError(f"unknown TokenPolicyModule model_config keys: {sorted(unknown)}")
    return EncoderConfig(**{k: v for k, v in given.items() if k in ours})


class TokenPolicyModule(TorchRLModule, ValueFunctionAPI):
    """A small transformer policy and value over the env's token buffer."""

    def setup(self) -> None:
        n = getattr(self.action_space, "n", None)
        if n is None:
            raise TypeError(
                f"TokenPolicyModule needs the token env's Discrete action space (token mode), "
                f"got {self.action_space}"
            )
        self.vocab_size = int(n)
        self.encoder = TokenEncoder(self.vocab_size, encoder_config(self.model_config))
        allowed = (self.model_config or {}).get("allowed_token_ids")
        if allowed is not None:
            allowed = sorted({int(t) for t in allowed})
            if not allowed or allowed[0] < 0 or allowed[-1] >= self.vocab_size:
                raise ValueError(
                    f"allowed_token_ids must be non-empty ids in [0, {self.vocab_size})"
                )
        self.register_buffer(
            "allowed",
            torch.tensor(allowed if allowed is not None else [], dtype=torch.long),
            persistent=False,
        )
        d = self.encoder.out_dim
        self.pi = nn.Linear(d, len(allowed) if allowed is not None else self.vocab_size)
        self.vf = nn.Linear(d, 1)
        # Small initial logits: the random start samples (nearly) uniformly.
        nn.init.normal_(self.pi.weight, std=0.01)
        nn.init.zeros_(self.pi.bias)
        nn.init.normal_(self.vf.weight, std=0.01)
        nn.init.zeros_(self.vf.bias)

    def _features(self, batch: dict[str, Any]) -> torch.Tensor:
        obs = batch[Columns.OBS]
        return self.encoder(obs["tokens"], obs["mask"], obs["length"])  # (B, D)

    def _logits(self, features: torch.Tensor) -> torch.Tensor:
        logits = self.pi(features)  # (B, K) or (B, V)
        if self.allowed.numel() == 0:
            return logits
        full = logits.new_full((logits.shape[0], self.vocab_size), MASKED_LOGIT)
        return full.index_copy(1, self.allowed, logits)  # (B, V)

    def _forward(self, batch: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        return {Columns.ACTION_DIST_INPUTS: self._logits(self._features(batch))}

    def _forward_train(self, batch: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        features = self._features(batch)
        # The features are handed back to compute_values: one encoder pass per minibatch.
        return {Columns.ACTION_DIST_INPUTS: self._logits(features), Columns.EMBEDDINGS: features}

    def compute_values(self, batch: dict[str, Any], embeddings: Any | None = None) -> torch.Tensor:
        features = embeddings if embeddings is not None else self._features(batch)
        return self.vf(features).squeeze(-1)  # (B,)
