"""FREEDOM's own kNN item graphs are cached beside the refined graph: the cached graph equals a fresh
build, a cache hit does no kNN work (the kNN is patched to raise on the second run), other features or
another k are another entry, and the trainer hands FREEDOM the dataset's graph cache folder."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from omegaconf import OmegaConf

import mllmrec.graph.knn as graph_knn
import mllmrec.models.mmrec_parts as mmrec_parts
from mllmrec.models import FREEDOM
from mllmrec.models.mmrec_parts import cached_normalized_knn_graph, normalized_knn_graph
from mllmrec.train.task import model_inputs

U, I = 20, 15  # noqa: E741  (users, items)


def _modalities(seed: int = 3) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"image": torch.randn(I, 12, generator=g), "text": torch.randn(I, 6, generator=g)}


def _interactions() -> sp.csr_matrix:
    rng = np.random.default_rng(0)
    r = sp.random(U, I, density=0.3, random_state=rng, format="lil")
    for u in range(U):
        r[u, u % I] = 1.0
    r = r.tocsr()
    r.data[:] = 1.0
    return r


def _no_knn(monkeypatch) -> None:
    """Make every kNN search fail: whatever still works after this was read from the cache."""
    def refuse(*args, **kwargs):
        raise AssertionError("kNN search ran on a cache hit")

    monkeypatch.setattr(mmrec_parts, "semantic_graph", refuse)
    monkeypatch.setattr(graph_knn, "semantic_knn", refuse)


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    a, b = a.coalesce(), b.coalesce()
    return a.shape == b.shape and torch.equal(a.indices(), b.indices()) and torch.equal(a.values(), b.values())


def _dense_knn_graph(features: torch.Tensor, k: int) -> torch.Tensor:
    """Plain reference: top-k cosine neighbours (self included) with unit values, D^-1/2 S D^-1/2."""
    unit = features / features.norm(dim=1, keepdim=True)
    top = (unit @ unit.T).topk(k, dim=1).indices
    s = torch.zeros(len(features), len(features)).scatter_(1, top, 1.0)
    d = s.sum(1).pow(-0.5)
    return d[:, None] * s * d[None, :]


def test_cached_knn_graph_equals_a_fresh_build_and_a_hit_does_no_knn_work(tmp_path, monkeypatch):
    features = _modalities()["image"]
    built = cached_normalized_knn_graph(features, 4, tmp_path)
    assert _same(built, normalized_knn_graph(features, 4))
    torch.testing.assert_close(built.to_dense(), _dense_knn_graph(features, 4))
    files = sorted(p.name for p in tmp_path.glob("knn_graph-*.pt"))
    assert len(files) == 1 and (tmp_path / f"{files[0]}.meta.json").is_file()

    _no_knn(monkeypatch)
    assert _same(cached_normalized_knn_graph(features.clone(), 4, tmp_path), built)
    # another k, or other features, is another entry: built again (here: refused)
    with pytest.raises(AssertionError, match="cache hit"):
        cached_normalized_knn_graph(features, 5, tmp_path)
    changed = features.clone()
    changed[0, 0] += 1e-3
    with pytest.raises(AssertionError, match="cache hit"):
        cached_normalized_knn_graph(changed, 4, tmp_path)


def test_a_garbled_cache_entry_is_rebuilt(tmp_path):
    features = _modalities()["text"]
    built = cached_normalized_knn_graph(features, 3, tmp_path)
    (entry,) = tmp_path.glob("knn_graph-*.pt")
    entry.write_bytes(b"not a torch file")
    assert _same(cached_normalized_knn_graph(features, 3, tmp_path), built)


def _freedom(cache_dir, modalities=None) -> FREEDOM:
    return FREEDOM(modalities or _modalities(), _interactions(), U, I, d=8, knn_k=4, graph_cache_dir=cache_dir)


def test_freedom_reads_its_mixture_of_kNN_graphs_from_the_cache(tmp_path, monkeypatch):
    fresh = _freedom(None).item_item.to_dense()
    _freedom(tmp_path)
    assert len(list(tmp_path.glob("knn_graph-*.pt"))) == 2  # one per modality
    _no_knn(monkeypatch)
    cached = _freedom(tmp_path).item_item.to_dense()
    assert torch.equal(cached, fresh)
    feats = _modalities()
    expected = 0.1 * _dense_knn_graph(feats["image"], 4) + 0.9 * _dense_knn_graph(feats["text"], 4)
    torch.testing.assert_close(cached, expected)
    with pytest.raises(AssertionError, match="cache hit"):  # new features: no stale graph
        _freedom(tmp_path, _modalities(seed=4))


def test_the_trainer_hands_freedom_the_datasets_graph_cache(tmp_path):
    cfg = OmegaConf.create({"model": {"_target_": "mllmrec.models.FREEDOM", "item_graph": "own"}, "seed": 1})
    datamodule = SimpleNamespace(
        cache_dir=tmp_path / "baby", item_modalities=lambda names: {n: _modalities()[n] for n in names},
        data=SimpleNamespace(train=_interactions(), n_users=U, n_items=I))
    inputs = model_inputs(cfg, datamodule)
    assert inputs["graph_cache_dir"] == tmp_path / "baby" / "graphs"
    FREEDOM(**inputs, d=8, knn_k=4)
    assert len(list((tmp_path / "baby" / "graphs").glob("knn_graph-*.pt"))) == 2
