"""Dense re-implementations of the refined graph's equations (Section 4.2, Eq. 6-11), for the tests.

The references are written straight from the equations with dense float64 numpy arrays and Python
sorting, with the conventions the package documents: the item itself ranks first in its own semantic
row, ties go to the lower item id, an all-zero feature row has cosine 0 with everything.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp
import torch


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




def reference_normalize(adj: np.ndarray) -> np.ndarray:
    """Dense ``D^-1/2 A D^-1/2`` with ``D`` the row sums; ``d^-1/2 = 0`` where ``d = 0`` (Eq. 11)."""
    degree = adj.sum(axis=1)
    inv_sqrt = np.where(degree > 0, 1.0 / np.sqrt(np.where(degree > 0, degree, 1.0)), 0.0)
    return inv_sqrt[:, None] * adj * inv_sqrt[None, :]


# small inputs shared by the argument and statistics tests
FEATURES = random_features(10, 4, seed=20)
INTERACTIONS = random_interactions(12, 10, 0.3, seed=20)
