"""Evaluating a model by path: a Hugging Face model, a training run or one checkpoint."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agents.evaluation.envs import (
    PROTOCOL_KEYS,
    EvalSetupError,
    env_kwargs_for,
    open_env,
    resolve_retriever,
)
from agents.evaluation.report import BASELINES, EvalReport, parse_methods
from agents.evaluation.runner import evaluate_policy


@dataclass
class LoadedModel:
    """A model ready to evaluate, and what its training run says about the env.

    Attributes:
        model: the ``transformers`` causal LM (eval mode).
        tokenizer: its tokenizer (the envs use it too).
        name: a short name for tables (directory name, ``run@step``).
        env_id: the env the run trained on (None for a plain model directory).
        env_kwargs: the run's ``rollout.env_kwargs`` (its prompt template, budgets, ...).
        max_new_tokens: the run's turn budget (None: the protocol's).
    """

    model: Any
    tokenizer: Any
    name: str
    env_id: str | None = None
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    max_new_tokens: int | None = None

    def env_kwargs_for(self, env_id: str) -> dict[str, Any]:
        """The run's env kwargs that apply to ``env_id``: all of them on the run's own env,
        only the protocol ones (template, budgets, reward) elsewhere."""
        if env_id == self.env_id:
            return dict(self.env_kwargs)
        return {k: v for k, v in self.env_kwargs.items() if k in PROTOCOL_KEYS}

    def vocab_size(self) -> int:
        return int(self.model.get_output_embeddings().weight.shape[0])

    def eos_token_ids(self) -> list[int]:
        """EOS ids of the tokenizer and the generation config (chat models end turns with
        another id than their tokenizer's EOS)."""
        ids = {self.tokenizer.eos_token_id}
        gen = getattr(self.model, "generation_config", None)
        extra = getattr(gen, "eos_token_id", None)
        ids.update(extra if isinstance(extra, (list, tuple)) else [extra])
        return sorted(int(i) for i in ids if i is not None)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise EvalSetupError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise EvalSetupError(f"{path} is not a JSON object")
    return data


_PATH_KEYS = frozenset({"dataset", "corpus", "retriever", "tokenizer"})
"""Env kwargs that may name a local path."""


def _training_dir(run_dir: Path, out_dir: str) -> Path | None:
    """Where ``search-env train`` ran: ``run_dir`` less its relative ``out_dir`` tail.

    None when ``out_dir`` is absolute, climbs (``..``) or does not end ``run_dir``.
    """
    out = Path(os.path.normpath(out_dir))
    if out.is_absolute() or ".." in out.parts:
        return None
    run = Path(os.path.abspath(run_dir))
    n = len(out.parts)
    if run.parts[-n:] != out.parts:
        return None
    return run.parents[n - 1]


def _run_relative(path: str, run_dir: Path, out_dir: str) -> str:
    """A run config's relative ``model.path`` made absolute.

    The config keeps the path as typed, relative to where training ran: resolve it there
    (inferred from ``out_dir``), else in the run directory, else in the current one. A
    path found in none of them is returned as is (it may be a hub id).
    """
    if Path(path).is_absolute():
        return path
    bases = [_training_dir(run_dir, out_dir), run_dir, Path.cwd()]
    for base in bases:
        if base is not None and (base / path).exists():
            return str(Path(os.path.abspath(base / path)))
    return path


def _load_run_model(
    cfg: Any, tokenizer: Any, config: Path, run_dir: Path, out_dir: str
) -> tuple[Any, Any]:
    """``load_model`` on a run's model config; a path that is not there is one clear error."""
    from agents.model import load_model

    if cfg.path == "tiny":
        return load_model(cfg, tokenizer)
    given = cfg.path
    cfg = dataclasses.replace(cfg, path=_run_relative(given, run_dir, out_dir))
    if Path(cfg.path).is_absolute():
        return load_model(cfg, tokenizer)
    # Found nowhere: a hub id ("name" or "namespace/name"), or a local path that is gone.
    bases = [b for b in (_training_dir(run_dir, out_dir), run_dir, Path.cwd()) if b is not None]
    hint = (
        f"model.path {given!r} of {config} is not a directory under "
        f"{', '.join(str(b) for b in dict.fromkeys(bases))}"
    )
    if given.count("/") > 1 or given.startswith((".", "~")) or "\\" in given:
        raise EvalSetupError(f"{hint} (nor a hub id)")
    try:
        return load_model(cfg, tokenizer)
    except Exception as exc:  # offline, unknown repo: transformers' message runs to many lines
        lines = str(exc).strip().splitlines()
        raise EvalSetupError(
            f"{hint}, and loading it as a hub id failed: "
            f"{lines[0] if lines else type(exc).__name__}"
        ) from exc


def load_model_for_eval(path: str | Path, device: str = "auto", dtype: str = "auto") -> LoadedModel:
    """Load a Hugging Face model directory, a ``search-env train`` run directory (its
    latest checkpoint) or one checkpoint directory (``{run}/checkpoints/step_N``).

    A run's relative ``model.path`` (and path-valued env kwargs) are resolved where the
    run was trained (its ``out_dir`` tail removed from the run directory), so a run loads
    from any working directory.

    Args:
        path: the directory.
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda``.
        dtype: ``auto`` (bfloat16 on CUDA, float32 on CPU), ``float32``, ``bfloat16``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        EvalSetupError: it is none of the three, a run has no checkpoint yet, or its
            ``model.path`` is neither a directory nor a loadable hub id.
    """
    import torch

    from agents.checkpoint import CorruptCheckpointError, latest_checkpoint, verify_checkpoint
    from agents.config import ModelConfig, from_dict
    from agents.model import load_model, resolve_device

    root = Path(path)
    if not root.exists():
        raise FileNotFoundError(
            f"model path {str(path)!r} does not exist (expected a Hugging Face model directory, "
            "a `search-env train` run directory or one of its checkpoints/step_N directories)"
        )
    dev = resolve_device(device)
    dtype = dtype if dtype != "auto" else ("bfloat16" if dev.type == "cuda" else "float32")
    if dtype not in ("float32", "bfloat16"):
        raise ValueError(f"dtype must be auto, float32 or bfloat16, got {dtype!r}")
    config = root / "config.json"
    if not config.is_file():
        raise EvalSetupError(f"{root} has no config.json: not a model, run or checkpoint directory")
    data = _read_json(config)
    if "model_type" in data:  # a Hugging Face model directory
        hf = ModelConfig(path=str(root), dtype=dtype, device=str(dev))  # type: ignore[arg-type]
        model, tokenizer = load_model(hf, None)
        return LoadedModel(model.eval(), tokenizer, root.resolve().name)
    if not {"algo", "model", "rollout"} <= set(data):
        raise EvalSetupError(f"{config} is neither a Hugging Face model config nor a run's")
    if (root / "state.pt").is_file():
        checkpoint, run_name = root, root.resolve().parent.parent.name
    else:
        checkpoint = latest_checkpoint(root)
        if checkpoint is None:
            raise EvalSetupError(
                f"run {root} has no checkpoint yet ({root / 'checkpoints'} holds none)"
            )
        run_name = root.resolve().name
    step = checkpoint.name.rpartition("_")[2]
    name = f"{run_name}@step{int(step)}" if step.isdigit() else f"{run_name}@{checkpoint.name}"
    cfg = from_dict(data)
    run_dir = checkpoint.parent.parent
    env_kwargs = _resolve_env_paths(cfg.rollout.env_kwargs, _training_dir(run_dir, cfg.out_dir))
    rollout = dataclasses.replace(cfg.rollout, env_kwargs=env_kwargs)
    tokenizer = None
    if cfg.model.path == "tiny":  # built on the env's own tokenizer, as the trainer did
        from agents.rollout import make_env

        try:
            env = make_env(rollout, rollout.eval_split, 1)  # resolves "synth", "world:N", hub ids
        except Exception as exc:  # offline tokenizer, a dataset that is gone
            raise EvalSetupError(
                f"could not make the env of run {run_dir} (for its tokenizer): "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        tokenizer = env.envs[0].tokenizer
        env.close()
    else:  # the trainer gave the env the model's own tokenizer, whatever env_kwargs said
        env_kwargs.pop("tokenizer", None)
    model_cfg = dataclasses.replace(
        cfg.model, dtype=dtype, device=str(dev), gradient_checkpointing=False
    )
    model, tokenizer = _load_run_model(model_cfg, tokenizer, config, run_dir, cfg.out_dir)
    try:  # a damaged checkpoint is refused, not evaluated
        verify_checkpoint(checkpoint)
    except CorruptCheckpointError as e:
        raise EvalSetupError(str(e)) from e
    # Our own run's file; it also holds the optimizer and RNG states (not tensors only).
    state = torch.load(checkpoint / "state.pt", map_location="cpu", weights_only=False)
    if "model" not in state:
        raise EvalSetupError(f"{checkpoint / 'state.pt'} holds no model state")
    model.load_state_dict(state["model"])
    return LoadedModel(
        model.eval(),
        tokenizer,
        name,
        env_id=rollout.env_id,
        env_kwargs=env_kwargs,
        max_new_tokens=rollout.max_new_tokens,
    )


def _resolve_env_paths(env_kwargs: Mapping[str, Any], trained_in: Path | None) -> dict[str, Any]:
    """A run's env kwargs with relative local paths made absolute where training ran.

    Only values that exist there change: ``"synth"``, ``"world:1024"``, hub ids and URLs
    are specs, not paths.
    """
    out = dict(env_kwargs)
    if trained_in is None:
        return out
    for key in _PATH_KEYS & set(out):
        value = out[key]
        if (
            isinstance(value, str)
            and "://" not in value
            and not Path(value).is_absolute()
            and (trained_in / value).exists()
        ):
            out[key] = str(trained_in / value)
    return out


def evaluate_model(
    path: str | Path,
    env_ids: Sequence[str],
    *,
    baselines: Sequence[str] = (),
    limit: int | None = None,
    num_envs: int = 32,
    split: str | None = None,
    size: str | None = None,
    qa_dir: str | Path | None = None,
    retriever: Any = None,
    env_kwargs: Mapping[str, Any] | None = None,
    max_new_tokens: int | None = None,
    device: str = "auto",
    dtype: str = "auto",
    progress: bool = True,
) -> EvalReport:
    """Load a model (see :func:`load_model_for_eval`) and evaluate it and the baselines.

    Every env is made before anything runs, so a missing dataset fails at once. A run's
    own prompt template and budgets are used (see :meth:`LoadedModel.env_kwargs_for`);
    ``env_kwargs`` override them (see :func:`~agents.evaluation.envs.env_kwargs_for` for
    the keys). ``retriever`` (an object, index directory, server URL, or a ``.jsonl``
    corpus to index) is resolved once and shared by every env but Synth.
    """
    from agents.policy.hf import HFPolicy

    baselines = parse_methods(baselines, BASELINES)
    if len(set(env_ids)) != len(env_ids) or not env_ids:
        raise ValueError(f"give each env id once, at least one: {list(env_ids)}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    loaded = load_model_for_eval(path, device, dtype)
    shared = resolve_retriever(retriever)
    envs: dict[str, Any] = {}
    try:
        for env_id in env_ids:
            run_kwargs = loaded.env_kwargs_for(env_id)
            kwargs = {
                **run_kwargs,
                **env_kwargs_for(
                    env_id,
                    split=split,
                    size=size or run_kwargs.get("size"),
                    qa_dir=qa_dir,
                    retriever=shared,
                    extra=env_kwargs,
                ),
            }
            kwargs.setdefault("tokenizer", loaded.tokenizer)
            kwargs.setdefault("vocab_size", loaded.vocab_size())
            kwargs.setdefault("eos_token_ids", loaded.eos_token_ids())
            envs[env_id] = open_env(env_id, num_envs, kwargs)
        param = next(loaded.model.parameters())
        policy = HFPolicy(loaded.model, loaded.tokenizer, device=param.device, seed=0)
        report = evaluate_policy(
            policy,
            envs,
            methods=["search", *baselines],
            limit=limit,
            max_new_tokens=max_new_tokens or loaded.max_new_tokens,
            model_name=loaded.name,
            progress=progress,
        )
    finally:
        for vec in envs.values():
            vec.close()
    report.settings.update(
        {
            "model_path": str(path),
            "num_envs": num_envs,
            "device": str(param.device),
            "dtype": str(param.dtype).removeprefix("torch."),
            "env_kwargs": {k: _jsonable(v) for k, v in (env_kwargs or {}).items()},
            "run_env_id": loaded.env_id,
            "run_env_kwargs": loaded.env_kwargs,
        }
    )
    return report


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
        return value
    except TypeError:
        return repr(value)
