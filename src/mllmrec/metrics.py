"""Full-ranking top-K metrics with MMRec's protocol (Recall@K, NDCG@K), exact and streaming.

Protocol (MMRec ``TopKEvaluator``, which the paper's numbers use):

* every item is ranked for every evaluated user, except the items in that user's ``exclude`` row,
  which are set to ``-inf`` before top-K and can never count as a hit;
* ``Recall@K = |top-K ∩ T_u| / |T_u|`` — the denominator is ``|T_u|``, **not** ``min(K, |T_u|)``;
* ``NDCG@K = DCG@K / IDCG@K`` with ``DCG@K = sum_{i=1..K} hit_i / log2(i + 1)`` (``i`` the 1-based
  rank) and ``IDCG@K = sum_{i=1..min(|T_u|, K)} 1 / log2(i + 1)``;
* both are averaged over the users with at least one truth item; users without truth are not counted.

At test time MMRec excludes only the training items (validation items stay rankable). RecBole instead
also excludes the validation items: pass ``exclude = train + valid`` (any scipy sparse matrix; values
are binarised, so overlapping entries summing to 2 are fine) to get that protocol.

A truth item that is also excluded still counts in ``|T_u|`` (it can never be hit), as in MMRec.

``K`` larger than the number of items ``I`` is allowed: a ranking has only ``I`` positions, so
``@K`` is then computed over all ``I`` (the ideal DCG runs over ``min(|T_u|, K) <= I`` positions
anyway). The keys keep the requested ``K``.

Ties between equal scores are broken by :func:`torch.topk` (unspecified order), as in MMRec.

One code path: :func:`topk_metrics` and :func:`evaluate_full_ranking` both feed
:class:`RankingMetrics`, whose :meth:`RankingMetrics.update` does a single top-``max(K)`` per batch and
whose per-user formulas are written once in :func:`per_user_metrics`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor

__all__ = [
    "RankingMetrics",
    "evaluate_full_ranking",
    "per_user_metrics",
    "topk_metrics",
]


def _as_binary_csr(matrix: object, name: str) -> sp.csr_matrix:
    """Return ``matrix`` as a 0/1 float64 CSR matrix with sorted, duplicate-free indices.

    Shapes:
        input ``[U, I]`` (any scipy sparse format) -> ``[U, I]`` CSR.
    """
    if not sp.issparse(matrix):
        raise ValueError(
            f"{name} must be a scipy.sparse matrix of shape [n_users, n_items], got "
            f"{type(matrix).__name__}; build it with scipy.sparse.csr_matrix((ones, (users, items)))"
        )
    csr = sp.csr_matrix(matrix, dtype=np.float64, copy=True)
    csr.sum_duplicates()  # also sorts indices, which the hit search relies on
    csr.eliminate_zeros()  # an explicit 0 is "not an interaction"
    csr.data[:] = 1.0  # train + valid may sum to 2 where they overlap
    return csr


def _check_ks(ks: Iterable[int]) -> tuple[int, ...]:
    """Validate ``ks`` (positive ints) and drop repeats, keeping the first order."""
    ks = tuple(ks)
    if not ks:
        raise ValueError("ks must name at least one cut-off, e.g. ks=(10, 20)")
    out: list[int] = []
    for k in ks:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"ks must be positive integers, got {k!r} in ks={ks!r}")
        if int(k) not in out:
            out.append(int(k))
    return tuple(out)


def _rows_coo(csr: sp.csr_matrix, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Batch-local (row, column) coordinates of the non-zeros of ``csr[rows]``, vectorised.

    Row ``b`` of the result refers to ``rows[b]``; columns are sorted within each row.

    Shapes:
        ``rows``: ``[B]`` -> two ``[nnz(csr[rows])]`` int64 arrays.
    """
    starts = csr.indptr[rows].astype(np.int64)
    lengths = csr.indptr[rows + 1].astype(np.int64) - starts
    total = int(lengths.sum())
    batch_row = np.repeat(np.arange(len(rows), dtype=np.int64), lengths)
    # position of every entry inside its own row: global counter minus the row's offset
    offsets = np.cumsum(lengths) - lengths
    within = np.arange(total, dtype=np.int64) - np.repeat(offsets, lengths)
    cols = csr.indices[np.repeat(starts, lengths) + within].astype(np.int64)
    return batch_row, cols


def _discount(max_k: int) -> Tensor:
    """Position discounts ``1 / log2(i + 1)`` for ranks ``i = 1..max_k``.

    Shapes:
        ``[max_k]`` float64.
    """
    return 1.0 / torch.log2(torch.arange(2, max_k + 2, dtype=torch.float64))


def per_user_metrics(
    hits: Tensor, n_truth: Tensor, ks: Sequence[int], discount: Tensor
) -> dict[str, Tensor]:
    r"""Per-user Recall@K and NDCG@K from the hit pattern of a top-``max_k`` ranking.

    .. math::
        \mathrm{Recall@K}_u = \frac{\sum_{i \le K} h_{u,i}}{|T_u|}, \qquad
        \mathrm{NDCG@K}_u = \frac{\sum_{i \le K} h_{u,i} / \log_2(i+1)}
                                 {\sum_{i \le \min(|T_u|, K)} 1 / \log_2(i+1)}

    with ``K`` clamped to ``max_k = hits.shape[1]`` (the ranking length).

    Args:
        hits: ``hits[b, i]`` is True when the item at 1-based rank ``i + 1`` is a truth item.
        n_truth: ``|T_u|`` per row; must be >= 1 (rows without truth are not evaluated).
        ks: cut-offs.
        discount: ``1 / log2(i + 1)`` for ``i = 1..max_k`` (see :func:`_discount`).

    Shapes:
        ``hits``: ``[B, max_k]`` bool, ``n_truth``: ``[B]``, ``discount``: ``[max_k]`` ->
        ``{"recall@K": [B], "ndcg@K": [B], ...}`` float64, in the order of ``ks``.
    """
    max_k = hits.shape[1]
    h = hits.to(torch.float64)
    n = n_truth.to(torch.float64)
    hits_cum = h.cumsum(dim=1)  # [B, max_k]: hits within the first i + 1 ranks
    dcg_cum = (h * discount).cumsum(dim=1)  # [B, max_k]
    idcg_table = torch.cat([discount.new_zeros(1), discount.cumsum(0)])  # [max_k + 1], IDCG of j hits
    out: dict[str, Tensor] = {}
    for k in ks:
        kk = min(k, max_k)
        ideal = idcg_table[torch.clamp(n_truth.long(), max=kk)]
        out[f"recall@{k}"] = hits_cum[:, kk - 1] / n
        out[f"ndcg@{k}"] = dcg_cum[:, kk - 1] / ideal
    return out


class RankingMetrics:
    """Streaming full-ranking Recall@K / NDCG@K (MMRec protocol) over batches of users.

    Never holds the ``U x I`` score matrix: each :meth:`update` receives the scores of a batch of
    users, masks their ``exclude`` items to ``-inf`` (on a copy — the caller's tensor is untouched),
    takes one top-``max(ks)``, looks up which of those items are truth items and stores the per-user
    metrics. :meth:`compute` averages them over :meth:`eval_users`.

    A user updated twice keeps its last result (so padded / repeated users, e.g. from a distributed
    sampler, are not double counted). Rows of users without truth are accepted and ignored.

    Args:
        exclude: items never ranked per user (training items; ``train + valid`` for RecBole's test
            protocol). Any scipy sparse ``[U, I]``; values are binarised.
        truth: held-out items per user (validation or test split), scipy sparse ``[U, I]``.
        ks: cut-offs; ``K > I`` is computed over all ``I`` items (see module docstring).

    Shapes:
        ``exclude``, ``truth``: ``[U, I]``; :meth:`update`: ``users [B]``, ``scores [B, I]``.
    """

    def __init__(
        self,
        exclude: sp.spmatrix | sp.sparray,
        truth: sp.spmatrix | sp.sparray,
        ks: Iterable[int] = (10, 20),
    ) -> None:
        self.ks = _check_ks(ks)
        self._exclude = _as_binary_csr(exclude, "exclude")
        truth_csr = _as_binary_csr(truth, "truth")
        if self._exclude.shape != truth_csr.shape:
            raise ValueError(
                f"exclude has shape {self._exclude.shape} but truth has shape {truth_csr.shape}; "
                "both must be [n_users, n_items] over the same id spaces"
            )
        self.n_users, self.n_items = truth_csr.shape
        n_truth = np.diff(truth_csr.indptr).astype(np.int64)  # |T_u|, excluded truth items included
        self._eval_users = np.flatnonzero(n_truth > 0)
        if self._eval_users.size == 0:
            raise ValueError(
                "truth has no interactions, so no user can be evaluated; pass the validation or "
                "test split (with at least one item) as truth"
            )
        self._n_truth = torch.from_numpy(n_truth)
        # hittable truth = truth minus excluded items: an excluded item can only reach the top-K when
        # fewer than K items are rankable, and it must never count as a hit then
        hittable = truth_csr - truth_csr.multiply(self._exclude)
        hittable = sp.csr_matrix(hittable)
        hittable.eliminate_zeros()
        hittable.sort_indices()
        self._hittable = hittable
        self._max_k = min(max(self.ks), self.n_items)
        self._discount = _discount(self._max_k)
        self._values = {
            name: torch.zeros(self.n_users, dtype=torch.float64)
            for k in self.ks
            for name in (f"recall@{k}", f"ndcg@{k}")
        }
        self._seen = torch.zeros(self.n_users, dtype=torch.bool)

    def eval_users(self) -> np.ndarray:
        """Users with at least one truth item, sorted ascending (the users averaged over).

        Shapes:
            ``[n_eval]`` int64.
        """
        return self._eval_users.copy()

    def reset(self) -> None:
        """Forget every update (keeps ``exclude``, ``truth`` and ``ks``)."""
        for v in self._values.values():
            v.zero_()
        self._seen.zero_()

    def _check_batch(self, users: Tensor, scores: Tensor) -> np.ndarray:
        """Validate one batch and return its users as a CPU int64 array."""
        if not isinstance(users, Tensor) or users.dim() != 1:
            raise ValueError("users must be a 1-D integer tensor of user ids, shape [B]")
        if users.dtype.is_floating_point or users.dtype == torch.bool:
            raise ValueError(f"users must hold integer ids, got dtype {users.dtype}")
        if not isinstance(scores, Tensor) or scores.dim() != 2:
            raise ValueError("scores must be a 2-D tensor of shape [B, n_items]")
        if not scores.dtype.is_floating_point:  # -inf masking needs a float dtype
            raise ValueError(f"scores must be a floating-point tensor, got {scores.dtype}; use .float()")
        if scores.shape != (users.shape[0], self.n_items):
            raise ValueError(
                f"scores has shape {tuple(scores.shape)} but must be [len(users), n_items] = "
                f"[{users.shape[0]}, {self.n_items}]"
            )
        u = users.detach().cpu().numpy().astype(np.int64, copy=False)
        if u.size and (u.min() < 0 or u.max() >= self.n_users):
            raise ValueError(f"users must lie in [0, {self.n_users}), got min {u.min()}, max {u.max()}")
        return u

    @torch.no_grad()
    def update(self, users: Tensor, scores: Tensor, *, inplace: bool = False) -> None:
        """Rank all items for ``users`` and store their per-user metrics.

        Args:
            users: user ids of the rows of ``scores``.
            scores: scores of every item for those users.
            inplace: by default the excluded entries are masked on a copy and ``scores`` is left
                untouched. ``True`` writes ``-inf`` into ``scores`` itself (as MMRec and RecBole do
                with the model's output), saving one ``[B, I]`` copy — about a third of the cost on
                CPU. Only for a temporary tensor the caller does not use afterwards.

        Shapes:
            ``users``: ``[B]`` int, ``scores``: ``[B, I]`` float on any device (masks and the hit
            lookup run on ``scores.device``; only the ``[B, max_k]`` hit pattern comes back to CPU).
        """
        u = self._check_batch(users, scores)
        if u.size == 0:
            return
        device = scores.device
        rows, cols = _rows_coo(self._exclude, u)
        index = (torch.from_numpy(rows).to(device), torch.from_numpy(cols).to(device))
        neg_inf = torch.tensor(float("-inf"), dtype=scores.dtype, device=device)
        if inplace:
            masked = scores.detach().index_put_(index, neg_inf)
        else:  # out-of-place: one [B, I] copy per batch, the caller's scores stay intact
            masked = scores.detach().index_put(index, neg_inf)
        top_values, top = torch.topk(masked, self._max_k, dim=1, sorted=True)  # [B, max_k]
        del masked
        self._record(u, top_values, top)

    @torch.no_grad()
    def update_blocks(self, users: Tensor, blocks: Iterable[tuple[int, Tensor]]) -> None:
        """:meth:`update` from the score matrix given as consecutive column blocks, never whole.

        ``blocks`` yields ``(start, scores[:, start:start + w])`` covering ``[0, I)`` in order. Each
        block is masked IN PLACE (``-inf`` at the excluded items), its top-``max_k`` taken and merged
        into a running top-``max_k`` (``[B, 2 max_k]`` at a time); the caller may reuse a block's
        storage for the next one. Same ranking as :meth:`update` up to the order of exactly equal
        scores (which neither path specifies). Cheaper at large ``I``: no ``[B, I]`` tensor is
        allocated (at 1M items a fresh 512 MiB score matrix per batch costs page faults as much as a
        third of its product) and each block is ranked while it is still in cache.

        Shapes:
            ``users``: ``[B]`` int; each block ``[B, w]`` float on any device.
        """
        u = self._check_users(users)
        if u.size == 0:
            return
        rows, cols = _rows_coo(self._exclude, u)
        order = np.argsort(cols, kind="stable")  # excluded entries by column: one slice per block
        rows, cols = rows[order], cols[order]
        best_values: Tensor | None = None
        best_items: Tensor | None = None
        covered = 0
        for start, block in blocks:
            if start != covered or block.dim() != 2 or block.shape[0] != u.size or not block.dtype.is_floating_point:
                raise ValueError(f"score blocks must be float [{u.size}, w] and cover the items in order: "
                                 f"expected start {covered}, got {start} with shape {tuple(block.shape)}")
            stop = start + block.shape[1]
            first, last = np.searchsorted(cols, [start, stop])
            device = block.device
            index = (torch.from_numpy(rows[first:last]).to(device), torch.from_numpy(cols[first:last] - start).to(device))
            block.index_put_(index, torch.tensor(float("-inf"), dtype=block.dtype, device=device))
            values, items = torch.topk(block, min(self._max_k, block.shape[1]), dim=1)
            items = items + start
            if best_values is not None:
                values, items = torch.cat([best_values, values], dim=1), torch.cat([best_items, items], dim=1)
                values, position = torch.topk(values, min(self._max_k, values.shape[1]), dim=1)
                items = items.gather(1, position)
            best_values, best_items = values, items
            covered = stop
        if covered != self.n_items or best_values is None:
            raise ValueError(f"score blocks covered items [0, {covered}) of [0, {self.n_items})")
        top_values, position = torch.sort(best_values, dim=1, descending=True)
        self._record(u, top_values, best_items.gather(1, position))

    def _check_users(self, users: Tensor) -> np.ndarray:
        """Validate a batch's user ids and return them as a CPU int64 array."""
        if not isinstance(users, Tensor) or users.dim() != 1:
            raise ValueError("users must be a 1-D integer tensor of user ids, shape [B]")
        if users.dtype.is_floating_point or users.dtype == torch.bool:
            raise ValueError(f"users must hold integer ids, got dtype {users.dtype}")
        u = users.detach().cpu().numpy().astype(np.int64, copy=False)
        if u.size and (u.min() < 0 or u.max() >= self.n_users):
            raise ValueError(f"users must lie in [0, {self.n_users}), got min {u.min()}, max {u.max()}")
        return u

    def _record(self, u: np.ndarray, top_values: Tensor, top: Tensor) -> None:
        """Store the metrics of users ``u`` [B] from their ranked top-``max_k`` ``[B, max_k]``."""
        # topk ranks NaN above every number, so a NaN score of a rankable item surfaces here; checking
        # [B, max_k] instead of [B, I] saves a full pass over the scores
        if bool(torch.isnan(top_values).any()):
            raise ValueError("scores contain NaN; the model diverged or score_fn is wrong")
        hits = self._lookup_hits(u, top)  # [B, max_k] bool, CPU
        n_truth = self._n_truth[torch.from_numpy(u)]
        keep = n_truth > 0  # rows without truth are not evaluated
        if not bool(keep.any()):
            return
        idx = torch.from_numpy(u)[keep]
        values = per_user_metrics(hits[keep], n_truth[keep], self.ks, self._discount)
        for name, v in values.items():
            self._values[name][idx] = v
        self._seen[idx] = True

    def _lookup_hits(self, u: np.ndarray, top: Tensor) -> Tensor:
        """Whether each top-K item is a (non-excluded) truth item, by sorted-key search.

        Truth entries of the batch are encoded as ``b * I + item``, which is sorted because CSR rows
        are visited in order and columns are sorted within a row; each top-K item is then found by
        one vectorised ``searchsorted``.

        Shapes:
            ``u``: ``[B]``, ``top``: ``[B, max_k]`` -> ``[B, max_k]`` bool on CPU.
        """
        device = top.device
        rows, cols = _rows_coo(self._hittable, u)
        if rows.size == 0:
            return torch.zeros(top.shape, dtype=torch.bool)
        keys = torch.from_numpy(rows * self.n_items + cols).to(device)  # [nnz], ascending
        batch_row = torch.arange(top.shape[0], device=device, dtype=torch.int64).unsqueeze(1)
        query = batch_row * self.n_items + top  # [B, max_k]
        pos = torch.searchsorted(keys, query).clamp_(max=keys.numel() - 1)
        return (keys[pos] == query).cpu()

    def synchronize(self, all_gather: Callable[[Tensor], Tensor]) -> None:
        """Merge the per-user results of several processes (DDP), in place, before :meth:`compute`.

        Each process evaluated a subset of users; ``all_gather`` maps a tensor ``[U]`` to ``[P, U]``
        (e.g. ``LightningModule.all_gather``). A user's result is the same wherever it was computed
        and 0 where it was not, so the element-wise maximum over processes is the merged value (a
        user padded onto two ranks by a distributed sampler is not counted twice).
        """
        for name, values in self._values.items():
            self._values[name] = all_gather(values).reshape(-1, self.n_users).amax(0).cpu()
        seen = all_gather(self._seen.to(torch.uint8)).reshape(-1, self.n_users).amax(0)
        self._seen = seen.cpu().bool()

    def compute(self) -> dict[str, float]:
        """Mean of every metric over :meth:`eval_users`.

        Raises:
            RuntimeError: if some evaluated users were never passed to :meth:`update` — a partial
                average would silently be a different number.

        Returns:
            ``{"recall@K": float, "ndcg@K": float, ...}`` in the order of ``ks``.
        """
        eval_idx = torch.from_numpy(self._eval_users)
        missing = eval_idx[~self._seen[eval_idx]]
        if missing.numel():
            raise RuntimeError(
                f"{missing.numel()} of {eval_idx.numel()} evaluated users were never updated "
                f"(first: {missing[:5].tolist()}); pass every user of eval_users() to update() "
                "before compute()"
            )
        return {name: float(v[eval_idx].mean()) for name, v in self._values.items()}


def evaluate_full_ranking(
    score_fn: Callable[[Tensor], Tensor],
    exclude: sp.spmatrix | sp.sparray,
    truth: sp.spmatrix | sp.sparray,
    ks: Iterable[int] = (10, 20),
    batch_size: int = 4096,
    device: torch.device | str | None = None,
) -> dict[str, float]:
    """Full-ranking Recall@K / NDCG@K of a model, batch by batch over the evaluated users.

    Calls ``score_fn(users)`` under :func:`torch.no_grad` for consecutive batches of the users with
    at least one truth item; only ``[batch_size, I]`` scores exist at a time.

    Like MMRec and RecBole, the excluded entries of ``score_fn``'s output are set to ``-inf`` in
    place (no ``[B, I]`` copy), so ``score_fn`` should return a new tensor (a matmul result,
    ``stored[users]``). An output that is a view of another tensor (``stored[a:b]``) or that
    requires grad is masked on a copy instead, so a stored matrix is never overwritten that way;
    returning a stored tensor itself (not a view) would be overwritten.

    Args:
        score_fn: maps user ids ``[B]`` (on ``device``) to scores over all items ``[B, I]``.
        exclude: items never ranked (training items; ``train + valid`` for RecBole's test protocol).
        truth: held-out items (validation or test split).
        ks: cut-offs.
        batch_size: users per ``score_fn`` call.
        device: where the user ids are placed (default CPU); masking follows the scores' device.

    Shapes:
        ``exclude``, ``truth``: ``[U, I]`` scipy sparse.

    Returns:
        ``{"recall@K": float, "ndcg@K": float, ...}``.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    metrics = RankingMetrics(exclude, truth, ks)
    users = torch.from_numpy(metrics.eval_users())
    if device is not None:
        users = users.to(device)
    with torch.no_grad():
        for batch in users.split(int(batch_size)):
            scores = score_fn(batch)
            owned = isinstance(scores, Tensor) and scores._base is None and not scores.requires_grad
            metrics.update(batch, scores, inplace=owned)
    return metrics.compute()


def topk_metrics(
    scores: Tensor,
    exclude: sp.spmatrix | sp.sparray,
    truth: sp.spmatrix | sp.sparray,
    ks: Iterable[int] = (10, 20),
) -> dict[str, float]:
    """Full-ranking Recall@K / NDCG@K from a complete score matrix (MMRec protocol).

    Same computation as :func:`evaluate_full_ranking` (it is called with ``scores[users]``, a copy
    per batch, so ``scores`` itself is never modified), so results are identical. At test time MMRec excludes only training items; pass
    ``exclude = train + valid`` for RecBole's protocol, which also hides validation items.

    Shapes:
        ``scores``: ``[U, I]`` (any device), ``exclude``, ``truth``: ``[U, I]`` scipy sparse.

    Returns:
        ``{"recall@K": float, "ndcg@K": float, ...}`` in the order of ``ks``.
    """
    if not isinstance(scores, Tensor) or scores.dim() != 2:
        raise ValueError("scores must be a 2-D torch tensor of shape [n_users, n_items]")
    if sp.issparse(exclude) and tuple(scores.shape) != tuple(exclude.shape):
        raise ValueError(
            f"scores has shape {tuple(scores.shape)} but exclude has shape {tuple(exclude.shape)}; "
            "both must be [n_users, n_items]"
        )
    return evaluate_full_ranking(
        lambda u: scores[u], exclude, truth, ks, device=scores.device
    )
