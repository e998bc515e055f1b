"""The user-item bipartite graph: LightGCN, FREEDOM and MLLMRec's "w/ GCN_UI" branch share it.

Nodes are ordered users first, then items (node ``U + i`` is item ``i``). The adjacency of the
training interactions ``R`` [U, I] is

.. math::
    A = \\begin{pmatrix} 0 & R \\\\ R^\\top & 0 \\end{pmatrix}, \\qquad
    \\hat A = D^{-1/2} A D^{-1/2}, \\quad D = \\operatorname{diag}(A \\mathbf 1)

built here and normalised and propagated by the shared :func:`mllmrec.graph.normalize_adjacency`
and :func:`mllmrec.graph.propagate` (with a :class:`mllmrec.graph.SparseOperator`, whose backward
uses a precomputed transpose: these products run in every training batch). Everything is sparse:
``A`` has ``2 nnz(R)`` entries; no dense ``U x I`` or ``(U+I) x (U+I)`` matrix is ever built.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor

__all__ = ["bipartite_edges", "bipartite_adjacency"]


def bipartite_edges(interactions: sp.spmatrix | sp.sparray) -> tuple[Tensor, Tensor]:
    """The distinct (user, item) pairs of ``interactions`` (stored non-zeros; values are ignored).

    Shapes:
        - **input:** interactions scipy sparse ``[U, I]``
        - **output:** users ``[E]``, items ``[E]`` int64, sorted by user then item.
    """
    if not sp.issparse(interactions):
        raise ValueError(
            f"interactions must be a scipy.sparse matrix [U, I], got {type(interactions).__name__}"
        )
    csr = sp.csr_matrix(interactions, copy=True)
    csr.sum_duplicates()
    csr.eliminate_zeros()
    users = np.repeat(np.arange(csr.shape[0], dtype=np.int64), np.diff(csr.indptr))
    return torch.from_numpy(users), torch.from_numpy(csr.indices.astype(np.int64))


def bipartite_adjacency(users: Tensor, items: Tensor, n_users: int, n_items: int) -> Tensor:
    r"""``A = [[0, R], [R^T, 0]]`` with unit values for the edges ``(users[e], items[e])``.

    .. math::
        a_{u, U+i} = a_{U+i, u} = 1 \quad \text{for every edge } (u, i)

    Normalise it with :func:`mllmrec.graph.normalize_adjacency`: its row sums are the node degrees,
    so ``â_{u, U+i} = 1 / (sqrt(|N_u|) sqrt(|N_i|))`` and a pruned edge set is renormalised on its own
    degrees (FREEDOM); nodes without edges keep empty rows. Edges must be distinct.

    Shapes:
        - **input:** users ``[E]``, items ``[E]`` int64
        - **output:** coalesced sparse COO float32 ``[U + I, U + I]`` with ``2E`` non-zeros.
    """
    if users.shape != items.shape or users.dim() != 1:
        raise ValueError(f"users and items must be 1-D of equal length, got {tuple(users.shape)}, "
                         f"{tuple(items.shape)}")
    if users.numel() and (int(users.min()) < 0 or int(users.max()) >= n_users
                          or int(items.min()) < 0 or int(items.max()) >= n_items):
        raise ValueError(f"edge ids out of range for {n_users} users and {n_items} items")
    rows = torch.cat([users, items + n_users])
    cols = torch.cat([items + n_users, users])
    n = n_users + n_items
    # indices were range-checked above, so torch's invariant check would only repeat that work
    return torch.sparse_coo_tensor(
        torch.stack([rows, cols]), torch.ones(rows.numel(), dtype=torch.float32), (n, n),
        check_invariants=False,
    ).coalesce()
