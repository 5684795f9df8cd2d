"""``python -m agents.sb3.train``: Stable-Baselines3 PPO on the token-level env.

An example, not a trainer of record: SB3's PPO with :class:`TokenFeaturesExtractor` over
the token buffer, on the small synthetic task of :mod:`agents.tokenlevel.task` (the policy's
vocabulary cut to its eight tokens with :class:`TokenSubset`). Same run-directory
conventions as the other trainers: ``config.json``, ``metrics.jsonl`` / ``metrics.csv``
(one record per rollout), ``curves.png`` (with matplotlib), ``summary.json``, and the SB3
model in ``model.zip``::

    python -m agents.sb3.train --out runs/sb3 --timesteps 60000
    python -m agents.sb3.train --set lr=3e-4 --set n_envs=16
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agents.cli_args import add_set_argument, overrides_from_args
from agents.config import apply_overrides
from agents.sb3.deps import require_sb3
from agents.tokenlevel.task import TASK_ENV_CONFIG, TASK_ENV_ID, TASK_WORDS


@dataclass
class SB3RunConfig:
    """An SB3 PPO run on the token env."""

    env_id: str = TASK_ENV_ID
    """A search-env id."""
    env_config: dict[str, Any] = field(default_factory=lambda: dict(TASK_ENV_CONFIG))
    """``gym.make`` keywords (plus ``tag_tokens``, see :mod:`agents.tokenlevel.env`)."""
    words: list[str] | None = field(default_factory=lambda: list(TASK_WORDS))
    """The policy's vocabulary (single tokens); ``None``: the whole vocabulary."""
    d_model: int = 64
    """Encoder width."""
    layers: int = 2
    """Encoder blocks."""
    heads: int = 4
    """Attention heads."""
    ff: int = 128
    """MLP width."""
    window: int = 32
    """Context tokens read (the newest)."""
    n_envs: int = 8
    """Envs stepped together (SB3 ``DummyVecEnv``)."""
    timesteps: int = 60_000
    """Agent tokens to train on."""
    n_steps: int = 128
    """Steps per env per rollout (rollout = ``n_steps * n_envs`` tokens)."""
    batch_size: int = 256
    """Minibatch size."""
    n_epochs: int = 4
    """Passes over each rollout."""
    lr: float = 1e-3
    """Adam learning rate."""
    gamma: float = 1.0
    """Discount per token."""
    gae_lambda: float = 0.95
    """GAE lambda."""
    ent_coef: float = 0.01
    """Entropy bonus."""
    seed: int = 0
    """Seed of envs and policy."""
    torch_threads: int = 1
    """``torch.set_num_threads``."""
    out_dir: str = "runs/sb3"
    """Run directory."""


def make_env(cfg: SB3RunConfig) -> Any:
    """One token env of ``cfg``, vocabulary-restricted when ``cfg.words`` is set."""
    from stable_baselines3.common.monitor import Monitor

    from agents.sb3.wrappers import TokenSubset
    from agents.tokenlevel.env import env_tokenizer, make_search_env, token_ids

    env = make_search_env(cfg.env_id, cfg.env_config)
    if cfg.words is not None:
        env = TokenSubset(env, token_ids(env_tokenizer(cfg.env_id, cfg.env_config), cfg.words))
    return Monitor(env)


def build_model(cfg: SB3RunConfig) -> Any:
    """SB3 ``PPO("MultiInputPolicy")`` with the token features extractor, on ``cfg.n_envs`` envs."""
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import DummyVecEnv

    from agents.sb3.features import TokenFeaturesExtractor

    venv = DummyVecEnv([lambda: make_env(cfg) for _ in range(cfg.n_envs)])
    encoder = {
        "d_model": cfg.d_model,
        "layers": cfg.layers,
        "heads": cfg.heads,
        "ff": cfg.ff,
        "window": cfg.window,
    }
    return PPO(
        "MultiInputPolicy",
        venv,
        learning_rate=cfg.lr,
        n_steps=cfg.n_steps,
        batch_size=cfg.batch_size,
        n_epochs=cfg.n_epochs,
        gamma=cfg.gamma,
        gae_lambda=cfg.gae_lambda,
        ent_coef=cfg.ent_coef,
        seed=cfg.seed,
        device="cpu",
        policy_kwargs={
            "features_extractor_class": TokenFeaturesExtractor,
            "features_extractor_kwargs": encoder,
            "net_arch": [],
        },
    )


def _rollout_logger(metrics: Any, started: float) -> Any:
    """An SB3 callback writing one record per rollout: return, answered share, EM."""
    from stable_baselines3.common.callbacks import BaseCallback

    class RolloutLogger(BaseCallback):
        def __init__(self) -> None:
            super().__init__()
            self.rollout = 0
            self.returns: list[float] = []
            self.answered: list[float] = []
            self.em: list[float] = []

        def _on_step(self) -> bool:
            for done, info in zip(self.locals["dones"], self.locals["infos"]):
                if done and "episode" in info:
                    self.returns.append(float(info["episode"]["r"]))
                    self.answered.append(float(info.get("answer") is not None))
                    self.em.append(float((info.get("scores") or {}).get("em", 0.0)))
            return True

        def _on_rollout_end(self) -> None:
            self.rollout += 1
            record: dict[str, Any] = {
                "step": self.rollout,
                "timesteps": int(self.num_timesteps),
                "episodes": len(self.returns),
            }
            if self.returns:
                n = len(self.returns)
                record.update(
                    reward=sum(self.returns) / n,
                    answered=sum(self.answered) / n,
                    em=sum(self.em) / n,
                )
            record["wall_time"] = time.perf_counter() - started
            metrics.log(record)
            self.returns, self.answered, self.em = [], [], []

    return RolloutLogger()


def train_sb3(cfg: SB3RunConfig) -> dict[str, Any]:
    """Train ``cfg``; write the run directory; return the summary."""
    require_sb3()
    import torch

    from agents.metrics import MetricsLogger
    from agents.plots import plot_curves

    started = time.perf_counter()
    torch.set_num_threads(cfg.torch_threads)
    run_dir = Path(cfg.out_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2) + "\n")
    metrics = MetricsLogger(run_dir)
    model = build_model(cfg)
    model.learn(total_timesteps=cfg.timesteps, callback=_rollout_logger(metrics, started))
    model.save(run_dir / "model.zip")
    rewards = [r["reward"] for r in metrics.records if "reward" in r]
    summary: dict[str, Any] = {
        "backend": "sb3",
        "algo": "ppo",
        "rollouts": len(metrics.records),
        "timesteps": int(model.num_timesteps),
        "run_dir": str(run_dir),
        "wall_seconds": time.perf_counter() - started,
    }
    if rewards:
        summary.update(reward_first=rewards[0], reward_last=rewards[-1], reward_best=max(rewards))
    png = plot_curves(
        metrics.records,
        run_dir / "curves.png",
        keys=("reward", "answered"),
        title=f"sb3 ppo {run_dir.name}",
    )
    summary["curves_png"] = str(png) if png else None
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def main(argv: list[str] | None = None) -> int:
    """``python -m agents.sb3.train``."""
    parser = argparse.ArgumentParser(
        prog="python -m agents.sb3.train", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--out", help="run directory")
    parser.add_argument("--timesteps", type=int, help="agent tokens to train on")
    parser.add_argument("--seed", type=int, help="seed")
    add_set_argument(parser, "lr=3e-4 or env_config.size=small")
    args = parser.parse_args(argv)
    try:
        require_sb3()
        overrides = overrides_from_args(
            args, SB3RunConfig, (("out", "out_dir"), ("timesteps", "timesteps"), ("seed", "seed"))
        )
        cfg = apply_overrides(SB3RunConfig(), overrides)
    except (ImportError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(train_sb3(cfg), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
