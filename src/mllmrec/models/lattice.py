"""LATTICE (Zhang et al., ACM MM 2021) as MMRec implements it (``models/lattice.py``, ``cf_model: lightgcn``).

A graph-based multimodal baseline of Table 2 and a host of Figure 3 (``item_graph=refined``).

* **Frozen item graphs.** Per modality ``m``, ``S_m`` = the top-``K`` cosine neighbours of every item
  (self included) *weighted by their similarity*, normalised ``D^-1/2 S_m D^-1/2`` (``D`` = row sums).
* **Learned item graph.** Each modality's (fine-tuned) features are projected, ``f_m = x_m W_m + b_m``;
  ``L_m`` = the similarity-weighted top-``K`` graph of ``f_m``; the modalities are mixed with softmax
  weights ``w = softmax(modal_weight)``, ``L = norm(w_image L_image + w_text L_text)``, and
  ``S = (1 - λ) L + λ (w_image S_image + w_text S_text)`` (``λ = lambda_coeff = 0.9``). As in MMRec the
  learned graph is rebuilt, with gradients, in the first batch of every epoch and reused detached in
  the others, and rebuilt for every evaluation.
* **Representations.** ``h = S^{n_layers} Q`` on the item ID embeddings; LightGCN (layer mean, 2 layers)
  on ``D^-1 (A + I)`` (MMRec's LATTICE uses the row-normalised graph with self-loops); the item output
  gets ``h / ||h||`` added.
* **Loss.** BPR plus ``reg_weight * (||e_u||^2 + ||e_pos||^2 + ||e_neg||^2) / (2 * reg_batch_size)``
  (MMRec divides by the configured ``train_batch_size``, 2048).
* **Learning rate** decays as ``0.96 ** (epoch / 50)`` (MMRec's ``learning_rate_scheduler``).

Nothing ``I x I`` is dense here (MMRec builds the similarity densely): the top-``K`` is taken a block
of rows at a time and every graph is an edge list. ``item_graph=refined`` replaces the frozen mixture
``w_image S_image + w_text S_text`` by ``D^-1/2 S* D^-1/2``, MLLMRec's refined graph (+GR).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import ClassVar

import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mllmrec.graph import SparseOperator, normalize_adjacency, propagate
from mllmrec.models.base import OptimizerFactory, PrecomputedScores, bpr_loss, require_at_least
from mllmrec.models.mmrec_parts import (
    edge_propagate,
    knn_indices,
    lr_decay_schedule,
    refined_graph_argument,
    require_modalities,
    sparse_edges,
)
from mllmrec.models.ui_graph import bipartite_adjacency, bipartite_edges

__all__ = ["LATTICE", "similarity_knn_edges", "symmetric_normalize_edges", "self_loop_random_walk"]

Edges = tuple[Tensor, Tensor, Tensor]


def similarity_knn_edges(features: Tensor, k: int) -> Edges:
    r"""The top-``k`` cosine neighbours of every item, valued by their similarity (MMRec's
    ``build_knn_neighbourhood(build_sim(x), k)``); the values carry gradients into ``features``.

    Shapes: features ``[I, d]`` -> rows, cols, values ``[I k]``.
    """
    rows, cols = knn_indices(features, k)
    unit = F.normalize(features, dim=-1)
    # in blocks of edges: gathering all I k rows at once would hold two [I k, d] copies (2.3 GB for
    # Baby's 4096-d image features)
    block = max(1, (1 << 24) // max(unit.shape[1], 1))
    values = torch.cat([(unit[rows[s:s + block]] * unit[cols[s:s + block]]).sum(-1)
                        for s in range(0, rows.numel(), block)])
    return rows, cols, values


def symmetric_normalize_edges(rows: Tensor, cols: Tensor, values: Tensor, n: int) -> Tensor:
    r"""Values of :math:`D^{-1/2} A D^{-1/2}` with ``D`` the row sums (MMRec's ``compute_normalized_laplacian``;
    a zero row sum gives 0). Duplicate edges count once each in the row sum, as in a summed matrix.

    Shapes: rows, cols, values ``[E]`` -> ``[E]``.
    """
    degree = torch.zeros(n, dtype=values.dtype, device=values.device).index_add(0, rows, values)
    inv_sqrt = degree.pow(-0.5)
    inv_sqrt = torch.where(torch.isinf(inv_sqrt), torch.zeros_like(inv_sqrt), inv_sqrt)
    return inv_sqrt[rows] * values * inv_sqrt[cols]


def self_loop_random_walk(users: Tensor, items: Tensor, n_users: int, n_items: int) -> Tensor:
    r"""LATTICE's user-item graph :math:`D^{-1} (A + I)` (row-normalised, with self-loops).

    Shapes: users, items ``[E]`` -> sparse COO ``[U + I, U + I]``.
    """
    n = n_users + n_items
    adj = bipartite_adjacency(users, items, n_users, n_items)
    eye = torch.sparse_coo_tensor(torch.arange(n).repeat(2, 1), torch.ones(n), (n, n), check_invariants=False)
    adj = (adj + eye).coalesce()
    rows, _ = adj.indices()
    degree = torch.zeros(n).index_add(0, rows, adj.values())
    return torch.sparse_coo_tensor(adj.indices(), adj.values() / degree[rows], (n, n)).coalesce()


class LATTICE(PrecomputedScores):
    r"""LATTICE with MMRec's LightGCN backbone.

    .. math::
        S = (1-\lambda)\,\mathrm{norm}\Big(\sum_m w_m L_m\Big) + \lambda \sum_m w_m \hat S_m, \qquad
        y_{ui} = e_u \cdot \Big(e_i + \frac{(S Q)_i}{\lVert (S Q)_i \rVert}\Big)

    Args:
        item_modalities: ``{name: [I, d_name]}`` (image and text by default).
        train_interactions: training split ``R`` (scipy sparse ``[U, I]``).
        n_users, n_items: sizes.
        item_graph: ``"own"`` or the refined graph ``S*`` (sparse ``[I, I]``) for ``item_graph=refined``.
        d: embedding size (= ``feat_embed_dim``, 64). knn_k: ``K`` (10). lambda_coeff: ``λ`` (0.9).
        mm_layers: depth on the item graph (MMRec's ``n_layers``, 1). ui_layers: LightGCN depth (2).
        reg_weight: weight of the squared-norm penalty ({0, 1e-5, 1e-4, 1e-3}).
        reg_batch_size: the divisor of that penalty (MMRec: ``train_batch_size``).
        lr_decay, lr_decay_epochs: the learning rate is multiplied by ``lr_decay ** (epoch / lr_decay_epochs)``.
        modalities: which modalities to read (default :attr:`modalities`).
    """

    #: the item modalities LATTICE reads (MMRec: ``v_feat``, ``t_feat``)
    modalities: ClassVar[tuple[str, ...]] = ("image", "text")

    def __init__(
        self,
        item_modalities: Mapping[str, Tensor],
        train_interactions: sp.spmatrix,
        n_users: int,
        n_items: int,
        item_graph: Tensor | str | None = "own",
        d: int = 64,
        knn_k: int = 10,
        lambda_coeff: float = 0.9,
        mm_layers: int = 1,
        ui_layers: int = 2,
        reg_weight: float = 1e-4,
        reg_batch_size: int = 2048,
        lr_decay: float = 0.96,
        lr_decay_epochs: int = 50,
        modalities: Sequence[str] | None = None,
        optimizer: OptimizerFactory | None = None,
        ks: Sequence[int] = (10, 20),
    ) -> None:
        super().__init__(optimizer=optimizer, ks=ks)
        require_at_least("model.d", d, 1)
        require_at_least("model.knn_k", knn_k, 1)
        require_at_least("model.mm_layers", mm_layers, 0)
        require_at_least("model.ui_layers", ui_layers, 0)
        require_at_least("model.reg_weight", reg_weight, 0)
        require_at_least("model.reg_batch_size", reg_batch_size, 1)
        if not 0.0 <= lambda_coeff <= 1.0:
            raise ValueError(f"model.lambda_coeff must be in [0, 1], got {lambda_coeff}")
        refined = refined_graph_argument(item_graph, "LATTICE")
        names = tuple(modalities or type(self).modalities)
        feats = require_modalities(item_modalities, names, "LATTICE", n_items)
        self.save_hyperparameters(ignore=["item_modalities", "item_graph", "train_interactions", "optimizer"])
        self.hparams["item_graph"] = "refined" if refined is not None else "own"
        self.n_users, self.n_items, self.knn_k = n_users, n_items, knn_k
        self.lambda_coeff, self.mm_layers, self.ui_layers = float(lambda_coeff), mm_layers, ui_layers
        self.reg_weight, self.reg_batch_size = float(reg_weight), int(reg_batch_size)
        self.lr_decay, self.lr_decay_epochs = float(lr_decay), int(lr_decay_epochs)
        self.names = names

        # frozen graphs: one per modality from the raw features, or the refined graph
        self.refined = refined is not None
        frozen = [normalize_adjacency(refined.float().cpu())] if refined is not None else [
            torch.sparse_coo_tensor(torch.stack(e[:2]), symmetric_normalize_edges(*e, n_items), (n_items, n_items),
                                    check_invariants=False)
            for e in (similarity_knn_edges(feats[name], knn_k) for name in names)
        ]
        for j, graph in enumerate(frozen):
            rows, cols, values = sparse_edges(graph)
            self.register_buffer(f"frozen_rows_{j}", rows, persistent=False)
            self.register_buffer(f"frozen_cols_{j}", cols, persistent=False)
            self.register_buffer(f"frozen_values_{j}", values, persistent=False)
        self.n_frozen = len(frozen)

        users, items = bipartite_edges(train_interactions)
        self.ui_graph = SparseOperator(self_loop_random_walk(users, items, n_users, n_items))

        self.user_embedding = nn.Embedding(n_users, d)
        self.item_embedding = nn.Embedding(n_items, d)
        nn.init.xavier_uniform_(self.user_embedding.weight)
        nn.init.xavier_uniform_(self.item_embedding.weight)
        # MMRec: Embedding.from_pretrained(freeze=False) and torch's default Linear initialisation
        self.feature_tables = nn.ParameterDict({n: nn.Parameter(f.clone()) for n, f in feats.items()})
        self.feature_projections = nn.ModuleDict({n: nn.Linear(f.shape[1], d) for n, f in feats.items()})
        self.modal_weight = nn.Parameter(torch.full((len(names),), 0.5))
        self._item_edges: Edges | None = None  # the graph S of the current epoch (detached after batch 1)
        self._rebuild = True

    # ------------------------------------------------------------------ the item graph
    def item_edges(self) -> Edges:
        """Edges of ``S`` (learned part with gradients into the projections and the modality weights)."""
        weights = torch.softmax(self.modal_weight, dim=0)
        learned = [similarity_knn_edges(self.feature_projections[n](self.feature_tables[n]), self.knn_k)
                   for n in self.names]
        rows = torch.cat([e[0] for e in learned])
        cols = torch.cat([e[1] for e in learned])
        values = torch.cat([w * e[2] for w, e in zip(weights, learned)])
        parts = [(rows, cols, (1.0 - self.lambda_coeff) * symmetric_normalize_edges(rows, cols, values, self.n_items))]
        for j in range(self.n_frozen):
            share = 1.0 if self.refined else weights[j]
            parts.append((getattr(self, f"frozen_rows_{j}"), getattr(self, f"frozen_cols_{j}"),
                          self.lambda_coeff * share * getattr(self, f"frozen_values_{j}")))
        return tuple(torch.cat([p[i] for p in parts]) for i in range(3))  # type: ignore[return-value]

    def on_train_epoch_start(self) -> None:
        super().on_train_epoch_start()
        self._rebuild = True  # MMRec's pre_epoch_processing: build_item_graph = True

    def propagated(self, edges: Edges) -> tuple[Tensor, Tensor]:
        """User ``[U, d]`` and item ``[I, d]`` representations with item graph ``edges``."""
        h = self.item_embedding.weight
        for _ in range(self.mm_layers):
            h = edge_propagate(*edges, h)
        ego = torch.cat([self.user_embedding.weight, self.item_embedding.weight])
        out = propagate(self.ui_graph, ego, self.ui_layers, reduce="mean")
        return out[: self.n_users], out[self.n_users:] + F.normalize(h, p=2, dim=1)

    def loss(self, users: Tensor, positives: Tensor, negatives: Tensor) -> Tensor:
        if self._rebuild or self._item_edges is None:
            edges = self.item_edges()
            self._rebuild = False
        else:
            edges = self._item_edges
        self._item_edges = tuple(e.detach() for e in edges)  # type: ignore[assignment]
        user_out, item_out = self.propagated(edges)
        e_u, e_pos, e_neg = user_out[users], item_out[positives], item_out[negatives]
        ranking = bpr_loss((e_u * e_pos).sum(-1), (e_u * e_neg).sum(-1))
        squares = e_u.pow(2).sum() + e_pos.pow(2).sum() + e_neg.pow(2).sum()
        return ranking + self.reg_weight * squares / (2 * self.reg_batch_size)

    def prepare_eval(self) -> None:
        self._eval_users, self._eval_items = self.propagated(self.item_edges())  # MMRec rebuilds here too

    def configure_optimizers(self):
        return lr_decay_schedule(super().configure_optimizers(), self.lr_decay, self.lr_decay_epochs)
