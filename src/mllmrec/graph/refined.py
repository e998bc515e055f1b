"""The refined item-item graph ``S* = S~ + C~`` (Section 4.2, Eq. 10), its statistics and its cache.

One build gives the graph AND its statistics (edge counts of every refinement step and the kNN
similarities of the paper's Fig. 1b): they are computed from the intermediate kNN lists the build
has in hand, stored in the same cache file as the graph and read back on a cache hit, so a cached run
does no kNN work at all and nothing ever rebuilds the graph to describe it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor

from mllmrec.cache import build_once, stable_hash
from mllmrec.graph import ann, knn
from mllmrec.graph.ann import AnnParams
from mllmrec.graph.checks import check_args
from mllmrec.graph.store import sparse_from_state, sparse_state
from mllmrec.graph.topk import to_sparse

__all__ = [
    "GRAPH_CODE_VERSION",
    "GraphBuildStatistics",
    "RefinedGraph",
    "build_refined_item_graph",
    "refined_item_graph",
    "cached_refined_item_graph",
]

# Part of every graph cache key: bump it whenever a change here alters what is built or stored from the
# same inputs, so stale cache entries are rebuilt instead of silently reused.
# v2: an entry holds the build's statistics beside the graph (v1 entries had the graph only).
GRAPH_CODE_VERSION = "refined-item-graph-v2"


@dataclass(frozen=True, eq=False)
class GraphBuildStatistics:
    """What one build of :func:`build_refined_item_graph` did, step by step (for logs and Fig. 1b).

    ``k_s``, ``alpha``, ``k_c``: the parameters of the build; ``knn``: the semantic search that ran
    (``exact`` or ``faiss``; entries written before it was recorded were exact). ``items``; ``knn_edges`` (top-``K_s``
    semantic edges before alpha pruning, ``I * min(K_s, I)``); ``alpha_kept`` / ``alpha_pruned`` (of
    those, edges with similarity ``>=`` / ``<`` alpha); ``self_loops`` (of the final graph; only ``S~``
    has any); ``cooccurrence_edges`` (``nnz(C~)``); ``overlap_edges`` (pairs in both ``S~`` and ``C~``);
    ``final_edges`` (``nnz(S~ + C~)``); ``out_degree_mean`` / ``_min`` / ``_max`` (non-zeros per row of
    the final graph); ``knn_similarities``: float32 cosine of every top-``K_s`` edge except self-loops,
    before pruning (the histogram of the paper's Fig. 1b), kept raw (``4 (K_s - 1)`` bytes per item) so
    that any histogram or threshold share can be computed exactly later.

    Shapes:
        - knn_similarities ``[I * min(K_s, I) - self-loops among them]`` float32 numpy.
    """

    k_s: int
    alpha: float
    k_c: int
    items: int
    knn_edges: int
    alpha_kept: int
    alpha_pruned: int
    self_loops: int
    cooccurrence_edges: int
    overlap_edges: int
    final_edges: int
    out_degree_mean: float
    out_degree_min: int
    out_degree_max: int
    knn_similarities: np.ndarray = field(repr=False)
    knn: str = "exact"

    def counts(self) -> dict[str, int | float]:
        """The edge counts and degrees (every field but the parameters and the similarities)."""
        skip = {"k_s", "alpha", "k_c", "knn", "knn_similarities"}
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in skip}


@dataclass(frozen=True, eq=False)
class RefinedGraph:
    """The refined graph ``S*`` (coalesced sparse COO float32 ``[I, I]``) and the statistics of its build."""

    graph: Tensor
    statistics: GraphBuildStatistics


def _add_graphs(semantic: Tensor, cooccurrence: Tensor | None) -> Tensor:
    if cooccurrence is None:
        return semantic
    return (semantic + cooccurrence.to(semantic.device)).coalesce()


def _build(
    features: Tensor, binary: sp.csr_matrix, k_s: int, alpha: float, k_c: int, method: str, ann_params: AnnParams
) -> RefinedGraph:
    """:func:`build_refined_item_graph` on checked arguments (``method`` resolved), without cache."""
    if method == "faiss":
        semantic_knn = ann.approximate_semantic_knn(features, k_s, ann_params, knn.DEFAULT_SEMANTIC_CHUNK)
    else:
        semantic_knn = knn.semantic_knn(features, k_s, knn.DEFAULT_SEMANTIC_CHUNK)
    semantic = knn.semantic_from_knn(semantic_knn, alpha)
    cooccurrence = None
    if k_c > 0:
        cooccurrence_knn = knn.cooccurrence_knn(binary, k_c, knn.DEFAULT_COOCCURRENCE_CHUNK)
        cooccurrence = to_sparse(cooccurrence_knn.n, cooccurrence_knn.rows, cooccurrence_knn.cols,
                                 cooccurrence_knn.scores)
    final = _add_graphs(semantic, cooccurrence)

    n = semantic_knn.n
    cooccurrence_edges = int(cooccurrence._nnz()) if cooccurrence is not None else 0
    rows, cols = final.indices()
    out_degree = torch.bincount(rows, minlength=n)
    statistics = GraphBuildStatistics(
        k_s=k_s,
        alpha=alpha,
        k_c=k_c,
        items=n,
        knn_edges=int(semantic_knn.rows.numel()),
        alpha_kept=int(semantic._nnz()),
        alpha_pruned=int(semantic_knn.rows.numel() - semantic._nnz()),
        self_loops=int((rows == cols).sum()),
        cooccurrence_edges=cooccurrence_edges,
        # values are positive, so adding the graphs merges shared pairs and never cancels one
        overlap_edges=int(semantic._nnz() + cooccurrence_edges - final._nnz()),
        final_edges=int(final._nnz()),
        out_degree_mean=0.0 if n == 0 else float(out_degree.float().mean()),
        out_degree_min=0 if n == 0 else int(out_degree.min()),
        out_degree_max=0 if n == 0 else int(out_degree.max()),
        knn_similarities=semantic_knn.scores[semantic_knn.rows != semantic_knn.cols].cpu().numpy()
        .astype(np.float32),
        knn=method,
    )
    return RefinedGraph(final, statistics)


def _save(built: RefinedGraph, path: Path) -> None:
    """One file per cache entry: the graph and its statistics are published together (one rename)."""
    stats = asdict(built.statistics)
    similarities = torch.from_numpy(stats.pop("knn_similarities"))
    torch.save({**sparse_state(built.graph), "statistics": stats, "knn_similarities": similarities}, path)


def _load(path: Path) -> RefinedGraph:
    stored = torch.load(path, map_location="cpu", weights_only=True)
    graph = sparse_from_state(stored)  # a file from disk: verified before its indices are trusted
    statistics = GraphBuildStatistics(**stored["statistics"], knn_similarities=stored["knn_similarities"].numpy())
    return RefinedGraph(graph, statistics)


def build_refined_item_graph(
    features: Tensor,
    interactions: sp.spmatrix | sp.sparray,
    k_s: int,
    alpha: float,
    k_c: int,
    cache_dir: str | Path | None = None,
    *,
    knn_method: str = "exact",
    ann_params: AnnParams | None = None,
) -> RefinedGraph:
    r"""The refined item-item graph ``S* = S~ + C~`` (Eq. 10, before normalisation) and its statistics.

    See :func:`~mllmrec.graph.knn.semantic_graph` (``S~``) and
    :func:`~mllmrec.graph.knn.cooccurrence_graph` (``C~``). The two directed kNN graphs are added as
    they are (no symmetrisation); an edge present in both has value ``1 + c_ab``. ``k_c = 0`` means no
    co-occurrence graph (the ablation), so ``S* = S~``. ``interactions`` must be the TRAINING
    interactions only.

    ``knn_method`` picks the semantic kNN search: ``exact`` (every pair), ``faiss`` (approximate,
    :func:`~mllmrec.graph.ann.approximate_semantic_knn` with ``ann_params``: the same semantics, self
    first and alpha on exact cosines, but a true neighbour can be missed) or ``auto`` (``faiss`` from
    ``ann_params.min_items`` items on, ``exact`` below). The co-occurrence graph is always exact.

    With ``cache_dir`` the result is stored there and reused while its inputs are unchanged: the file
    name carries a hash of the features (as the float32 values the graph is computed from), the
    binarised interactions, ``(k_s, alpha, k_c)``, :data:`GRAPH_CODE_VERSION` and, for an approximate
    search, its method and resolved parameters (:meth:`AnnParams.cache_key`); a change in any of them
    yields a new key and thus a rebuild (an exact graph's key is the same whether asked for as
    ``exact`` or through ``auto``). The graph and its statistics are one file, written
    atomically; a file lock makes concurrent callers build once (see :mod:`mllmrec.cache`);
    ``<file>.meta.json`` records how the entry was made. A cache hit does no kNN work.

    Args:
        features: item embeddings ``E_I``.
        interactions: binary training interactions ``R``.
        k_s: ``K_s >= 1``. alpha: threshold in ``[-1, 1]``. k_c: ``K_c >= 0``.
        cache_dir: folder of the graph cache, or None to build without caching.
        knn_method: ``exact``, ``faiss`` or ``auto`` (``graph.knn``).
        ann_params: the approximate search's settings (``graph.ann.*``); None = the defaults.

    Shapes:
        - **input:** features ``[I, d]``, interactions ``[U, I]``
        - **output:** graph: coalesced sparse COO float32 ``[I, I]`` on ``features.device``.
    """
    args = check_args(features=features, interactions=interactions, k_s=k_s, alpha=alpha, k_c=k_c,
                      knn_method=knn_method, ann=ann_params)
    features, binary = args["features"], args["interactions"]
    k_s, alpha, k_c, ann_params = args["k_s"], args["alpha"], args["k_c"], args["ann"]
    method = ann.resolve_knn_method(args["knn_method"], features.shape[0], ann_params)
    if method == "faiss":
        ann.require_faiss()  # before hashing or building anything
    if cache_dir is None:
        return _build(features, binary, k_s, alpha, k_c, method, ann_params)
    features_hash = stable_hash(features.detach().to(torch.float32).cpu())
    interactions_hash = stable_hash(binary)
    # plain int/float (checked above) so that e.g. numpy scalars and Python numbers give the same key
    params: dict[str, object] = {"k_s": k_s, "alpha": alpha, "k_c": k_c}
    if method != "exact":  # exact keys stay those of the entries written before ANN existed
        params.update(knn=method, ann=ann_params.cache_key(features.shape[0]))
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
    built, _ = build_once(
        path, build=lambda: _build(features, binary, k_s, alpha, k_c, method, ann_params), save=_save,
        load=_load, meta=meta,
    )
    return RefinedGraph(built.graph.to(features.device), built.statistics)


def refined_item_graph(
    features: Tensor, interactions: sp.spmatrix | sp.sparray, k_s: int, alpha: float, k_c: int
) -> Tensor:
    """The graph of :func:`build_refined_item_graph` (no cache).

    Shapes:
        - **input:** features ``[I, d]``, interactions ``[U, I]``
        - **output:** coalesced sparse COO float32 ``[I, I]`` on ``features.device``.
    """
    return build_refined_item_graph(features, interactions, k_s, alpha, k_c).graph


def cached_refined_item_graph(
    features: Tensor,
    interactions: sp.spmatrix | sp.sparray,
    k_s: int,
    alpha: float,
    k_c: int,
    cache_dir: str | Path,
) -> Tensor:
    """The graph of :func:`build_refined_item_graph` cached under ``cache_dir`` (callers that need
    no statistics).

    Shapes:
        - **input:** features ``[I, d]``, interactions ``[U, I]``
        - **output:** coalesced sparse COO float32 ``[I, I]`` on ``features.device``.
    """
    return build_refined_item_graph(features, interactions, k_s, alpha, k_c, cache_dir).graph
