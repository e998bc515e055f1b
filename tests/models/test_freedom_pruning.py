"""FREEDOM: degree-sensitive edge pruning keeps the documented fraction, favours low-degree edges, is
seeded by (seed, epoch); the item-item graph is the kNN graph or, with refine_graph, the refined one."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from mllmrec.graph import normalize_adjacency, refined_item_graph, semantic_graph
from mllmrec.models import FREEDOM, degree_sensitive_pruning
from mllmrec.models.freedom import _epoch_generator, edge_keep_count
from mllmrec.models.ui_graph import bipartite_edges


def interactions(n_users: int = 40, n_items: int = 25, seed: int = 0) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    # skewed item popularity, so degrees differ a lot
    p = rng.gamma(0.5, 1.0, n_items)
    rows = []
    for u in range(n_users):
        k = int(rng.integers(2, 9))
        rows += [(u, i) for i in rng.choice(n_items, size=k, replace=False, p=p / p.sum())]
    u, i = np.array(rows).T
    return sp.csr_matrix((np.ones(len(u), np.float32), (u, i)), shape=(n_users, n_items))


def make_model(r: sp.csr_matrix, **kwargs) -> FREEDOM:
    features = torch.randn(r.shape[1], 12, generator=torch.Generator().manual_seed(1))
    graph = refined_item_graph(features, r, k_s=4, alpha=0.0, k_c=3)
    return FREEDOM(item_features=features, item_graph=graph, train_interactions=r,
                   n_users=r.shape[0], n_items=r.shape[1], d=8, knn_k=4, **kwargs)


@pytest.mark.parametrize("n_edges", [10, 99, 1234])
@pytest.mark.parametrize("dropout", [0.0, 0.5, 0.8, 0.9])
def test_pruning_keeps_the_documented_fraction_of_distinct_edges(n_edges, dropout):
    g = torch.Generator().manual_seed(n_edges)
    users = torch.randint(0, 50, (n_edges,), generator=g)
    items = torch.randint(0, 30, (n_edges,), generator=g)
    keep = degree_sensitive_pruning(users, items, 50, 30, dropout, _epoch_generator(0, 0))
    exact = math.floor(Fraction(n_edges) * (1 - Fraction(str(dropout))))  # no float round-off
    assert keep.numel() == exact == edge_keep_count(n_edges, dropout)
    assert keep.unique().numel() == keep.numel()
    assert int(keep.min()) >= 0 and int(keep.max()) < n_edges


def test_pruning_prefers_edges_between_low_degree_nodes():
    # edge 0 joins two degree-1 nodes (weight 1); edges 1..40 join a hub user and a hub item
    # (weight 1/sqrt(40 * 40) = 1/40): keeping 20% of 41 edges, edge 0 survives far more often
    users = torch.tensor([0] + [1] * 40)
    items = torch.tensor([0] + [1] * 40)  # duplicates are fine for the sampler: it samples edge slots
    kept_light, kept_heavy = 0, 0
    for epoch in range(200):
        keep = degree_sensitive_pruning(users, items, 2, 2, 0.8, _epoch_generator(7, epoch))
        kept_light += int((keep == 0).sum())
        kept_heavy += int((keep == 5).sum())
    assert kept_light > 150  # inclusion probability of the weight-1 edge is about 0.8
    assert kept_heavy < 60   # a weight-1/40 edge: about 0.2 x 200 = 40 expected


def test_pruned_graph_is_renormalised_on_kept_degrees_and_seeded_by_epoch():
    r = interactions()
    model = make_model(r, dropout=0.8, seed=3)
    n_edges = r.nnz
    pruned = model.prune(epoch=0)
    assert pruned.nnz == 2 * math.floor(Fraction(n_edges) * Fraction(1, 5))
    adj = pruned.forward_csr.to_dense()
    u = model.n_users
    kept = adj[:u, u:] > 0
    deg_u, deg_i = kept.sum(1).float(), kept.sum(0).float()
    expected = kept.float() * (deg_u[:, None].clamp_min(1) * deg_i[None, :].clamp_min(1)).rsqrt()
    torch.testing.assert_close(adj[:u, u:], expected)
    torch.testing.assert_close(adj[u:, :u], expected.T)
    # same (seed, epoch) -> same graph; another epoch -> another graph
    torch.testing.assert_close(model.prune(epoch=0).forward_csr.to_dense(), adj)
    assert not torch.equal(model.prune(epoch=1).forward_csr.to_dense(), adj)
    # evaluation uses the full graph
    assert model.full_graph.nnz == 2 * n_edges


def test_no_pruning_when_dropout_is_zero():
    model = make_model(interactions(), dropout=0.0)
    assert model.prune(epoch=0) is model.full_graph


@pytest.mark.parametrize("refine", [False, True])
def test_item_graph_is_knn_or_refined(refine):
    r = interactions()
    model = make_model(r, refine_graph=refine)
    features = model.item_feature_table.detach()
    if refine:
        expected = refined_item_graph(features, r, k_s=4, alpha=0.0, k_c=3)
    else:
        expected = semantic_graph(features, 4, alpha=-1.0)
        assert expected._nnz() == r.shape[1] * 4  # plain kNN: every row keeps exactly K edges
    torch.testing.assert_close(model.item_item.to_dense(), normalize_adjacency(expected).to_dense())


def test_loss_uses_features_only_through_the_regulariser():
    r = interactions()
    users, items = bipartite_edges(r)
    for reg_weight, expect_grad in ((0.0, False), (1e-3, True)):
        model = make_model(r, reg_weight=reg_weight)
        model.loss(users[:16], items[:16], items.flip(0)[:16]).backward()
        got = model.feature_projection.weight.grad
        assert (got is not None and bool(got.abs().sum() > 0)) == expect_grad
        assert model.item_embedding.weight.grad.abs().sum() > 0


def test_rejects_bad_dropout():
    with pytest.raises(ValueError, match="dropout"):
        make_model(interactions(), dropout=1.0)


def test_epoch_hook_prunes_and_keeps_the_base_hook(monkeypatch):
    from mllmrec.models import Recommender

    calls = []
    monkeypatch.setattr(Recommender, "on_train_epoch_start", lambda self: calls.append("base"))
    model = make_model(interactions(), dropout=0.5)
    model.on_train_epoch_start()
    assert calls == ["base"]  # the base class hands the epoch to the datamodule (seeding, DDP)
    assert model.pruned_graph is not None and model.pruned_graph.nnz < model.full_graph.nnz
