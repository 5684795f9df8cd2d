"""A Stable-Baselines3 features extractor over the token env's observation."""

from __future__ import annotations

from typing import Any

import torch
from gymnasium import spaces
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor

from agents.tokenlevel.encoder import EncoderConfig, TokenEncoder


class TokenFeaturesExtractor(BaseFeaturesExtractor):
    """Embeds the token buffer with :class:`~agents.tokenlevel.encoder.TokenEncoder`.

    Use with ``"MultiInputPolicy"``: SB3 hands Dict observations over as float tensors
    (token ids below 2**24 are exact in float32), which are cast back to ids here.

    Args:
        observation_space: the token env's ``Dict(tokens, mask, length)``.
        **encoder: :class:`~agents.tokenlevel.encoder.EncoderConfig` fields (``d_model``,
            ``layers``, ``heads``, ``ff``, ``window``, ``dropout``).
    """

    def __init__(self, observation_space: spaces.Dict, **encoder: Any) -> None:
        tokens = observation_space["tokens"]
        if not isinstance(tokens, spaces.Box):
            raise TypeError("TokenFeaturesExtractor needs the token env's Dict observation")
        config = EncoderConfig(**encoder)
        super().__init__(observation_space, features_dim=config.d_model)
        self.encoder = TokenEncoder(int(tokens.high.max()) + 1, config)

    def forward(self, observations: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.encoder(
            observations["tokens"].round().long(),
            observations["mask"].round().long(),
            observations["length"].round().long(),
        )  # (B, d_model)
