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


def test_two_cpu_processes_give_the_single_process_vectors(monkeypatch):
    from sentence_transformers import SentenceTransformer

    pools = []
    start = SentenceTransformer.start_multi_process_pool

    def recording(self, target_devices=None):
        pool = start(self, target_devices)
        pools.append((list(target_devices), [p.pid for p in pool["processes"]]))
        return pool

    monkeypatch.setattr(SentenceTransformer, "start_multi_process_pool", recording)
    texts = [f"item {i}: " + "a soft wool blanket for a toddler bed " * (1 + i % 7) for i in range(24)]
    single = encode_texts(texts, EncoderSpec(batch_size=4))
    assert pools == []
    # chunk_size 5 over 24 texts: several chunks per worker, the last one short
    pooled = encode_texts(texts, EncoderSpec(batch_size=4, devices=("cpu", "cpu"), chunk_size=5))
    assert len(pools) == 1 and pools[0][0] == ["cpu", "cpu"] and len(set(pools[0][1])) == 2
    assert pooled.shape == single.shape == (24, 384)
    np.testing.assert_allclose(pooled, single, atol=1e-5)
    # rows must stay with their texts (a chunk put back in the wrong place would fail here)
    assert np.argmax(pooled @ single.T, axis=1).tolist() == list(range(24))


def test_encoder_config_keys_map_to_the_spec_and_devices_are_not_in_the_cache_key():
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from mllmrec.errors import ConfigError
    from mllmrec.train.checks import build_spec

    from train_helpers import CONF

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose(config_name="train", overrides=["encoder.devices=[cuda:0,cuda:1]", "encoder.batch_size=512",
                                                          "encoder.chunk_size=1000"])
    finally:
        GlobalHydra.instance().clear()
    spec = build_spec(cfg.encoder, "encoder")
    assert spec.devices == ("cuda:0", "cuda:1") and spec.multi_process and spec.chunk_size == 1000
    assert spec.key() == EncoderSpec(model=spec.model, max_seq_length=spec.max_seq_length).key()
    assert hash(spec)  # hashable although the config gave a list
    assert not EncoderSpec(devices=["cpu"]).multi_process
    with pytest.raises(ConfigError, match="encoder.devices"):
        EncoderSpec(devices="cuda:0,cuda:1")
