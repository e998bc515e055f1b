r"""Scoring items that were not in the dataset (new catalogue items), with a trained MLLMRec.

MLLMRec represents an item from its content: its encoded description goes through the refined item
graph and the item tower (Eq. 11-14). A new item has no interactions, so in the graph it gets what a
cold item gets (docs/cold_start.md): **semantic neighbours only**, by the rule of Eq. 6-7 applied
to its similarities with the trained items,

.. math::
    \tilde s_{nj} = 1 \iff j \in \operatorname{top-}K_{s, j \in \mathcal I}(s_{nj})
    \text{ and } s_{nj} \ge \alpha, \qquad \tilde s_{nn} = 1

i.e. its top-``K_s`` trained items (a trained item's own row holds itself and its top ``K_s - 1``
others, which are exactly the top-``K_s`` of its similarities), plus a self-loop so that its own
features enter its representation as every item's do. A new item whose description equals trained
item ``j``'s therefore links to exactly ``j``'s semantic neighbours (``j`` included). No co-occurrence
edge, and no edge *into* it: the trained items' rows, their degrees and so their propagated inputs stay
exactly what the model was trained on. Each new item is placed independently of the other new items,
so its score does not depend on which items are scored with it. Then

.. math::
    e^*_n = \sum_{l=0}^{L} (\hat A^l X)_n, \qquad h_n = \mathrm{tower}_I(e^*_n), \qquad y_{un} = h_u \cdot h_n

with ``Â`` the normalised graph of the trained items extended by the new rows (Eq. 11) and ``X`` the
trained items' features stacked on the new ones. Ties among equal similarities fall either way.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from mllmrec.graph import normalize_adjacency, propagate
from mllmrec.models.mllmrec import MLLMRec

__all__ = ["new_item_neighbours", "new_item_representations", "score_new_items"]


def new_item_neighbours(
    item_features: Tensor, new_features: Tensor, k_s: int, alpha: float, chunk_size: int = 1024
) -> tuple[Tensor, Tensor]:
    """The trained items each new item links to: its top ``K_s`` cosine neighbours among the
    trained items, kept when the cosine is ``>= alpha`` (the self-loop is added by the caller).

    Shapes:
        - **input:** item_features ``[I, d]``, new_features ``[N, d]``
        - **output:** (new row index ``[E]`` in ``0..N-1``, trained item id ``[E]``), int64.
    """
    if k_s < 1:
        raise ValueError(f"graph.ks must be >= 1, got {k_s}")
    existing = F.normalize(item_features.float(), dim=1)
    k = min(k_s, existing.shape[0])
    rows, cols = [], []
    for start in range(0, new_features.shape[0], chunk_size):
        block = F.normalize(new_features[start:start + chunk_size].float(), dim=1)
        if k == 0:
            break
        sims, idx = (block @ existing.T).topk(k, dim=1)
        keep = sims >= alpha
        rows.append((torch.arange(block.shape[0]).unsqueeze(1).expand_as(idx) + start)[keep])
        cols.append(idx[keep])
    if not rows:
        empty = torch.zeros(0, dtype=torch.long)
        return empty, empty
    return torch.cat(rows), torch.cat(cols)


def new_item_representations(
    model: MLLMRec, item_graph: Tensor, new_features: Tensor, k_s: int, alpha: float
) -> Tensor:
    """``h_n`` of new items (module docstring) for a trained ``model``.

    Args:
        model: a trained :class:`MLLMRec` (``model.ui_layers == 0``: the paper's model).
        item_graph: the refined graph ``S*`` the model was trained with, *before* normalisation
            (``datamodule.item_graph``), sparse ``[I, I]``.
        new_features: the new items' encoded descriptions, same encoder as the training features.
        k_s, alpha: ``graph.ks`` and ``graph.alpha`` of the run.

    Shapes:
        new_features ``[N, d_t]`` -> ``[N, d]``.
    """
    if model.ui_layers > 0:
        raise ValueError("new items cannot be scored with the w/ GCN_UI branch (model.ui_layers > 0): it "
                         "propagates over user-item edges a new item does not have")
    features = model.item_features
    n_items, n_new = features.shape[0], new_features.shape[0]
    if new_features.dim() != 2 or new_features.shape[1] != features.shape[1]:
        raise ValueError(f"new_features must be [N, {features.shape[1]}] (the training encoder's size), "
                         f"got {tuple(new_features.shape)}")
    new_features = new_features.to(features.device, features.dtype)
    rows, cols = new_item_neighbours(features, new_features, k_s, alpha)
    own = torch.arange(n_new, device=features.device)
    graph = item_graph.coalesce().to(features.device)
    indices = torch.cat([graph.indices(), torch.stack([rows + n_items, cols]),
                         torch.stack([own + n_items, own + n_items])], dim=1)
    values = torch.cat([graph.values().float(), torch.ones(rows.numel() + n_new, device=features.device)])
    size = n_items + n_new
    extended = torch.sparse_coo_tensor(indices, values, (size, size), check_invariants=True).coalesce()
    with torch.no_grad():
        inputs = propagate(normalize_adjacency(extended), torch.cat([features, new_features]), model.layers)
        return model.item_tower(inputs[n_items:])


def score_new_items(
    model: MLLMRec, item_graph: Tensor, new_features: Tensor, users: Tensor, k_s: int, alpha: float
) -> Tensor:
    """``y_un = h_u · h_n`` of ``users`` against new items.

    Shapes: new_features ``[N, d_t]``, users ``[B]`` -> ``[B, N]``.
    """
    h_new = new_item_representations(model, item_graph, new_features, k_s, alpha)
    with torch.no_grad():
        return model.user_repr(users.to(h_new.device)) @ h_new.T
