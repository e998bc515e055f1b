"""Degree normalisation and multi-layer propagation: the one implementation every model uses.

MLLMRec propagates item features on the refined item graph (Eq. 11-12, layer sum); LightGCN, FREEDOM
and MLLMRec's "w/ GCN_UI" branch propagate ID embeddings or tower outputs on the user-item bipartite
graph (layer mean or sum). All of them normalise with :func:`normalize_adjacency` and propagate with
:func:`propagate`.

An adjacency is either a torch sparse tensor (``torch.sparse.mm``; fine for a product computed once) or
a :class:`SparseOperator`: the same matrix as CSR with its transpose, for products that run in every
training batch. On CPU, autograd through ``torch.sparse.mm`` is about 10x slower than the forward
product; the operator's backward multiplies by the precomputed transpose instead.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from torch import Tensor, nn

from mllmrec.graph.checks import check_args

__all__ = ["SparseOperator", "normalize_adjacency", "propagate"]

PROPAGATION_REDUCES = ("sum", "mean")


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


def normalize_adjacency(adj: Tensor) -> Tensor:
    r"""Symmetric degree normalisation ``D^-1/2 A D^-1/2`` (Eq. 11) with ``D`` the row sums of ``A``.

    .. math::
        \hat a_{ab} = \frac{a_{ab}}{\sqrt{d_a}\,\sqrt{d_b}}, \qquad d_a = \sum_b a_{ab}

    ``A`` may be directed: ``D`` holds row sums (out-degrees) and is applied on both sides, as in the
    paper. ``d^-1/2`` is taken as 0 where ``d = 0``, so rows of degree 0 stay 0 (as does any entry
    pointing to a node whose row sum is 0) instead of becoming inf/NaN. For the symmetric bipartite
    graph ``[[0, R], [R^T, 0]]`` with unit values this is LightGCN's
    ``1 / (sqrt(|N_u|) sqrt(|N_i|))``.

    Shapes:
        - **input:** adj sparse (COO or CSR) ``[N, N]`` with non-negative row sums
        - **output:** coalesced sparse COO ``[N, N]``, same dtype, device and sparsity pattern.
    """
    if not isinstance(adj, Tensor) or adj.layout not in (torch.sparse_coo, torch.sparse_csr):
        raise ValueError("adj must be a torch sparse COO or CSR tensor [I, I]")
    if adj.dim() != 2 or adj.shape[0] != adj.shape[1]:
        raise ValueError(f"adj must be square [I, I], got {tuple(adj.shape)}")
    adj = (adj.to_sparse_coo() if adj.layout == torch.sparse_csr else adj).coalesce()
    rows, cols = adj.indices()
    values = adj.values()
    degree = torch.zeros(adj.shape[0], dtype=values.dtype, device=values.device).index_add_(0, rows, values)
    if bool((degree < 0).any()):
        raise ValueError("adj has rows with negative sums; D^-1/2 is undefined for them")
    inv_sqrt = torch.where(degree > 0, degree.rsqrt(), torch.zeros_like(degree))
    normalized = values * inv_sqrt[rows] * inv_sqrt[cols]
    # same (already coalesced) indices as adj, so there is nothing to re-check or re-sort
    return torch.sparse_coo_tensor(
        adj.indices(), normalized, adj.shape, is_coalesced=True, check_invariants=False
    )


def _product(adj_norm: Tensor | SparseOperator, x: Tensor) -> Callable[[Tensor], Tensor]:
    """``h -> Â h`` for ``adj_norm``, after checking that it is a square sparse matrix matching ``x``."""
    if isinstance(adj_norm, SparseOperator):
        shape = adj_norm.shape
    elif isinstance(adj_norm, Tensor) and adj_norm.layout in (torch.sparse_coo, torch.sparse_csr):
        shape = tuple(adj_norm.shape)
    else:
        raise ValueError("adj_norm must be a torch sparse COO or CSR tensor [I, I] or a SparseOperator")
    if len(shape) != 2 or shape[0] != shape[1]:
        raise ValueError(f"adj_norm must be square [I, I], got {shape}")
    if not isinstance(x, Tensor) or x.dim() != 2 or x.shape[0] != shape[1]:
        got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"x must be a tensor [I, d] with I = {shape[1]}, got {got}")
    if isinstance(adj_norm, SparseOperator):
        return adj_norm
    matrix = adj_norm.to(dtype=x.dtype)
    return lambda hidden: torch.sparse.mm(matrix, hidden)


def propagate(adj_norm: Tensor | SparseOperator, x: Tensor, layers: int, reduce: str = "sum") -> Tensor:
    r"""Multi-layer propagation ``E^{(l)} = Â E^{(l-1)}``, combined over layers ``0..L``.

    .. math::
        E^{(0)} = X, \qquad E^{(l)} = \hat A E^{(l-1)}, \qquad
        E^* = \sum_{l=0}^{L} E^{(l)} \ (\text{sum}) \quad\text{or}\quad
        \frac{1}{L+1} \sum_{l=0}^{L} E^{(l)} \ (\text{mean})

    ``reduce="sum"`` is MLLMRec's Eq. 12 (and the authors' user-item branch); ``"mean"`` is LightGCN's
    layer combination. Differentiable w.r.t. ``x`` (``torch.sparse.mm`` for a sparse tensor, the
    transpose-backed product for a :class:`SparseOperator`). ``layers = 0`` returns a copy of ``x``.

    Shapes:
        - **input:** adj_norm sparse (COO or CSR) or :class:`SparseOperator` ``[N, N]``, x ``[N, d]``
        - **output:** ``[N, d]``, dtype and device of ``x``.
    """
    product = _product(adj_norm, x)
    layers = check_args(layers=layers)["layers"]
    if reduce not in PROPAGATION_REDUCES:
        raise ValueError(f"reduce must be one of {PROPAGATION_REDUCES}, got {reduce!r}")
    total, hidden = x, x
    for _ in range(layers):
        hidden = product(hidden)
        total = total + hidden
    if reduce == "mean":
        return total / (layers + 1)
    return total if layers else x.clone()
