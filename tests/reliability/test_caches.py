"""Caches apart from the inputs and self-repairing (issue 18, points 3 and 10): read-only inputs train,
an unwritable cache dir keeps artefacts in memory, corrupt cache entries are moved aside and rebuilt,
and a corrupt input file is an error naming it."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from reliability_helpers import make_read_only, snapshot

from mllmrec.cache import build_once
from mllmrec.data.errors import DatasetError


def _fake_encoder(monkeypatch) -> list[int]:
    """Replace the sentence encoder by a deterministic text -> vector map; returns the call log."""
    import mllmrec.encoding as encoding

    calls: list[int] = []

    def encode(texts, spec, desc="encoding"):
        calls.append(len(texts))
        return np.stack([np.random.default_rng(abs(hash(t)) % 2**32).random(8) for t in texts]).astype(np.float32)

    monkeypatch.setattr(encoding, "encode_texts", encode)
    return calls


# --------------------------------------------------------------------------- self-repairing entries
@pytest.mark.parametrize("damage", ["truncate", "empty", "flip_a_byte"])
def test_a_corrupt_embeddings_file_is_moved_aside_and_rebuilt(tmp_path, monkeypatch, caplog, damage):
    from mllmrec.encoding import EncoderSpec, cached_encode

    calls = _fake_encoder(monkeypatch)
    texts = [f"item {i}" for i in range(50)]
    first = cached_encode(texts, EncoderSpec(), tmp_path, "items")
    (path,) = tmp_path.glob("items-*.npy")
    raw = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(raw[: len(raw) // 2])
    elif damage == "empty":
        path.write_bytes(b"")
    else:  # still loads as a valid array: only the recorded hash can tell
        raw = bytearray(raw)
        raw[-7] ^= 0xFF
        path.write_bytes(bytes(raw))
    with caplog.at_level(logging.WARNING):
        again = cached_encode(texts, EncoderSpec(), tmp_path, "items")
    assert np.array_equal(again, first) and calls == [50, 50]  # rebuilt, not trusted
    assert "is corrupt" in caplog.text and path.name in caplog.text
    assert len(list(tmp_path.glob(f"{path.name}.corrupt-*"))) == 2  # the file and its meta, kept aside
    assert np.array_equal(np.load(path), first)  # the rebuilt entry is sound
    cached_encode(texts, EncoderSpec(), tmp_path, "items")
    assert calls == [50, 50]  # and is reused


def test_a_truncated_graph_file_is_rebuilt(tmp_path, caplog):
    import scipy.sparse as sp

    from mllmrec.graph import cached_refined_item_graph, refined_item_graph

    rng = np.random.default_rng(0)
    features = torch.from_numpy(rng.random((30, 6)).astype(np.float32))
    inter = sp.random(20, 30, density=0.2, random_state=1, format="csr")
    inter.data[:] = 1.0
    cached_refined_item_graph(features, inter, 5, 0.1, 3, tmp_path)
    (path,) = tmp_path.glob("refined_item_graph-*.pt")
    path.write_bytes(path.read_bytes()[:100])
    with caplog.at_level(logging.WARNING):
        graph = cached_refined_item_graph(features, inter, 5, 0.1, 3, tmp_path)
    expected = refined_item_graph(features, inter, 5, 0.1, 3).coalesce()
    assert torch.equal(graph.coalesce().indices(), expected.indices())
    assert torch.equal(graph.coalesce().values(), expected.values())
    assert "is corrupt" in caplog.text and list(tmp_path.glob(f"{path.name}.corrupt-*"))


def test_a_truncated_generation_shard_is_moved_aside_and_its_keys_made_again(tmp_path, caplog):
    from mllmrec.reasoning.store import GenerationStore, Record

    store = GenerationStore(tmp_path)
    good = store.append([Record(f"k{i}", "image", i, "ok", f"text {i}", 3, "stop") for i in range(3)])
    bad = store.append([Record(f"m{i}", "profile", i, "ok", f"profile {i}", 3, "stop") for i in range(3)])
    bad.write_bytes(bad.read_bytes()[:40])
    fresh = GenerationStore(tmp_path)
    with caplog.at_level(logging.WARNING):
        fresh.refresh()
    assert fresh.get("k1").text == "text 1"  # the sound shard is read
    assert fresh.missing(["k0", "m0", "m1", "m2"]) == ["m0", "m1", "m2"]  # to be generated again
    assert not bad.exists() and list(bad.parent.glob(f"{bad.name}.corrupt-*"))
    assert "is corrupt" in caplog.text and good.exists()


def test_a_corrupt_input_feature_file_is_an_error_naming_it(tmp_path):
    from mllmrec.data.validation import load_feature_matrix

    empty = tmp_path / "image_feat.npy"
    empty.write_bytes(b"")
    with pytest.raises(DatasetError, match=rf"{empty}.*empty \(0 bytes\)"):
        load_feature_matrix(empty, 10, "item")
    cut = tmp_path / "text_feat.npy"
    np.save(cut, np.ones((10, 64), dtype=np.float32))
    cut.write_bytes(cut.read_bytes()[:300])  # header intact, data cut short
    with pytest.raises(DatasetError, match=rf"{cut}.*(truncated or corrupt|not a plain)"):
        load_feature_matrix(cut, 10, "item")


# --------------------------------------------------------------------------- unwritable cache dir
def test_an_unwritable_cache_dir_warns_and_keeps_the_artefact_in_memory(tmp_path, monkeypatch, caplog):
    cache = tmp_path / "cache"
    refused = make_read_only(monkeypatch, cache)
    with caplog.at_level(logging.WARNING):
        value, built = build_once(cache / "thing.npy", build=lambda: np.arange(5),
                                  save=lambda a, p: np.save(p, a), load=np.load, meta={"what": "thing"})
    assert built and np.array_equal(value, np.arange(5))
    assert refused and not cache.exists()
    assert "not writable" in caplog.text and "in memory only" in caplog.text


# --------------------------------------------------------------------------- read-only inputs
def _mmrec_folder(root: Path, n_users: int = 30, n_items: int = 20) -> Path:
    rng = np.random.default_rng(0)
    rows = []
    for u in range(n_users):
        for j, i in enumerate(rng.choice(n_items, size=7, replace=False)):
            rows.append((u, int(i), 5.0, 1_300_000_000 + j, [0, 0, 0, 0, 0, 1, 2][j]))
    root.mkdir(parents=True)
    pd.DataFrame(rows, columns=["userID", "itemID", "rating", "timestamp", "x_label"]).to_csv(
        root / "toy.inter", sep="\t", index=False)
    np.save(root / "image_text_feat.npy", rng.random((n_items, 8)).astype(np.float32))
    np.save(root / "user_preferences_feat.npy", rng.random((n_users, 8)).astype(np.float32))
    return root


def test_a_read_only_mmrec_folder_trains_and_is_never_written(train_cfg, tmp_path, monkeypatch):
    from mllmrec.train.task import train

    root = _mmrec_folder(tmp_path / "shared" / "toy")
    before = snapshot(root)
    refused = make_read_only(monkeypatch, root)
    summary, objs = train(train_cfg("dataset=mmrec", f"dataset.root={root}", "dataset.name=toy",
                                    "trainer.max_epochs=2", "callbacks.user_tsne=null"))
    assert summary["best_epoch"] in (0, 1) and set(summary["test"])
    assert refused == [] and snapshot(root) == before  # nothing even attempted under the input folder
    graphs = list(Path(objs["datamodule"].cache_dir, "graphs").glob("refined_item_graph-*.pt"))
    assert graphs and Path(train_cfg().paths.cache_dir) in graphs[0].parents


def test_a_read_only_demo_folder_is_used_without_its_lock(tmp_path, monkeypatch, caplog):
    """The demo, once generated, is read without writing (no demo.lock); caches go to cache_dir."""
    from mllmrec.data.demo import ensure_demo_dataset
    from mllmrec.encoding import EncoderSpec
    from mllmrec.graph import GraphSpec
    from mllmrec.train.datamodule import MLLMRecDataModule

    calls = _fake_encoder(monkeypatch)
    root = tmp_path / "data" / "demo"
    ensure_demo_dataset(root, n_users=40, n_items=15)
    (root / "demo.lock").unlink(missing_ok=True)
    before = snapshot(root)
    refused = make_read_only(monkeypatch, root)
    dataset = {"name": "demo", "format": "processed", "root": str(root), "generate": "demo",
               "n_users": 40, "n_items": 15}
    dm = MLLMRecDataModule(dataset, "none", EncoderSpec(), GraphSpec(ks=5, alpha=0.0, kc=5, layers=1),
                           cache_dir=str(tmp_path / "cache" / "demo"))
    dm.setup("fit")
    dm.item_features, dm.user_features  # encoded into cache_dir
    assert refused == [] and snapshot(root) == before
    assert calls == [15, 40] and list((tmp_path / "cache" / "demo" / "embeddings").glob("items-*.npy"))


def test_an_unwritable_cache_dir_still_trains_from_a_read_only_folder(tmp_path, monkeypatch, caplog):
    from mllmrec.encoding import EncoderSpec
    from mllmrec.graph import GraphSpec
    from mllmrec.train.datamodule import MLLMRecDataModule

    root = _mmrec_folder(tmp_path / "shared" / "toy")
    cache = tmp_path / "cache"
    make_read_only(monkeypatch, root, cache)
    dataset = {"name": "toy", "format": "mmrec", "root": str(root), "item_features": "image_text_feat.npy",
               "user_features": "user_preferences_feat.npy"}
    dm = MLLMRecDataModule(dataset, "none", EncoderSpec(), GraphSpec(ks=5, alpha=0.0, kc=5, layers=1),
                           cache_dir=str(cache / "toy"))
    with caplog.at_level(logging.WARNING):
        dm.setup("fit")
        dm.item_graph  # built, and kept in memory
    assert dm.item_graph is not None and dm.item_graph.shape == (20, 20)
    assert "not writable" in caplog.text and not cache.exists()
