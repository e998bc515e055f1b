"""A dense, plain-numpy reference for new items' representations (tests only): each new item's row
appended to the trained refined graph, D^-1/2 A D^-1/2 with row sums, the sum of powers 0..L, the
item tower. Imported by name by tests/test_new_items.py and tests/train/test_recommend_new_items.py."""

from __future__ import annotations

import numpy as np
import torch


def dense_neighbours(features: np.ndarray, new: np.ndarray, k_s: int, alpha: float) -> list[list[int]]:
    """Per new item: the trained items among its top ``k_s`` cosines (dense) with cosine >= alpha."""
    e = features / np.linalg.norm(features, axis=1, keepdims=True)
    out = []
    for f in new:
        sims = e @ (f / np.linalg.norm(f))
        out.append([int(j) for j in np.argsort(-sims, kind="stable")[:k_s] if sims[j] >= alpha])
    return out


def dense_new_item_representations(model, graph: torch.Tensor, features: torch.Tensor, new: torch.Tensor,
                                   k_s: int, alpha: float) -> torch.Tensor:
    """``h_n`` [N, d] of new items with features ``new`` [N, d_t] for a trained MLLMRec."""
    n_items, n_new = features.shape[0], new.shape[0]
    a = np.zeros((n_items + n_new, n_items + n_new))
    a[:n_items, :n_items] = graph.to_dense().numpy()
    for n, neighbours in enumerate(dense_neighbours(features.numpy().astype(np.float64),
                                                    new.numpy().astype(np.float64), k_s, alpha)):
        a[n_items + n, neighbours] = 1.0
        a[n_items + n, n_items + n] = 1.0
    d = a.sum(1)
    inv = np.where(d > 0, 1 / np.sqrt(np.where(d > 0, d, 1)), 0)
    a_hat = inv[:, None] * a * inv[None, :]
    x = np.concatenate([features.numpy(), new.numpy()]).astype(np.float64)
    total, hidden = x.copy(), x
    for _ in range(model.layers):
        hidden = a_hat @ hidden
        total = total + hidden
    with torch.no_grad():
        return model.item_tower(torch.from_numpy(total[n_items:]).float())
