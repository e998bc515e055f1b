"""Top-K machinery shared by the kNN builders: deterministic tie-breaking, running top-K merges.

Ties are broken deterministically everywhere: among equal scores the lower item id wins. The helpers
work on row blocks of a score matrix (``torch``, any device) and never see the whole ``I x I`` matrix.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

__all__ = ["Knn", "topk_lowest_index", "merge_topk", "column_candidates", "to_sparse"]


@dataclass(frozen=True)
class Knn:
    """Top-K entries of every row of an ``n x n`` score matrix, as flat COO triplets.

    Shapes:
        - rows, cols ``[E]`` int64; scores ``[E]`` float32 (``E = n * K`` for a full top-K).
    """

    n: int
    rows: Tensor
    cols: Tensor
    scores: Tensor


def topk_lowest_index(scores: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Per-row top-``k`` of ``scores`` [r, n] (``1 <= k <= n``); among equal scores the lower column wins.

    ``torch.topk`` leaves the order of equal values unspecified, so rows where the ``k``-th and the
    ``(k+1)``-th largest values are equal (the only rows where the choice is ambiguous) are re-selected
    by :func:`_select_ties_lowest_index`.
    """
    n = scores.shape[1]
    values, indices = torch.topk(scores, min(k + 1, n), dim=1, largest=True, sorted=True)
    if k == n:  # the whole row is selected: nothing to break
        return values, indices
    boundary_tie = values[:, k - 1] == values[:, k]
    values, indices = values[:, :k], indices[:, :k]
    if bool(boundary_tie.any()):
        tied_rows = boundary_tie.nonzero().squeeze(1)
        tied_values, tied_indices = _select_ties_lowest_index(scores[tied_rows], values[tied_rows, k - 1], k)
        values[tied_rows] = tied_values
        indices[tied_rows] = tied_indices
    return values, indices


def _select_ties_lowest_index(scores: Tensor, kth_value: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Top-``k`` of rows whose ``k``-th largest value is ``kth_value`` [r]: everything above it, then the
    lowest columns equal to it. Linear in the row length (no sort), so rows full of equal scores
    (duplicate or all-zero items) stay cheap.
    """
    threshold = kth_value.unsqueeze(1)
    above = scores > threshold
    equal = scores == threshold
    still_needed = k - above.sum(dim=1, keepdim=True)
    chosen = above | (equal & (equal.cumsum(dim=1) <= still_needed))
    columns = chosen.nonzero()[:, 1].view(-1, k)  # exactly k per row, row-major
    return scores.gather(1, columns), columns


def merge_topk(best_values: Tensor, best_indices: Tensor, rows: slice, values: Tensor, indices: Tensor) -> None:
    """Fold candidate (values, indices) [r, c] into the running top-``w`` of ``rows``, in place."""
    width = best_values.shape[1]
    candidate_values = torch.cat([best_values[rows], values], dim=1)
    candidate_indices = torch.cat([best_indices[rows], indices], dim=1)
    top_values, position = candidate_values.topk(width, dim=1, largest=True, sorted=True)
    best_values[rows] = top_values
    best_indices[rows] = candidate_indices.gather(1, position)


def _flat_nonzero(mask: Tensor) -> Tensor:
    """Flat indices of the True entries of a contiguous ``mask`` (int64, ascending)."""
    if mask.device.type == "cpu":  # numpy's SIMD scan is ~10x faster than torch's CPU nonzero here
        return torch.from_numpy(np.flatnonzero(mask.numpy()))
    return mask.reshape(-1).nonzero().squeeze(1)


def column_candidates(block: Tensor, threshold: Tensor, width: int) -> tuple[Tensor, Tensor]:
    """Per column of ``block`` [r, m], its top-``width`` entries that beat ``threshold`` [m].

    Returns ``(values, row indices)`` [m, width], padded with ``-inf``. ``threshold`` is each column's
    current (K+1)-th best, so after the first blocks only a few entries per column can still enter
    its top list; gathering those few is much cheaper than ``topk`` along dim 0 (strided, ~3x slower
    than along rows). When many entries pass (the first block, or adversarial orderings) the plain
    column ``topk`` is used.
    """
    m = block.shape[1]
    flat = _flat_nonzero(block > threshold)
    if flat.numel() > width * m:
        values, indices = block.topk(min(width, block.shape[0]), dim=0, largest=True, sorted=True)
        return values.T, indices.T
    rows, cols = flat // m, flat % m
    values = block[rows, cols]
    by_value = torch.argsort(values, descending=True, stable=True)
    order = by_value[torch.argsort(cols[by_value], stable=True)]  # by column, then value descending
    rows, cols, values = rows[order], cols[order], values[order]
    per_column = torch.bincount(cols, minlength=m)
    rank = torch.arange(cols.numel(), device=block.device) - (torch.cumsum(per_column, 0) - per_column)[cols]
    keep = rank < width
    padded_values = torch.full((m, width), -math.inf, dtype=block.dtype, device=block.device)
    padded_rows = torch.zeros((m, width), dtype=torch.int64, device=block.device)
    padded_values[cols[keep], rank[keep]] = values[keep]
    padded_rows[cols[keep], rank[keep]] = rows[keep]
    return padded_values, padded_rows


def to_sparse(n: int, rows: Tensor, cols: Tensor, values: Tensor) -> Tensor:
    # indices are in range by construction; coalesce() sorts them and merges nothing (no duplicates)
    return torch.sparse_coo_tensor(
        torch.stack([rows, cols]), values.to(torch.float32), (n, n), device=values.device,
        check_invariants=False,
    ).coalesce()
