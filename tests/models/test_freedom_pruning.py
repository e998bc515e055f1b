"""FREEDOM: degree-sensitive edge pruning keeps the documented fraction, favours low-degree edges, is
seeded by (seed, epoch); the item-item graph is MMRec's image/text kNN mixture or, with
item_graph=refined, the refined one; each modality has its own auxiliary BPR loss."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from mllmrec.graph import normalize_adjacency, refined_item_graph
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


def modalities(n_items: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {"text": torch.randn(n_items, 12, generator=g), "image": torch.randn(n_items, 20, generator=g)}


def make_model(r: sp.csr_matrix, refine: bool = False, **kwargs) -> FREEDOM:
    feats = modalities(r.shape[1])
    graph = refined_item_graph(feats["text"], r, k_s=4, alpha=0.0, k_c=3) if refine else "own"
    return FREEDOM(item_modalities=feats, item_graph=graph, train_interactions=r,
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


def _dense_knn_normalised(features: torch.Tensor, k: int) -> torch.Tensor:
    """MMRec's get_knn_adj_mat + compute_normalized_laplacian, densely (a small reference)."""
    unit = features / features.norm(dim=-1, keepdim=True)
    top = (unit @ unit.T).topk(k, dim=-1).indices
    adj = torch.zeros(len(features), len(features)).scatter_(1, top, 1.0)
    d = (adj.sum(1) + 1e-7).rsqrt()
    return d[:, None] * adj * d[None, :]


@pytest.mark.parametrize("refine", [False, True])
def test_item_graph_is_the_modality_mixture_or_refined(refine):
    r = interactions()
    model = make_model(r, refine=refine)
    feats = modalities(r.shape[1])
    if refine:
        expected = normalize_adjacency(refined_item_graph(feats["text"], r, k_s=4, alpha=0.0, k_c=3)).to_dense()
    else:  # MMRec: mm_adj = 0.1 * image_adj + 0.9 * text_adj
        expected = 0.1 * _dense_knn_normalised(feats["image"], 4) + 0.9 * _dense_knn_normalised(feats["text"], 4)
    torch.testing.assert_close(model.item_item.to_dense(), expected)
    assert model.hparams["item_graph"] == ("refined" if refine else "own")


def test_loss_adds_one_bpr_loss_per_modality_weighted_by_reg_weight():
    r = interactions()
    users, items = bipartite_edges(r)
    u, pos, neg = users[:16], items[:16], items.flip(0)[:16]
    base = make_model(r, reg_weight=0.0, dropout=0.0)
    torch.manual_seed(0)
    weighted = make_model(r, reg_weight=0.5, dropout=0.0)
    weighted.load_state_dict(base.state_dict())
    user_out, _ = base.propagated(base.full_graph)
    e_u = user_out[u]
    expected_aux = 0.0
    for name in ("text", "image"):  # MMRec: reg_weight * (mf_t_loss + mf_v_loss)
        proj = base.feature_projections[name]
        f = base.feature_tables[name]
        expected_aux += -torch.nn.functional.logsigmoid(
            (e_u * proj(f[pos])).sum(-1) - (e_u * proj(f[neg])).sum(-1)).mean()
    torch.testing.assert_close(weighted.loss(u, pos, neg), base.loss(u, pos, neg) + 0.5 * expected_aux)
    weighted.loss(u, pos, neg).backward()
    for name in ("text", "image"):
        assert weighted.feature_projections[name].weight.grad.abs().sum() > 0
        assert weighted.feature_tables[name].grad.abs().sum() > 0  # fine-tuned, as in MMRec


def test_single_modality_uses_its_graph_alone():
    r = interactions()
    model = make_model(r, modalities=["text"])
    expected = _dense_knn_normalised(modalities(r.shape[1])["text"], 4)
    torch.testing.assert_close(model.item_item.to_dense(), expected)
    assert set(model.feature_tables) == {"text"}


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
