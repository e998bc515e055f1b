"""VBPR (He & McAuley, AAAI 2016): ID embeddings concatenated with projected item content features.

Table 2 baseline (Baby R@20 0.0663 in the paper). As in MMRec's version (which the paper's baseline
numbers come from): no bias terms, a user vector of size ``2d`` scored against ``[q_i ; f_i W]``,
Xavier initialisation, L2 on the batch's embeddings. Here the content features are the item
description embeddings ``E_I`` the datamodule serves (text, plus the image description when an MLLM
produced one), instead of MMRec's separate image-CNN and text features.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from mllmrec.models.base import OptimizerFactory, Recommender, bpr_loss, require_at_least
from mllmrec.models.bpr import embedding_l2

__all__ = ["VBPR"]


class VBPR(Recommender):
    r"""VBPR.

    .. math::
        h_i = [\, q_i \;;\; f_i W + b \,] \in \mathbb R^{2d}, \qquad y_{ui} = p_u \cdot h_i,
        \quad p_u \in \mathbb R^{2d}

    Args:
        item_features: frozen content features ``E_I`` [I, d_t].
        n_users: number of users.
        d: size of the ID part and of the projected feature part.
        reg_weight: weight of :func:`~mllmrec.models.bpr.embedding_l2` on ``p_u, h_pos, h_neg``.

    Shapes:
        :meth:`full_scores`: users ``[B]`` -> ``[B, I]``.
    """

    def __init__(
        self,
        item_features: Tensor,
        n_users: int,
        d: int = 64,
        reg_weight: float = 1e-5,
        optimizer: OptimizerFactory | None = None,
        ks: Sequence[int] = (10, 20),
    ) -> None:
        super().__init__(optimizer=optimizer, ks=ks)
        require_at_least("model.d", d, 1)
        if item_features.dim() != 2:
            raise ValueError(f"item_features must be [I, d_t], got {tuple(item_features.shape)}")
        self.save_hyperparameters(ignore=["item_features", "optimizer"])
        self.reg_weight = float(reg_weight)
        n_items, feat_dim = item_features.shape
        self.register_buffer("item_features", item_features.float(), persistent=False)
        self.user_embedding = nn.Embedding(n_users, 2 * d)
        self.item_embedding = nn.Embedding(n_items, d)
        self.feature_projection = nn.Linear(feat_dim, d)
        nn.init.xavier_uniform_(self.user_embedding.weight)
        nn.init.xavier_uniform_(self.item_embedding.weight)
        nn.init.xavier_uniform_(self.feature_projection.weight)
        nn.init.zeros_(self.feature_projection.bias)
        self._eval_items: Tensor | None = None

    def item_repr(self, items: Tensor | None = None) -> Tensor:
        """``h_i`` [B, 2d] of ``items`` (all items when None)."""
        if items is None:
            return torch.cat([self.item_embedding.weight, self.feature_projection(self.item_features)], -1)
        return torch.cat([self.item_embedding(items), self.feature_projection(self.item_features[items])], -1)

    def loss(self, users: Tensor, positives: Tensor, negatives: Tensor) -> Tensor:
        p_u = self.user_embedding(users)
        h_pos, h_neg = self.item_repr(positives), self.item_repr(negatives)
        ranking = bpr_loss((p_u * h_pos).sum(-1), (p_u * h_neg).sum(-1))
        return ranking + self.reg_weight * embedding_l2(p_u, h_pos, h_neg)

    def prepare_eval(self) -> None:
        self._eval_items = self.item_repr()

    def full_scores(self, users: Tensor) -> Tensor:
        assert self._eval_items is not None
        return self.user_embedding(users) @ self._eval_items.T

    def representations(self) -> tuple[Tensor, Tensor]:
        """``p_u`` [U, 2d] and ``h_i = [q_i, E f_i]`` [I, 2d]."""
        assert self._eval_items is not None
        return self.user_embedding.weight, self._eval_items
