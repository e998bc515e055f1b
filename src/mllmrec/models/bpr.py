"""BPR-MF (Rendle et al., UAI 2009) as MMRec implements it (``models/bpr.py``).

The simplest baseline of Table 2 (Baby R@20 0.0575 in the paper). As in MMRec: embedding 64,
Xavier-*normal* initialisation, MMRec's ``BPRLoss`` and ``EmbLoss`` (un-squared norms over the batch,
:func:`~mllmrec.models.mmrec_parts.emb_loss`) on the batch's user / positive / negative embeddings;
``reg_weight`` searched in {1e-5 .. 2} (``conf/experiment/baseline_bpr.yaml``).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from mllmrec.models.base import OptimizerFactory, Recommender, require_at_least
from mllmrec.models.mmrec_parts import emb_loss, mmrec_bpr_loss

__all__ = ["BPR"]


class BPR(Recommender):
    r"""Matrix factorisation trained with BPR: ``y_ui = p_u · q_i``.

    .. math::
        \mathcal L = \mathrm{BPR} + \lambda \frac{\lVert P_B \rVert + \lVert Q_{B^+} \rVert + \lVert Q_{B^-} \rVert}{B}

    Args:
        n_users, n_items: sizes of the two ID tables.
        d: embedding dimension.
        reg_weight: ``λ``, the weight of MMRec's ``EmbLoss``.

    Shapes:
        :meth:`full_scores`: users ``[B]`` -> ``[B, I]``.
    """

    def __init__(
        self,
        n_users: int,
        n_items: int,
        d: int = 64,
        reg_weight: float = 1e-5,
        optimizer: OptimizerFactory | None = None,
        ks: Sequence[int] = (10, 20),
    ) -> None:
        super().__init__(optimizer=optimizer, ks=ks)
        require_at_least("model.d", d, 1)
        require_at_least("model.reg_weight", reg_weight, 0)
        self.save_hyperparameters(ignore=["optimizer"])  # a callable: the run config records it
        self.reg_weight = float(reg_weight)
        self.user_embedding = nn.Embedding(n_users, d)
        self.item_embedding = nn.Embedding(n_items, d)
        # MMRec: self.apply(xavier_normal_initialization)
        nn.init.xavier_normal_(self.user_embedding.weight)
        nn.init.xavier_normal_(self.item_embedding.weight)

    def loss(self, users: Tensor, positives: Tensor, negatives: Tensor) -> Tensor:
        p_u = self.user_embedding(users)
        q_pos, q_neg = self.item_embedding(positives), self.item_embedding(negatives)
        ranking = mmrec_bpr_loss((p_u * q_pos).sum(-1), (p_u * q_neg).sum(-1))
        return ranking + self.reg_weight * emb_loss(p_u, q_pos, q_neg)

    def full_scores(self, users: Tensor) -> Tensor:
        return self.user_embedding(users) @ self.item_embedding.weight.T

    def representations(self) -> tuple[Tensor, Tensor]:
        """The embedding tables: ``p_u`` [U, d], ``q_i`` [I, d]."""
        return self.user_embedding.weight, self.item_embedding.weight

