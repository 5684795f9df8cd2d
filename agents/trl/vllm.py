"""The rollout on TRL's colocated vLLM engine (``GRPOConfig(use_vllm=True, vllm_mode="colocate")``).

TRL 1.16 builds one ``vllm.LLM`` per process (``trainer.vllm_generation.llm``, with
``distributed_executor_backend="external_launcher"`` and
``logprobs_mode="processed_logprobs"``) and, when a ``rollout_func`` is set, pushes the
trained weights into it (``VLLMGeneration.sync_weights``) before every call whose
``global_step`` differs from the last synced one. This module

* builds that engine so that it starts in this package's process set-up
  (:func:`colocated_engine`: the engine arguments TRL does not expose, and
  :func:`agents.policy.vllm_engine.quiet_engine_start` around the start);
* on a CPU, swaps TRL's weight sync for vLLM's ``reload_weights`` (:func:`reload_weights`:
  TRL's fails on vLLM's CPU back end);
* wraps it as a :class:`~agents.policy.vllm.VLLMPolicy` (:func:`colocated_policy`), so the
  multi-turn rollout samples each turn through it with the env's stop strings;
* wakes and sleeps it around a rollout when TRL's sleep mode is on (:func:`engine_awake`),
  as TRL's own ``generate`` does.

TRL's server mode (``vllm_mode="server"``) is refused (see :func:`check_vllm_mode`).
"""

from __future__ import annotations

import types
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

LOGPROBS_MODE = "processed_logprobs"
"""The engine's log-prob mode the rollout needs: the sampling distribution's, after the
temperature (TRL sets it for its importance-sampling correction)."""


def check_vllm_mode(args: Any) -> None:
    """Refuse the TRL vLLM settings the rollout cannot honour.

    Raises:
        NotImplementedError: ``vllm_mode`` is not ``"colocate"``. In server mode TRL's
            client makes one single-turn ``/v1/completions`` call per generation batch and
            syncs weights over NCCL to a separate ``trl vllm-serve`` process; the
            rollout plays one engine call per turn, through an engine it can reach.
        ValueError: ``vllm_structured_outputs_regex`` is set (the rollout's turns are
            free text cut at the env's stop strings; a regex would be ignored).
    """
    mode = getattr(args, "vllm_mode", "colocate")
    if mode != "colocate":
        raise NotImplementedError(
            f"the search-env rollout runs on TRL's vLLM with vllm_mode='colocate' only, got "
            f"vllm_mode={mode!r}: set vllm_mode='colocate' (or use_vllm=False), see "
            "docs/integrations/trl.md"
        )
    if getattr(args, "vllm_structured_outputs_regex", None):
        raise ValueError("the search-env rollout takes no vllm_structured_outputs_regex")


def engine_kwargs(
    dtype: str = "auto", kv_cache_gb: float | None = None, enforce_eager: bool = True
) -> dict[str, Any]:
    """``vllm.LLM`` arguments TRL's ``GRPOConfig`` has no field for, set as :class:`VLLMPolicy` sets them.

    Args:
        dtype: the engine's dtype: the trained model's (vLLM's ``"auto"`` would run a
            float32 checkpoint in half precision, whose log-probs then differ from the
            trainer's).
        kv_cache_gb: KV cache size in GiB; None: 1 GiB on a CPU (vLLM would otherwise
            reserve a share of all the RAM), on a GPU what ``vllm_gpu_memory_utilization``
            leaves.
        enforce_eager: no CUDA graphs / ``torch.compile``.
    """
    from vllm.platforms import current_platform

    kwargs: dict[str, Any] = {
        "dtype": dtype,
        "enforce_eager": enforce_eager,
        "generation_config": "vllm",
    }
    cpu = current_platform.is_cpu()
    if kv_cache_gb is None and cpu:
        kv_cache_gb = 1.0
    if kv_cache_gb is not None:
        kwargs["kv_cache_memory_bytes"] = int(kv_cache_gb * (1 << 30))
    if cpu:
        # vLLM 0.32 on a CPU crashes ("CPU Generator does not use offset") when it splits a
        # seeded request's prefill over two engine steps (see agents.policy.vllm).
        kwargs["enable_chunked_prefill"] = False
    return kwargs


@contextmanager
def colocated_engine(**extra: Any) -> Iterator[None]:
    """Build ``GRPOTrainer(args=GRPOConfig(use_vllm=True, ...))`` inside this block.

    While it is open, TRL's ``vllm.LLM(...)`` call gets ``extra`` (e.g.
    :func:`engine_kwargs`) on top of its own arguments, and starts under
    :func:`agents.policy.vllm_engine.quiet_engine_start` (in-process engine, the caller's RNG and
    thread settings kept, numba's llvmlite hidden from vLLM's CPU kernel scan).
    """
    import trl.generation.vllm_generation as generation
    from vllm.platforms import current_platform

    from agents.policy.vllm_engine import quiet_engine_start

    original_llm = generation.LLM
    original_init = generation.VLLMGeneration.__init__
    cpu = current_platform.is_cpu()

    def build(*args: Any, **kwargs: Any) -> Any:
        return original_llm(*args, **{**kwargs, **extra})

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        if cpu and self.mode == "colocate":
            self.sync_weights = types.MethodType(reload_weights, self)

    generation.LLM = build
    generation.VLLMGeneration.__init__ = init  # type: ignore[method-assign]
    try:
        with quiet_engine_start():
            yield
    finally:
        generation.LLM = original_llm
        generation.VLLMGeneration.__init__ = original_init  # type: ignore[method-assign]


def reload_weights(generation: Any) -> None:
    """``VLLMGeneration.sync_weights`` for a colocated engine on a CPU.

    TRL's sync calls the vLLM model's ``load_weights`` directly, which on vLLM's CPU back
    end fails once the engine has repacked its linear weights (``'Parameter' object has
    no attribute 'weight_loader'``). vLLM's ``reload_weights`` (what
    :meth:`agents.policy.vllm.VLLMPolicy.update_weights` uses) loads the same tensors and
    redoes that repacking. The tensors come from TRL's own parameter walk (names fixed
    for vLLM, FSDP / DeepSpeed / PEFT handled), all of them at once, plus the tied
    aliases that walk skips (:func:`tied_aliases`).
    """
    if generation.enable_sleep_mode:  # as TRL's sync: map the weights' memory first
        generation.llm.wake_up(tags=["weights"])
        generation._llm_weights_sleeping = False
    weights = list(generation._iter_named_params())
    weights += tied_aliases(generation.model, weights)
    generation.llm.collective_rpc(
        "reload_weights", kwargs={"weights_iterator": weights, "is_checkpoint_format": True}
    )
    generation.llm.reset_prefix_cache()


def colocated_policy(trainer: Any, tokenizer: Any, seed: int | None = None) -> Any:
    """A :class:`~agents.policy.vllm.VLLMPolicy` over ``trainer``'s colocated engine.

    Raises:
        RuntimeError: the trainer has no colocated engine (``use_vllm=False`` or server
            mode), or the engine's log-prob mode is not :data:`LOGPROBS_MODE`.
    """
    from agents.policy.vllm import VLLMPolicy

    llm = getattr(getattr(trainer, "vllm_generation", None), "llm", None)
    if llm is None:
        raise RuntimeError(
            "the trainer has no colocated vLLM engine (trainer.vllm_generation.llm): "
            "build it with GRPOConfig(use_vllm=True, vllm_mode='colocate')"
        )
    mode = getattr(llm.llm_engine.model_config, "logprobs_mode", LOGPROBS_MODE)
    if mode != LOGPROBS_MODE:
        raise RuntimeError(
            f"TRL's engine returns {mode} log-probs; the rollout needs {LOGPROBS_MODE} "
            "(those of the distribution it samples from)"
        )
    return VLLMPolicy.from_llm(llm, tokenizer, seed=seed)


@contextmanager
def engine_awake(generation: Any) -> Iterator[None]:
    """Keep TRL's colocated engine awake, with the trained weights, while a rollout runs.

    Without sleep mode this does nothing: TRL synced the weights before calling the
    rollout. With it (``vllm_enable_sleep_mode=True``, GPU only), TRL's sync woke only
    the weights, and a level-2 sleep since (after an earlier rollout in the same step)
    discarded them: push them again, wake the KV cache, and put the engine back to sleep
    afterwards, as ``VLLMGeneration.generate`` does.
    """
    if not getattr(generation, "enable_sleep_mode", False):
        yield
        return
    if generation._llm_weights_sleeping:
        generation.sync_weights()
        generation._llm_weights_sleeping = False
    generation.llm.wake_up(tags=["kv_cache"])
    try:
        yield
    finally:
        generation.llm.sleep(level=2)
        generation._llm_weights_sleeping = True


def shutdown_engine(trainer: Any) -> None:
    """Shut TRL's colocated engine down once training is over (TRL leaves it running).

    In a single process this also tears down the process group vLLM's external launcher
    set up; with several processes that group is the trainer's, so it is left alone.
    """
    generation = getattr(trainer, "vllm_generation", None)
    llm = getattr(generation, "llm", None)
    if llm is None:
        return
    llm.llm_engine.engine_core.shutdown()
    generation.llm = None
    if trainer.accelerator.num_processes == 1:
        from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

        cleanup_dist_env_and_memory()


def tied_aliases(model: Any, weights: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """``(name, tensor)`` for the tied copies ``named_parameters`` yields once.

    ``reload_weights`` does not re-tie: with ``tie_word_embeddings`` and only
    ``model.embed_tokens.weight`` loaded, vLLM's ``lm_head`` keeps the stale weights. Every
    state-dict entry that is the same parameter as a loaded one is loaded under its own
    name too (``lm_head.weight``).
    """
    loaded = dict(weights)
    name_of = {id(p): n for n, p in model.named_parameters()}
    out = []
    for key, tensor in model.state_dict(keep_vars=True).items():
        source = name_of.get(id(tensor))
        if key not in loaded and source is not None and source in loaded:
            out.append((key, loaded[source]))
    return out
