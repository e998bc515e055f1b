"""Small random interaction matrices shared by the model tests."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


def random_interactions(n_users: int, n_items: int, seed: int = 0, density: float = 0.25) -> sp.csr_matrix:
    """A binary ``[n_users, n_items]`` CSR matrix at ``density`` in which every user has at least one
    item (user ``u`` always has item ``u % n_items``), so no user is without training data."""
    rng = np.random.default_rng(seed)
    r = sp.random(n_users, n_items, density=density, random_state=rng, format="lil")
    for u in range(n_users):
        r[u, u % n_items] = 1.0
    r = r.tocsr()
    r.data[:] = 1.0
    return r
