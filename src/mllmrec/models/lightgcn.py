"""LightGCN (He et al., SIGIR 2020): ID embeddings propagated on the user-item graph, layer mean.

Table 2 baseline (Baby R@20 0.0754 in the paper), as MMRec implements it (``models/lightgcn.py``):
embedding 64, Xavier-uniform initialisation, MMRec's ``BPRLoss`` on the propagated embeddings and its
``EmbLoss`` (un-squared norms over the batch) on the batch's ego (layer-0) embeddings. MMRec's grid:
``layers`` in {1, 2, 3, 4}, ``reg_weight`` in {1e-2 .. 1e-6} (``conf/experiment/baseline_lightgcn.yaml``).
"""

from __future__ import annotations

from collections.abc import Sequence

import scipy.sparse as sp
import torch
from torch import Tensor, nn

from mllmrec.graph import SparseOperator, normalize_adjacency, propagate
from mllmrec.models.base import OptimizerFactory, PrecomputedScores, require_at_least
from mllmrec.models.mmrec_parts import emb_loss, mmrec_bpr_loss
from mllmrec.models.ui_graph import bipartite_adjacency, bipartite_edges

__all__ = ["LightGCN"]


class LightGCN(PrecomputedScores):
    r"""LightGCN.

    .. math::
        E^{(0)} = [E_U; E_I], \qquad E^{(l)} = \hat A E^{(l-1)}, \qquad
        E = \frac{1}{L+1} \sum_{l=0}^{L} E^{(l)}, \qquad y_{ui} = e_u \cdot e_i

    with ``Â`` the normalised bipartite adjacency of the training interactions
    (:func:`~mllmrec.graph.normalize_adjacency` of :func:`~mllmrec.models.ui_graph.bipartite_adjacency`).
    The propagation is recomputed in every training batch (the embeddings change) and once per evaluation pass.

    Args:
        train_interactions: training split ``R`` (scipy sparse ``[U, I]``).
        n_users, n_items: sizes (must match ``R``).
        d: embedding dimension. layers: ``L``.
        reg_weight: weight of :func:`~mllmrec.models.mmrec_parts.emb_loss` on the batch's ego embeddings.
    """

    def __init__(
        self,
        train_interactions: sp.spmatrix,
        n_users: int,
        n_items: int,
        d: int = 64,
        layers: int = 3,
        reg_weight: float = 1e-4,
        optimizer: OptimizerFactory | None = None,
        ks: Sequence[int] = (10, 20),
    ) -> None:
        super().__init__(optimizer=optimizer, ks=ks)
        require_at_least("model.d", d, 1)
        require_at_least("model.layers", layers, 0)
        if tuple(train_interactions.shape) != (n_users, n_items):
            raise ValueError(f"train_interactions has shape {train_interactions.shape}, expected "
                             f"({n_users}, {n_items})")
        self.save_hyperparameters(ignore=["train_interactions", "optimizer"])
        self.n_users, self.n_items, self.layers = n_users, n_items, layers
        self.reg_weight = float(reg_weight)
        users, items = bipartite_edges(train_interactions)
        self.adjacency = SparseOperator(normalize_adjacency(bipartite_adjacency(users, items, n_users, n_items)))
        self.user_embedding = nn.Embedding(n_users, d)
        self.item_embedding = nn.Embedding(n_items, d)
        nn.init.xavier_uniform_(self.user_embedding.weight)
        nn.init.xavier_uniform_(self.item_embedding.weight)

    def propagated(self) -> tuple[Tensor, Tensor]:
        """Final user [U, d] and item [I, d] representations."""
        ego = torch.cat([self.user_embedding.weight, self.item_embedding.weight])
        out = propagate(self.adjacency, ego, self.layers, reduce="mean")
        return out[: self.n_users], out[self.n_users :]

    def loss(self, users: Tensor, positives: Tensor, negatives: Tensor) -> Tensor:
        user_out, item_out = self.propagated()
        e_u = user_out[users]
        ranking = mmrec_bpr_loss((e_u * item_out[positives]).sum(-1), (e_u * item_out[negatives]).sum(-1))
        ego = emb_loss(
            self.user_embedding(users), self.item_embedding(positives), self.item_embedding(negatives)
        )
        return ranking + self.reg_weight * ego

    def prepare_eval(self) -> None:
        self._eval_users, self._eval_items = self.propagated()

