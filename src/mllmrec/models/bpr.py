"""BPR-MF (Rendle et al., UAI 2009): user and item ID embeddings, dot-product score, BPR loss.

The simplest baseline of Table 2 (Baby R@20 0.0575 in the paper). Hyper-parameters follow MMRec's
``BPR.yaml``: embedding 64, Xavier initialisation, L2 weight searched in {1e-5 .. 2}.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from mllmrec.models.base import OptimizerFactory, Recommender, bpr_loss, require_at_least

__all__ = ["BPR", "embedding_l2"]


def embedding_l2(*embeddings: Tensor) -> Tensor:
    r"""Batch L2 penalty on the embeddings a batch used (LightGCN's form).

    .. math::
        \Omega = \frac{1}{2B} \sum_{E} \lVert E \rVert_F^2

    with ``B`` the batch size (rows of the first tensor). Penalising only the rows a batch touches,
    rather than all parameters via weight decay, is how BPR, LightGCN and VBPR are usually trained.

    Shapes:
        - **input:** tensors ``[B, *]``
        - **output:** ``[]``
    """
    if not embeddings:
        raise ValueError("embedding_l2 needs at least one tensor")
    batch = embeddings[0].shape[0]
    return sum(e.pow(2).sum() for e in embeddings) / (2 * max(batch, 1))


class BPR(Recommender):
    """Matrix factorisation trained with BPR: ``y_ui = p_u · q_i``.

    Args:
        n_users, n_items: sizes of the two ID tables.
        d: embedding dimension.
        reg_weight: weight of :func:`embedding_l2` on the batch's user/positive/negative embeddings.

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
        nn.init.xavier_uniform_(self.user_embedding.weight)
        nn.init.xavier_uniform_(self.item_embedding.weight)

    def loss(self, users: Tensor, positives: Tensor, negatives: Tensor) -> Tensor:
        p_u = self.user_embedding(users)
        q_pos, q_neg = self.item_embedding(positives), self.item_embedding(negatives)
        ranking = bpr_loss((p_u * q_pos).sum(-1), (p_u * q_neg).sum(-1))
        return ranking + self.reg_weight * embedding_l2(p_u, q_pos, q_neg)

    def full_scores(self, users: Tensor) -> Tensor:
        return self.user_embedding(users) @ self.item_embedding.weight.T

    def representations(self) -> tuple[Tensor, Tensor]:
        """The embedding tables: ``p_u`` [U, d], ``q_i`` [I, d]."""
        return self.user_embedding.weight, self.item_embedding.weight

