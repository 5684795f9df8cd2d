"""RLlib PPO run configuration: dataclasses, presets, and the ``PPOConfig`` they build.

One dataclass per component, nested in :class:`RLlibRunConfig` and saved as JSON with
every run. Presets:

- ``laptop``: local Ray on 2 CPUs (one env runner with 8 envs, the learner in the
  driver), the small synthetic task of :mod:`agents.tokenlevel.task`; learns in minutes.
- ``test``: the smallest sizes, for the test suite (one or two iterations).
- ``cluster``: a documented starting point for a Ray cluster (env runners spread over
  the nodes, one shared retrieval server, GPU learners); see ``docs/rllib.md``.

This module imports no Ray: :func:`build_ppo_config` does, when called.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# The generic config helpers, re-exported: a dict field (``env_config``) is open there.
from agents.config import apply_overrides, read_config, save_config, to_dict  # noqa: F401
from agents.tokenlevel.env import env_tokenizer, token_ids
from agents.tokenlevel.task import TASK_ENV_CONFIG, TASK_ENV_ID, TASK_WORDS


@dataclass
class ModuleConfig:
    """The token policy (:class:`~agents.rllib.module.TokenPolicyModule`)."""

    d_model: int = 64
    """Width of the transformer."""
    layers: int = 2
    """Transformer blocks."""
    heads: int = 4
    """Attention heads."""
    ff: int = 128
    """MLP width of each block."""
    window: int = 32
    """Context tokens the policy reads (the newest ones)."""
    allowed_words: list[str] | None = field(default_factory=lambda: list(TASK_WORDS))
    """Restrict the policy to these tokens (each must be one token of the env's tokenizer);
    ``None``: the whole vocabulary."""


@dataclass
class RunnerConfig:
    """Sampling: env runners (Ray actors) and the envs each one steps.

    The fields are keywords of ``PPOConfig.env_runners`` (passed by name)."""

    num_env_runners: int = 1
    """Remote env runners (0: sample in the driver)."""
    num_envs_per_env_runner: int = 8
    """Envs per runner, stepped as one batch through the RLModule."""
    num_cpus_per_env_runner: float = 1
    """CPUs Ray reserves for each runner."""
    rollout_fragment_length: int | str = "auto"
    """Steps per env per sample call (``"auto"``: train batch / (runners x envs))."""
    sample_timeout_s: float = 120.0
    """Give up on a runner's sample call after this long."""


@dataclass
class LearnerConfig:
    """Where the update runs (the fields are keywords of ``PPOConfig.learners``)."""

    num_learners: int = 0
    """Remote learner actors (0: one learner in the driver)."""
    num_gpus_per_learner: float = 0
    """GPUs per learner (cluster: 1)."""


@dataclass
class PPOSettings:
    """RLlib PPO's hyperparameters (each RLlib step is one agent token).

    The fields are keywords of ``PPOConfig.training`` (passed by name), except
    :attr:`train_batch_size`, passed as ``train_batch_size_per_learner``."""

    lr: float = 3e-4
    """Adam learning rate."""
    gamma: float = 1.0
    """Discount per agent token (1: the episode-end reward reaches every token)."""
    lambda_: float = 0.95
    """GAE lambda."""
    train_batch_size: int = 2048
    """Agent tokens per update (per learner)."""
    minibatch_size: int = 256
    """Tokens per SGD minibatch."""
    num_epochs: int = 4
    """Passes over each train batch."""
    clip_param: float = 0.2
    """PPO ratio clip."""
    vf_loss_coeff: float = 0.5
    """Value-loss weight."""
    vf_clip_param: float = 10.0
    """Clip of the value loss."""
    entropy_coeff: float = 0.01
    """Entropy bonus."""
    grad_clip: float | None = 1.0
    """Global gradient-norm clip."""
    use_kl_loss: bool = False
    """RLlib's adaptive KL penalty to the previous policy (off: clipping only)."""


@dataclass
class RLlibRunConfig:
    """A whole RLlib run."""

    env_id: str = TASK_ENV_ID
    """A search-env id (registered with Ray by :func:`agents.rllib.env.register_search_envs`)."""
    env_config: dict[str, Any] = field(default_factory=lambda: dict(TASK_ENV_CONFIG))
    """``gym.make`` keywords of the env, plus ``tag_tokens`` (see :mod:`agents.tokenlevel.env`)."""
    module: ModuleConfig = field(default_factory=ModuleConfig)
    """The RLModule."""
    runners: RunnerConfig = field(default_factory=RunnerConfig)
    """Env runners."""
    learners: LearnerConfig = field(default_factory=LearnerConfig)
    """Learners."""
    ppo: PPOSettings = field(default_factory=PPOSettings)
    """PPO hyperparameters."""
    iterations: int = 60
    """Training iterations (one sample + one update each)."""
    time_budget_s: float | None = None
    """Stop early once this much wall time has passed (None: run all iterations)."""
    seed: int = 0
    """Seed of envs, module and sampling."""
    out_dir: str = "runs/rllib"
    """Run directory: config.json, metrics.jsonl/csv, curves.png, summary.json, checkpoint."""
    ray_address: str | None = None
    """``None``: start a local Ray; ``"auto"`` or ``ray://host:10001``: join a cluster."""
    num_cpus: int | None = 2
    """CPUs of the local Ray (ignored when joining a cluster)."""
    torch_threads: int = 1
    """``torch.set_num_threads`` in the driver (the learner); runners use 1 each."""
    checkpoint: bool = True
    """Save the algorithm (``checkpoint/``) after the last iteration."""

    def __post_init__(self) -> None:
        if self.iterations < 0:
            raise ValueError(f"iterations must be >= 0, got {self.iterations}")
        if self.runners.num_env_runners < 0 or self.runners.num_envs_per_env_runner < 1:
            raise ValueError("runners need num_env_runners >= 0 and num_envs_per_env_runner >= 1")
        if self.ppo.minibatch_size > self.ppo.train_batch_size:
            raise ValueError("ppo.minibatch_size must not exceed ppo.train_batch_size")


# ----------------------------------------------------------------- serialisation
def load_config(path: str | Path) -> RLlibRunConfig:
    """Read a config written by :func:`save_config` (values checked against their types)."""
    return read_config(path, RLlibRunConfig)


# ----------------------------------------------------------------------- presets
def laptop() -> RLlibRunConfig:
    """Local Ray on 2 CPUs: one env runner (8 envs) and the learner in the driver."""
    return RLlibRunConfig(out_dir="runs/rllib-laptop")


def test() -> RLlibRunConfig:
    """The smallest run that exercises everything: for the test suite."""
    return RLlibRunConfig(
        module=ModuleConfig(d_model=16, layers=1, heads=2, ff=32, window=16),
        runners=RunnerConfig(num_env_runners=1, num_envs_per_env_runner=4),
        ppo=PPOSettings(train_batch_size=256, minibatch_size=128, num_epochs=1),
        iterations=2,
        out_dir="runs/rllib-test",
        checkpoint=False,
    )


def cluster() -> RLlibRunConfig:
    """A starting point for a Ray cluster (documented in ``docs/rllib.md``; not run here).

    64 env runners of 16 envs spread over the CPU nodes, every env querying one shared
    retrieval server (``search-env serve``) instead of loading its own index, and 4 GPU
    learners (Ray's data-parallel learners, each with ``train_batch_size`` tokens).
    Replace the server URL, dataset and tokenizer paths with your cluster's (paths must
    exist on every node, e.g. shared storage).
    """
    return RLlibRunConfig(
        env_id="SearchQA-NQ-v0",
        env_config={
            "dataset": "/shared/data/nq/train.jsonl",
            "split": "train",
            "retriever": "http://retrieval-server:8000",
            "tokenizer": "/shared/models/qwen2.5-tokenizer",
            "tag_tokens": True,
            "truncation_as_termination": True,
            "max_turns": 2,
            "max_response_length": 128,
            "max_obs_length": 256,
            "max_prompt_length": 1024,
            "max_start_length": 256,
            "format_score": 0.1,
        },
        module=ModuleConfig(
            d_model=512, layers=6, heads=8, ff=2048, window=1024, allowed_words=None
        ),
        runners=RunnerConfig(
            num_env_runners=64,
            num_envs_per_env_runner=16,
            num_cpus_per_env_runner=1,
            rollout_fragment_length=64,
            sample_timeout_s=600.0,
        ),
        learners=LearnerConfig(num_learners=4, num_gpus_per_learner=1),
        ppo=PPOSettings(
            lr=1e-4,
            train_batch_size=65_536,
            minibatch_size=8_192,
            num_epochs=2,
            entropy_coeff=0.001,
        ),
        iterations=2_000,
        out_dir="runs/rllib-cluster",
        ray_address="auto",
        num_cpus=None,
        torch_threads=8,
    )


PRESETS: dict[str, Callable[[], RLlibRunConfig]] = {
    "laptop": laptop,
    "test": test,
    "cluster": cluster,
}
"""Named presets, by CLI name."""


def preset(name: str) -> RLlibRunConfig:
    """A fresh copy of the named preset."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
    return PRESETS[name]()


# ------------------------------------------------------------------- PPOConfig
def _keywords(settings: Any, **rename: str) -> dict[str, Any]:
    """The fields of a flat settings dataclass as keyword arguments, by field name or
    ``rename[field name]``."""
    return {
        rename.get(f.name, f.name): getattr(settings, f.name) for f in dataclasses.fields(settings)
    }


def allowed_token_ids(config: RLlibRunConfig) -> list[int] | None:
    """``module.allowed_words`` as ids of the env's tokenizer (None: no restriction)."""
    words = config.module.allowed_words
    if words is None:
        return None
    return token_ids(env_tokenizer(config.env_id, config.env_config), words)


def build_ppo_config(config: RLlibRunConfig) -> Any:
    """RLlib's ``PPOConfig`` (new API stack: RLModule + connectors) for ``config``.

    The search-env ids must be registered with Ray first
    (:func:`agents.rllib.env.register_search_envs`).
    """
    from ray.rllib.algorithms.ppo import PPOConfig
    from ray.rllib.core.rl_module.rl_module import RLModuleSpec

    from agents.rllib.callbacks import SearchEpisodeMetrics
    from agents.rllib.learner import TokenPPOTorchLearner
    from agents.rllib.module import TokenPolicyModule

    m, r, lr, p = config.module, config.runners, config.learners, config.ppo
    model_config: dict[str, Any] = {
        "d_model": m.d_model,
        "layers": m.layers,
        "heads": m.heads,
        "ff": m.ff,
        "window": m.window,
    }
    allowed = allowed_token_ids(config)
    if allowed is not None:
        model_config["allowed_token_ids"] = allowed
    return (
        PPOConfig()
        .framework("torch")
        .environment(env=config.env_id, env_config=dict(config.env_config))
        .env_runners(**_keywords(r))
        .learners(**_keywords(lr), learner_class=TokenPPOTorchLearner)
        .rl_module(
            rl_module_spec=RLModuleSpec(module_class=TokenPolicyModule, model_config=model_config)
        )
        .training(**_keywords(p, train_batch_size="train_batch_size_per_learner"))
        .callbacks(SearchEpisodeMetrics)
        .debugging(seed=config.seed)
    )
