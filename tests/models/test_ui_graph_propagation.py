"""User-item graph: normalisation and LightGCN propagation against dense references on tiny graphs."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from mllmrec.graph import SparseOperator, normalize_adjacency, propagate
from mllmrec.models import LightGCN
from mllmrec.models.ui_graph import bipartite_adjacency, bipartite_edges


def random_interactions(n_users: int, n_items: int, density: float, seed: int) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    dense = (rng.random((n_users, n_items)) < density).astype(np.float32)
    dense[0] = 0.0  # an isolated user: its row must stay zero, not NaN
    dense[1, 0] = 3.0  # a rating value: only the presence of an entry counts
    return sp.csr_matrix(dense)


def dense_normalized(r: sp.csr_matrix) -> torch.Tensor:
    """Reference D^-1/2 A D^-1/2 of A = [[0, R], [R^T, 0]] (binary), computed densely."""
    binary = torch.from_numpy((r.toarray() != 0).astype(np.float64))
    u, i = binary.shape
    a = torch.zeros(u + i, u + i, dtype=torch.float64)
    a[:u, u:] = binary
    a[u:, :u] = binary.T
    degree = a.sum(1)
    inv = torch.where(degree > 0, degree.rsqrt(), torch.zeros_like(degree))
    return inv[:, None] * a * inv[None, :]


def dense_lightgcn(a_hat: torch.Tensor, x: torch.Tensor, layers: int) -> torch.Tensor:
    outs, h = [x], x
    for _ in range(layers):
        h = a_hat @ h
        outs.append(h)
    return torch.stack(outs).mean(0)


@pytest.mark.parametrize(("n_users", "n_items", "density", "seed"), [(6, 4, 0.5, 0), (13, 9, 0.3, 1), (30, 17, 0.15, 2)])
def test_normalized_adjacency_matches_dense_reference(n_users, n_items, density, seed):
    r = random_interactions(n_users, n_items, density, seed)
    users, items = bipartite_edges(r)
    adj = normalize_adjacency(bipartite_adjacency(users, items, n_users, n_items))
    assert adj._nnz() == 2 * r.nnz
    torch.testing.assert_close(adj.to_dense().double(), dense_normalized(r), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("layers", [0, 1, 3])
@pytest.mark.parametrize(("n_users", "n_items", "seed"), [(7, 5, 3), (25, 12, 4)])
def test_lightgcn_propagation_matches_dense_reference(layers, n_users, n_items, seed):
    r = random_interactions(n_users, n_items, 0.35, seed)
    users, items = bipartite_edges(r)
    op = SparseOperator(normalize_adjacency(bipartite_adjacency(users, items, n_users, n_items)))
    x = torch.randn(n_users + n_items, 8, generator=torch.Generator().manual_seed(seed))
    expected = dense_lightgcn(dense_normalized(r), x.double(), layers)
    torch.testing.assert_close(propagate(op, x, layers, "mean").double(), expected, rtol=1e-5, atol=1e-6)
    total = propagate(op, x, layers, "sum").double()
    torch.testing.assert_close(total, expected * (layers + 1), rtol=1e-5, atol=1e-6)


def test_sparse_operator_gradient_uses_the_transpose():
    # a non-symmetric matrix: a backward pass that reused M instead of M^T would give other gradients
    g = torch.Generator().manual_seed(0)
    dense = torch.randn(6, 6, generator=g) * (torch.rand(6, 6, generator=g) < 0.5)
    op = SparseOperator(dense.to_sparse())
    x = torch.randn(6, 3, generator=g, requires_grad=True)
    weights = torch.randn(6, 3, generator=g)
    (op(x) * weights).sum().backward()
    x_ref = x.detach().clone().requires_grad_(True)
    ((dense @ x_ref) * weights).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad)
    torch.testing.assert_close(op.to_dense(), dense)


def test_lightgcn_model_scores_equal_dense_reference():
    r = random_interactions(9, 6, 0.4, 5)
    torch.manual_seed(0)
    model = LightGCN(train_interactions=r, n_users=9, n_items=6, d=4, layers=3)
    model.eval()
    with torch.no_grad():
        model.prepare_eval()
        scores = model.full_scores(torch.arange(9))
        ego = torch.cat([model.user_embedding.weight, model.item_embedding.weight]).double()
        out = dense_lightgcn(dense_normalized(r), ego, 3)
    torch.testing.assert_close(scores.double(), out[:9] @ out[9:].T, rtol=1e-5, atol=1e-6)


def test_lightgcn_loss_trains_both_tables():
    r = random_interactions(9, 6, 0.4, 6)
    model = LightGCN(train_interactions=r, n_users=9, n_items=6, d=4, layers=2)
    users, items = bipartite_edges(r)
    loss = model.loss(users, items, torch.zeros_like(items))
    loss.backward()
    assert model.user_embedding.weight.grad.abs().sum() > 0
    assert model.item_embedding.weight.grad.abs().sum() > 0


def test_edges_reject_dense_input_and_out_of_range_ids():
    with pytest.raises(ValueError, match="scipy.sparse"):
        bipartite_edges(np.ones((2, 2)))
    with pytest.raises(ValueError, match="out of range"):
        bipartite_adjacency(torch.tensor([0, 2]), torch.tensor([0, 0]), 2, 1)
