"""The user-item bipartite graph: LightGCN, FREEDOM and MLLMRec's "w/ GCN_UI" branch share it.

Nodes are ordered users first, then items (node ``U + i`` is item ``i``). The adjacency of the
training interactions ``R`` [U, I] is

.. math::
    A = \\begin{pmatrix} 0 & R \\\\ R^\\top & 0 \\end{pmatrix}, \\qquad
    \\hat A = D^{-1/2} A D^{-1/2}, \\quad D = \\operatorname{diag}(A \\mathbf 1)

Everything is sparse: ``A`` has ``2 nnz(R)`` entries; no dense ``U x I`` or ``(U+I) x (U+I)`` matrix
is ever built. Propagation uses CSR matrices, and a custom autograd function multiplies the gradient
by a precomputed ``Â^T`` (also CSR): on CPU, autograd through ``torch.sparse.mm`` is about 10x slower
than the forward product, and these products run in every training batch.
"""

from __future__ import annotations

import warnings

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor, nn

__all__ = [
    "SparseOperator",
    "bipartite_edges",
    "normalized_bipartite_adjacency",
    "sparse_propagate",
]


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


class SparseOperator(nn.Module):
    """A fixed sparse matrix ``M`` [N, N] with its transpose, both CSR, for fast ``M X`` with autograd.

    ``operator(x)`` computes ``M x`` (differentiable w.r.t. ``x``); the backward pass is ``M^T g``.
    The matrices are non-persistent buffers: they follow the model's device and stay out of
    checkpoints (they are rebuilt from the training interactions).

    Shapes:
        - **input:** x ``[N, d]``
        - **output:** ``[N, d]``
    """

    def __init__(self, matrix: Tensor) -> None:
        super().__init__()
        if matrix.layout not in (torch.sparse_coo, torch.sparse_csr) or matrix.dim() != 2:
            raise ValueError("matrix must be a 2-D torch sparse COO or CSR tensor")
        coo = (matrix.to_sparse_coo() if matrix.layout == torch.sparse_csr else matrix).coalesce()
        self.shape = tuple(coo.shape)
        self.nnz = coo._nnz()
        with warnings.catch_warnings():
            # CSR is "beta" in torch 2.x but its matmul is stable and ~3x faster than COO on CPU
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            self.register_buffer("forward_csr", coo.to_sparse_csr(), persistent=False)
            self.register_buffer("backward_csr", coo.t().coalesce().to_sparse_csr(), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return _SparseMatmul.apply(self.forward_csr, self.backward_csr, x)

    def to_dense(self) -> Tensor:
        """The dense matrix (tests on tiny graphs only)."""
        return self.forward_csr.to_dense()


class _SparseMatmul(torch.autograd.Function):
    @staticmethod
    def forward(ctx, matrix: Tensor, matrix_t: Tensor, x: Tensor) -> Tensor:
        ctx.save_for_backward(matrix_t)
        return matrix @ x

    @staticmethod
    def backward(ctx, grad: Tensor):
        (matrix_t,) = ctx.saved_tensors
        return None, None, matrix_t @ grad


def normalized_bipartite_adjacency(
    users: Tensor, items: Tensor, n_users: int, n_items: int
) -> Tensor:
    r"""``Â = D^-1/2 A D^-1/2`` of the bipartite graph with edges ``(users[e], items[e])``.

    .. math::
        \hat a_{u, U+i} = \hat a_{U+i, u} = \frac{1}{\sqrt{|\mathcal N_u|}\sqrt{|\mathcal N_i|}}

    Degrees count the given edges, so a pruned edge set is renormalised on its own degrees (FREEDOM).
    Nodes without edges have empty rows (no division by zero). Edges must be distinct.

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
    user_degree = torch.bincount(users, minlength=n_users).to(torch.float32)
    item_degree = torch.bincount(items, minlength=n_items).to(torch.float32)
    # every endpoint of an edge has degree >= 1, so the square roots are finite
    values = user_degree[users].rsqrt() * item_degree[items].rsqrt()
    rows = torch.cat([users, items + n_users])
    cols = torch.cat([items + n_users, users])
    n = n_users + n_items
    # indices were range-checked above, so torch's invariant check would only repeat that work
    return torch.sparse_coo_tensor(
        torch.stack([rows, cols]), torch.cat([values, values]), (n, n), check_invariants=False
    ).coalesce()


def sparse_propagate(operator: SparseOperator, x: Tensor, layers: int, reduce: str = "mean") -> Tensor:
    r"""LightGCN propagation ``E^{(l)} = Â E^{(l-1)}``, combined over layers ``0..L``.

    .. math::
        E^{(0)} = X, \qquad E = \operatorname{reduce}_{l=0..L} E^{(l)}

    ``reduce="mean"`` is LightGCN's layer combination (``1 / (L+1)`` weights), ``"sum"`` the plain sum
    (MLLMRec's Eq. 12 and the authors' user-item branch). Differentiable w.r.t. ``x``.

    Shapes:
        - **input:** x ``[N, d]``
        - **output:** ``[N, d]``
    """
    if reduce not in ("mean", "sum"):
        raise ValueError(f"reduce must be 'mean' or 'sum', got {reduce!r}")
    if layers < 0:
        raise ValueError(f"layers must be >= 0, got {layers}")
    total, hidden = x, x
    for _ in range(layers):
        hidden = operator(hidden)
        total = total + hidden
    return total / (layers + 1) if reduce == "mean" else total
