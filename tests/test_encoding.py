"""Sentence-transformer encoding: the packaged MiniLM offline, and the content-hash cache."""

from __future__ import annotations

import numpy as np
import pytest

import mllmrec.encoding as encoding
from mllmrec.encoding import EncoderSpec, cached_encode, encode_texts, resolve_model_path

TEXTS = ["a red cotton shirt", "black leather boots for winter", "", "a navy silk scarf " * 30]


def test_packaged_minilm_resolves_to_a_local_folder():
    path = resolve_model_path("all-MiniLM-L6-v2")
    assert (encoding.Path(path) / "config.json").is_file()
    assert resolve_model_path("BAAI/bge-small-en-v1.5") == "BAAI/bge-small-en-v1.5"  # passed through


def test_encode_matches_sentence_transformers_in_input_order():
    from sentence_transformers import SentenceTransformer

    spec = EncoderSpec()
    ours = encode_texts(TEXTS, spec)
    reference = SentenceTransformer(resolve_model_path(spec.model), device="cpu").encode(TEXTS)
    assert ours.shape == (4, 384) and ours.dtype == np.float32
    # sorting by length for batching must not change which row is which
    np.testing.assert_allclose(ours, reference, atol=1e-5)
    # (all-MiniLM-L6-v2 ends in its own Normalize module, so its vectors are unit-norm either way)


def test_cache_reuses_and_rebuilds_on_change(tmp_path, monkeypatch):
    calls = []
    real = encoding.encode_texts

    def counting(texts, spec, desc=""):
        calls.append(list(texts))
        return real(texts, spec, desc)

    monkeypatch.setattr(encoding, "encode_texts", counting)
    spec = EncoderSpec()
    first = cached_encode(TEXTS, spec, tmp_path, "items")
    again = cached_encode(TEXTS, spec, tmp_path, "items")
    assert len(calls) == 1 and np.array_equal(first, again)
    changed = cached_encode(TEXTS[:3] + ["a different text"], spec, tmp_path, "items")
    assert len(calls) == 2 and not np.allclose(changed[3], first[3])
    cached_encode(TEXTS, EncoderSpec(max_seq_length=32), tmp_path, "items")  # option in the key
    assert len(calls) == 3
    assert len(list(tmp_path.glob("items-*.npy"))) == 3
    assert len(list(tmp_path.glob("items-*.npy.meta.json"))) == 3


def test_unloadable_encoder_is_a_clear_error(tmp_path):
    with pytest.raises(RuntimeError, match="encoder.model="):
        encode_texts(["x"], EncoderSpec(model=str(tmp_path / "no-such-model")))
