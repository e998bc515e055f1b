"""FREEDOM (Zhou & Shen, ACM MM 2023): a frozen item-item kNN graph + a denoised user-item graph.

Table 2 baseline (Baby R@20 0.0992 in the paper) and the host of the plug-and-play experiment
(Figure 3, RQ4): with ``refine_graph=True`` its item-item graph is replaced by MLLMRec's refined graph
``S*`` (the datamodule's ``item_graph``, built by :mod:`mllmrec.graph`), the "FREEDOM+GR" variant.

What the model does, following the paper and its public reference implementation in MMRec:

* **Frozen item-item graph.** ``S`` = top-``K`` cosine neighbours of every item's content features
  (self included, values 1), normalised as ``D^-1/2 S D^-1/2``; built once, never updated. Item ID
  embeddings are propagated on it: ``h_i = (Ŝ^{L_mm} Q)_i``.
* **Degree-sensitive edge pruning.** Before every training epoch a fraction ``1 - dropout`` of the
  training interactions is sampled without replacement, edge ``(u, i)`` with probability proportional
  to ``1 / sqrt(d_u d_i)`` (edges between popular nodes are the likeliest noise); the kept subgraph is
  renormalised on its own degrees. Evaluation uses the full graph.
* **LightGCN** on that graph (``L_ui`` layers, layer mean) over user and item ID embeddings; the item
  output is added to ``h_i``.
* **Loss**: BPR on the graph representations plus ``reg_weight`` x a BPR loss between the user
  representation and the linearly projected item features (features fine-tuned, as in the
  reference implementation).

Differences (documented, deliberate): one content modality (the item description embeddings this
project serves; with an MLLM they include the image description) instead of separate image and text
features, so there is one kNN graph and no image/text mixing weight; the edge sample is seeded by
``(seed, epoch)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor, nn

from mllmrec.graph import SparseOperator, normalize_adjacency, propagate, semantic_graph
from mllmrec.models.base import OptimizerFactory, Recommender, bpr_loss, require_at_least
from mllmrec.models.ui_graph import bipartite_adjacency, bipartite_edges

__all__ = ["FREEDOM", "degree_sensitive_pruning", "edge_keep_count"]


def edge_keep_count(n_edges: int, dropout: float) -> int:
    """Edges kept per epoch: ``floor(E * (1 - dropout))`` (FREEDOM's ``degree_len``).

    Rounded to 9 decimals before the floor, so that float round-off cannot drop an edge at exact
    multiples (``10 * (1 - 0.9)`` is ``0.999...`` in floating point; FREEDOM's ``int()`` keeps 0).
    """
    return math.floor(round(n_edges * (1.0 - dropout), 9))


def degree_sensitive_pruning(
    users: Tensor, items: Tensor, n_users: int, n_items: int, dropout: float, generator: torch.Generator
) -> Tensor:
    r"""Indices of the edges kept by FREEDOM's degree-sensitive pruning.

    .. math::
        p_{ui} \propto \frac{1}{\sqrt{d_u}\sqrt{d_i}}

    ``floor(E (1 - dropout))`` distinct edges are drawn without replacement with these weights
    (successive sampling, as ``torch.multinomial(..., replacement=False)``), implemented with
    Efraimidis-Spirakis keys ``log(u) / w`` (``u ~ U(0, 1)``), whose top-k is a sample from the same
    distribution, in one vectorised pass and without ``multinomial``'s 2^24-category limit. Degrees
    are those of the full training graph.

    Shapes:
        - **input:** users ``[E]``, items ``[E]`` int64
        - **output:** ``[floor(E (1 - dropout))]`` int64 edge indices, sorted ascending.
    """
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout (fraction of edges dropped) must be in [0, 1), got {dropout}")
    n_keep = edge_keep_count(users.numel(), dropout)
    if n_keep < 1:
        raise ValueError(f"dropout={dropout} keeps no edge of a graph with {users.numel()} edges")
    user_degree = torch.bincount(users, minlength=n_users).to(torch.float64)
    item_degree = torch.bincount(items, minlength=n_items).to(torch.float64)
    weights = (user_degree[users] * item_degree[items]).rsqrt()
    uniform = torch.rand(users.numel(), generator=generator, dtype=torch.float64)
    # log(u) < 0, so a larger weight pulls the key towards 0 (ranks higher); clamp avoids log(0)
    keys = uniform.clamp_min(torch.finfo(torch.float64).tiny).log() / weights
    return keys.topk(n_keep).indices.sort().values


def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A generator seeded by ``(seed, epoch)``: the same epoch draws the same graph after a resume."""
    state = np.random.SeedSequence([int(seed), int(epoch)]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state) & ((1 << 63) - 1))


class FREEDOM(Recommender):
    r"""FREEDOM.

    .. math::
        h_i = (\hat S^{L_{mm}} Q)_i, \qquad
        [E_U; E_I] = \frac{1}{L_{ui}+1}\sum_{l=0}^{L_{ui}} \hat A_t^{\,l} [P; Q], \qquad
        y_{ui} = e_u \cdot (e_i + h_i)

    ``Â_t`` is the pruned graph of epoch ``t`` in training and the full graph in evaluation.

    Args:
        item_features: content features ``E_I`` [I, d_t] (kNN graph + auxiliary loss).
        item_graph: the refined graph ``S*`` [I, I] (sparse); used only when ``refine_graph``.
        train_interactions: training split ``R`` (scipy sparse ``[U, I]``).
        n_users, n_items: sizes.
        d: embedding size (FREEDOM's ``embedding_size`` = ``feat_embed_dim`` = 64).
        knn_k: ``K`` of the frozen kNN graph (10).
        mm_layers: propagation depth on the item-item graph (1).
        ui_layers: LightGCN depth on the user-item graph (2).
        dropout: fraction of user-item edges pruned each epoch ({0.8, 0.9} in the paper; 0 = off).
        reg_weight: weight of the feature BPR loss ({0, 1e-5, 1e-4, 1e-3} in the paper).
        refine_graph: use ``item_graph`` (MLLMRec's refined graph) instead of the kNN graph.
        seed: seeds the per-epoch edge sample together with the epoch number.
    """

    def __init__(
        self,
        item_features: Tensor,
        item_graph: Tensor,
        train_interactions: sp.spmatrix,
        n_users: int,
        n_items: int,
        d: int = 64,
        knn_k: int = 10,
        mm_layers: int = 1,
        ui_layers: int = 2,
        dropout: float = 0.8,
        reg_weight: float = 1e-4,
        refine_graph: bool = False,
        seed: int = 999,
        optimizer: OptimizerFactory | None = None,
        ks: Sequence[int] = (10, 20),
    ) -> None:
        super().__init__(optimizer=optimizer, ks=ks)
        require_at_least("model.d", d, 1)
        require_at_least("model.mm_layers", mm_layers, 0)
        require_at_least("model.ui_layers", ui_layers, 0)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"model.dropout must be in [0, 1), got {dropout}")
        if tuple(train_interactions.shape) != (n_users, n_items) or item_features.shape[0] != n_items:
            raise ValueError(
                f"train_interactions {train_interactions.shape} and item_features "
                f"{tuple(item_features.shape)} do not match n_users={n_users}, n_items={n_items}"
            )
        self.save_hyperparameters(ignore=["item_features", "item_graph", "train_interactions", "optimizer"])
        self.n_users, self.n_items = n_users, n_items
        self.mm_layers, self.ui_layers = mm_layers, ui_layers
        self.dropout, self.reg_weight, self.seed = float(dropout), float(reg_weight), int(seed)

        features = item_features.float()
        graph = item_graph if refine_graph else semantic_graph(features, knn_k, alpha=-1.0)
        self.item_item = SparseOperator(normalize_adjacency(graph.float().cpu()))

        users, items = bipartite_edges(train_interactions)
        self.register_buffer("edge_users", users, persistent=False)
        self.register_buffer("edge_items", items, persistent=False)
        self.full_graph = SparseOperator(normalize_adjacency(bipartite_adjacency(users, items, n_users, n_items)))
        self.pruned_graph: SparseOperator | None = None  # drawn before every training epoch

        self.user_embedding = nn.Embedding(n_users, d)
        self.item_embedding = nn.Embedding(n_items, d)
        nn.init.xavier_uniform_(self.user_embedding.weight)
        nn.init.xavier_uniform_(self.item_embedding.weight)
        # the reference implementation fine-tunes the features (Embedding.from_pretrained(freeze=False))
        self.item_feature_table = nn.Parameter(features.clone())
        self.feature_projection = nn.Linear(features.shape[1], d)
        self._eval_users: Tensor | None = None
        self._eval_items: Tensor | None = None

    # ------------------------------------------------------------------ graphs
    def prune(self, epoch: int) -> SparseOperator:
        """The normalised user-item graph of ``epoch`` after degree-sensitive pruning."""
        if self.dropout == 0.0:
            return self.full_graph
        users, items = self.edge_users.cpu(), self.edge_items.cpu()
        keep = degree_sensitive_pruning(
            users, items, self.n_users, self.n_items, self.dropout, _epoch_generator(self.seed, epoch)
        )
        adjacency = normalize_adjacency(bipartite_adjacency(users[keep], items[keep], self.n_users, self.n_items))
        return SparseOperator(adjacency).to(self.edge_users.device)

    def on_train_epoch_start(self) -> None:
        super().on_train_epoch_start()  # the base class hands the epoch to the datamodule
        self.pruned_graph = self.prune(self.current_epoch)

    # ------------------------------------------------------------------ representations
    def propagated(self, graph: SparseOperator) -> tuple[Tensor, Tensor]:
        """User ``e_u`` [U, d] and item ``e_i + h_i`` [I, d] representations on ``graph``."""
        h = self.item_embedding.weight
        for _ in range(self.mm_layers):
            h = self.item_item(h)
        ego = torch.cat([self.user_embedding.weight, self.item_embedding.weight])
        out = propagate(graph, ego, self.ui_layers, reduce="mean")
        return out[: self.n_users], out[self.n_users :] + h

    def loss(self, users: Tensor, positives: Tensor, negatives: Tensor) -> Tensor:
        graph = self.pruned_graph if self.pruned_graph is not None else self.prune(self.current_epoch)
        user_out, item_out = self.propagated(graph)
        e_u = user_out[users]
        ranking = bpr_loss((e_u * item_out[positives]).sum(-1), (e_u * item_out[negatives]).sum(-1))
        if self.reg_weight == 0.0:
            return ranking
        f_pos = self.feature_projection(self.item_feature_table[positives])
        f_neg = self.feature_projection(self.item_feature_table[negatives])
        return ranking + self.reg_weight * bpr_loss((e_u * f_pos).sum(-1), (e_u * f_neg).sum(-1))

    def prepare_eval(self) -> None:
        self._eval_users, self._eval_items = self.propagated(self.full_graph)

    def full_scores(self, users: Tensor) -> Tensor:
        assert self._eval_users is not None and self._eval_items is not None
        return self._eval_users[users] @ self._eval_items.T

    def representations(self) -> tuple[Tensor, Tensor]:
        """User ``e_u`` [U, d] and item ``e_i + h_i`` [I, d] on the full (unpruned) graph."""
        assert self._eval_users is not None and self._eval_items is not None
        return self._eval_users, self._eval_items
