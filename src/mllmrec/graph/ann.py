"""Approximate semantic kNN for large catalogues (``graph.knn=faiss``): an IVF search, exact re-scoring.

The exact search (:func:`~mllmrec.graph.knn.semantic_knn`) multiplies every pair of items: ``I^2 d / 2``
multiply-adds, ~1.9e14 at 1M items x 384-d (hours on a few CPU cores). Here the items are split into
``L`` lists by spherical k-means (faiss), every item is compared only with the members of its ``P``
nearest lists, and the candidates found are re-scored exactly:

1. train ``L`` unit centroids on a seeded sample of ``40 L`` items (``faiss.Kmeans``, spherical);
2. each item's ``P`` most similar centroids (a ``[I, L]`` product in row blocks); the first one is the
   item's own list;
3. list by list, all items that probe the list are compared with its members in one matrix product
   (``faiss.knn``), and a running top-``(K+1)`` per item is kept (``faiss.ResultHeap``). This is the
   "big batch" order of ``faiss.contrib.big_batch_search``: with as many queries as database vectors it
   turns the IVF scan into GEMMs (measured at 100k items: ~3x faster than ``IndexIVFFlat.search``,
   same neighbours);
4. the paper's semantics are then applied as in the exact search: the item itself is put first, the
   cosine of every candidate is recomputed exactly from the unit rows (float32, not the index's value),
   candidates are ranked by that cosine (ties: lower id first), the top-``K_s`` kept; the ``alpha``
   threshold is applied to those exact cosines by :func:`~mllmrec.graph.knn.semantic_from_knn`;
5. ``R`` refinement passes over neighbours' neighbours (``graph.ann.refine``, the local join of
   NN-descent): each item's candidates become its current top-``K_s``, its reverse neighbours (the
   ``K_s - 1`` most similar items that list it) and the top-``K_s`` lists of all of those (up to
   ``2 (K_s - 1)(K_s + 1)`` ids, duplicates dropped), all re-scored by exact cosine and ranked as in
   step 4. A pass reads the previous pass's lists only (every row is updated from the same snapshot,
   so the result does not depend on the row order), and a row can only gain: its old neighbours are
   among its candidates. This repairs what the list scan misses at list borders: a true neighbour
   in an unprobed list is usually a neighbour of a neighbour, or lists the item itself. Measured on
   the benchmark's features at 1M items, 16 probes: 0.853 -> 0.926 / 0.947 / 0.948 after 1 / 2 / 3
   forward-only passes (it stalls); with reverse neighbours, 32 probes and 3 passes it is 0.994
   (bench/results/graph.md, run 5).

Work is about ``I * P * I / L * d`` multiply-adds for the scan plus ``I * L * d`` for step 2 (with
the default ``L = min(4 sqrt(I), I / 40)`` both grow as ``I^1.5``) plus up to ``2 I * K_s^2 * d`` per
refinement pass (linear in ``I``; later passes redo only rows whose candidates changed); memory is the
unit features plus ``I * P`` probe ids plus ``I * (K+1)`` candidates, and during refinement two
``[I, K_s]`` id lists, the reverse lists and one block of gathered rows (``1024 * 2 K_s^2 * d * 4``
bytes, ~300 MB at K_s = 10, d = 384). The result is deterministic for a seed (seeded sample and k-means; every
later step is a fixed-order computation). An item with all-zero features, or one whose probed lists
held fewer than ``K_s`` candidates, gets its row from the exact search instead.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass
from types import ModuleType
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mllmrec.errors import ConfigError
from mllmrec.graph import knn
from mllmrec.graph.topk import Knn

log = logging.getLogger(__name__)

__all__ = ["ANN_CODE_VERSION", "KNN_METHODS", "AnnParams", "FaissMissingError", "require_faiss",
           "approximate_semantic_knn", "resolve_knn_method"]

#: graph.knn: ``exact`` always, ``faiss`` always, ``auto``: faiss from ``ann.min_items`` items on
KNN_METHODS = ("exact", "faiss", "auto")
# Part of the cache key of an approximate graph: bump it when this module builds something else from the
# same inputs and parameters.
ANN_CODE_VERSION = "ivf-flat-kmeans-v1"  # refinement passes are in the key as ``refine``
# k-means sample per list (faiss warns below 39) and Lloyd iterations
_TRAIN_POINTS_PER_LIST = 40
_KMEANS_ITERATIONS = 10
# rows of the [rows, L] centroid product and of the candidate re-scoring done at once
_PROBE_ROWS = 65_536
_RESCORE_ROWS = 8_192
# rows refined at once: their gathered candidate rows are [rows, <= 2 K_s^2, d] float32 (<= 300 MB at K_s = 10)
_REFINE_ROWS = 1_024


@dataclass(frozen=True)
class AnnParams:
    """Parameters of the approximate search (``graph.ann.*``).

    Attributes:
        lists: ``L``, k-means lists; 0 = ``round(4 sqrt(I))``, at most ``I / 40`` (k-means needs
            ~40 training points per list). Clamped to ``I``.
        probes: ``P``, lists scanned per item (>= 1, clamped to ``L``): more = higher recall, linearly
            slower. With the default 3 refinement passes, 32 gives neighbour recall 0.9995 at 100k
            and 0.994 at 1M items (K_s = 10, the benchmark's clustered 384-d features).
        seed: seeds the k-means sample and initialisation; same seed, same graph.
        refine: ``R``, neighbours'-neighbours refinement passes after the list scan (>= 0; 0 = the
            plain IVF search); they stop early once a pass changes nothing. The first pass costs
            ~``2 I * K_s^2 * d`` multiply-adds on gathered rows, later ones only their changed rows.
        min_items: ``graph.knn=auto`` uses this search from this many items on (>= 1), the exact one
            below. Not part of the graph's cache key (only the method it picks is).
    """

    lists: int = 0
    probes: int = 32
    seed: int = 0
    refine: int = 3
    min_items: int = 100_000

    def __post_init__(self) -> None:
        for name, minimum in (("lists", 0), ("probes", 1), ("seed", 0), ("refine", 0), ("min_items", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
                raise ValueError(f"ann.{name} must be an integer >= {minimum}, got {value!r}")
            object.__setattr__(self, name, int(value))

    def resolved_lists(self, n_items: int) -> int:
        """``L`` for a catalogue of ``n_items`` (>= 1)."""
        wanted = self.lists if self.lists > 0 else min(round(4 * math.sqrt(n_items)), n_items // _TRAIN_POINTS_PER_LIST)
        return max(1, min(wanted, n_items))

    def cache_key(self, n_items: int) -> dict[str, Any]:
        """What the graph depends on (resolved ``L`` and ``P``, the seed, the refinement passes, the code version)."""
        lists = self.resolved_lists(n_items)
        return {"lists": lists, "probes": min(self.probes, lists), "seed": self.seed, "refine": self.refine,
                "code": ANN_CODE_VERSION}

    @classmethod
    def from_mapping(cls, values: dict[str, Any]) -> AnnParams:
        unknown = sorted(set(values) - set(asdict(cls())))
        if unknown:
            raise ValueError(f"ann.{unknown[0]} is not a setting; the settings are {sorted(asdict(cls()))}")
        return cls(**values)


class FaissMissingError(ConfigError, ImportError):
    """``graph.knn`` needs faiss, which is not installed (a user error: the entry points print it)."""


def require_faiss() -> ModuleType:
    """The faiss module, or a :class:`FaissMissingError` that says how to install it."""
    try:
        import faiss
    except ImportError as err:
        raise FaissMissingError(
            "graph.knn=faiss needs the faiss-cpu package: pip install 'mllmrec[ann]' "
            "(or pip install faiss-cpu), or set graph.knn=exact"
        ) from err
    return faiss


def resolve_knn_method(method: str, n_items: int, params: AnnParams) -> str:
    """``exact`` or ``faiss``: ``auto`` picks faiss from ``params.min_items`` items on."""
    if method == "auto":
        return "faiss" if n_items >= params.min_items else "exact"
    return method


class _StageTimes:
    """Wall and CPU seconds per stage, for the log line that says where the time went."""

    def __init__(self) -> None:
        self.stages: list[tuple[str, float, float]] = []
        self._last = (time.perf_counter(), time.process_time())

    def done(self, stage: str) -> None:
        now = (time.perf_counter(), time.process_time())
        self.stages.append((stage, now[0] - self._last[0], now[1] - self._last[1]))
        self._last = now

    def __str__(self) -> str:
        return ", ".join(f"{stage} {wall:.1f} s ({cpu:.1f} s CPU)" for stage, wall, cpu in self.stages)


def _kmeans_centroids(faiss: ModuleType, unit: np.ndarray, lists: int, seed: int) -> np.ndarray:
    """``[L, d]`` unit centroids of spherical k-means on a seeded sample of ``40 L`` rows."""
    n, d = unit.shape
    sample_size = min(n, _TRAIN_POINTS_PER_LIST * lists)
    sample = np.sort(np.random.default_rng(seed).choice(n, size=sample_size, replace=False))
    kmeans = faiss.Kmeans(
        d, lists, niter=_KMEANS_ITERATIONS, seed=seed, spherical=True, verbose=False,
        max_points_per_centroid=_TRAIN_POINTS_PER_LIST,  # never subsample our sample again
    )
    kmeans.train(np.ascontiguousarray(unit[sample]))
    return kmeans.centroids


def _probes(faiss: ModuleType, unit: np.ndarray, centroids: np.ndarray, probes: int) -> np.ndarray:
    """``[I, P]`` int64: each row's ``P`` most similar centroids, most similar first."""
    quantizer = faiss.IndexFlatIP(centroids.shape[1])
    quantizer.add(centroids)
    out = np.empty((unit.shape[0], probes), dtype=np.int64)
    for start in range(0, unit.shape[0], _PROBE_ROWS):
        _, out[start : start + _PROBE_ROWS] = quantizer.search(unit[start : start + _PROBE_ROWS], probes)
    return out


def _buckets(keys: np.ndarray, n_buckets: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions of ``keys`` grouped by bucket (stable) and the ``[n_buckets + 1]`` bucket limits."""
    order = np.argsort(keys, kind="stable")
    limits = np.concatenate([[0], np.cumsum(np.bincount(keys, minlength=n_buckets))])
    return order, limits


def _ivf_candidates(faiss: ModuleType, unit: np.ndarray, probe: np.ndarray, lists: int, width: int) -> np.ndarray:
    """``[I, width]`` int64: per item the ``width`` most similar members of its probed lists (``-1``
    where fewer were found), scanned list by list (all queries of a list in one product)."""
    n = unit.shape[0]
    members, member_limits = _buckets(probe[:, 0], lists)  # every item sits in its nearest list
    flat_order, query_limits = _buckets(probe.reshape(-1), lists)
    queries_of = flat_order // probe.shape[1]  # position in probe.ravel() -> the probing item
    heap = faiss.ResultHeap(n, width, keep_max=True)
    for list_id in range(lists):
        list_members = members[member_limits[list_id] : member_limits[list_id + 1]]
        queries = queries_of[query_limits[list_id] : query_limits[list_id + 1]]
        if list_members.size == 0 or queries.size == 0:
            continue
        scores, local = faiss.knn(
            unit[queries], unit[list_members], min(width, list_members.size), metric=faiss.METRIC_INNER_PRODUCT
        )
        heap.add_result_subset(queries, scores, list_members[local])
    heap.finalize()
    return heap.I


def _rescore(unit: Tensor, nonzero: Tensor, items: Tensor, candidates: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """Top-``k`` of the candidates [r, w] (``-1`` = none) of ``items`` [r] by exact cosine, self first.

    The cosine of every candidate is recomputed from the unit rows as an elementwise product summed
    over ``d`` (the same order for every pair, so identical items tie exactly). Ranking: the item
    itself (``+inf``, see :func:`~mllmrec.graph.knn._self_similarity`), then cosine descending, then the
    lower id. Returns ``(columns [r, k], cosines [r, k], complete [r])``; ``complete`` is False where a
    row had fewer than ``k`` candidates or all-zero features (the caller redoes those rows exactly).
    """
    n = unit.shape[0]
    ids = torch.cat([items.unsqueeze(1), candidates], dim=1)  # [r, w + 1]: the item itself first
    valid = ids >= 0
    valid[:, 1:] &= candidates != items.unsqueeze(1)  # the index usually finds the item itself too
    safe = torch.where(valid, ids, items.unsqueeze(1))
    gathered = unit.index_select(0, safe.reshape(-1)).view(*safe.shape, -1)  # [r, w + 1, d]
    cosine = gathered.mul_(unit[items].unsqueeze(1)).sum(dim=2)  # [r, w + 1]
    del gathered
    cosine[:, 0] = knn._self_similarity(nonzero[items])
    cosine = cosine.masked_fill(~valid, -math.inf)
    # cosine descending, ties by lower id: sort by id, then a stable sort by cosine
    by_id = torch.argsort(torch.where(valid, ids, n), dim=1, stable=True)
    cosine, ids = cosine.gather(1, by_id), ids.gather(1, by_id)
    by_cosine = torch.argsort(cosine, dim=1, descending=True, stable=True)[:, :k]
    top_cosine, top_ids = cosine.gather(1, by_cosine), ids.gather(1, by_cosine)
    complete = (top_cosine[:, k - 1] > -math.inf) & nonzero[items]
    return top_ids, top_cosine, complete


def _distinct_or_missing(ids: Tensor) -> Tensor:
    """The distinct ids of each row of ``ids`` [r, w] (all >= 0), descending, padded with ``-1`` (= no
    candidate) to the largest distinct count ``w'`` of the block: ``[r, w']``. Neighbour lists of
    neighbours overlap a lot, so ``w'`` is often well below ``w`` and fewer rows are gathered."""
    ids = ids.sort(dim=1, descending=True).values
    repeat = torch.zeros_like(ids, dtype=torch.bool)
    repeat[:, 1:] = ids[:, 1:] == ids[:, :-1]
    ids = ids.masked_fill(repeat, -1).sort(dim=1, descending=True).values
    return ids[:, : int((ids >= 0).sum(dim=1).max())]


def _reverse_lists(cols: Tensor, scores: Tensor) -> Tensor:
    """``[I, k - 1]`` reverse neighbours: for item ``i`` the items ``j`` whose list holds ``i``, the
    ``k - 1`` most similar first (cosine descending, then lower id; cosines are symmetric, so each is
    read from ``j``'s row), ``-1`` where fewer exist. Bounded: a hub listed by thousands keeps ``k - 1``.
    """
    n, k = cols.shape
    sources = torch.arange(n).repeat_interleave(k - 1).numpy()
    targets = cols[:, 1:].reshape(-1).numpy()
    cosines = scores[:, 1:].reshape(-1).numpy()
    order = np.lexsort((sources, -cosines, targets))  # by target, then cosine descending, then source
    targets, sources = targets[order], sources[order]
    first_of_target = np.searchsorted(targets, targets, side="left")
    rank = np.arange(targets.size) - first_of_target
    keep = rank < k - 1
    reverse = torch.full((n, k - 1), -1, dtype=torch.int64)
    reverse[torch.from_numpy(targets[keep]), torch.from_numpy(rank[keep])] = torch.from_numpy(sources[keep])
    return reverse


def _refine_pass(
    unit: Tensor, nonzero: Tensor, cols: Tensor, scores: Tensor, changed: Tensor, previous_reverse: Tensor | None
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One local join of NN-descent over the ``[I, k]`` lists (self first): new ``(cols, scores)``,
    the ``[I]`` mask of the rows it changed and the reverse lists it used.

    With ``N(i)`` the list of ``i`` (itself excluded) and ``R(i)`` its reverse neighbours
    (:func:`_reverse_lists`), ``G(i) = N(i) ∪ R(i)``; the candidates of ``i`` are
    ``G(i) ∪ ⋃_{j ∈ G(i)} N(j)``, ranked by exact cosine, ties to the lower id (:func:`_rescore`,
    which also drops ``i`` itself and puts it first). Reverse neighbours matter: a hub that many items
    list but that lists none of them is found from their side only.

    Only rows whose candidates can differ from the previous pass are recomputed: row ``i`` changed,
    its reverse list changed, or a row of ``G(i)`` changed (``changed``: all rows before the first
    pass). Rows whose re-scoring is incomplete (all-zero features) keep their row (the exact search's).
    """
    n, k = cols.shape
    reverse = _reverse_lists(cols, scores)
    new_cols, new_scores = cols.clone(), scores.clone()
    now_changed = torch.zeros(n, dtype=torch.bool)
    neighbourhood = torch.cat([cols[:, 1:], reverse], dim=1)  # [I, 2(k - 1)], -1 = none
    active = changed | (changed[neighbourhood.clamp(min=0)] & (neighbourhood >= 0)).any(dim=1)
    if previous_reverse is not None:
        active |= (reverse != previous_reverse).any(dim=1)
    active = active.nonzero().squeeze(1)
    for start in range(0, active.numel(), _REFINE_ROWS):
        items = active[start : start + _REFINE_ROWS]
        near = neighbourhood[items]  # [r, 2(k - 1)]
        near = torch.where(near >= 0, near, items.unsqueeze(1))  # a missing one: the item itself, dropped later
        candidates = torch.cat([near, cols[near].reshape(items.numel(), -1)], dim=1)
        top_ids, top_cosine, complete = _rescore(unit, nonzero, items, _distinct_or_missing(candidates), k)
        update = complete & (top_ids != cols[items]).any(dim=1)
        rows = items[update]
        new_cols[rows], new_scores[rows] = top_ids[update], top_cosine[update]
        now_changed[rows] = True
    return new_cols, new_scores, now_changed, reverse


def approximate_semantic_knn(features: Tensor, k_s: int, params: AnnParams, chunk_size: int) -> Knn:
    """Approximate top-``k_s`` cosine neighbours of every item (the item itself first), exact cosines.

    See the module docstring. ``chunk_size`` is the row chunk of the rows redone by the exact search.
    Arguments are checked by the caller (:func:`~mllmrec.graph.refined.build_refined_item_graph`).

    Shapes:
        - **input:** features ``[I, d]`` (any device; the search runs on the CPU).
        - **output:** :class:`~mllmrec.graph.topk.Knn` with ``I * min(k_s, I)`` entries, row-major,
          on the features' device.
    """
    faiss = require_faiss()
    n = features.shape[0]
    k = min(k_s, n)
    device = features.device
    unit, nonzero = knn._unit_rows(features)
    unit, nonzero = unit.cpu().contiguous(), nonzero.cpu()
    if k == n:  # every pair is an edge (tiny catalogues): nothing to approximate
        found = knn._semantic_rows(unit, nonzero, torch.arange(n), k, chunk_size)
        return Knn(n, found.rows.to(device), found.cols.to(device), found.scores.to(device))

    lists = params.resolved_lists(n)
    probes = min(params.probes, lists)
    x = unit.numpy()
    stages = _StageTimes()
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(torch.get_num_threads())  # one thread budget for torch and faiss
    try:
        centroids = _kmeans_centroids(faiss, x, lists, params.seed)
        stages.done("k-means")
        probe = _probes(faiss, x, centroids, probes)
        stages.done("probes")
        candidates = torch.from_numpy(_ivf_candidates(faiss, x, probe, lists, min(k + 1, n)))
        stages.done("list scan")
    finally:
        faiss.omp_set_num_threads(threads)
    del probe

    cols = torch.empty((n, k), dtype=torch.int64)
    scores = torch.empty((n, k), dtype=torch.float32)
    complete = torch.empty(n, dtype=torch.bool)
    for start in range(0, n, _RESCORE_ROWS):
        stop = min(start + _RESCORE_ROWS, n)
        cols[start:stop], scores[start:stop], complete[start:stop] = _rescore(
            unit, nonzero, torch.arange(start, stop), candidates[start:stop], k
        )
    redo = (~complete).nonzero().squeeze(1)
    if redo.numel():
        exact = knn._semantic_rows(unit, nonzero, redo, k, chunk_size, knn._duplicate_representative(unit))
        cols[redo], scores[redo] = exact.cols.view(-1, k), exact.scores.view(-1, k)
    stages.done("exact re-scoring")
    changed, rows_changed, reverse = [], torch.ones(n, dtype=torch.bool), None
    for _ in range(params.refine if k > 1 else 0):  # k = 1: only the item itself, nothing to refine
        cols, scores, rows_changed, reverse = _refine_pass(unit, nonzero, cols, scores, rows_changed, reverse)
        changed.append(int(rows_changed.sum()))
        stages.done(f"refinement {len(changed)}")
        if not changed[-1]:  # a fixed point: further passes would change nothing
            break
    log.info("approximate kNN of %d items (%d lists, %d probes, %d rows redone exactly, rows changed by "
             "refinement %s): %s", n, lists, probes, redo.numel(), changed, stages)
    rows = torch.arange(n).repeat_interleave(k)
    # clamp only after ranking: turns the +inf self entry back into 1 and removes rounding past +-1
    return Knn(n, rows.to(device), cols.reshape(-1).to(device), scores.reshape(-1).clamp(-1.0, 1.0).to(device))
