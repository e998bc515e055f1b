"""The refined graph's settings as one typed object: ``conf/graph/default.yaml`` builds it.

``graph.alpha`` (and ``ks``, ``kc``, ``layers``) keeps one name from the command line to the adjacency:
the config node is instantiated into a :class:`GraphSpec`, checked once here, and the graph build and
its cache key read it as it is.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mllmrec.errors import ConfigError
from mllmrec.graph.ann import AnnParams, require_faiss
from mllmrec.graph.checks import check_args

__all__ = ["GraphSpec", "ITEM_GRAPH_CHOICES"]

#: ``model.item_graph`` of a model with its own item-item graph: that graph, or MLLMRec's refined
#: graph ``S*`` built from these ``graph.*`` settings (the "+GR" variants of Figure 3)
ITEM_GRAPH_CHOICES = ("own", "refined")


#: config key -> the graph package's argument name (whose one rule, in :mod:`.checks`, applies)
_ARGUMENTS = {"ks": "k_s", "alpha": "alpha", "kc": "k_c", "layers": "layers", "knn": "knn_method"}


@dataclass(frozen=True)
class GraphSpec:
    """Settings of the refined item graph (Section 4.2, Eq. 6-12).

    Attributes:
        ks: K_s, semantic top-K per item (self-loop included), >= 1.
        alpha: cosine threshold in [-1, 1]: a kNN edge is kept only if its similarity >= alpha
            (-1 keeps every edge: no denoising).
        kc: K_c, co-occurrence (Jaccard) neighbours per item, >= 0 (0 = none).
        layers: L, propagation depth over the graph, >= 0 (0 = no item-item graph). Not part of the
            graph itself, so not of its cache key.
        knn: the semantic kNN search: ``exact``, ``faiss`` (approximate, needs ``pip install
            'mllmrec[ann]'``) or ``auto`` (faiss from ``ann.min_items`` items on).
        ann: the approximate search's settings (``graph.ann.lists``, ``.probes``, ``.seed``,
            ``.refine``, ``.min_items``; see :class:`~mllmrec.graph.ann.AnnParams`), a mapping or an AnnParams.
    """

    ks: int = 10
    alpha: float = 0.7
    kc: int = 10
    layers: int = 1
    knn: str = "auto"
    ann: AnnParams | Mapping[str, Any] = field(default_factory=AnnParams)

    def __post_init__(self) -> None:
        # the graph package's own rules (one per argument), reported under the config key
        for key, argument in _ARGUMENTS.items():
            value = getattr(self, key)
            try:
                checked = check_args(**{argument: value})[argument]
            except ValueError as err:
                raise ConfigError(f"graph.{key}={value!r}: {err}") from None
            object.__setattr__(self, key, checked)
        if not isinstance(self.ann, AnnParams):
            try:
                object.__setattr__(self, "ann", AnnParams.from_mapping(dict(self.ann)))
            except (TypeError, ValueError) as err:
                raise ConfigError(f"graph.{err}") from None
        if self.knn == "faiss":  # asked for explicitly: say so before any data is loaded
            require_faiss()
