"""MLLMRec (Section 4.2.3-4.3): frozen text features through the refined item graph, two MLP towers, BPR.

Optionally (``ui_layers > 0``, the paper's "w/ GCN_UI" ablation) a LightGCN branch on the user-item
graph is added on top of the towers' outputs, as in the authors' commented-out code.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mllmrec.graph import SparseOperator, normalize_adjacency, propagate
from mllmrec.models.base import OptimizerFactory, Recommender, bpr_loss, dot_score_blocks, require_at_least
from mllmrec.models.ui_graph import bipartite_adjacency, bipartite_edges

__all__ = ["MLLMRec", "mlp_tower"]


def mlp_tower(in_dim: int, hidden_dim: int, out_dim: int, negative_slope: float = 0.01) -> nn.Sequential:
    """Eq. 14: ``H = LeakyReLU(E W1 + b1) W2 + b2`` with Xavier-initialised weights (zero biases).

    The activation runs in place on the first layer's output (one [n, hidden] buffer less per pass);
    its backward then reads the output, which autograd allows only for a slope >= 0.
    """
    tower = nn.Sequential(
        nn.Linear(in_dim, hidden_dim),
        nn.LeakyReLU(negative_slope, inplace=negative_slope >= 0),
        nn.Linear(hidden_dim, out_dim),
    )
    for layer in tower:
        if isinstance(layer, nn.Linear):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)
    return tower


class MLLMRec(Recommender):
    r"""The MLLMRec model.

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
        train_interactions: training split ``R`` (scipy sparse ``[U, I]``); needed when ``ui_layers > 0``.
        ui_layers: depth of the user-item branch ("w/ GCN_UI"; 0 = off, the paper's model). When on,

            .. math::
                [Z_U; Z_I] = \sum_{l=0}^{L_{ui}} \hat A^l \,\mathrm{normalize}([H_U; H_I]), \qquad
                H_U \leftarrow H_U + Z_U, \quad H_I \leftarrow H_I + Z_I

            with ``Â`` the normalised bipartite graph of ``R`` and row-wise L2 normalisation; unlike the
            item-item propagation this depends on the towers' weights, so it runs in every batch over
            all users and items.
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
        optimizer: OptimizerFactory | None = None,
        ks: Sequence[int] = (10, 20),
        train_interactions: sp.spmatrix | None = None,
        ui_layers: int = 0,
    ) -> None:
        super().__init__(optimizer=optimizer, ks=ks)
        require_at_least("model.d", d, 1)
        require_at_least("graph.layers", layers, 0)
        require_at_least("model.ui_layers", ui_layers, 0)
        hidden_dim = hidden_dim or 4 * d
        self.save_hyperparameters(ignore=["item_features", "user_features", "item_graph", "train_interactions", "optimizer"])
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
        self.ui_layers = ui_layers
        self.ui_graph: SparseOperator | None = None
        if ui_layers > 0:
            if train_interactions is None:
                raise ValueError("model.ui_layers > 0 (w/ GCN_UI) needs train_interactions")
            if train_interactions.shape[1] != n_items:
                raise ValueError(f"train_interactions has {train_interactions.shape[1]} items, "
                                 f"item_features {n_items}")
            n_graph_users = train_interactions.shape[0]
            if user_features is not None and user_features.shape[0] != n_graph_users:
                raise ValueError(f"train_interactions has {n_graph_users} users, user_features "
                                 f"{user_features.shape[0]}")
            self.n_users = n_graph_users
            users, items = bipartite_edges(train_interactions)
            self.ui_graph = SparseOperator(
                normalize_adjacency(bipartite_adjacency(users, items, n_graph_users, n_items))
            )
        self._eval_users: Tensor | None = None
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
        return self.user_features.index_select(0, users)

    def user_repr(self, users: Tensor) -> Tensor:
        """h_u [B, d]."""
        return self.user_tower(self.user_inputs(users))

    def item_repr(self, items: Tensor | None = None) -> Tensor:
        """h_i [B, d] (all items when ``items`` is None)."""
        inputs = self.propagated_items()
        return self.item_tower(inputs if items is None else inputs.index_select(0, items))

    @staticmethod
    def _per_unique(fn, ids: Tensor) -> Tensor:
        """``fn(ids)`` computed once per distinct id and expanded back: ``fn(unique)[inverse]``.

        A batch of 2048 triplets holds ~5% repeated users and ~35% repeated items (popular positives,
        uniform negatives) on Baby; the towers' cost is linear in rows, so skipping the repeats saves
        that much of the forward and weight-gradient products. The result (and the gradient, summed
        over the repeats by the indexing backward) is the same up to float summation order.

        Shapes: ids [B] -> [B, d].
        """
        unique, inverse = torch.unique(ids, return_inverse=True)
        # index_select, not ``[inverse]``: its backward is index_add_, ~3x faster on CPU than the
        # accumulating index_put_ that advanced indexing uses (~0.2 s per Baby epoch)
        return fn(unique).index_select(0, inverse)

    def all_user_inputs(self) -> Tensor:
        return self.user_table.weight if self.user_table is not None else self.user_features

    def ui_branch(self) -> tuple[Tensor, Tensor]:
        """w/ GCN_UI: ``(H_U + Z_U, H_I + Z_I)`` for all users [U, d] and items [I, d]."""
        assert self.ui_graph is not None
        h_u = self.user_tower(self.all_user_inputs())
        h_i = self.item_repr()
        z = propagate(self.ui_graph, F.normalize(torch.cat([h_u, h_i])), self.ui_layers, reduce="sum")
        return h_u + z[: h_u.shape[0]], h_i + z[h_u.shape[0] :]

    # ------------------------------------------------------------------ Recommender
    def loss(self, users: Tensor, positives: Tensor, negatives: Tensor) -> Tensor:
        if self.ui_graph is not None:
            all_users, all_items = self.ui_branch()
            h_u, h_pos, h_neg = all_users[users], all_items[positives], all_items[negatives]
        else:
            h_u = self._per_unique(self.user_repr, users)
            # one item-tower pass for positives and negatives together (larger GEMMs, shared repeats)
            h_items = self._per_unique(self.item_repr, torch.cat([positives, negatives]))
            h_pos, h_neg = h_items[: positives.shape[0]], h_items[positives.shape[0] :]
        return bpr_loss((h_u * h_pos).sum(-1), (h_u * h_neg).sum(-1))

    def prepare_eval(self) -> None:
        if self.ui_graph is not None:
            self._eval_users, self._eval_items = self.ui_branch()
        else:
            self._eval_users, self._eval_items = None, self.item_repr()

    def full_scores(self, users: Tensor) -> Tensor:
        assert self._eval_items is not None
        h_u = self._eval_users[users] if self._eval_users is not None else self.user_repr(users)
        return h_u @ self._eval_items.T

    def score_blocks(self, users: Tensor) -> Iterator[tuple[int, Tensor]] | None:
        """:meth:`full_scores` in item blocks above ``EVAL_BLOCK_ITEMS`` items (see :func:`dot_score_blocks`)."""
        assert self._eval_items is not None
        h_u = self._eval_users[users] if self._eval_users is not None else self.user_repr(users)
        return dot_score_blocks(h_u, self._eval_items)

    def representations(self) -> tuple[Tensor, Tensor]:
        """``(h_u for every user [U, d], h_i for every item [I, d])`` (with GCN_UI: the branch's sums)."""
        assert self._eval_items is not None
        users = self._eval_users if self._eval_users is not None else self.user_tower(self.all_user_inputs())
        return users, self._eval_items
