"""The refined item-item graph of MLLMRec (Section 4.2, Eq. 5-12) and the propagation every model uses.

Modules:

* :mod:`~mllmrec.graph.topk`: top-K machinery (deterministic ties: the lower item id wins);
* :mod:`~mllmrec.graph.knn`: the semantic kNN graph ``S~`` (Eq. 6-7) and the co-occurrence kNN graph
  ``C~`` (Eq. 8-9);
* :mod:`~mllmrec.graph.ann`: the approximate semantic kNN for large catalogues (``graph.knn=faiss``:
  IVF lists, exact re-scoring of the candidates, same semantics);
* :mod:`~mllmrec.graph.refined`: ``S* = S~ + C~`` (Eq. 10), built once with its statistics, cached;
* :mod:`~mllmrec.graph.propagation`: ``D^-1/2 A D^-1/2`` (Eq. 11) and layer-sum / layer-mean
  propagation (Eq. 12, LightGCN), for the item graph and the user-item graph alike;
* :mod:`~mllmrec.graph.store`: a sparse graph <-> the tensors of a cache file (checked on load);
* :mod:`~mllmrec.graph.checks`: the one argument check (names ``k_s``, ``alpha``, ``k_c``, ``layers``);
* :mod:`~mllmrec.graph.spec`: :class:`GraphSpec`, the ``graph`` config group as one typed object, checked
  with those rules under its config keys (``graph.ks``, ``graph.alpha``, ``graph.kc``, ``graph.layers``, ``graph.knn``, ``graph.ann.*``).

Nothing here builds a dense ``I x I`` or ``U x I`` matrix.
"""

from mllmrec.graph.ann import AnnParams
from mllmrec.graph.knn import cooccurrence_graph, semantic_graph
from mllmrec.graph.propagation import SparseOperator, normalize_adjacency, propagate
from mllmrec.graph.refined import (
    GraphBuildStatistics,
    RefinedGraph,
    build_refined_item_graph,
    cached_refined_item_graph,
    refined_item_graph,
)
from mllmrec.graph.spec import GraphSpec

__all__ = [
    "GraphSpec",
    "AnnParams",
    "semantic_graph",
    "cooccurrence_graph",
    "refined_item_graph",
    "build_refined_item_graph",
    "cached_refined_item_graph",
    "GraphBuildStatistics",
    "RefinedGraph",
    "normalize_adjacency",
    "propagate",
    "SparseOperator",
]
