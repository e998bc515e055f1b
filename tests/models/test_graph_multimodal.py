"""LATTICE and LGMRec against dense re-statements of MMRec's formulas on small graphs, and the +GR
switch (model.item_graph=refined) for FREEDOM, LATTICE, LGMRec and GUME: the switched model's item graph is
the normalised refined graph, and its loss depends on that graph."""

from __future__ import annotations

import pytest
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from interaction_fixtures import random_interactions

from mllmrec.graph import normalize_adjacency, refined_item_graph
from mllmrec.models import FREEDOM, GUME, LATTICE, LGMRec
from mllmrec.models.lattice import self_loop_random_walk
from mllmrec.models.lgmrec import hypergraph_rounds, infonce_sum
from mllmrec.models.ui_graph import bipartite_edges

U, I = 25, 18  # noqa: E741  (users, items: the paper's U and I)


def _interactions(seed: int = 0) -> sp.csr_matrix:
    return random_interactions(U, I, seed)


def _modalities() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    return {"image": torch.randn(I, 9, generator=g), "text": torch.randn(I, 5, generator=g)}


# ------------------------------------------------------------------ dense MMRec (utils/utils.py)
def _build_sim(x):
    n = x / x.norm(dim=-1, keepdim=True)
    return n @ n.T


def _knn(adj, k):
    val, ind = adj.topk(k, dim=-1)
    return torch.zeros_like(adj).scatter_(-1, ind, val)


def _laplacian(adj):
    d = adj.sum(-1).pow(-0.5)
    d[torch.isinf(d)] = 0.0
    return torch.diagflat(d) @ adj @ torch.diagflat(d)


def _dense(edges):
    rows, cols, values = edges
    return torch.zeros(I, I).index_put_((rows, cols), values, accumulate=True)


def test_lattice_item_graph_matches_mmrecs_dense_formula():
    feats = _modalities()
    model = LATTICE(feats, _interactions(), U, I, d=6, knn_k=4, lambda_coeff=0.9)
    with torch.no_grad():
        model.modal_weight.copy_(torch.tensor([0.2, 1.1]))
    w = torch.softmax(model.modal_weight.detach(), 0)
    learned = {n: _knn(_build_sim(model.feature_projections[n](model.feature_tables[n]).detach()), 4) for n in feats}
    original = {n: _laplacian(_knn(_build_sim(feats[n]), 4)) for n in feats}
    expected = 0.1 * _laplacian(w[0] * learned["image"] + w[1] * learned["text"]) \
        + 0.9 * (w[0] * original["image"] + w[1] * original["text"])
    torch.testing.assert_close(_dense(tuple(e.detach() for e in model.item_edges())), expected)


def test_lattice_learned_graph_gets_gradients_in_the_first_batch_only():
    r = _interactions()
    model = LATTICE(_modalities(), r, U, I, d=6, knn_k=4)
    users, items = bipartite_edges(r)
    batch = users[:8], items[:8], items.flip(0)[:8]
    model.loss(*batch).backward()
    assert model.modal_weight.grad is not None and model.modal_weight.grad.abs().sum() > 0
    model.zero_grad()
    model.loss(*batch).backward()  # second batch of the epoch: the graph is reused, detached
    assert model.modal_weight.grad is None or model.modal_weight.grad.abs().sum() == 0


def test_lattice_user_item_graph_is_row_normalised_with_self_loops():
    r = _interactions()
    users, items = bipartite_edges(r)
    dense = self_loop_random_walk(users, items, U, I).to_dense()
    a = torch.zeros(U + I, U + I)
    a[:U, U:] = torch.from_numpy(r.toarray())
    a[U:, :U] = a[:U, U:].T
    a = a + torch.eye(U + I)
    torch.testing.assert_close(dense, a / a.sum(1, keepdim=True))


def test_lgmrec_pieces_match_mmrec():
    g = torch.Generator().manual_seed(4)
    ih, uh, emb = torch.rand(I, 3, generator=g), torch.rand(U, 3, generator=g), torch.randn(I, 4, generator=g)
    users, items = hypergraph_rounds(ih, uh, emb, 2)
    lat = ih.T @ (ih @ (ih.T @ emb))
    torch.testing.assert_close(items, ih @ lat)
    torch.testing.assert_close(users, uh @ lat)
    a, p, c = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g), torch.randn(7, 4, generator=g)
    an, pn, cn = F.normalize(a), F.normalize(p), F.normalize(c)
    expected = -(((an * pn).sum(1) / 0.2) - torch.logsumexp(an @ cn.T / 0.2, dim=1)).sum()
    torch.testing.assert_close(infonce_sum(a, p, c, 0.2), expected)


def test_lgmrec_trains_a_step_and_user_modality_features_are_history_means():
    r = _interactions()
    feats = _modalities()
    model = LGMRec(feats, r, U, I, d=6, mm_layers=0)
    item_feats = feats["text"] @ model.projections["text"]
    dense_r = torch.from_numpy(r.toarray()).float()
    expected_users = dense_r @ item_feats / dense_r.sum(1, keepdim=True)
    torch.testing.assert_close(model.modality("text")[:U], expected_users)
    users, items = bipartite_edges(r)
    loss = model.loss(users[:8], items[:8], items.flip(0)[:8])
    loss.backward()
    assert torch.isfinite(loss) and model.hyperedges["image"].grad.abs().sum() > 0


# ------------------------------------------------------------------ +GR
def _build(cls, graph):
    torch.manual_seed(0)
    kwargs = {"dropout": 0.0} if cls is FREEDOM else {}
    if cls is LGMRec:
        kwargs["keep_rate"] = 1.0
    return cls(_modalities(), _interactions(), U, I, item_graph=graph, d=6, **kwargs)


def _model_item_graph(model) -> torch.Tensor:
    if isinstance(model, FREEDOM):
        return model.item_item.to_dense()
    if isinstance(model, LATTICE):
        return _dense((model.frozen_rows_0, model.frozen_cols_0, model.frozen_values_0))
    if isinstance(model, GUME):  # the refined graph replaces both modality graphs
        torch.testing.assert_close(model.item_graphs["text"].to_dense(), model.item_graphs["image"].to_dense())
        return model.item_graphs["image"].to_dense()
    return model.item_item.to_dense()


@pytest.mark.parametrize("cls", [FREEDOM, LATTICE, LGMRec, GUME])
def test_refined_switch_puts_the_refined_graph_in_the_loss(cls):
    r = _interactions()
    refined = refined_item_graph(_modalities()["text"], r, k_s=3, alpha=0.0, k_c=2)
    model = _build(cls, refined)
    assert model.hparams["item_graph"] == "refined"
    torch.testing.assert_close(_model_item_graph(model), normalize_adjacency(refined).to_dense())
    # another refined graph, everything else equal (same seed): the loss changes, so it is used
    other = refined_item_graph(_modalities()["image"], r, k_s=3, alpha=0.0, k_c=0)
    users, items = bipartite_edges(r)
    batch = users[:10], items[:10], items.flip(0)[:10]
    torch.manual_seed(1)
    a = model.loss(*batch)
    torch.manual_seed(1)
    b = _build(cls, other).loss(*batch)
    assert not torch.isclose(a, b)
    own = _build(cls, "own")
    assert own.hparams["item_graph"] == "own"


def test_refined_switch_without_a_graph_is_an_error():
    with pytest.raises(ValueError, match="item_graph"):
        _build(FREEDOM, "refined")
    with pytest.raises(ValueError, match="item_graph must be one of"):
        _build(LATTICE, "knn")

