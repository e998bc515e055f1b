"""mllmrec.graph.knn: the semantic (Eq. 6-7) and co-occurrence (Eq. 8-9) kNN graphs against dense references."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from mllmrec.graph import cooccurrence_graph, knn, semantic_graph

from .references import (
    assert_graph_format,
    dense,
    dense_cosine,
    edges,
    random_features,
    random_interactions,
    reference_cooccurrence,
    reference_jaccard,
    reference_semantic,
)

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
    adj = semantic_graph(features, k_s=4, alpha=0.2)
    assert torch.all(adj.values() == 1.0)
    assert {(a, a) for a in range(80)} <= edges(adj)


def test_semantic_graph_alpha_prunes_every_neighbour_but_the_self_loop():
    features = random_features(50, 8, seed=2)
    sims, _ = dense_cosine(features)
    off_diagonal_max = (sims - 2 * np.eye(50)).max()
    alpha = (off_diagonal_max + 1.0) / 2  # above every neighbour, below the self-similarity 1
    for threshold in (alpha, 1.0):
        adj = semantic_graph(features, k_s=10, alpha=threshold)
        assert edges(adj) == {(a, a) for a in range(50)}


def test_semantic_graph_ties_go_to_the_lower_item_id():
    # exact arithmetic: items 1-3 are copies of e2, item 0 is e1, item 4 is -e1 (cosine 0 / 1 / -1)
    features = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [0.0, 1.0], [-1.0, 0.0]])
    adj = semantic_graph(features, k_s=3, alpha=-1.0)
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
        adj = semantic_graph(features, k_s=5, alpha=0.1, chunk_size=chunk_size)
        np.testing.assert_array_equal(dense(adj), expected, err_msg=f"chunk_size={chunk_size}")


@pytest.mark.parametrize("chunk_size", [1, 2, 9, 33, 64, 1000])
def test_semantic_graph_does_not_depend_on_chunk_size(chunk_size):
    features = random_features(64, 12, seed=5)
    reference = semantic_graph(features, k_s=7, alpha=0.05, chunk_size=64)
    adj = semantic_graph(features, k_s=7, alpha=0.05, chunk_size=chunk_size)
    assert torch.equal(adj.indices(), reference.indices())


def test_semantic_graph_zero_feature_row_has_cosine_zero_with_everything():
    features = random_features(10, 4, seed=6)
    features[6] = 0.0
    sparse_rows = semantic_graph(features, k_s=4, alpha=0.01)
    assert {b for a, b in edges(sparse_rows) if a == 6} == set()
    assert {a for a, b in edges(sparse_rows) if b == 6} == set()
    # with alpha <= 0 a zero row links to the K lowest ids (all tie at 0), not to itself first
    permissive = semantic_graph(features, k_s=4, alpha=0.0)
    assert {b for a, b in edges(permissive) if a == 6} == {0, 1, 2, 3}
    np.testing.assert_array_equal(dense(permissive), reference_semantic(features, 4, 0.0)[0])


def test_semantic_graph_clamps_k_to_the_number_of_items():
    features = random_features(7, 3, seed=7)
    adj = semantic_graph(features, k_s=100, alpha=-1.0)
    assert edges(adj) == {(a, b) for a in range(7) for b in range(7)}
    np.testing.assert_array_equal(
        dense(semantic_graph(features, k_s=100, alpha=0.3)), reference_semantic(features, 7, 0.3)[0]
    )


def test_semantic_graph_accepts_float64_and_scaled_features():
    features = random_features(30, 5, seed=8)
    reference = semantic_graph(features, k_s=4, alpha=0.2)
    assert torch.equal(semantic_graph(features.double(), k_s=4, alpha=0.2).indices(), reference.indices())
    # cosine ignores the row scale, including scales that would overflow a naive float32 norm
    scaled = features * torch.logspace(-30, 30, 30).unsqueeze(1)
    assert torch.equal(semantic_graph(scaled, k_s=4, alpha=0.2).indices(), reference.indices())
    beyond_float32 = features.double() * torch.logspace(-300, 300, 30, dtype=torch.float64).unsqueeze(1)
    assert torch.equal(semantic_graph(beyond_float32, k_s=4, alpha=0.2).indices(), reference.indices())


def test_duplicate_representative_is_the_lowest_identical_row():
    rows = torch.tensor([[0.6, 0.8], [1.0, 0.0], [0.6, 0.8], [0.0, 0.0], [-0.0, 0.0], [0.6, 0.8000001], [1.0, 0.0]])
    assert knn._duplicate_representative(rows).tolist() == [0, 1, 0, 3, 3, 5, 1]


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
    adj = cooccurrence_graph(interactions, k_c=2)
    assert {b for a, b in edges(adj) if a == 0} == {1, 2}
    np.testing.assert_allclose(dense(adj)[0], [0.0, 1 / 3, 1 / 3, 0.0], rtol=1e-6)


def test_cooccurrence_graph_keeps_items_with_identical_audiences():
    # items 0 and 1 have exactly the same users: Jaccard 1 (the authors' code drops such pairs)
    interactions = sp.csr_matrix(np.array([[1, 1, 0], [1, 1, 1], [0, 0, 1]]))
    adj = dense(cooccurrence_graph(interactions, k_c=1))
    assert adj[0, 1] == 1.0 and adj[1, 0] == 1.0


def test_cooccurrence_graph_item_without_training_users_is_isolated():
    interactions = random_interactions(40, 15, 0.2, seed=9).tolil()
    interactions[:, 6] = 0
    interactions = interactions.tocsr()
    adj = cooccurrence_graph(interactions, k_c=5)
    assert all(6 not in edge for edge in edges(adj))
    np.testing.assert_allclose(dense(adj), reference_cooccurrence(interactions, 5), rtol=1e-6)


def test_cooccurrence_graph_binarises_ratings_and_duplicates():
    interactions = random_interactions(30, 20, 0.2, seed=10)
    coo = interactions.tocoo()
    ratings = sp.coo_matrix(
        (np.concatenate([coo.data * 4, coo.data]), (np.tile(coo.row, 2), np.tile(coo.col, 2))), shape=coo.shape
    )  # every interaction twice, with rating 4 + 1
    from_ratings = cooccurrence_graph(ratings, k_c=3).to_dense()
    assert torch.equal(from_ratings, cooccurrence_graph(interactions, k_c=3).to_dense())
    assert from_ratings.max() <= 1.0


def test_cooccurrence_graph_clamps_k_to_the_number_of_items():
    interactions = random_interactions(30, 6, 0.5, seed=11)
    adj = cooccurrence_graph(interactions, k_c=100)
    np.testing.assert_allclose(dense(adj), reference_jaccard(interactions) * (1 - np.eye(6)), rtol=1e-6)


def test_cooccurrence_graph_with_a_user_of_every_item_in_small_blocks(monkeypatch):
    # one user interacted with everything: every row of R^T R is dense. Force tiny blocks so the
    # entry budget (not chunk_size) splits the rows, down to a single row per block.
    interactions = random_interactions(40, 25, 0.1, seed=12).tolil()
    interactions[0, :] = 1
    interactions = interactions.tocsr()
    monkeypatch.setattr(knn, "_COOCCURRENCE_BLOCK_ENTRIES", 30)
    adj = cooccurrence_graph(interactions, k_c=4, chunk_size=10)
    np.testing.assert_allclose(dense(adj), reference_cooccurrence(interactions, 4), rtol=1e-6)


@pytest.mark.parametrize("chunk_size", [1, 3, 16, 100])
def test_cooccurrence_graph_does_not_depend_on_chunk_size(chunk_size):
    interactions = random_interactions(60, 50, 0.08, seed=13)
    reference = cooccurrence_graph(interactions, k_c=6, chunk_size=50)
    adj = cooccurrence_graph(interactions, k_c=6, chunk_size=chunk_size)
    assert torch.equal(adj.indices(), reference.indices())
    assert torch.equal(adj.values(), reference.values())


def test_cooccurrence_blocks_stay_bounded_with_hub_items_and_power_law_popularity(monkeypatch):
    """A few items bought by a large share of the users make their rows of R^T R dense: every block's
    product must still hold at most the entry budget (or be one row, at most I entries), and the
    result must equal the dense reference."""
    rng = np.random.default_rng(31)
    users, items = 300, 120
    popularity = 1.0 / np.arange(1, items + 1) ** 1.2  # power law: item 0 is in ~1/4 of all baskets
    rows = np.repeat(np.arange(users), rng.integers(2, 8, size=users))
    cols = rng.choice(items, size=rows.size, p=popularity / popularity.sum())
    interactions = sp.csr_matrix((np.ones(rows.size), (rows, cols)), shape=(users, items))
    binary = (interactions > 0).astype(np.float64)
    assert binary[:, 0].sum() >= 0.1 * users  # the hub
    budget = 400
    monkeypatch.setattr(knn, "_COOCCURRENCE_BLOCK_ENTRIES", budget)
    blocks = []
    real_blocks = knn._cooccurrence_blocks

    def recording(*args):
        blocks.extend(real_blocks(*args))
        return blocks

    monkeypatch.setattr(knn, "_cooccurrence_blocks", recording)
    adj = cooccurrence_graph(interactions, k_c=5, chunk_size=64)
    np.testing.assert_allclose(dense(adj), reference_cooccurrence(interactions, 5), rtol=1e-6)
    shared = (binary.T @ binary).tocsr()  # the true product, to count each block's entries
    entries = [shared[start:stop].nnz for start, stop in blocks]
    assert len(blocks) > items // 64 + 1  # the budget, not chunk_size, split the rows
    assert all(nnz <= budget or stop - start == 1 for nnz, (start, stop) in zip(entries, blocks))
    assert max(entries) <= max(budget, items)


def test_cooccurrence_blocks_respect_both_limits():
    bound = np.array([5, 5, 50, 1, 1, 1, 1, 1, 30, 0])
    blocks = knn._cooccurrence_blocks(bound, chunk_size=3, max_entries=10)
    assert blocks[0][0] == 0 and blocks[-1][1] == 10
    assert all(prev[1] == nxt[0] for prev, nxt in zip(blocks, blocks[1:]))
    for start, stop in blocks:
        assert 1 <= stop - start <= 3
        assert stop - start == 1 or bound[start:stop].sum() <= 10


# ----------------------------------------------------------------------------------------------------
# refined graph (Eq. 10)

