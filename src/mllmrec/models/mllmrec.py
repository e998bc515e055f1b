"""MLLMRec (Section 4.2.3-4.3): frozen text features through the refined item graph, two MLP towers, BPR."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from mllmrec.graph import normalize_adjacency, propagate
from mllmrec.models.base import Recommender, bpr_loss

__all__ = ["MLLMRec", "mlp_tower"]


def mlp_tower(in_dim: int, hidden_dim: int, out_dim: int, negative_slope: float = 0.01) -> nn.Sequential:
    """Eq. 14: ``H = LeakyReLU(E W1 + b1) W2 + b2`` with Xavier-initialised weights (zero biases)."""
    tower = nn.Sequential(
        nn.Linear(in_dim, hidden_dim), nn.LeakyReLU(negative_slope), nn.Linear(hidden_dim, out_dim)
    )
    for layer in tower:
        if isinstance(layer, nn.Linear):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)
    return tower


class MLLMRec(Recommender):
    """The MLLMRec model.

    Item side: ``E*_I = sum_{l=0..L} Â^l E_I`` (Eq. 11-12, Â the normalised refined graph), then an MLP
    tower. User side: the encoded preference profiles ``E_U`` (Eq. 13) through an MLP tower of the same
    shape. Score ``y_ui = h_u · h_i``; BPR loss.

    The item features are frozen, so their propagation is computed **once per run** (the authors
    recompute it in every batch) and kept as a non-persistent buffer; ``n_propagations`` counts it.

    Args:
        item_features: frozen ``E_I`` [I, d_t].
        user_features: frozen ``E_U`` [U, d_t], or None for a trainable Xavier-initialised user table
            (the paper's "w/o RS" ablation).
        item_graph: the refined item graph S* (sparse [I, I]); normalised here.
        n_users: number of users (used when ``user_features`` is None).
        d: output dimension; hidden_dim: d1 (None = 4 * d, as in the authors' code).
        layers: L, item-item propagation depth (0 = no graph).
    """

    def __init__(
        self,
        item_features: Tensor,
        user_features: Tensor | None,
        item_graph: Tensor,
        n_users: int | None = None,
        d: int = 64,
        hidden_dim: int | None = None,
        layers: int = 1,
        negative_slope: float = 0.01,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        ks: Sequence[int] = (10, 20),
    ) -> None:
        super().__init__(lr=lr, weight_decay=weight_decay, ks=ks)
        if d < 1:
            raise ValueError(f"model.d must be >= 1, got {d}")
        if layers < 0:
            raise ValueError(f"graph.layers must be >= 0, got {layers}")
        hidden_dim = hidden_dim or 4 * d
        self.save_hyperparameters(ignore=["item_features", "user_features", "item_graph"])
        n_items, feat_dim = item_features.shape
        self.n_items, self.layers = n_items, layers
        self.register_buffer("item_features", item_features.float(), persistent=False)
        self.register_buffer("item_graph", normalize_adjacency(item_graph.float()), persistent=False)
        self.register_buffer("item_inputs", None, persistent=False)  # E*_I, filled once
        self.n_propagations = 0
        if user_features is not None:
            self.register_buffer("user_features", user_features.float(), persistent=False)
            self.user_table = None
            user_dim = user_features.shape[1]
        else:
            if n_users is None:
                raise ValueError("n_users is required when user_features is None")
            self.user_features = None
            self.user_table = nn.Embedding(n_users, feat_dim)
            nn.init.xavier_uniform_(self.user_table.weight)
            user_dim = feat_dim
        self.item_tower = mlp_tower(feat_dim, hidden_dim, d, negative_slope)
        self.user_tower = mlp_tower(user_dim, hidden_dim, d, negative_slope)
        self._eval_items: Tensor | None = None

    # ------------------------------------------------------------------ representations
    def propagated_items(self) -> Tensor:
        """E*_I [I, d_t], computed on first use and then reused for the whole run."""
        if self.item_inputs is None:
            with torch.no_grad():
                self.item_inputs = propagate(self.item_graph, self.item_features, self.layers)
            self.n_propagations += 1
        return self.item_inputs

    def on_fit_start(self) -> None:
        self.propagated_items()

    def user_inputs(self, users: Tensor) -> Tensor:
        if self.user_table is not None:
            return self.user_table(users)
        return self.user_features[users]

    def user_repr(self, users: Tensor) -> Tensor:
        """h_u [B, d]."""
        return self.user_tower(self.user_inputs(users))

    def item_repr(self, items: Tensor | None = None) -> Tensor:
        """h_i [B, d] (all items when ``items`` is None)."""
        inputs = self.propagated_items()
        return self.item_tower(inputs if items is None else inputs[items])

    # ------------------------------------------------------------------ Recommender
    def loss(self, users: Tensor, positives: Tensor, negatives: Tensor) -> Tensor:
        h_u = self.user_repr(users)
        h_pos, h_neg = self.item_repr(positives), self.item_repr(negatives)
        return bpr_loss((h_u * h_pos).sum(-1), (h_u * h_neg).sum(-1))

    def prepare_eval(self) -> None:
        self._eval_items = self.item_repr()

    def full_scores(self, users: Tensor) -> Tensor:
        assert self._eval_items is not None
        return self.user_repr(users) @ self._eval_items.T
