"""The two directed kNN graphs over items of MLLMRec's refined graph (Section 4.2, Eq. 6-9).

* the *semantic* graph ``S~`` (Eq. 6-7): cosine similarity of the items' encoded multimodal
  descriptions; per row the top-``K_s`` entries over the whole row (the item itself included, so every
  item keeps a self-loop as in FREEDOM and the authors' code), of which only those with similarity
  ``>= alpha`` survive, each with value 1;
* the *co-occurrence* graph ``C~`` (Eq. 8-9): Jaccard similarity of the items' sets of training users;
  per row the top-``K_c`` items with positive Jaccard, the item itself excluded, weighted by the score.

Scale: nothing here builds a dense ``I x I`` or ``U x I`` matrix. Similarities are ranked in row chunks
(at most ``chunk_size x I`` floats at a time, ``torch.mm`` + ``topk``, so the same code runs on a GPU
when the features live there; cosine being symmetric, only the upper triangle is multiplied) and
co-occurrences come from the sparse product ``R^T R`` (scipy), computed a block of item rows at a time,
so a popular user or item that makes some rows dense cannot blow up memory.

Ties are broken deterministically everywhere: among equal scores the lower item id wins (in the
semantic graph the item itself always comes first in its own row).

The public builders check their arguments (:func:`~mllmrec.graph.checks.check_args`);
:func:`semantic_knn`, :func:`cooccurrence_knn` and :func:`semantic_from_knn` take checked ones and are
what :mod:`mllmrec.graph.refined` builds on.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor

from mllmrec.graph.checks import check_args
from mllmrec.graph.topk import Knn, column_candidates, merge_topk, to_sparse, topk_lowest_index

__all__ = [
    "DEFAULT_SEMANTIC_CHUNK",
    "DEFAULT_COOCCURRENCE_CHUNK",
    "semantic_graph",
    "cooccurrence_graph",
    "semantic_knn",
    "cooccurrence_knn",
    "semantic_from_knn",
]

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


def _self_similarity(nonzero: Tensor) -> Tensor:
    """Diagonal entries used while ranking: ``+inf`` for non-zero items, 0 for all-zero ones.

    cosine(a, a) = 1 is the row maximum of a non-zero item; ranking it as ``+inf`` guarantees its
    self-loop even when an exact duplicate with a lower id (or rounding above 1) would tie with it.
    The value is clamped back to 1 once ranking is done.
    """
    return torch.where(nonzero, math.inf, 0.0).to(torch.float32)


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


def semantic_knn(features: Tensor, k_s: int, chunk_size: int) -> Knn:
    """Top-``k_s`` cosine neighbours of every item over the whole row (the item itself included).

    Cosine similarity is symmetric, so only the upper triangle is computed: the block of rows
    ``[s, e)`` is multiplied with columns ``[s, I)``; its row-wise top-K feeds rows ``[s, e)`` and its
    column-wise top-K feeds rows ``[e, I)`` (``s_ja = s_aj``). Each row keeps a running top-(K+1).
    Where the K-th and (K+1)-th similarities are closer than float32 rounding of a ``d``-term dot
    product can tell apart, the choice depends on evaluation order, so those rows are recomputed by
    :func:`_semantic_rows`, which resolves exact ties by lowest id. Half the multiply-adds of the plain
    row-chunked product, same graph.
    """
    n, d = features.shape
    k = min(k_s, n)
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
        merge_topk(best_values, best_indices, slice(start, stop), values, indices + start)
        if stop < n:
            below = sims[:, stop - start :]  # s_aj for a in the block, j >= stop: row j's view of it
            values, indices = column_candidates(below, best_values[stop:, k], width)
            merge_topk(best_values, best_indices, slice(stop, n), values, indices + start)

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
    return Knn(n, rows, cols, scores.clamp(-1.0, 1.0))


def _semantic_rows(
    unit: Tensor,
    nonzero: Tensor,
    items: Tensor,
    k: int,
    chunk_size: int,
    representative: Tensor | None = None,
) -> Knn:
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
        values, indices = topk_lowest_index(sims, k)
        del sims
        rows.append(block.repeat_interleave(k))
        cols.append(indices.reshape(-1))
        scores.append(values.reshape(-1))
    if not rows:
        empty = torch.empty(0, dtype=torch.int64, device=unit.device)
        return Knn(n, empty, empty, torch.empty(0, dtype=torch.float32, device=unit.device))
    return Knn(n, torch.cat(rows), torch.cat(cols), torch.cat(scores).clamp(-1.0, 1.0))


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


def cooccurrence_knn(binary: sp.csr_matrix, k_c: int, chunk_size: int) -> Knn:
    """Top-``k_c`` Jaccard neighbours (positive Jaccard, self excluded) of every item of ``binary`` [U, I].

    ``|a & b|`` comes from a block of rows of the sparse product ``R^T R`` and ``|a | b|`` from the
    item degrees, so only pairs of items sharing a user are ever materialised. ``k_c = 0`` returns no
    entries without computing anything.
    """
    n_items = binary.shape[1]
    rows, cols, scores = [], [], []
    item_users = binary.T.tocsr()  # [I, U]
    item_degree = np.asarray(binary.sum(axis=0), dtype=np.int64).ravel()
    user_degree = np.asarray(binary.sum(axis=1), dtype=np.int64).ravel()
    # non-zeros of row i of R^T R are at most sum_{u in users(i)} |items(u)| and at most I
    row_nnz_bound = np.minimum(item_users @ user_degree, n_items)
    blocks = _cooccurrence_blocks(row_nnz_bound, chunk_size, _COOCCURRENCE_BLOCK_ENTRIES) if k_c > 0 else []
    for start, stop in blocks:
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
        keep = rank < k_c
        rows.append(row[keep])
        cols.append(col[keep])
        scores.append(jaccard[keep].astype(np.float32))
    if not rows:
        rows, cols, scores = [np.empty(0, np.int64)], [np.empty(0, np.int64)], [np.empty(0, np.float32)]
    return Knn(
        n_items,
        torch.from_numpy(np.concatenate(rows)),
        torch.from_numpy(np.concatenate(cols)),
        torch.from_numpy(np.concatenate(scores)),
    )


def semantic_from_knn(knn: Knn, alpha: float) -> Tensor:
    """``S~`` (Eq. 7): the kNN entries with similarity ``>= alpha``, each with value 1.

    Shapes:
        - **output:** coalesced sparse COO float32 ``[I, I]`` on the kNN's device.
    """
    keep = knn.scores >= alpha
    return to_sparse(knn.n, knn.rows[keep], knn.cols[keep], torch.ones_like(knn.scores[keep]))


def semantic_graph(
    features: Tensor, k_s: int, alpha: float, chunk_size: int = DEFAULT_SEMANTIC_CHUNK
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
        k_s: ``K_s >= 1``; clamped to the number of items.
        alpha: similarity threshold in ``[-1, 1]``.
        chunk_size: similarity rows ranked at once (``>= 1``).

    Shapes:
        - **input:** features ``[I, d]``
        - **output:** coalesced sparse COO float32 ``[I, I]``, ``<= I * min(K_s, I)`` non-zeros, on
          ``features.device``; row ``a`` holds ``a``'s neighbours (directed, not symmetrised).
    """
    args = check_args(features=features, k_s=k_s, alpha=alpha, chunk_size=chunk_size)
    return semantic_from_knn(semantic_knn(args["features"], args["k_s"], args["chunk_size"]), args["alpha"])


def cooccurrence_graph(
    interactions: sp.spmatrix | sp.sparray, k_c: int, chunk_size: int = DEFAULT_COOCCURRENCE_CHUNK
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
        k_c: ``K_c >= 0``; clamped to the number of items; 0 gives an empty graph (no co-occurrence).
        chunk_size: item rows of ``R^T R`` built at once (``>= 1``).

    Shapes:
        - **input:** interactions ``[U, I]``
        - **output:** coalesced sparse COO float32 ``[I, I]`` on the CPU, ``<= I * min(K_c, I - 1)``
          non-zeros, values in ``(0, 1]``; directed, not symmetrised.
    """
    args = check_args(interactions=interactions, k_c=k_c, chunk_size=chunk_size)
    knn = cooccurrence_knn(args["interactions"], args["k_c"], args["chunk_size"])
    return to_sparse(knn.n, knn.rows, knn.cols, knn.scores)

