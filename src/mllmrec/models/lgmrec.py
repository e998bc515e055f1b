"""LGMRec (Guo et al., AAAI 2024) as MMRec implements it (``models/lgmrec.py``).

A graph-based multimodal baseline of Table 2 and a host of Figure 3.

* **CGE** (collaborative graph embedding): LightGCN (layer mean, ``ui_layers``) over user and item
  ID embeddings on ``D^-1/2 A D^-1/2``.
* **MGE** (modality graph embedding), per modality ``m``: item features ``x_m W_m`` (frozen ``x_m``),
  user features = the mean of their training items' (``R x_m W_m / |N_u|``), propagated ``mm_layers``
  times on the same graph (no layer mean); ``mge = norm(mge_image) + norm(mge_text)``.
* **GHE** (global hypergraph embedding): hyperedge memberships ``softmax_gumbel(x_m V_m, τ=0.2)`` for
  items and ``softmax_gumbel(R x_m V_m)`` for users, dropped out with ``1 - keep_rate``; ``n_hyper_layer``
  rounds of ``lat = H_i^T E, E_i = H_i lat, E_u = H_u lat`` starting from the CGE item output.
* **Output** ``cge + mge + alpha * norm(ghe_image + ghe_text)``.
* **Loss** BPR + ``cl_weight`` x the InfoNCE (τ = 0.2, summed) between the image and text hyperedge
  embeddings of the batch's users against all users and of its positive items against all items, +
  ``reg_weight`` x MMRec's ``EmbLoss`` (un-squared norms / batch) on the output embeddings.

As in MMRec the Gumbel noise is drawn in every forward pass, evaluation included (MMRec draws it per
evaluation batch, this implementation once per evaluation pass).

**+GR** (``item_graph=refined``): MMRec's LGMRec has no item-item graph; this switch *adds* one, the way
FREEDOM uses its graph: the item ID embeddings propagated ``graph_layers`` (1) times on
``D^-1/2 S* D^-1/2`` are added to the item output, ``e_i += (Ŝ*^{L} Q)_i``. With ``item_graph=own``
(the default) the model is MMRec's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import ClassVar

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mllmrec.graph import SparseOperator, normalize_adjacency, propagate
from mllmrec.models.base import OptimizerFactory, PrecomputedScores, bpr_loss, require_at_least
from mllmrec.models.mmrec_parts import emb_loss, refined_graph_argument, require_modalities
from mllmrec.models.ui_graph import bipartite_adjacency, bipartite_edges

__all__ = ["LGMRec", "hypergraph_rounds", "infonce_sum"]


def hypergraph_rounds(item_hyper: Tensor, user_hyper: Tensor, item_emb: Tensor, layers: int) -> tuple[Tensor, Tensor]:
    r"""MMRec's ``HGNNLayer``: ``layers`` rounds of :math:`\Lambda = H_I^\top E_I,\ E_I \leftarrow H_I \Lambda,\ E_U = H_U \Lambda`.

    Shapes: item_hyper ``[I, h]``, user_hyper ``[U, h]``, item_emb ``[I, d]`` -> ``[U, d]``, ``[I, d]``.
    """
    if layers < 1:
        raise ValueError(f"model.hyper_layers must be >= 1, got {layers}")
    items = item_emb
    for _ in range(layers):
        latent = item_hyper.T @ items
        items = item_hyper @ latent
        users = user_hyper @ latent
    return users, items


def infonce_sum(anchor: Tensor, positive: Tensor, candidates: Tensor, tau: float) -> Tensor:
    r"""MMRec's ``ssl_triple_loss``: :math:`-\sum_b \log \frac{\exp(s(a_b, p_b)/\tau)}{\sum_c \exp(s(a_b, c)/\tau)}`
    with cosine ``s``, summed over the batch.

    Shapes: anchor, positive ``[B, d]``, candidates ``[N, d]`` -> ``[]``.
    """
    a, p, c = F.normalize(anchor), F.normalize(positive), F.normalize(candidates)
    pos = torch.exp((a * p).sum(-1) / tau)
    total = torch.exp(a @ c.T / tau).sum(-1)
    return -torch.log(pos / total).sum()


class LGMRec(PrecomputedScores):
    r"""LGMRec.

    Args:
        item_modalities: ``{name: [I, d_name]}``; MMRec's LGMRec needs both image and text.
        train_interactions: training split ``R`` (scipy sparse ``[U, I]``).
        n_users, n_items: sizes.
        item_graph: ``"own"`` (MMRec's model) or the refined graph ``S*`` (adds ``Ŝ*^L Q``, see module doc).
        d: embedding size (= ``feat_embed_dim``, 64). ui_layers: CGE depth (2). mm_layers: MGE depth (2).
        hyper_layers: hypergraph rounds (``n_hyper_layer``, 1). hyper_num: hyperedges per modality (4).
        keep_rate: hyperedge dropout keep rate (0.5). alpha: weight of the global embedding (0.3).
        cl_weight: weight of the hypergraph InfoNCE (1e-4). reg_weight: weight of ``EmbLoss`` (1e-6).
        tau: the Gumbel-softmax and InfoNCE temperature (0.2, fixed in MMRec).
        graph_layers: depth on the refined graph with ``item_graph=refined`` (1, as FREEDOM's ``mm_layers``).

    Defaults are MMRec's LGMRec.yaml for Baby.
    """

    #: the item modalities LGMRec reads (MMRec: ``v_feat``, ``t_feat``; both are required)
    modalities: ClassVar[tuple[str, ...]] = ("image", "text")

    def __init__(
        self,
        item_modalities: Mapping[str, Tensor],
        train_interactions: sp.spmatrix,
        n_users: int,
        n_items: int,
        item_graph: Tensor | str | None = "own",
        d: int = 64,
        ui_layers: int = 2,
        mm_layers: int = 2,
        hyper_layers: int = 1,
        hyper_num: int = 4,
        keep_rate: float = 0.5,
        alpha: float = 0.3,
        cl_weight: float = 1e-4,
        reg_weight: float = 1e-6,
        tau: float = 0.2,
        graph_layers: int = 1,
        modalities: Sequence[str] | None = None,
        optimizer: OptimizerFactory | None = None,
        ks: Sequence[int] = (10, 20),
    ) -> None:
        super().__init__(optimizer=optimizer, ks=ks)
        require_at_least("model.d", d, 1)
        require_at_least("model.ui_layers", ui_layers, 0)
        require_at_least("model.mm_layers", mm_layers, 0)
        require_at_least("model.hyper_layers", hyper_layers, 1)
        require_at_least("model.hyper_num", hyper_num, 1)
        require_at_least("model.graph_layers", graph_layers, 0)
        if not 0.0 < keep_rate <= 1.0:
            raise ValueError(f"model.keep_rate must be in (0, 1], got {keep_rate}")
        refined = refined_graph_argument(item_graph, "LGMRec")
        names = tuple(modalities or type(self).modalities)
        if len(names) != 2:
            raise ValueError(f"LGMRec (as MMRec implements it) needs two modalities, got model.modalities={list(names)}")
        feats = require_modalities(item_modalities, names, "LGMRec", n_items)
        self.save_hyperparameters(ignore=["item_modalities", "item_graph", "train_interactions", "optimizer"])
        self.hparams["item_graph"] = "refined" if refined is not None else "own"
        self.n_users, self.n_items, self.names = n_users, n_items, names
        self.ui_layers, self.mm_layers, self.hyper_layers = ui_layers, mm_layers, hyper_layers
        self.graph_layers = graph_layers
        self.alpha, self.cl_weight, self.reg_weight, self.tau = float(alpha), float(cl_weight), float(reg_weight), float(tau)

        users, items = bipartite_edges(train_interactions)
        self.ui_graph = SparseOperator(normalize_adjacency(bipartite_adjacency(users, items, n_users, n_items)))
        r = torch.sparse_coo_tensor(torch.stack([users, items]), torch.ones(users.numel()), (n_users, n_items))
        self.interactions = SparseOperator(r.coalesce())  # R, unnormalised (MMRec's self.adj)
        degree = np.asarray(sp.csr_matrix(train_interactions).astype(bool).sum(1)).ravel()
        self.register_buffer("inverse_degree", torch.tensor(1.0 / (degree + 1e-7), dtype=torch.float32)[:, None],
                             persistent=False)
        self.item_item = SparseOperator(normalize_adjacency(refined.float().cpu())) if refined is not None else None

        self.user_embedding = nn.Embedding(n_users, d)
        self.item_embedding = nn.Embedding(n_items, d)
        nn.init.xavier_uniform_(self.user_embedding.weight)
        nn.init.xavier_uniform_(self.item_embedding.weight)
        for name, f in feats.items():  # frozen features (from_pretrained(freeze=True))
            self.register_buffer(f"features_{name}", f, persistent=False)
        self.projections = nn.ParameterDict(
            {n: nn.Parameter(nn.init.xavier_uniform_(torch.zeros(f.shape[1], d))) for n, f in feats.items()})
        self.hyperedges = nn.ParameterDict(
            {n: nn.Parameter(nn.init.xavier_uniform_(torch.zeros(f.shape[1], hyper_num))) for n, f in feats.items()})
        self.hyper_dropout = nn.Dropout(p=1.0 - keep_rate)

    # ------------------------------------------------------------------ representations
    def _features(self, name: str) -> Tensor:
        return getattr(self, f"features_{name}")

    def collaborative(self) -> Tensor:
        """CGE ``[U + I, d]``."""
        ego = torch.cat([self.user_embedding.weight, self.item_embedding.weight])
        return propagate(self.ui_graph, ego, self.ui_layers, reduce="mean")

    def modality(self, name: str) -> Tensor:
        """MGE of one modality ``[U + I, d]``."""
        item_feats = self._features(name) @ self.projections[name]
        user_feats = self.interactions(item_feats) * self.inverse_degree
        x = torch.cat([user_feats, item_feats])
        for _ in range(self.mm_layers):
            x = self.ui_graph(x)
        return x

    def forward(self) -> tuple[Tensor, Tensor, dict[str, tuple[Tensor, Tensor]]]:
        """Users ``[U, d]``, items ``[I, d]`` and each modality's hyperedge embeddings (users, items)."""
        cge = self.collaborative()
        hyper: dict[str, tuple[Tensor, Tensor]] = {}
        for name in self.names:
            item_h = self._features(name) @ self.hyperedges[name]
            user_h = self.interactions(item_h)
            item_h = F.gumbel_softmax(item_h, self.tau, dim=1, hard=False)
            user_h = F.gumbel_softmax(user_h, self.tau, dim=1, hard=False)
            hyper[name] = hypergraph_rounds(self.hyper_dropout(item_h), self.hyper_dropout(user_h),
                                            cge[self.n_users:], self.hyper_layers)
        mge = sum(F.normalize(self.modality(name)) for name in self.names)
        ghe = sum(torch.cat(hyper[name]) for name in self.names)
        out = cge + mge + self.alpha * F.normalize(ghe)
        users, items = out[: self.n_users], out[self.n_users:]
        if self.item_item is not None:  # +GR: the refined item graph on the item ID embeddings
            h = self.item_embedding.weight
            for _ in range(self.graph_layers):
                h = self.item_item(h)
            items = items + h
        return users, items, hyper

    def loss(self, users: Tensor, positives: Tensor, negatives: Tensor) -> Tensor:
        user_out, item_out, hyper = self.forward()
        e_u, e_pos, e_neg = user_out[users], item_out[positives], item_out[negatives]
        ranking = bpr_loss((e_u * e_pos).sum(-1), (e_u * e_neg).sum(-1))
        (uv, iv), (ut, it) = hyper[self.names[0]], hyper[self.names[1]]
        contrastive = infonce_sum(uv[users], ut[users], ut, self.tau) + infonce_sum(iv[positives], it[positives], it, self.tau)
        return ranking + self.cl_weight * contrastive + self.reg_weight * emb_loss(e_u, e_pos, e_neg)

    def prepare_eval(self) -> None:
        self._eval_users, self._eval_items, _ = self.forward()

