"""Pieces MMRec's baselines share, written once: its losses, its kNN item graphs, sparse products
with gradients on the edge values, and the ``item_graph`` switch (``own`` | ``refined``).

Each function says which MMRec code it follows (``common/loss.py``, ``models/freedom.py``,
``utils/utils.py``); tests compare them with plain dense references.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from mllmrec.cache import build_once, stable_hash
from mllmrec.graph import normalize_adjacency, semantic_graph
from mllmrec.graph.spec import ITEM_GRAPH_CHOICES
from mllmrec.graph.store import sparse_from_state, sparse_state

__all__ = [
    "ITEM_GRAPH_CHOICES",
    "check_item_graph_choice",
    "check_interactions_shape",
    "emb_loss",
    "mmrec_bpr_loss",
    "knn_indices",
    "lr_decay_schedule",
    "normalized_knn_graph",
    "cached_normalized_knn_graph",
    "KNN_GRAPH_CODE_VERSION",
    "edge_propagate",
    "refined_graph_argument",
    "require_modalities",
    "sparse_edges",
]


def lr_decay_schedule(optimizer: torch.optim.Optimizer, decay: float, every: int) -> dict:
    r"""MMRec's ``learning_rate_scheduler: [decay, every]`` (common/trainer.py), stepped once per epoch:

    .. math:: \mathrm{lr}_t = \mathrm{lr}_0 \cdot \mathrm{decay}^{t / \mathrm{every}}

    Returns Lightning's ``configure_optimizers`` dict (LATTICE, GUME).
    """
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: decay ** (epoch / every))
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}


def emb_loss(*embeddings: Tensor) -> Tensor:
    r"""MMRec's ``EmbLoss`` (common/loss.py): the *un-squared* Frobenius norms, summed, over the batch.

    .. math::
        \Omega = \frac{1}{B} \sum_{E} \lVert E \rVert_F

    with ``B`` the rows of the *last* tensor (MMRec divides by ``embeddings[-1].shape[0]``).

    Shapes:
        - **input:** tensors ``[B, *]``
        - **output:** ``[]``
    """
    if not embeddings:
        raise ValueError("emb_loss needs at least one tensor")
    return sum(torch.linalg.vector_norm(e) for e in embeddings) / max(embeddings[-1].shape[0], 1)


def mmrec_bpr_loss(pos_scores: Tensor, neg_scores: Tensor, gamma: float = 1e-10) -> Tensor:
    r"""MMRec's ``BPRLoss`` (BPR, LightGCN, VBPR): :math:`-\mathrm{mean}\,\log(\gamma + \sigma(y_{ui} - y_{uj}))`.

    Shapes: [B], [B] -> [].
    """
    return -torch.log(gamma + torch.sigmoid(pos_scores - neg_scores)).mean()


def require_modalities(item_modalities: Mapping[str, Tensor], names: Sequence[str], model: str,
                       n_items: int) -> dict[str, Tensor]:
    """``{name: float32 [I, d]}`` for ``names``, checked: each present, 2-D, with ``n_items`` rows."""
    if not names:
        raise ValueError(f"{model}: model.modalities is empty; it needs at least one of text/image")
    out = {}
    for name in names:
        if name not in item_modalities:
            raise ValueError(f"{model} reads the item modality {name!r}, which was not given "
                             f"(given: {sorted(item_modalities)})")
        feats = item_modalities[name]
        if feats.dim() != 2 or feats.shape[0] != n_items:
            raise ValueError(f"{model}: modality {name!r} must be [n_items={n_items}, d], got {tuple(feats.shape)}")
        out[name] = feats.float()
    return out


def check_item_graph_choice(item_graph_choice: str, item_graph: Tensor | None, model: str) -> None:
    """``model.item_graph`` is one of :data:`ITEM_GRAPH_CHOICES` and ``refined`` came with a graph."""
    if item_graph_choice not in ITEM_GRAPH_CHOICES:
        raise ValueError(f"model.item_graph must be one of {ITEM_GRAPH_CHOICES}, got {item_graph_choice!r}")
    if item_graph_choice == "refined" and item_graph is None:
        raise ValueError(f"{model}: model.item_graph=refined needs the refined graph (the datamodule's item_graph)")


def refined_graph_argument(item_graph: Tensor | str | None, model: str) -> Tensor | None:
    """The refined graph when ``item_graph`` is one (``model.item_graph=refined``), else None, after
    checking the choice (:func:`check_item_graph_choice`); a model's own graph is ``"own"`` or None."""
    refined = item_graph if isinstance(item_graph, Tensor) else None
    check_item_graph_choice("refined" if refined is not None else str(item_graph or "own"), refined, model)
    return refined


def check_interactions_shape(train_interactions, n_users: int, n_items: int) -> None:
    """``train_interactions`` is ``[n_users, n_items]``."""
    if tuple(train_interactions.shape) != (n_users, n_items):
        raise ValueError(f"train_interactions {train_interactions.shape} does not match "
                         f"n_users={n_users}, n_items={n_items}")


def knn_indices(features: Tensor, k: int, chunk_size: int = 1024) -> tuple[Tensor, Tensor]:
    """Rows and columns of every item's top-``k`` cosine neighbours (itself included), without
    building the ``I x I`` similarity: ``chunk_size`` rows at a time (``torch.topk`` per row, as
    MMRec's ``get_knn_adj_mat`` / ``build_knn_neighbourhood``).

    Shapes:
        - **input:** features ``[I, d]``
        - **output:** rows ``[I k]``, cols ``[I k]`` int64 (row-major, ``k`` per row)
    """
    with torch.no_grad():
        unit = F.normalize(features.float(), dim=-1)
        n = unit.shape[0]
        k = min(k, n)
        cols = torch.cat([(unit[s:s + chunk_size] @ unit.T).topk(k, dim=-1).indices
                          for s in range(0, n, chunk_size)])
    rows = torch.arange(n, device=cols.device).repeat_interleave(k)
    return rows, cols.reshape(-1)


def normalized_knn_graph(features: Tensor, k: int) -> Tensor:
    r"""FREEDOM's frozen item graph of one modality: top-``k`` cosine neighbours (self included),
    unit values, :math:`D^{-1/2} S D^{-1/2}` with ``D`` the row sums (so every value is ``1/k``).

    Shapes: features ``[I, d]`` -> sparse COO ``[I, I]`` with ``I k`` non-zeros.
    """
    return normalize_adjacency(semantic_graph(features.float(), k, alpha=-1.0))


#: part of every cache key of :func:`cached_normalized_knn_graph`: bump it whenever
#: :func:`normalized_knn_graph` changes what it builds from the same features
KNN_GRAPH_CODE_VERSION = "normalized-knn-graph-v1"


def cached_normalized_knn_graph(features: Tensor, k: int, cache_dir: str | Path | None) -> Tensor:
    """:func:`normalized_knn_graph`, cached under ``cache_dir`` (None: built, not cached).

    The file name carries a hash of the features (the float32 values the graph is computed from), ``k``
    and :data:`KNN_GRAPH_CODE_VERSION`: other features or another ``k`` are another entry. Written
    atomically, built once by concurrent callers, checked on load (:func:`mllmrec.cache.build_once`);
    ``<file>.meta.json`` says how it was made. A cache hit does no kNN work (FREEDOM's graphs took
    ~70 s at Baby's size, 7,050 items x 4,096-d image features).

    Shapes: features ``[I, d]`` -> coalesced sparse COO float32 ``[I, I]`` with ``I k`` non-zeros, on the CPU.
    """
    values = features.detach().to(torch.float32).cpu()
    if cache_dir is None:
        return normalized_knn_graph(values, k).coalesce()
    features_hash = stable_hash(values)
    key = stable_hash(KNN_GRAPH_CODE_VERSION, features_hash, {"k": int(k)})
    graph, _ = build_once(
        Path(cache_dir) / f"knn_graph-{key}.pt",
        build=lambda: normalized_knn_graph(values, k).coalesce(),
        save=lambda graph, path: torch.save(sparse_state(graph), path),
        load=lambda path: sparse_from_state(torch.load(path, map_location="cpu", weights_only=True)),
        meta={"code_version": KNN_GRAPH_CODE_VERSION, "features_hash": features_hash,
              "features_shape": list(values.shape), "k": int(k)},
    )
    return graph


def sparse_edges(adjacency: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(rows, cols, values)`` of a sparse COO matrix (coalesced first)."""
    adjacency = adjacency.coalesce()
    rows, cols = adjacency.indices()
    return rows, cols, adjacency.values()


def edge_propagate(rows: Tensor, cols: Tensor, values: Tensor, x: Tensor) -> Tensor:
    r"""``A x`` for ``A`` given as an edge list; gradients flow into ``values`` and ``x``.

    .. math:: (A x)_r = \sum_{e: \mathrm{row}_e = r} v_e \, x_{\mathrm{col}_e}

    Duplicate edges add up (a sum of several graphs is their concatenated edge lists).

    Shapes:
        - **input:** rows, cols, values ``[E]``; x ``[N, d]``
        - **output:** ``[N, d]``
    """
    out = torch.zeros_like(x)
    return out.index_add(0, rows, values.unsqueeze(-1) * x[cols])
