"""mllmrec.graph.propagation: D^-1/2 A D^-1/2 (Eq. 11) and layer-sum / layer-mean propagation (Eq. 12)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mllmrec.graph import SparseOperator, normalize_adjacency, propagate, refined_item_graph, semantic_graph
from mllmrec.models.ui_graph import bipartite_adjacency, bipartite_edges

from .references import assert_graph_format, dense, random_features, random_interactions, reference_normalize


def test_normalize_adjacency_matches_dense_reference():
    features = random_features(30, 6, seed=15)
    interactions = random_interactions(40, 30, 0.15, seed=15)
    adj = refined_item_graph(features, interactions, 4, 0.2, 3)
    normalized = normalize_adjacency(adj)
    assert_graph_format(normalized, 30)
    np.testing.assert_allclose(dense(normalized), reference_normalize(dense(adj)), rtol=1e-6)
    # CSR input gives the same result
    np.testing.assert_allclose(dense(normalize_adjacency(adj.to_sparse_csr())), dense(normalized), rtol=1e-6)


def test_normalize_adjacency_keeps_degree_zero_rows_zero():
    # row 1 has no out-edges but is pointed to by row 0; row 3 is fully isolated
    matrix = np.array([[1.0, 2.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [0.5, 0.0, 0.5, 0.0], [0.0, 0.0, 0.0, 0.0]])
    normalized = dense(normalize_adjacency(torch.from_numpy(matrix).float().to_sparse()))
    assert np.isfinite(normalized).all()
    assert not normalized[1].any() and not normalized[3].any()
    assert normalized[0, 1] == 0.0  # D^-1/2 of a degree-0 target is taken as 0, not inf
    np.testing.assert_allclose(normalized, reference_normalize(matrix), rtol=1e-6)


@pytest.mark.parametrize("layers", [0, 1, 2])
@pytest.mark.parametrize("layout", ["coo", "csr"])
def test_propagate_matches_dense_layer_sum(layers, layout):
    features = random_features(35, 6, seed=16)
    interactions = random_interactions(50, 35, 0.1, seed=16)
    adj_norm = normalize_adjacency(refined_item_graph(features, interactions, 5, 0.1, 4))
    x = random_features(35, 8, seed=17)
    a = dense(adj_norm)
    expected = sum(np.linalg.matrix_power(a, layer) @ x.double().numpy() for layer in range(layers + 1))
    sparse_adj = adj_norm.to_sparse_csr() if layout == "csr" else adj_norm
    out = propagate(sparse_adj, x, layers)
    assert out.shape == x.shape and out.dtype == x.dtype
    np.testing.assert_allclose(out.double().numpy(), expected, rtol=1e-5, atol=1e-6)


def test_propagate_is_differentiable_and_leaves_its_input_alone():
    adj_norm = normalize_adjacency(semantic_graph(random_features(20, 4, seed=18), 3, 0.0))
    x = random_features(20, 5, seed=19).requires_grad_()
    original = x.detach().clone()
    propagate(adj_norm, x, 2).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert torch.equal(x.detach(), original)
    assert propagate(adj_norm, x, 0) is not x


# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("reduce", ["sum", "mean"])
@pytest.mark.parametrize("layers", [0, 1, 3])
def test_propagate_combines_layers_by_sum_or_mean(reduce, layers):
    adj_norm = normalize_adjacency(semantic_graph(random_features(25, 4, seed=30), 4, 0.0))
    x = random_features(25, 6, seed=31)
    a = dense(adj_norm)
    total = sum(np.linalg.matrix_power(a, layer) @ x.double().numpy() for layer in range(layers + 1))
    expected = total / (layers + 1) if reduce == "mean" else total
    out = propagate(adj_norm, x, layers, reduce=reduce)
    np.testing.assert_allclose(out.double().numpy(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("reduce", ["sum", "mean"])
def test_propagate_gives_the_same_result_on_a_sparse_tensor_and_a_sparse_operator(reduce):
    adj_norm = normalize_adjacency(refined_item_graph(random_features(30, 5, seed=32),
                                                      random_interactions(40, 30, 0.1, seed=32), 4, 0.1, 3))
    x = random_features(30, 7, seed=33).requires_grad_()
    by_tensor = propagate(adj_norm, x, 2, reduce)
    (grad_tensor,) = torch.autograd.grad(by_tensor.square().sum(), x)
    by_operator = propagate(SparseOperator(adj_norm), x, 2, reduce)
    (grad_operator,) = torch.autograd.grad(by_operator.square().sum(), x)
    torch.testing.assert_close(by_operator, by_tensor, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(grad_operator, grad_tensor, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("n_users", "n_items", "density", "seed"), [(40, 25, 0.1, 0), (300, 120, 0.02, 1)])
def test_normalized_bipartite_graph_is_bitwise_lightgcns_formula(n_users, n_items, density, seed):
    # the user-item graph goes through the same normalize_adjacency as the item graph; its values must
    # stay bit for bit what LightGCN/FREEDOM computed before (1/sqrt(d_u) * 1/sqrt(d_i), float32) so
    # that no model's numbers move
    r = random_interactions(n_users, n_items, density, seed=seed)
    users, items = bipartite_edges(r)
    adj = normalize_adjacency(bipartite_adjacency(users, items, n_users, n_items))
    user_degree = torch.bincount(users, minlength=n_users).to(torch.float32)
    item_degree = torch.bincount(items, minlength=n_items).to(torch.float32)
    values = user_degree[users].rsqrt() * item_degree[items].rsqrt()
    expected = torch.sparse_coo_tensor(
        torch.stack([torch.cat([users, items + n_users]), torch.cat([items + n_users, users])]),
        torch.cat([values, values]), (n_users + n_items,) * 2, check_invariants=True,
    ).coalesce()
    assert torch.equal(adj.indices(), expected.indices())
    assert torch.equal(adj.values(), expected.values())
