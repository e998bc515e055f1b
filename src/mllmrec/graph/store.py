"""A sparse graph as the plain tensors a cache file holds (``torch.save`` with ``weights_only`` loading),
and back, checked: a file from disk is verified before its indices are trusted."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = ["sparse_state", "sparse_from_state"]


def sparse_state(graph: Tensor) -> dict[str, Any]:
    """``{"indices", "values", "size"}`` of ``graph`` (coalesced, on the CPU).

    Shapes: graph sparse COO ``[N, M]`` -> indices ``[2, nnz]`` int64, values ``[nnz]``.
    """
    graph = graph.coalesce().cpu()
    return {"indices": graph.indices(), "values": graph.values(), "size": list(graph.shape)}


def sparse_from_state(state: dict[str, Any]) -> Tensor:
    """The coalesced sparse COO tensor of :func:`sparse_state`; raises if the indices are out of range
    or not coalesced (a garbled file), which the cache turns into a rebuild."""
    return torch.sparse_coo_tensor(state["indices"], state["values"], tuple(state["size"]), is_coalesced=True,
                                   check_invariants=True)
