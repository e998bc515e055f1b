"""VBPR (He & McAuley, AAAI 2016) as MMRec implements it (``models/vbpr.py``).

Table 2 baseline (Baby R@20 0.0663 in the paper). As in MMRec: no bias terms; the item content is
the concatenation ``[text ; image]`` of the item modalities (MMRec's ``cat(t_feat, v_feat)``), projected
to ``d`` by a linear layer; a user vector of size ``2d`` scored against ``[q_i ; f_i W + b]``;
Xavier-uniform ID tables, a Xavier-normal projection with zero bias; MMRec's ``BPRLoss`` and
``EmbLoss`` on the batch's user / positive / negative vectors. ``reg_weight`` in {1e-5 .. 2}.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import ClassVar

import torch
from torch import Tensor, nn

from mllmrec.models.base import OptimizerFactory, Recommender, require_at_least
from mllmrec.models.mmrec_parts import emb_loss, mmrec_bpr_loss, require_modalities

__all__ = ["VBPR"]


class VBPR(Recommender):
    r"""VBPR.

    .. math::
        f_i = [\, t_i \;;\; v_i \,], \qquad
        h_i = [\, q_i \;;\; f_i W + b \,] \in \mathbb R^{2d}, \qquad y_{ui} = p_u \cdot h_i,
        \quad p_u \in \mathbb R^{2d}

    Args:
        item_modalities: ``{name: [I, d_name]}``; the ones in ``modalities`` are concatenated in that order.
        n_users, n_items: sizes.
        d: size of the ID part and of the projected content part.
        reg_weight: weight of MMRec's ``EmbLoss`` on ``p_u, h_pos, h_neg``.
        modalities: which modalities to read (default :attr:`modalities`, MMRec's text then image).

    Shapes:
        :meth:`full_scores`: users ``[B]`` -> ``[B, I]``.
    """

    #: the item modalities VBPR reads (MMRec: ``cat(t_feat, v_feat)``)
    modalities: ClassVar[tuple[str, ...]] = ("text", "image")

    def __init__(
        self,
        item_modalities: Mapping[str, Tensor],
        n_users: int,
        n_items: int,
        d: int = 64,
        reg_weight: float = 1e-5,
        modalities: Sequence[str] | None = None,
        optimizer: OptimizerFactory | None = None,
        ks: Sequence[int] = (10, 20),
    ) -> None:
        super().__init__(optimizer=optimizer, ks=ks)
        require_at_least("model.d", d, 1)
        require_at_least("model.reg_weight", reg_weight, 0)
        names = tuple(modalities or type(self).modalities)
        feats = require_modalities(item_modalities, names, "VBPR", n_items)
        self.save_hyperparameters(ignore=["item_modalities", "optimizer"])
        self.reg_weight = float(reg_weight)
        content = torch.cat([feats[name] for name in names], dim=-1)
        self.register_buffer("item_content", content, persistent=False)
        self.user_embedding = nn.Parameter(nn.init.xavier_uniform_(torch.empty(n_users, 2 * d)))
        self.item_embedding = nn.Parameter(nn.init.xavier_uniform_(torch.empty(n_items, d)))
        self.item_linear = nn.Linear(content.shape[1], d)
        nn.init.xavier_normal_(self.item_linear.weight)  # MMRec: apply(xavier_normal_initialization)
        nn.init.zeros_(self.item_linear.bias)
        self._eval_items: Tensor | None = None

    def item_repr(self, items: Tensor | None = None) -> Tensor:
        """``h_i`` of ``items`` ``[B, 2d]`` (every item when None). MMRec projects all items in every
        batch and then indexes; projecting only the batch's rows gives the same values and gradients."""
        if items is None:
            return torch.cat([self.item_embedding, self.item_linear(self.item_content)], -1)
        return torch.cat([self.item_embedding[items], self.item_linear(self.item_content[items])], -1)

    def loss(self, users: Tensor, positives: Tensor, negatives: Tensor) -> Tensor:
        p_u, h_pos, h_neg = self.user_embedding[users], self.item_repr(positives), self.item_repr(negatives)
        ranking = mmrec_bpr_loss((p_u * h_pos).sum(-1), (p_u * h_neg).sum(-1))
        return ranking + self.reg_weight * emb_loss(p_u, h_pos, h_neg)

    def prepare_eval(self) -> None:
        self._eval_items = self.item_repr()

    def full_scores(self, users: Tensor) -> Tensor:
        assert self._eval_items is not None
        return self.user_embedding[users] @ self._eval_items.T

    def representations(self) -> tuple[Tensor, Tensor]:
        """``p_u`` [U, 2d] and ``h_i = [q_i, E f_i]`` [I, 2d]."""
        assert self._eval_items is not None
        return self.user_embedding, self._eval_items
