"""The refined item-item graph of MLLMRec (Section 4.2, Eq. 5-12).

Two directed kNN graphs over items are added together (Eq. 10, no symmetrisation):

* the *semantic* graph ``S~`` (Eq. 6-7): cosine similarity of the items' encoded multimodal
  descriptions; per row the top-``K_s`` entries over the whole row (the item itself included, so every
  item keeps a self-loop as in FREEDOM and the authors' code), of which only those with similarity
  ``>= alpha`` survive, each with value 1;
* the *co-occurrence* graph ``C~`` (Eq. 8-9): Jaccard similarity of the items' sets of training users;
  per row the top-``K_c`` items with positive Jaccard, the item itself excluded, weighted by the score.

The sum is normalised as ``D^-1/2 A D^-1/2`` with ``D`` the row sums (Eq. 11) and item features are
propagated as ``sum_{l=0..L} A^l X`` (Eq. 12).

Scale: nothing here builds a dense ``I x I`` or ``U x I`` matrix. Similarities are ranked in row chunks
(at most ``chunk_size x I`` floats at a time, ``torch.mm`` + ``topk``, so the same code runs on a GPU
when the features live there; cosine being symmetric, only the upper triangle is multiplied) and
co-occurrences come from the sparse product ``R^T R`` (scipy), computed a block of item rows at a time,
so a popular user or item that makes some rows dense cannot blow up memory.

Ties are broken deterministically everywhere: among equal scores the lower item id wins (in the
semantic graph the item itself always comes first in its own row).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor

from mllmrec.cache import build_once, stable_hash

__all__ = [
    "GRAPH_CODE_VERSION",
    "semantic_graph",
    "cooccurrence_graph",
    "refined_item_graph",
    "normalize_adjacency",
    "propagate",
    "cached_refined_item_graph",
    "graph_statistics",
]

# Part of every graph cache key: bump it whenever a change here alters the graph built from the same
# inputs, so stale cached graphs are rebuilt instead of silently reused.
GRAPH_CODE_VERSION = "refined-item-graph-v1"

# Rows of the similarity matrix ranked at once: memory is about chunk_size * I * 5 bytes (float32
# block + a boolean mask; 1024 rows x 100k items = 0.5 GB). 1024 runs the matmul at the CPU's peak.
DEFAULT_SEMANTIC_CHUNK = 1024
# Item rows of R^T R built at once ...
DEFAULT_COOCCURRENCE_CHUNK = 4096
# ... and at most this many (upper-bound) non-zeros per block, whatever chunk_size says, so that rows
# made dense by a popular user or item are processed in smaller blocks. Always at least one row.
_COOCCURRENCE_BLOCK_ENTRIES = 1 << 22
# Feature rows hashed at once when looking for duplicate items.
_HASH_ROWS = 8192


# ----------------------------------------------------------------------------------------------------
# argument checks


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_alpha(alpha: Any) -> float:
    if (
        isinstance(alpha, bool)
        or not isinstance(alpha, numbers.Real)
        or math.isnan(alpha)
        or not -1.0 <= alpha <= 1.0
    ):
        raise ValueError(f"alpha must be a real number in [-1, 1] (a cosine similarity), got {alpha!r}")
    return float(alpha)


def _check_features(features: Any) -> Tensor:
    if not isinstance(features, Tensor) or features.layout != torch.strided:
        raise ValueError(f"features must be a dense torch.Tensor [I, d], got {type(features).__name__}")
    if features.dim() != 2 or features.shape[1] == 0:
        raise ValueError(f"features must have shape [I, d] with d >= 1, got {tuple(features.shape)}")
    if not features.is_floating_point():
        raise ValueError(f"features must be a floating-point tensor, got dtype {features.dtype}")
    if not bool(torch.isfinite(features).all()):
        raise ValueError("features contain NaN or infinite values")
    return features


def _binarize_interactions(interactions: Any) -> sp.csr_matrix:
    """Canonical binary CSR copy of ``interactions``: every stored non-zero counts as one interaction.

    Duplicate entries are merged and explicit zeros dropped, so a rating matrix, a COO list with
    repeated pairs and a clean 0/1 matrix with the same support give the same result (and cache key).
    """
    if not sp.issparse(interactions):
        raise ValueError(
            "interactions must be a scipy.sparse matrix [U, I] (dense U x I matrices are not accepted), "
            f"got {type(interactions).__name__}"
        )
    if len(interactions.shape) != 2:
        raise ValueError(f"interactions must be 2-D [U, I], got shape {interactions.shape}")
    csr = sp.csr_matrix(interactions, copy=True)
    csr.sum_duplicates()
    csr.eliminate_zeros()
    csr.data = np.ones_like(csr.data, dtype=np.int32)
    csr.sort_indices()
    return sp.csr_matrix((csr.data, csr.indices, csr.indptr), shape=csr.shape, dtype=np.int32)


# ----------------------------------------------------------------------------------------------------
# chunked top-K machinery


def _topk_lowest_index(scores: Tensor, k: int) -> tuple[Tensor, Tensor]:
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


def _merge_topk(best_values: Tensor, best_indices: Tensor, rows: slice, values: Tensor, indices: Tensor) -> None:
    """Fold candidate (values, indices) [r, c] into the running top-``w`` of ``rows``, in place."""
    width = best_values.shape[1]
    candidate_values = torch.cat([best_values[rows], values], dim=1)
    candidate_indices = torch.cat([best_indices[rows], indices], dim=1)
    top_values, position = candidate_values.topk(width, dim=1, largest=True, sorted=True)
    best_values[rows] = top_values
    best_indices[rows] = candidate_indices.gather(1, position)


def _unit_rows(features: Tensor) -> tuple[Tensor, Tensor]:
    """Rows scaled to unit L2 norm in float32, and a mask of the non-zero rows.

    Zero rows stay zero, which makes their cosine 0 against every item (themselves included). Rows are
    first divided by their largest magnitude so tiny or huge values cannot under/overflow the norm.
    """
    x = features.detach()
    max_abs = x.abs().amax(dim=1, keepdim=True)
    nonzero = max_abs.squeeze(1) > 0
    # scale in the input dtype, then cast: float64 rows beyond float32's range must not become inf
    x = (x / torch.where(max_abs > 0, max_abs, torch.ones_like(max_abs))).to(torch.float32)
    norm = torch.linalg.vector_norm(x, dim=1, keepdim=True)
    return x / torch.where(norm > 0, norm, torch.ones_like(norm)), nonzero


@dataclass(frozen=True)
class _Knn:
    """Top-K entries of every row of an ``n x n`` score matrix, as flat COO triplets."""

    n: int
    rows: Tensor  # [n * k] int64
    cols: Tensor  # [n * k] int64
    scores: Tensor  # [n * k] float32


def _self_similarity(nonzero: Tensor) -> Tensor:
    """Diagonal entries used while ranking: ``+inf`` for non-zero items, 0 for all-zero ones.

    cosine(a, a) = 1 is the row maximum of a non-zero item; ranking it as ``+inf`` guarantees its
    self-loop even when an exact duplicate with a lower id (or rounding above 1) would tie with it.
    The value is clamped back to 1 once ranking is done.
    """
    return torch.where(nonzero, math.inf, 0.0).to(torch.float32)


def _flat_nonzero(mask: Tensor) -> Tensor:
    """Flat indices of the True entries of a contiguous ``mask`` (int64, ascending)."""
    if mask.device.type == "cpu":  # numpy's SIMD scan is ~10x faster than torch's CPU nonzero here
        return torch.from_numpy(np.flatnonzero(mask.numpy()))
    return mask.reshape(-1).nonzero().squeeze(1)


def _column_candidates(block: Tensor, threshold: Tensor, width: int) -> tuple[Tensor, Tensor]:
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


def _duplicate_representative(unit: Tensor) -> Tensor:
    """``rep[j]`` = the lowest id whose feature row is identical to row ``j``'s (``j`` itself if unique).

    Rows are grouped by an exact integer hash of their bits (wrapping int64 arithmetic, so the order of
    summation cannot change it) and each row is then compared with its representative, so a hash
    collision can only leave a duplicate unmerged, never merge distinct rows.
    """
    n, d = unit.shape
    generator = torch.Generator().manual_seed(0)
    weights = torch.randint(1, 2**62, (d,), generator=generator, dtype=torch.int64).to(unit.device)
    keys = torch.empty(n, dtype=torch.int64, device=unit.device)
    for start in range(0, n, _HASH_ROWS):  # bounded int64 temporaries
        block = unit[start : start + _HASH_ROWS] + 0.0  # + 0.0 turns -0.0 into 0.0
        keys[start : start + _HASH_ROWS] = (block.view(torch.int32).to(torch.int64) * weights).sum(dim=1)
    _, group = torch.unique(keys, return_inverse=True)
    ids = torch.arange(n, device=unit.device)
    first = torch.full((n,), n, dtype=torch.int64, device=unit.device)
    first = first.scatter_reduce(0, group, ids, reduce="amin", include_self=True)
    representative = first[group]
    same = (unit[representative] == unit).all(dim=1)
    return torch.where(same, representative, ids)


def _semantic_knn(features: Tensor, k: int, chunk_size: int) -> _Knn:
    """Top-``k`` cosine neighbours of every item over the whole row (the item itself included).

    Cosine similarity is symmetric, so only the upper triangle is computed: the block of rows
    ``[s, e)`` is multiplied with columns ``[s, I)``; its row-wise top-K feeds rows ``[s, e)`` and its
    column-wise top-K feeds rows ``[e, I)`` (``s_ja = s_aj``). Each row keeps a running top-(K+1).
    Where the K-th and (K+1)-th similarities are closer than float32 rounding of a ``d``-term dot
    product can tell apart, the choice depends on evaluation order, so those rows are recomputed by
    :func:`_semantic_rows`, which resolves exact ties by lowest id. Half the multiply-adds of the plain
    row-chunked product, same graph.
    """
    n, d = features.shape
    k = min(k, n)
    unit, nonzero = _unit_rows(features)
    device = unit.device
    if k == n:  # every pair is an edge (tiny catalogues): no ranking, no symmetry trick needed
        return _semantic_rows(unit, nonzero, torch.arange(n, device=device), k, chunk_size)

    width = k + 1
    best_values = torch.full((n, width), -math.inf, dtype=torch.float32, device=device)
    best_indices = torch.zeros((n, width), dtype=torch.int64, device=device)
    buffer = torch.empty(min(chunk_size, n) * n, dtype=torch.float32, device=device)
    for start in range(0, n, chunk_size):
        stop = min(start + chunk_size, n)
        local = torch.arange(stop - start, device=device)
        # one reused buffer: a fresh [block, I] allocation per chunk would page-fault it in again
        sims = buffer[: (stop - start) * (n - start)].view(stop - start, n - start)
        torch.mm(unit[start:stop], unit[start:].T, out=sims)
        sims[local, local] = _self_similarity(nonzero[start:stop])
        values, indices = sims.topk(min(width, n - start), dim=1, largest=True, sorted=True)
        _merge_topk(best_values, best_indices, slice(start, stop), values, indices + start)
        if stop < n:
            below = sims[:, stop - start :]  # s_aj for a in the block, j >= stop: row j's view of it
            values, indices = _column_candidates(below, best_values[stop:, k], width)
            _merge_topk(best_values, best_indices, slice(stop, n), values, indices + start)

    rows = torch.arange(n, device=device).repeat_interleave(k)
    cols = best_indices[:, :k].reshape(-1)
    scores = best_values[:, :k].reshape(-1)
    # each of two evaluations of the same cosine is off by at most d * 2^-24 (unit vectors)
    ambiguous = (best_values[:, k - 1] - best_values[:, k] <= d * 2.0**-23).nonzero().squeeze(1)
    if ambiguous.numel():
        redone = _semantic_rows(unit, nonzero, ambiguous, k, chunk_size, _duplicate_representative(unit))
        flat = (ambiguous.unsqueeze(1) * k + torch.arange(k, device=device)).reshape(-1)
        cols[flat] = redone.cols
        scores[flat] = redone.scores
    # clamp only after ranking: turns the +inf self entry back into 1 and removes rounding past +-1
    return _Knn(n, rows, cols, scores.clamp(-1.0, 1.0))


def _semantic_rows(
    unit: Tensor,
    nonzero: Tensor,
    items: Tensor,
    k: int,
    chunk_size: int,
    representative: Tensor | None = None,
) -> _Knn:
    """Top-``k`` of the full similarity rows of ``items`` (sorted ids), ``chunk_size`` rows at a time.

    With ``representative`` (see :func:`_duplicate_representative`) each column takes the value computed
    for its representative, so duplicate items tie exactly and the lower id wins among them (a BLAS
    kernel may round the same dot product differently at different column positions).
    """
    n = unit.shape[0]
    rows, cols, scores = [], [], []
    for start in range(0, items.numel(), chunk_size):
        block = items[start : start + chunk_size]
        local = torch.arange(block.numel(), device=unit.device)
        sims = unit[block] @ unit.T  # [block, I]
        if representative is not None:
            sims = sims[:, representative]
        sims[local, block] = _self_similarity(nonzero[block])
        values, indices = _topk_lowest_index(sims, k)
        del sims
        rows.append(block.repeat_interleave(k))
        cols.append(indices.reshape(-1))
        scores.append(values.reshape(-1))
    if not rows:
        empty = torch.empty(0, dtype=torch.int64, device=unit.device)
        return _Knn(n, empty, empty, torch.empty(0, dtype=torch.float32, device=unit.device))
    return _Knn(n, torch.cat(rows), torch.cat(cols), torch.cat(scores).clamp(-1.0, 1.0))


def _cooccurrence_blocks(degree_bound: np.ndarray, chunk_size: int, max_entries: int) -> list[tuple[int, int]]:
    """Split item rows into blocks of at most ``chunk_size`` rows and ``max_entries`` bounded non-zeros."""
    n = degree_bound.shape[0]
    cumulative = np.concatenate([[0], np.cumsum(degree_bound, dtype=np.int64)])
    blocks = []
    start = 0
    while start < n:
        by_entries = int(np.searchsorted(cumulative, cumulative[start] + max_entries, side="right")) - 1
        stop = min(start + chunk_size, max(by_entries, start + 1), n)
        blocks.append((start, stop))
        start = stop
    return blocks


def _cooccurrence_knn(binary: sp.csr_matrix, k: int, chunk_size: int) -> _Knn:
    """Top-``k`` Jaccard neighbours (positive Jaccard, self excluded) of every item of ``binary`` [U, I].

    ``|a & b|`` comes from a block of rows of the sparse product ``R^T R`` and ``|a | b|`` from the
    item degrees, so only pairs of items sharing a user are ever materialised.
    """
    n_items = binary.shape[1]
    item_users = binary.T.tocsr()  # [I, U]
    item_degree = np.asarray(binary.sum(axis=0), dtype=np.int64).ravel()
    user_degree = np.asarray(binary.sum(axis=1), dtype=np.int64).ravel()
    # non-zeros of row i of R^T R are at most sum_{u in users(i)} |items(u)| and at most I
    row_nnz_bound = np.minimum(item_users @ user_degree, n_items)
    rows, cols, scores = [], [], []
    for start, stop in _cooccurrence_blocks(row_nnz_bound, chunk_size, _COOCCURRENCE_BLOCK_ENTRIES):
        shared = (item_users[start:stop] @ binary).tocsr()  # [block, I]: |users(a) & users(b)|
        shared.sort_indices()  # ascending columns within rows: the tie order the stable sorts keep
        row = np.repeat(np.arange(start, stop, dtype=np.int64), np.diff(shared.indptr))
        col = shared.indices.astype(np.int64)
        intersection = shared.data.astype(np.float64)
        off_diagonal = (row != col) & (intersection > 0)
        row, col, intersection = row[off_diagonal], col[off_diagonal], intersection[off_diagonal]
        # float64 keeps distinct fractions distinct (float32 would merge some, creating false ties), and
        # equal fractions are bitwise equal because IEEE division of exact integers is correctly rounded.
        jaccard = intersection / (item_degree[row] + item_degree[col] - intersection)
        # Unlike the authors' code we keep pairs with Jaccard exactly 1 (items bought by exactly the same
        # users); zeroing them there is a bug that drops the strongest co-occurrence evidence.
        # by row, then Jaccard descending, then lower id first: two stable sorts (~7x faster than
        # np.lexsort with three keys); ties keep the ascending column order of sorted CSR rows
        by_score = np.argsort(-jaccard, kind="stable")
        order = by_score[np.argsort(row[by_score], kind="stable")]
        row, col, jaccard = row[order], col[order], jaccard[order]
        per_row = np.bincount(row - start, minlength=stop - start)
        first_of_row = np.cumsum(per_row) - per_row
        rank = np.arange(row.shape[0]) - first_of_row[row - start]
        keep = rank < k
        rows.append(row[keep])
        cols.append(col[keep])
        scores.append(jaccard[keep].astype(np.float32))
    if not rows:
        rows, cols, scores = [np.empty(0, np.int64)], [np.empty(0, np.int64)], [np.empty(0, np.float32)]
    return _Knn(
        n_items,
        torch.from_numpy(np.concatenate(rows)),
        torch.from_numpy(np.concatenate(cols)),
        torch.from_numpy(np.concatenate(scores)),
    )


def _to_sparse(n: int, rows: Tensor, cols: Tensor, values: Tensor) -> Tensor:
    # indices are in range by construction; coalesce() sorts them and merges nothing (no duplicates)
    return torch.sparse_coo_tensor(
        torch.stack([rows, cols]), values.to(torch.float32), (n, n), device=values.device,
        check_invariants=False,
    ).coalesce()


def _semantic_from_knn(knn: _Knn, alpha: float) -> Tensor:
    keep = knn.scores >= alpha
    return _to_sparse(knn.n, knn.rows[keep], knn.cols[keep], torch.ones_like(knn.scores[keep]))


def _add_graphs(semantic: Tensor, cooccurrence: Tensor | None) -> Tensor:
    if cooccurrence is None:
        return semantic
    return (semantic + cooccurrence.to(semantic.device)).coalesce()


def _check_aligned(features: Tensor, interactions: Any) -> None:
    if interactions.shape[1] != features.shape[0]:
        raise ValueError(
            f"interactions has {interactions.shape[1]} item columns but features has {features.shape[0]} "
            "item rows; both must index the same items"
        )


# ----------------------------------------------------------------------------------------------------
# public API


def _check_refined_args(
    features: Any, interactions: Any, k_s: Any, alpha: Any, k_c: Any
) -> tuple[Tensor, sp.csr_matrix, int, float, int]:
    """Validated ``(features, binary interactions, k_s, alpha, k_c)`` of the refined-graph functions."""
    features = _check_features(features)
    k_s = _check_int("k_s", k_s, 1)
    alpha = _check_alpha(alpha)
    k_c = _check_int("k_c", k_c, 0)
    binary = _binarize_interactions(interactions)
    _check_aligned(features, binary)
    return features, binary, k_s, alpha, k_c


def semantic_graph(
    features: Tensor, k: int, alpha: float, chunk_size: int = DEFAULT_SEMANTIC_CHUNK
) -> Tensor:
    r"""Thresholded semantic kNN graph ``S~`` (Eq. 6-7).

    .. math::
        s_{ab} = \frac{e_a^\top e_b}{\|e_a\| \|e_b\|}, \qquad
        \tilde s_{ab} = \begin{cases} 1 & s_{ab} \in \operatorname{top-}K_s(s_{a\cdot})
            \text{ and } s_{ab} \ge \alpha \\ 0 & \text{otherwise} \end{cases}

    The top-``K_s`` is taken over the whole row, the item itself included, and the item itself always
    ranks first (``s_aa = 1`` is the row maximum), so every item with non-zero features keeps its
    self-loop for any ``alpha <= 1``. Among equal similarities the lower item id wins; items with
    identical (normalised) features are guaranteed to tie exactly, while similarities that differ
    only by float32 rounding (about ``d * 1e-7``) may rank either way. An item whose
    feature row is all zeros has cosine 0 against every item, itself included: for ``alpha > 0`` its row
    is empty, for ``alpha <= 0`` it links to the ``K_s`` lowest item ids. Computed in float32 in chunks of
    ``chunk_size`` rows (memory about ``chunk_size * I * 4`` bytes), on the features' device.

    Args:
        features: item embeddings ``E_I`` (any floating dtype, finite).
        k: ``K_s >= 1``; clamped to the number of items.
        alpha: similarity threshold in ``[-1, 1]``.
        chunk_size: similarity rows ranked at once (``>= 1``).

    Shapes:
        - **input:** features ``[I, d]``
        - **output:** coalesced sparse COO float32 ``[I, I]``, ``<= I * min(K_s, I)`` non-zeros, on
          ``features.device``; row ``a`` holds ``a``'s neighbours (directed, not symmetrised).
    """
    features = _check_features(features)
    k = _check_int("k", k, 1)
    alpha = _check_alpha(alpha)
    chunk_size = _check_int("chunk_size", chunk_size, 1)
    return _semantic_from_knn(_semantic_knn(features, k, chunk_size), alpha)


def cooccurrence_graph(
    interactions: sp.spmatrix | sp.sparray, k: int, chunk_size: int = DEFAULT_COOCCURRENCE_CHUNK
) -> Tensor:
    r"""Weighted co-occurrence kNN graph ``C~`` (Eq. 8-9).

    .. math::
        c_{ab} = \frac{|\mathcal U_a \cap \mathcal U_b|}{|\mathcal U_a \cup \mathcal U_b|}, \qquad
        \tilde c_{ab} = \begin{cases} c_{ab} & b \ne a,\ c_{ab} > 0,\
            c_{ab} \in \operatorname{top-}K_c(c_{a\cdot}) \\ 0 & \text{otherwise} \end{cases}

    ``U_a`` is the set of users who interacted with item ``a`` in ``interactions``. Pass the TRAINING
    interactions only: valid/test interactions here would leak the evaluation targets into the graph.
    Every stored non-zero counts as one interaction (ratings are binarised, duplicates merged). Among
    equal Jaccard scores the lower item id wins. Items without users have an empty row. Pairs with
    Jaccard exactly 1 are kept (the authors' code drops them, a bug). ``|a & b|`` comes from the sparse
    product ``R^T R`` built ``chunk_size`` item rows at a time (fewer when rows are dense); no dense
    ``U x I`` or ``I x I`` matrix is formed.

    Args:
        interactions: binary training interactions ``R`` as any scipy.sparse matrix/array.
        k: ``K_c >= 1``; clamped to the number of items.
        chunk_size: item rows of ``R^T R`` built at once (``>= 1``).

    Shapes:
        - **input:** interactions ``[U, I]``
        - **output:** coalesced sparse COO float32 ``[I, I]`` on the CPU, ``<= I * min(K_c, I - 1)``
          non-zeros, values in ``(0, 1]``; directed, not symmetrised.
    """
    binary = _binarize_interactions(interactions)
    k = _check_int("k", k, 1)
    chunk_size = _check_int("chunk_size", chunk_size, 1)
    knn = _cooccurrence_knn(binary, k, chunk_size)
    return _to_sparse(knn.n, knn.rows, knn.cols, knn.scores)


def refined_item_graph(
    features: Tensor, interactions: sp.spmatrix | sp.sparray, k_s: int, alpha: float, k_c: int
) -> Tensor:
    r"""The refined item-item graph ``S* = S~ + C~`` (Eq. 10), before normalisation.

    See :func:`semantic_graph` (``S~``) and :func:`cooccurrence_graph` (``C~``). The two directed kNN
    graphs are added as they are (no symmetrisation); an edge present in both has value
    ``1 + c_ab``. ``k_c = 0`` means no co-occurrence graph (the ablation), so ``S* = S~``.
    ``interactions`` must be the TRAINING interactions only.

    Args:
        features: item embeddings ``E_I``.
        interactions: binary training interactions ``R``.
        k_s: ``K_s >= 1``. alpha: threshold in ``[-1, 1]``. k_c: ``K_c >= 0``.

    Shapes:
        - **input:** features ``[I, d]``, interactions ``[U, I]``
        - **output:** coalesced sparse COO float32 ``[I, I]`` on ``features.device``.
    """
    features, binary, k_s, alpha, k_c = _check_refined_args(features, interactions, k_s, alpha, k_c)
    semantic = semantic_graph(features, k_s, alpha)
    cooccurrence = cooccurrence_graph(binary, k_c) if k_c > 0 else None
    return _add_graphs(semantic, cooccurrence)


def normalize_adjacency(adj: Tensor) -> Tensor:
    r"""Symmetric degree normalisation ``D^-1/2 A D^-1/2`` (Eq. 11) with ``D`` the row sums of ``A``.

    .. math::
        \hat a_{ab} = \frac{a_{ab}}{\sqrt{d_a}\,\sqrt{d_b}}, \qquad d_a = \sum_b a_{ab}

    ``A`` may be directed: ``D`` holds row sums (out-degrees) and is applied on both sides, as in the
    paper. ``d^-1/2`` is taken as 0 where ``d = 0``, so rows of degree 0 stay 0 (as does any entry
    pointing to an item whose row sum is 0) instead of becoming inf/NaN.

    Shapes:
        - **input:** adj sparse (COO or CSR) ``[I, I]`` with non-negative row sums
        - **output:** coalesced sparse COO ``[I, I]``, same dtype, device and sparsity pattern.
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


def propagate(adj_norm: Tensor, x: Tensor, layers: int) -> Tensor:
    r"""Multi-layer propagation with layer sum (Eq. 11-12).

    .. math::
        E^{(0)} = X, \qquad E^{(l)} = \hat A E^{(l-1)}, \qquad E^* = \sum_{l=0}^{L} E^{(l)}

    Uses ``torch.sparse.mm`` (differentiable w.r.t. ``x``); ``layers = 0`` returns a copy of ``x``.

    Shapes:
        - **input:** adj_norm sparse (COO or CSR) ``[I, I]``, x ``[I, d]``
        - **output:** ``[I, d]``, dtype and device of ``x``.
    """
    if not isinstance(adj_norm, Tensor) or adj_norm.layout not in (torch.sparse_coo, torch.sparse_csr):
        raise ValueError("adj_norm must be a torch sparse COO or CSR tensor [I, I]")
    if adj_norm.dim() != 2 or adj_norm.shape[0] != adj_norm.shape[1]:
        raise ValueError(f"adj_norm must be square [I, I], got {tuple(adj_norm.shape)}")
    if not isinstance(x, Tensor) or x.dim() != 2 or x.shape[0] != adj_norm.shape[1]:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"x must be a tensor [I, d] with I = {adj_norm.shape[1]}, got {shape}")
    layers = _check_int("layers", layers, 0)
    adj_norm = adj_norm.to(dtype=x.dtype)
    total = x.clone()
    hidden = x
    for _ in range(layers):
        hidden = torch.sparse.mm(adj_norm, hidden)
        total = total + hidden
    return total


# ----------------------------------------------------------------------------------------------------
# caching and statistics


def _save_graph(graph: Tensor, path: Path) -> None:
    graph = graph.coalesce().cpu()
    torch.save({"indices": graph.indices(), "values": graph.values(), "size": list(graph.shape)}, path)


def _load_graph(path: Path) -> Tensor:
    stored = torch.load(path, map_location="cpu", weights_only=True)
    return torch.sparse_coo_tensor(
        stored["indices"], stored["values"], tuple(stored["size"]), is_coalesced=True,
        check_invariants=True,  # a file from disk: verify it before trusting its indices
    )


def cached_refined_item_graph(
    features: Tensor,
    interactions: sp.spmatrix | sp.sparray,
    k_s: int,
    alpha: float,
    k_c: int,
    cache_dir: str | Path,
) -> Tensor:
    """:func:`refined_item_graph`, stored under ``cache_dir`` and reused while its inputs are unchanged.

    The file name carries a hash of the features (as the float32 values the graph is computed from),
    the binarised interactions, ``(k_s, alpha, k_c)`` and :data:`GRAPH_CODE_VERSION`; a change in any of
    them yields a new key and thus a rebuild. Writes are atomic and a file lock makes concurrent callers
    build once (see :mod:`mllmrec.cache`); ``<file>.meta.json`` records how the graph was made.

    Shapes:
        - **input:** features ``[I, d]``, interactions ``[U, I]``
        - **output:** coalesced sparse COO float32 ``[I, I]`` on ``features.device``.
    """
    features, binary, k_s, alpha, k_c = _check_refined_args(features, interactions, k_s, alpha, k_c)
    features_hash = stable_hash(features.detach().to(torch.float32).cpu())
    interactions_hash = stable_hash(binary)
    # plain int/float so that e.g. numpy scalars and Python numbers give the same key
    params = {"k_s": k_s, "alpha": alpha, "k_c": k_c}
    key = stable_hash(GRAPH_CODE_VERSION, features_hash, interactions_hash, params)
    path = Path(cache_dir) / f"refined_item_graph-{key}.pt"
    meta = {
        "graph_code_version": GRAPH_CODE_VERSION,
        "features_hash": features_hash,
        "features_shape": list(features.shape),
        "interactions_hash": interactions_hash,
        "interactions_shape": list(binary.shape),
        **params,
    }
    graph, _ = build_once(
        path,
        build=lambda: refined_item_graph(features, binary, k_s, alpha, k_c),
        save=_save_graph,
        load=_load_graph,
        meta=meta,
    )
    return graph.to(features.device)


def graph_statistics(
    features: Tensor, interactions: sp.spmatrix | sp.sparray, k_s: int, alpha: float, k_c: int
) -> dict[str, Any]:
    """Edge counts of each refinement step of :func:`refined_item_graph` (for logs and Fig. 1b).

    Returns a dict with
        ``items``; ``knn_edges`` (top-``K_s`` semantic edges before alpha pruning, ``I * min(K_s, I)``);
        ``alpha_kept`` / ``alpha_pruned`` (of those, edges with similarity ``>=`` / ``<`` alpha);
        ``self_loops`` (of the final graph; only ``S~`` has any); ``cooccurrence_edges`` (``nnz(C~)``);
        ``overlap_edges`` (pairs in both ``S~`` and ``C~``); ``final_edges`` (``nnz(S~ + C~)``);
        ``out_degree_mean`` / ``_min`` / ``_max`` (non-zeros per row of the final graph);
        ``knn_similarities`` (float32 numpy array: cosine of every top-``K_s`` edge except self-loops,
        before pruning: the histogram of the paper's Fig. 1b).
    """
    features, binary, k_s, alpha, k_c = _check_refined_args(features, interactions, k_s, alpha, k_c)
    knn = _semantic_knn(features, k_s, DEFAULT_SEMANTIC_CHUNK)
    semantic = _semantic_from_knn(knn, alpha)
    cooccurrence = cooccurrence_graph(binary, k_c) if k_c > 0 else None
    final = _add_graphs(semantic, cooccurrence)
    cooccurrence_edges = int(cooccurrence._nnz()) if cooccurrence is not None else 0
    rows, cols = final.indices()
    out_degree = torch.bincount(rows, minlength=knn.n)
    empty = knn.n == 0
    return {
        "items": knn.n,
        "knn_edges": int(knn.rows.numel()),
        "alpha_kept": int(semantic._nnz()),
        "alpha_pruned": int(knn.rows.numel() - semantic._nnz()),
        "self_loops": int((rows == cols).sum()),
        "cooccurrence_edges": cooccurrence_edges,
        # values are positive, so adding the graphs merges shared pairs and never cancels one
        "overlap_edges": int(semantic._nnz() + cooccurrence_edges - final._nnz()),
        "final_edges": int(final._nnz()),
        "out_degree_mean": 0.0 if empty else float(out_degree.float().mean()),
        "out_degree_min": 0 if empty else int(out_degree.min()),
        "out_degree_max": 0 if empty else int(out_degree.max()),
        "knn_similarities": knn.scores[knn.rows != knn.cols].cpu().numpy().astype(np.float32),
    }
