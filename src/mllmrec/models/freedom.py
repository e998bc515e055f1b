"""FREEDOM (Zhou & Shen, ACM MM 2023) as MMRec implements it (``models/freedom.py``).

Table 2 baseline (Baby R@20 0.0992 in the paper) and a host of the plug-and-play experiment
(Figure 3, RQ4): with ``item_graph=refined`` its frozen item-item graph is replaced by MLLMRec's
refined graph ``S*`` (the datamodule's ``item_graph``, built by :mod:`mllmrec.graph`), "FREEDOM+GR".

* **Frozen item-item graph.** Per modality, ``S_m`` = top-``K`` cosine neighbours of every item
  (self included, values 1), normalised as ``D^-1/2 S_m D^-1/2`` (every value ``1/K``); the graphs of
  the image and text modalities are mixed, ``S = w S_image + (1 - w) S_text`` with ``w =
  mm_image_weight = 0.1``. Built once from the raw features, never updated. Item ID embeddings are
  propagated on it: ``h_i = (S^{L_mm} Q)_i``.
* **Degree-sensitive edge pruning.** Before every training epoch ``floor(E (1 - dropout))`` training
  interactions are sampled without replacement, edge ``(u, i)`` with probability proportional to
  ``1 / sqrt(d_u d_i)``; the kept subgraph is renormalised on its own degrees. Evaluation uses the
  full graph.
* **LightGCN** on that graph (``L_ui`` layers, layer mean) over user and item ID embeddings; the item
  output is added to ``h_i``.
* **Loss**: BPR on the graph representations plus ``reg_weight`` x (one BPR loss per modality between
  the user representation and the linearly projected, fine-tuned item features of that modality).

Differences from MMRec (deliberate): the edge sample is seeded by ``(seed, epoch)`` (MMRec draws from
the global RNG), so a resumed run sees the same graphs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import ClassVar

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor, nn

from mllmrec.graph import SparseOperator, normalize_adjacency, propagate
from mllmrec.models.base import OptimizerFactory, PrecomputedScores, bpr_loss, require_at_least
from mllmrec.models.mmrec_parts import (
    cached_normalized_knn_graph,
    check_interactions_shape,
    refined_graph_argument,
    require_modalities,
)
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


class FREEDOM(PrecomputedScores):
    r"""FREEDOM.

    .. math::
        h_i = (\hat S^{L_{mm}} Q)_i, \qquad
        [E_U; E_I] = \frac{1}{L_{ui}+1}\sum_{l=0}^{L_{ui}} \hat A_t^{\,l} [P; Q], \qquad
        y_{ui} = e_u \cdot (e_i + h_i)

    ``Â_t`` is the pruned graph of epoch ``t`` in training and the full graph in evaluation;
    ``Ŝ = w Ŝ_image + (1 - w) Ŝ_text`` (one modality: its graph alone), or ``normalize(S*)``.

    Args:
        item_modalities: ``{name: [I, d_name]}``: kNN graphs and the auxiliary losses.
        item_graph: the refined graph ``S*`` [I, I] (sparse) when ``item_graph="refined"``, else None.
        train_interactions: training split ``R`` (scipy sparse ``[U, I]``).
        n_users, n_items: sizes.
        d: embedding size (MMRec's ``embedding_size`` = ``feat_embed_dim`` = 64).
        knn_k: ``K`` of the frozen kNN graphs (10).
        mm_layers: propagation depth on the item-item graph (1).
        ui_layers: LightGCN depth on the user-item graph (2).
        dropout: fraction of user-item edges pruned each epoch ({0.8, 0.9}; 0 = off).
        reg_weight: weight of the modality BPR losses ({0, 1e-5, 1e-4, 1e-3}).
        mm_image_weight: ``w``, the image graph's share of the mixture (0.1).
        modalities: the modalities to read (default :attr:`modalities`: image and text).
        seed: seeds the per-epoch edge sample together with the epoch number.
        graph_cache_dir: where the frozen kNN graphs are cached (the datamodule's ``<cache>/graphs``,
            beside the refined graph), keyed by the features' content and ``knn_k``; None = not cached.
    """

    #: the item modalities FREEDOM reads (MMRec: ``v_feat``, ``t_feat``)
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
        mm_layers: int = 1,
        ui_layers: int = 2,
        dropout: float = 0.8,
        reg_weight: float = 1e-4,
        mm_image_weight: float = 0.1,
        modalities: Sequence[str] | None = None,
        seed: int = 999,
        graph_cache_dir: str | Path | None = None,
        optimizer: OptimizerFactory | None = None,
        ks: Sequence[int] = (10, 20),
    ) -> None:
        super().__init__(optimizer=optimizer, ks=ks)
        require_at_least("model.d", d, 1)
        require_at_least("model.knn_k", knn_k, 1)
        require_at_least("model.mm_layers", mm_layers, 0)
        require_at_least("model.ui_layers", ui_layers, 0)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"model.dropout must be in [0, 1), got {dropout}")
        if not 0.0 <= mm_image_weight <= 1.0:
            raise ValueError(f"model.mm_image_weight must be in [0, 1], got {mm_image_weight}")
        check_interactions_shape(train_interactions, n_users, n_items)
        refined = refined_graph_argument(item_graph, "FREEDOM")
        names = tuple(modalities or type(self).modalities)
        feats = require_modalities(item_modalities, names, "FREEDOM", n_items)
        self.save_hyperparameters(ignore=["item_modalities", "item_graph", "train_interactions", "optimizer",
                                          "graph_cache_dir"])
        self.hparams["item_graph"] = "refined" if refined is not None else "own"
        self.n_users, self.n_items = n_users, n_items
        self.mm_layers, self.ui_layers = mm_layers, ui_layers
        self.dropout, self.reg_weight, self.seed = float(dropout), float(reg_weight), int(seed)

        if refined is not None:
            graph = normalize_adjacency(refined.float().cpu())
        else:
            graph = self.modality_graph(feats, knn_k, mm_image_weight, graph_cache_dir)
        self.item_item = SparseOperator(graph)

        users, items = bipartite_edges(train_interactions)
        self.register_buffer("edge_users", users, persistent=False)
        self.register_buffer("edge_items", items, persistent=False)
        self.full_graph = SparseOperator(normalize_adjacency(bipartite_adjacency(users, items, n_users, n_items)))
        self.pruned_graph: SparseOperator | None = None  # drawn before every training epoch

        self.user_embedding = nn.Embedding(n_users, d)
        self.item_embedding = nn.Embedding(n_items, d)
        nn.init.xavier_uniform_(self.user_embedding.weight)
        nn.init.xavier_uniform_(self.item_embedding.weight)
        # MMRec fine-tunes the features (Embedding.from_pretrained(freeze=False)); its projections keep
        # torch's default Linear initialisation
        self.feature_tables = nn.ParameterDict({name: nn.Parameter(f.clone()) for name, f in feats.items()})
        self.feature_projections = nn.ModuleDict({name: nn.Linear(f.shape[1], d) for name, f in feats.items()})

    @staticmethod
    def modality_graph(feats: Mapping[str, Tensor], knn_k: int, image_weight: float,
                       cache_dir: str | Path | None = None) -> Tensor:
        """``w Ŝ_image + (1 - w) Ŝ_text`` (MMRec's ``mm_adj``); one modality: its ``Ŝ`` alone. Each
        ``Ŝ_m`` is read from ``cache_dir`` when built before (:func:`cached_normalized_knn_graph`).

        Shapes: features ``[I, d_m]`` each -> sparse COO ``[I, I]``.
        """
        graphs = {name: cached_normalized_knn_graph(f, knn_k, cache_dir) for name, f in feats.items()}
        if set(graphs) == {"image", "text"}:
            return (image_weight * graphs["image"] + (1.0 - image_weight) * graphs["text"]).coalesce()
        if len(graphs) == 1:
            return next(iter(graphs.values()))
        raise ValueError(f"FREEDOM mixes an image and a text graph; got modalities {sorted(graphs)}")

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
        modality_losses = []
        for name, table in self.feature_tables.items():  # MMRec: mf_t_loss + mf_v_loss
            project = self.feature_projections[name]
            f_pos, f_neg = project(table[positives]), project(table[negatives])
            modality_losses.append(bpr_loss((e_u * f_pos).sum(-1), (e_u * f_neg).sum(-1)))
        return ranking + self.reg_weight * sum(modality_losses)

    def prepare_eval(self) -> None:
        self._eval_users, self._eval_items = self.propagated(self.full_graph)

