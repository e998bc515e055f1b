"""Tests of the refined item-item graph (Section 4.2, Eq. 5-12) against dense re-implementations.

The references below are written straight from the equations with dense float64 numpy arrays and
Python sorting, with the conventions the module documents: the item itself ranks first in its own
semantic row, ties go to the lower item id, an all-zero feature row has cosine 0 with everything.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from mllmrec import graph
from mllmrec.graph import (
    cached_refined_item_graph,
    cooccurrence_graph,
    graph_statistics,
    normalize_adjacency,
    propagate,
    refined_item_graph,
    semantic_graph,
)

# ----------------------------------------------------------------------------------------------------
# dense references


def dense_cosine(features: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    x = features.double().numpy()
    norm = np.linalg.norm(x, axis=1)
    nonzero = norm > 0
    unit = np.where(nonzero[:, None], x / np.where(nonzero, norm, 1.0)[:, None], 0.0)
    # elementwise products summed along one axis: the same summation order for every pair, so
    # identical items get bitwise-identical similarities (a BLAS matmul does not promise that)
    return (unit[:, None, :] * unit[None, :, :]).sum(axis=-1), nonzero


def reference_semantic(features: torch.Tensor, k: int, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Dense S~ (Eq. 6-7) and the dense matrix of top-K similarities before alpha pruning (NaN = not kNN)."""
    sims, nonzero = dense_cosine(features)
    n = sims.shape[0]
    adjacency = np.zeros((n, n))
    knn = np.full((n, n), np.nan)
    for a in range(n):

        def rank(b: int, a: int = a) -> tuple[float, int]:
            self_first = b == a and nonzero[a]
            return (-math.inf if self_first else -sims[a, b], b)

        for b in sorted(range(n), key=rank)[: min(k, n)]:
            value = 1.0 if (b == a and nonzero[a]) else sims[a, b]
            knn[a, b] = value
            if value >= alpha:
                adjacency[a, b] = 1.0
    return adjacency, knn


def reference_jaccard(interactions: sp.spmatrix) -> np.ndarray:
    binary = (interactions.toarray() != 0).astype(np.float64)
    shared = binary.T @ binary
    degree = binary.sum(axis=0)
    union = degree[:, None] + degree[None, :] - shared
    return np.divide(shared, union, out=np.zeros_like(shared), where=union > 0)


def reference_cooccurrence(interactions: sp.spmatrix, k: int) -> np.ndarray:
    """Dense C~ (Eq. 8-9): per row the top-K positive Jaccard scores, self excluded, lower id on ties."""
    jaccard = reference_jaccard(interactions)
    n = jaccard.shape[0]
    adjacency = np.zeros((n, n))
    for a in range(n):
        candidates = [b for b in range(n) if b != a and jaccard[a, b] > 0]
        for b in sorted(candidates, key=lambda b: (-jaccard[a, b], b))[:k]:
            adjacency[a, b] = jaccard[a, b]
    return adjacency


def random_features(n: int, d: int, seed: int) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def random_interactions(users: int, items: int, density: float, seed: int) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    return sp.random(users, items, density=density, format="csr", random_state=rng, data_rvs=np.ones)


def dense(adj: torch.Tensor) -> np.ndarray:
    return adj.to_dense().double().numpy()


def edges(adj: torch.Tensor) -> set[tuple[int, int]]:
    return set(map(tuple, adj.coalesce().indices().T.tolist()))


def assert_graph_format(adj: torch.Tensor, n: int, device: torch.device | str = "cpu") -> None:
    assert adj.layout == torch.sparse_coo
    assert adj.is_coalesced()
    assert adj.dtype == torch.float32
    assert adj.shape == (n, n)
    assert adj.device == torch.device(device)


# ----------------------------------------------------------------------------------------------------
# semantic graph (Eq. 6-7)


@pytest.mark.parametrize(
    ("n", "d", "k", "alpha", "chunk_size"),
    [
        (12, 4, 3, 0.0, 5),
        (40, 8, 5, 0.3, 7),
        (60, 16, 10, -0.2, 64),
        (97, 6, 4, 0.5, 1),
        (50, 3, 8, -1.0, 13),
        (150, 32, 10, 0.1, 32),
    ],
)
def test_semantic_graph_matches_dense_reference(n, d, k, alpha, chunk_size):
    features = random_features(n, d, seed=n + d)
    adj = semantic_graph(features, k, alpha, chunk_size=chunk_size)
    expected, _ = reference_semantic(features, k, alpha)
    assert_graph_format(adj, n)
    np.testing.assert_array_equal(dense(adj), expected)


def test_semantic_graph_every_item_keeps_a_binary_self_loop():
    features = random_features(80, 8, seed=1)
    adj = semantic_graph(features, k=4, alpha=0.2)
    assert torch.all(adj.values() == 1.0)
    assert {(a, a) for a in range(80)} <= edges(adj)


def test_semantic_graph_alpha_prunes_every_neighbour_but_the_self_loop():
    features = random_features(50, 8, seed=2)
    sims, _ = dense_cosine(features)
    off_diagonal_max = (sims - 2 * np.eye(50)).max()
    alpha = (off_diagonal_max + 1.0) / 2  # above every neighbour, below the self-similarity 1
    for threshold in (alpha, 1.0):
        adj = semantic_graph(features, k=10, alpha=threshold)
        assert edges(adj) == {(a, a) for a in range(50)}


def test_semantic_graph_ties_go_to_the_lower_item_id():
    # exact arithmetic: items 1-3 are copies of e2, item 0 is e1, item 4 is -e1 (cosine 0 / 1 / -1)
    features = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [0.0, 1.0], [-1.0, 0.0]])
    adj = semantic_graph(features, k=3, alpha=-1.0)
    # row 0: itself, then 1, 2, 3 tie at cosine 0 -> 1 and 2
    # row 3: itself first (even though 1 and 2 tie with it at 1), then the lower duplicates 1, 2
    expected = {(0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (1, 3), (2, 2), (2, 1), (2, 3)}
    expected |= {(3, 3), (3, 1), (3, 2), (4, 4), (4, 1), (4, 2)}
    assert edges(adj) == expected


def test_semantic_graph_with_many_duplicate_items_is_chunk_independent():
    base = random_features(6, 8, seed=3)
    rng = np.random.default_rng(3)
    features = torch.cat([base[rng.integers(0, 6, size=40)], random_features(30, 8, seed=4)])
    features = features[torch.from_numpy(rng.permutation(70))]
    expected, _ = reference_semantic(features, 5, 0.1)
    for chunk_size in (1, 3, 16, 70):
        adj = semantic_graph(features, k=5, alpha=0.1, chunk_size=chunk_size)
        np.testing.assert_array_equal(dense(adj), expected, err_msg=f"chunk_size={chunk_size}")


@pytest.mark.parametrize("chunk_size", [1, 2, 9, 33, 64, 1000])
def test_semantic_graph_does_not_depend_on_chunk_size(chunk_size):
    features = random_features(64, 12, seed=5)
    reference = semantic_graph(features, k=7, alpha=0.05, chunk_size=64)
    adj = semantic_graph(features, k=7, alpha=0.05, chunk_size=chunk_size)
    assert torch.equal(adj.indices(), reference.indices())


def test_semantic_graph_zero_feature_row_has_cosine_zero_with_everything():
    features = random_features(10, 4, seed=6)
    features[6] = 0.0
    sparse_rows = semantic_graph(features, k=4, alpha=0.01)
    assert {b for a, b in edges(sparse_rows) if a == 6} == set()
    assert {a for a, b in edges(sparse_rows) if b == 6} == set()
    # with alpha <= 0 a zero row links to the K lowest ids (all tie at 0), not to itself first
    permissive = semantic_graph(features, k=4, alpha=0.0)
    assert {b for a, b in edges(permissive) if a == 6} == {0, 1, 2, 3}
    np.testing.assert_array_equal(dense(permissive), reference_semantic(features, 4, 0.0)[0])


def test_semantic_graph_clamps_k_to_the_number_of_items():
    features = random_features(7, 3, seed=7)
    adj = semantic_graph(features, k=100, alpha=-1.0)
    assert edges(adj) == {(a, b) for a in range(7) for b in range(7)}
    np.testing.assert_array_equal(
        dense(semantic_graph(features, k=100, alpha=0.3)), reference_semantic(features, 7, 0.3)[0]
    )


def test_semantic_graph_accepts_float64_and_scaled_features():
    features = random_features(30, 5, seed=8)
    reference = semantic_graph(features, k=4, alpha=0.2)
    assert torch.equal(semantic_graph(features.double(), k=4, alpha=0.2).indices(), reference.indices())
    # cosine ignores the row scale, including scales that would overflow a naive float32 norm
    scaled = features * torch.logspace(-30, 30, 30).unsqueeze(1)
    assert torch.equal(semantic_graph(scaled, k=4, alpha=0.2).indices(), reference.indices())
    beyond_float32 = features.double() * torch.logspace(-300, 300, 30, dtype=torch.float64).unsqueeze(1)
    assert torch.equal(semantic_graph(beyond_float32, k=4, alpha=0.2).indices(), reference.indices())


def test_duplicate_representative_is_the_lowest_identical_row():
    rows = torch.tensor([[0.6, 0.8], [1.0, 0.0], [0.6, 0.8], [0.0, 0.0], [-0.0, 0.0], [0.6, 0.8000001], [1.0, 0.0]])
    assert graph._duplicate_representative(rows).tolist() == [0, 1, 0, 3, 3, 5, 1]


# ----------------------------------------------------------------------------------------------------
# co-occurrence graph (Eq. 8-9)


@pytest.mark.parametrize(
    ("users", "items", "density", "k", "chunk_size"),
    [
        (30, 12, 0.2, 3, 4),
        (50, 40, 0.1, 5, 7),
        (80, 60, 0.05, 10, 1),
        (20, 70, 0.15, 4, 4096),
        (200, 30, 0.3, 2, 11),
    ],
)
def test_cooccurrence_graph_matches_dense_reference(users, items, density, k, chunk_size):
    interactions = random_interactions(users, items, density, seed=users + items)
    adj = cooccurrence_graph(interactions, k, chunk_size=chunk_size)
    assert_graph_format(adj, items)
    np.testing.assert_allclose(dense(adj), reference_cooccurrence(interactions, k), rtol=1e-6, atol=0)
    assert edges(adj) == set(zip(*np.nonzero(reference_cooccurrence(interactions, k))))


def test_cooccurrence_graph_ties_go_to_the_lower_item_id():
    # item 0: users {0, 1}; items 1-3 share one user with it and have two users each: Jaccard 1/3 each
    # (listed highest item first, so the input order cannot be what picks the winners)
    pairs = [(1, 3), (5, 3), (0, 2), (4, 2), (0, 1), (3, 1), (0, 0), (1, 0)]
    users, items = zip(*pairs)
    interactions = sp.coo_matrix((np.ones(len(pairs)), (users, items)), shape=(6, 4))
    adj = cooccurrence_graph(interactions, k=2)
    assert {b for a, b in edges(adj) if a == 0} == {1, 2}
    np.testing.assert_allclose(dense(adj)[0], [0.0, 1 / 3, 1 / 3, 0.0], rtol=1e-6)


def test_cooccurrence_graph_keeps_items_with_identical_audiences():
    # items 0 and 1 have exactly the same users: Jaccard 1 (the authors' code drops such pairs)
    interactions = sp.csr_matrix(np.array([[1, 1, 0], [1, 1, 1], [0, 0, 1]]))
    adj = dense(cooccurrence_graph(interactions, k=1))
    assert adj[0, 1] == 1.0 and adj[1, 0] == 1.0


def test_cooccurrence_graph_item_without_training_users_is_isolated():
    interactions = random_interactions(40, 15, 0.2, seed=9).tolil()
    interactions[:, 6] = 0
    interactions = interactions.tocsr()
    adj = cooccurrence_graph(interactions, k=5)
    assert all(6 not in edge for edge in edges(adj))
    np.testing.assert_allclose(dense(adj), reference_cooccurrence(interactions, 5), rtol=1e-6)


def test_cooccurrence_graph_binarises_ratings_and_duplicates():
    interactions = random_interactions(30, 20, 0.2, seed=10)
    coo = interactions.tocoo()
    ratings = sp.coo_matrix(
        (np.concatenate([coo.data * 4, coo.data]), (np.tile(coo.row, 2), np.tile(coo.col, 2))), shape=coo.shape
    )  # every interaction twice, with rating 4 + 1
    from_ratings = cooccurrence_graph(ratings, k=3).to_dense()
    assert torch.equal(from_ratings, cooccurrence_graph(interactions, k=3).to_dense())
    assert from_ratings.max() <= 1.0


def test_cooccurrence_graph_clamps_k_to_the_number_of_items():
    interactions = random_interactions(30, 6, 0.5, seed=11)
    adj = cooccurrence_graph(interactions, k=100)
    np.testing.assert_allclose(dense(adj), reference_jaccard(interactions) * (1 - np.eye(6)), rtol=1e-6)


def test_cooccurrence_graph_with_a_user_of_every_item_in_small_blocks(monkeypatch):
    # one user interacted with everything: every row of R^T R is dense. Force tiny blocks so the
    # entry budget (not chunk_size) splits the rows, down to a single row per block.
    interactions = random_interactions(40, 25, 0.1, seed=12).tolil()
    interactions[0, :] = 1
    interactions = interactions.tocsr()
    monkeypatch.setattr(graph, "_COOCCURRENCE_BLOCK_ENTRIES", 30)
    adj = cooccurrence_graph(interactions, k=4, chunk_size=10)
    np.testing.assert_allclose(dense(adj), reference_cooccurrence(interactions, 4), rtol=1e-6)


@pytest.mark.parametrize("chunk_size", [1, 3, 16, 100])
def test_cooccurrence_graph_does_not_depend_on_chunk_size(chunk_size):
    interactions = random_interactions(60, 50, 0.08, seed=13)
    reference = cooccurrence_graph(interactions, k=6, chunk_size=50)
    adj = cooccurrence_graph(interactions, k=6, chunk_size=chunk_size)
    assert torch.equal(adj.indices(), reference.indices())
    assert torch.equal(adj.values(), reference.values())


def test_cooccurrence_blocks_respect_both_limits():
    bound = np.array([5, 5, 50, 1, 1, 1, 1, 1, 30, 0])
    blocks = graph._cooccurrence_blocks(bound, chunk_size=3, max_entries=10)
    assert blocks[0][0] == 0 and blocks[-1][1] == 10
    assert all(prev[1] == nxt[0] for prev, nxt in zip(blocks, blocks[1:]))
    for start, stop in blocks:
        assert 1 <= stop - start <= 3
        assert stop - start == 1 or bound[start:stop].sum() <= 10


# ----------------------------------------------------------------------------------------------------
# refined graph (Eq. 10)


@pytest.mark.parametrize(("n", "users", "k_s", "alpha", "k_c"), [(20, 30, 3, 0.2, 2), (45, 60, 6, -0.1, 5)])
def test_refined_item_graph_is_the_sum_of_both_directed_graphs(n, users, k_s, alpha, k_c):
    features = random_features(n, 6, seed=n)
    interactions = random_interactions(users, n, 0.1, seed=n)
    adj = refined_item_graph(features, interactions, k_s, alpha, k_c)
    expected = reference_semantic(features, k_s, alpha)[0] + reference_cooccurrence(interactions, k_c)
    assert_graph_format(adj, n)
    np.testing.assert_allclose(dense(adj), expected, rtol=1e-6)
    assert not np.array_equal(expected, expected.T)  # directed: nothing symmetrised


def test_refined_item_graph_without_cooccurrence_is_the_semantic_graph():
    features = random_features(25, 5, seed=14)
    interactions = random_interactions(30, 25, 0.2, seed=14)
    adj = refined_item_graph(features, interactions, k_s=4, alpha=0.1, k_c=0)
    semantic = semantic_graph(features, k=4, alpha=0.1)
    assert torch.equal(adj.indices(), semantic.indices()) and torch.equal(adj.values(), semantic.values())


# ----------------------------------------------------------------------------------------------------
# normalisation and propagation (Eq. 11-12)


def reference_normalize(adj: np.ndarray) -> np.ndarray:
    degree = adj.sum(axis=1)
    inv_sqrt = np.where(degree > 0, 1.0 / np.sqrt(np.where(degree > 0, degree, 1.0)), 0.0)
    return inv_sqrt[:, None] * adj * inv_sqrt[None, :]


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
# invalid arguments


FEATURES = random_features(10, 4, seed=20)
INTERACTIONS = random_interactions(12, 10, 0.3, seed=20)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: semantic_graph(FEATURES, 0, 0.5), "k must be an integer >= 1"),
        (lambda: semantic_graph(FEATURES, -3, 0.5), "k must be an integer >= 1"),
        (lambda: semantic_graph(FEATURES, 2.5, 0.5), "k must be an integer >= 1"),
        (lambda: semantic_graph(FEATURES, True, 0.5), "k must be an integer >= 1"),
        (lambda: semantic_graph(FEATURES, 3, 1.01), r"alpha must be a real number in \[-1, 1\]"),
        (lambda: semantic_graph(FEATURES, 3, -1.5), r"alpha must be a real number in \[-1, 1\]"),
        (lambda: semantic_graph(FEATURES, 3, float("nan")), r"alpha must be a real number in \[-1, 1\]"),
        (lambda: semantic_graph(FEATURES, 3, "0.5"), r"alpha must be a real number in \[-1, 1\]"),
        (lambda: semantic_graph(FEATURES, 3, 0.5, chunk_size=0), "chunk_size must be an integer >= 1"),
        (lambda: semantic_graph(FEATURES[0], 3, 0.5), r"features must have shape \[I, d\]"),
        (lambda: semantic_graph(FEATURES[:, :0], 3, 0.5), r"features must have shape \[I, d\] with d >= 1"),
        (lambda: semantic_graph(FEATURES.numpy(), 3, 0.5), "features must be a dense torch.Tensor"),
        (lambda: semantic_graph(FEATURES.long(), 3, 0.5), "features must be a floating-point tensor"),
        (lambda: semantic_graph(FEATURES * float("nan"), 3, 0.5), "NaN or infinite"),
        (lambda: cooccurrence_graph(INTERACTIONS, 0), "k must be an integer >= 1"),
        (lambda: cooccurrence_graph(INTERACTIONS, 3, chunk_size=-1), "chunk_size must be an integer >= 1"),
        (lambda: cooccurrence_graph(INTERACTIONS.toarray(), 3), "interactions must be a scipy.sparse matrix"),
        (lambda: refined_item_graph(FEATURES, INTERACTIONS, 0, 0.5, 3), "k_s must be an integer >= 1"),
        (lambda: refined_item_graph(FEATURES, INTERACTIONS, 3, 2.0, 3), r"alpha must be a real number"),
        (lambda: refined_item_graph(FEATURES, INTERACTIONS, 3, 0.5, -1), "k_c must be an integer >= 0"),
        (lambda: refined_item_graph(FEATURES, INTERACTIONS[:, :9], 3, 0.5, 2), "9 item columns"),
        (lambda: normalize_adjacency(torch.eye(3)), "adj must be a torch sparse COO or CSR"),
        (lambda: normalize_adjacency(torch.ones(2, 3).to_sparse()), r"adj must be square"),
        (lambda: normalize_adjacency(-torch.eye(3).to_sparse()), "negative sums"),
        (lambda: propagate(torch.eye(3).to_sparse(), torch.ones(3, 2), -1), "layers must be an integer >= 0"),
        (lambda: propagate(torch.eye(3).to_sparse(), torch.ones(4, 2), 1), r"x must be a tensor \[I, d\]"),
        (lambda: propagate(torch.eye(3), torch.ones(3, 2), 1), "adj_norm must be a torch sparse"),
    ],
)
def test_invalid_arguments_raise_a_clear_value_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_an_empty_catalogue_gives_an_empty_graph():
    adj = refined_item_graph(torch.zeros(0, 4), sp.csr_matrix((3, 0)), 3, 0.5, 2)
    assert_graph_format(adj, 0)
    assert propagate(normalize_adjacency(adj), torch.zeros(0, 4), 2).shape == (0, 4)


def test_boundary_arguments_are_accepted():
    assert semantic_graph(FEATURES, 1, -1.0)._nnz() == 10  # k = 1: only the self-loops
    assert semantic_graph(FEATURES, np.int64(2), np.float64(1.0))._nnz() == 10
    assert refined_item_graph(FEATURES, INTERACTIONS, 1, 1.0, 0)._nnz() == 10


# ----------------------------------------------------------------------------------------------------
# cache


@pytest.fixture
def build_counter(monkeypatch):
    calls = []
    real = graph.refined_item_graph

    def counting(*args, **kwargs):
        calls.append(args[2:])
        return real(*args, **kwargs)

    monkeypatch.setattr(graph, "refined_item_graph", counting)
    return calls


def test_cache_hit_returns_the_same_graph_without_rebuilding(tmp_path, build_counter):
    features = random_features(30, 6, seed=21)
    interactions = random_interactions(40, 30, 0.15, seed=21)
    first = cached_refined_item_graph(features, interactions, 4, 0.2, 3, tmp_path)
    second = cached_refined_item_graph(features.clone(), interactions.copy(), 4, 0.2, 3, tmp_path)
    assert len(build_counter) == 1
    assert_graph_format(second, 30)
    assert torch.equal(first.indices(), second.indices()) and torch.equal(first.values(), second.values())
    direct = refined_item_graph(features, interactions, 4, 0.2, 3)
    assert torch.equal(second.indices(), direct.indices()) and torch.equal(second.values(), direct.values())
    assert len(list(tmp_path.glob("*.pt"))) == 1 and len(list(tmp_path.glob("*.pt.meta.json"))) == 1


def test_cache_rebuilds_when_an_input_or_the_code_version_changes(tmp_path, build_counter, monkeypatch):
    features = random_features(30, 6, seed=22)
    interactions = random_interactions(40, 30, 0.15, seed=22)
    cached_refined_item_graph(features, interactions, 4, 0.2, 3, tmp_path)
    changed_features = features.clone()
    changed_features[5, 2] += 1e-3
    changed_interactions = interactions.tolil()
    changed_interactions[0, 0] = 1 - changed_interactions[0, 0]
    variants = [
        (changed_features, interactions, 4, 0.2, 3),
        (features, changed_interactions.tocsr(), 4, 0.2, 3),
        (features, interactions, 5, 0.2, 3),
        (features, interactions, 4, 0.3, 3),
        (features, interactions, 4, 0.2, 0),
    ]
    for number, (f, r, k_s, alpha, k_c) in enumerate(variants, start=2):
        graph_ = cached_refined_item_graph(f, r, k_s, alpha, k_c, tmp_path)
        assert len(build_counter) == number
        direct = refined_item_graph(f, r, k_s, alpha, k_c)
        assert torch.equal(graph_.to_dense(), direct.to_dense())
    monkeypatch.setattr(graph, "GRAPH_CODE_VERSION", "a-different-graph-code")
    cached_refined_item_graph(features, interactions, 4, 0.2, 3, tmp_path)
    assert len(build_counter) == len(variants) + 2
    # and everything built so far is now a hit
    cached_refined_item_graph(features, interactions, 4, 0.2, 3, tmp_path)
    assert len(build_counter) == len(variants) + 2


# ----------------------------------------------------------------------------------------------------
# statistics


def test_graph_statistics_count_every_refinement_step():
    n, k_s, alpha, k_c = 40, 6, 0.15, 4
    features = random_features(n, 6, seed=23)
    features[7] = 0.0  # no self-loop, empty semantic row (alpha > 0)
    interactions = random_interactions(50, n, 0.1, seed=23)
    semantic, knn = reference_semantic(features, k_s, alpha)
    cooccurrence = reference_cooccurrence(interactions, k_c)
    final = semantic + cooccurrence
    stats = graph_statistics(features, interactions, k_s, alpha, k_c)

    assert stats["items"] == n
    assert stats["knn_edges"] == n * k_s == np.count_nonzero(~np.isnan(knn))
    assert stats["alpha_kept"] == np.count_nonzero(semantic)
    assert stats["alpha_pruned"] == n * k_s - np.count_nonzero(semantic) > 0
    assert stats["self_loops"] == n - 1 == np.count_nonzero(np.diag(final))
    assert stats["cooccurrence_edges"] == np.count_nonzero(cooccurrence)
    assert stats["overlap_edges"] == np.count_nonzero((semantic > 0) & (cooccurrence > 0)) > 0
    assert stats["final_edges"] == np.count_nonzero(final)
    out_degree = np.count_nonzero(final, axis=1)
    assert stats["out_degree_min"] == out_degree.min()
    assert stats["out_degree_max"] == out_degree.max()
    assert stats["out_degree_mean"] == pytest.approx(out_degree.mean())
    # Fig. 1b: similarities of the top-K_s edges, self-loops excluded, before pruning
    off_diagonal = ~np.isnan(knn) & ~np.eye(n, dtype=bool)
    assert stats["knn_similarities"].dtype == np.float32
    np.testing.assert_allclose(np.sort(stats["knn_similarities"]), np.sort(knn[off_diagonal]), atol=1e-6)


def test_graph_statistics_without_cooccurrence():
    stats = graph_statistics(FEATURES, INTERACTIONS, 3, 0.2, 0)
    assert stats["cooccurrence_edges"] == 0 and stats["overlap_edges"] == 0
    assert stats["final_edges"] == stats["alpha_kept"]


def test_graph_statistics_with_k_larger_than_the_number_of_items():
    stats = graph_statistics(FEATURES, INTERACTIONS, 50, -1.0, 50)
    assert stats["knn_edges"] == stats["alpha_kept"] == 100 and stats["alpha_pruned"] == 0
    assert stats["knn_similarities"].shape == (90,)
    assert stats["final_edges"] == 100 and stats["overlap_edges"] == stats["cooccurrence_edges"]
