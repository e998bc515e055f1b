"""GUME (Lin et al., CIKM 2024) as its authors implement it (github.com/NanGongNingYi/GUME, ``src/models/gume.py``).

Graphs and User Modalities Enhancement for long-tail multimodal recommendation; a graph-based
multimodal baseline and a +GR host (``item_graph=refined``).

* **Modality item graphs.** Per modality ``m`` (image, text): the top-``K`` cosine neighbours of every
  item (self included) valued by their similarity, ``Ŝ_m = D^-1/2 S_m D^-1/2`` (``D`` = row sums),
  built once from the raw features (the authors build the ``I x I`` similarity densely; here it is
  taken in row blocks, :func:`~mllmrec.models.lattice.similarity_knn_edges`).
* **Enhanced user-item graph.** Item ``i`` gets an edge to every ``j != i`` that is among its
  neighbours in *both* modality graphs (:func:`agreement_edges`), so long-tail items gain neighbours:
  ``A = [[0, R], [R^T, B]]`` with unit values, ``Â = D^-1/2 A D^-1/2`` with ``D`` its row sums (``B``
  need not be symmetric). ``R̂ = Â[:U, U:]`` (the user-item block of ``Â``, degrees including ``B``).
* **Modalities.** ``x_m = Q ⊙ σ(W2 (W1 f_m + b1) + b2)`` (``f_m`` the fine-tuned features, ``Q`` the item
  ID embeddings); explicit interaction features ``e_m = [R̂ Ŝ_m^L x_m ; Ŝ_m^L x_m]`` (users ; items).
* **Extended embeddings**: LightGCN (layer mean, ``ui_layers``) on ``Â`` of ``[P ; Q]`` (the extended
  ID embeddings ``h``) and of ``[P_m ; Ŝ_m^L x_m]`` per modality, with free user tables ``P_m`` (the
  extended interest features); ``g = (g_image + g_text) / 2``. The three passes share ``Â`` and run
  as one product of width ``3d``.
* **Attribute separation**: ``w = softmax([a(e_image), a(e_text)])`` with ``a = W tanh(W' e + b')``;
  coarse ``c = w_image e_image + w_text e_text``; fine ``f_m = σ(W_m h + b_m) ⊙ (e_m - c)``;
  ``z = (f_image + f_text + c) / 3``. Output ``e = h + z``; scores ``e_u · e_i``.
* **Loss** (:meth:`GUME.loss_terms`): BPR on ``e`` + ``reg_weight_1 · ½(‖e_u‖² + ‖e_p‖² + ‖e_n‖²) / B``
  + ``vt_weight · (|var e_image - var e_text| + |mean e_image - mean e_text|)``
  + ``bm_weight · (InfoNCE(z_u, h_u, τ_bm) + InfoNCE(z_p, h_p, τ_bm))``
  + ``um_weight · (InfoNCE(g_u, z_u, τ_um) + InfoNCE(z̃_u, z̃'_u, τ_um) + InfoNCE(g̃_u, g̃'_u, τ_um))``
  + ``reg_weight_2 · ½‖g_p‖² / B``; InfoNCE is in-batch (the batch's other rows are the negatives),
  ``x̃ = x + sign(x) ⊙ normalize(u) · 0.1`` with ``u ~ U[0, 1)`` drawn per view, ``B`` the configured
  batch size (``reg_batch_size``, MMRec's ``train_batch_size``).
* **Learning rate** decays as ``0.96 ** (epoch / 50)`` (GUME.yaml's ``learning_rate_scheduler``).

Differences from the authors' code (none changes the model): the agreement edges use ``K`` (their
code groups neighbour lists by a hard-coded 10, equal to their ``knn_k``); the noisy views perturb
the batch's distinct users (theirs perturb every user and then take the batch's rows: the same
distribution); the kNN similarity is never dense.

**+GR** (``item_graph=refined``): MLLMRec's refined graph ``S*`` replaces *both* modality item
graphs (``Ŝ_image = Ŝ_text = D^-1/2 S* D^-1/2``), and the enhanced user-item graph's item-item block
is GUME's own rule applied to the graphs the model uses: the agreement of ``S*`` with itself, i.e.
``S*``'s off-diagonal edges (unit values). No feature kNN is built then.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import ClassVar, NamedTuple

import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mllmrec.graph import SparseOperator, normalize_adjacency, propagate
from mllmrec.models.base import OptimizerFactory, PrecomputedScores, bpr_loss, require_at_least
from mllmrec.models.lattice import similarity_knn_edges, symmetric_normalize_edges
from mllmrec.models.mmrec_parts import (
    check_interactions_shape,
    lr_decay_schedule,
    refined_graph_argument,
    require_modalities,
    sparse_edges,
)
from mllmrec.models.ui_graph import bipartite_edges

__all__ = [
    "GUME",
    "GumeOutputs",
    "agreement_edges",
    "enhanced_bipartite_adjacency",
    "half_squared_norms",
    "in_batch_infonce",
    "modality_graphs",
    "moment_alignment",
    "perturb",
    "similarity_knn_graph",
]


def similarity_knn_graph(features: Tensor, k: int) -> Tensor:
    r"""GUME's modality item graph: top-``k`` cosine neighbours (self included) valued by their
    similarity, :math:`D^{-1/2} S D^{-1/2}` with ``D`` the row sums (the authors'
    ``build_knn_normalized_graph(build_sim(f), k, is_sparse=True, norm_type='sym')``).

    Shapes: features ``[I, d]`` -> coalesced sparse COO ``[I, I]`` with ``I k`` non-zeros.
    """
    n = features.shape[0]
    with torch.no_grad():
        rows, cols, values = similarity_knn_edges(features.float(), k)
        values = symmetric_normalize_edges(rows, cols, values, n)
    return torch.sparse_coo_tensor(torch.stack([rows, cols]), values, (n, n), check_invariants=False).coalesce()


def modality_graphs(features: Mapping[str, Tensor], k: int, refined: Tensor | None) -> dict[str, Tensor]:
    """The item graph of every modality: its own :func:`similarity_knn_graph`, or (+GR) the refined
    graph ``D^-1/2 S* D^-1/2`` for all of them.

    Shapes: features ``{name: [I, d_name]}``, refined sparse ``[I, I]`` or None -> ``{name: sparse [I, I]}``.
    """
    if refined is not None:
        shared = normalize_adjacency(refined.float().cpu())
        return {name: shared for name in features}
    return {name: similarity_knn_graph(f, k) for name, f in features.items()}


def agreement_edges(first: Tensor, second: Tensor) -> tuple[Tensor, Tensor]:
    r"""The item pairs ``(i, j)``, ``i != j``, that are edges of both graphs (GUME's ``find_inter``:
    the neighbours an item has in the image *and* the text kNN graph).

    .. math:: B = \{(i, j) : i \neq j,\ s^{(1)}_{ij} \neq 0,\ s^{(2)}_{ij} \neq 0\}

    Shapes:
        - **input:** two sparse ``[I, I]`` (their stored entries are the edges)
        - **output:** rows ``[E]``, cols ``[E]`` int64, sorted by row then column.
    """
    if first.shape != second.shape:
        raise ValueError(f"graphs of different shapes: {tuple(first.shape)} and {tuple(second.shape)}")
    n = first.shape[1]
    r1, c1, _ = sparse_edges(first)
    r2, c2, _ = sparse_edges(second)
    keys = r1 * n + c1
    both = torch.isin(keys, r2 * n + c2) & (r1 != c1)
    return r1[both], c1[both]


def enhanced_bipartite_adjacency(users: Tensor, items: Tensor, item_rows: Tensor, item_cols: Tensor,
                                 n_users: int, n_items: int) -> Tensor:
    r"""GUME's enhanced user-item graph :math:`A = \begin{pmatrix} 0 & R \\ R^\top & B \end{pmatrix}`
    with unit values: the interactions both ways plus the item-item edges ``B`` (one direction each,
    as given). Normalise with :func:`mllmrec.graph.normalize_adjacency` (row sums on both sides).

    Shapes:
        - **input:** users, items ``[E]``; item_rows, item_cols ``[E_B]`` (distinct pairs)
        - **output:** coalesced sparse COO float32 ``[U + I, U + I]`` with ``2E + E_B`` non-zeros.
    """
    rows = torch.cat([users, items + n_users, item_rows + n_users])
    cols = torch.cat([items + n_users, users, item_cols + n_users])
    n = n_users + n_items
    return torch.sparse_coo_tensor(torch.stack([rows, cols]), torch.ones(rows.numel()), (n, n),
                                   check_invariants=False).coalesce()


def half_squared_norms(*embeddings: Tensor) -> Tensor:
    r"""GUME's ``sq_sum`` summed over tensors: :math:`\sum_E \tfrac12 \lVert E \rVert_F^2`. Shapes: ``[B, d]``... -> ``[]``."""
    return sum(0.5 * e.pow(2).sum() for e in embeddings)


def in_batch_infonce(view1: Tensor, view2: Tensor, tau: float) -> Tensor:
    r"""GUME's ``InfoNCE``: row ``b`` of ``view1`` against all rows of ``view2`` (cosine / ``tau``),
    the positive being row ``b``; mean over the batch.

    .. math::
        \mathcal L = -\frac1B \sum_b \log \frac{\exp(s(v_b, w_b)/\tau)}{\sum_c \exp(s(v_b, w_c)/\tau)}

    Shapes: view1, view2 ``[B, d]`` -> ``[]`` (a ``B x B`` score block).
    """
    v1, v2 = F.normalize(view1, dim=1), F.normalize(view2, dim=1)
    logits = v1 @ v2.T / tau
    return (torch.logsumexp(logits, dim=1) - logits.diagonal()).mean()


def moment_alignment(first: Tensor, second: Tensor) -> Tensor:
    r"""GUME's ``align_vt``: :math:`|\mathrm{var}(E_1) - \mathrm{var}(E_2)| + |\mathrm{mean}(E_1) - \mathrm{mean}(E_2)|`
    over all entries (``var`` unbiased, as ``torch.var``). Shapes: ``[N, d]``, ``[N, d]`` -> ``[]``."""
    return (first.var() - second.var()).abs() + (first.mean() - second.mean()).abs()


def perturb(x: Tensor, scale: float) -> Tensor:
    r"""GUME's ``add_perturbation``: :math:`x + \mathrm{sign}(x) \odot \frac{u}{\lVert u \rVert} \cdot s`,
    ``u ~ U[0, 1)`` per row (the global torch RNG). Shapes: ``[N, d]`` -> ``[N, d]``."""
    return x + torch.sign(x) * F.normalize(torch.rand_like(x), dim=-1) * scale


class GumeOutputs(NamedTuple):
    """One forward pass. Every tensor is ``[U + I, d]`` (users first)."""

    final: Tensor  # e = h + z: the scoring embeddings
    integration: Tensor  # z: fine image + fine text + coarse, over 3
    extended_id: Tensor  # h: LightGCN of the ID embeddings on the enhanced graph
    extended_modal: Tensor  # g: mean of the modalities' extended embeddings
    explicit: tuple[Tensor, Tensor]  # e_image, e_text: explicit interaction features


class GUME(PrecomputedScores):
    r"""GUME.

    Args:
        item_modalities: ``{name: [I, d_name]}``, two modalities (image, text).
        train_interactions: training split ``R`` (scipy sparse ``[U, I]``).
        n_users, n_items: sizes.
        item_graph: ``"own"`` or the refined graph ``S*`` (sparse ``[I, I]``) for ``item_graph=refined``.
        d: embedding size (``embedding_size``, 64). knn_k: ``K`` of the modality graphs (10).
        mm_layers: depth on the modality item graphs (``n_layers``; Baby 2, Sports/Clothing/Elec 1).
        ui_layers: LightGCN depth on the enhanced graph (``n_ui_layers``, 3).
        bm_weight, bm_temp: weight and temperature of the integration/ID InfoNCE (``bm_loss`` 0.01, ``bm_temp``).
        um_weight, um_temp: weight and temperature of the user modality enhancement (``um_loss``, ``um_temp``).
        vt_weight: weight of the image/text moment alignment (``vt_loss``).
        reg_weight_1: weight of the penalty on the scored embeddings (1e-5).
        reg_weight_2: weight of the penalty on the positives' extended modal embeddings (0.1).
        reg_batch_size: the divisor of both penalties (the authors' ``train_batch_size``, 2048).
        noise_scale: size of the perturbation of the noisy views (0.1, fixed in the authors' code).
        lr_decay, lr_decay_epochs: the learning rate is multiplied by ``lr_decay ** (epoch / lr_decay_epochs)``.
        modalities: which two modalities to read (default :attr:`modalities`; the first plays image).

    Defaults: the authors' GUME.yaml (Baby).
    """

    #: the item modalities GUME reads (the authors' ``v_feat``, ``t_feat``; both required)
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
        mm_layers: int = 2,
        ui_layers: int = 3,
        bm_weight: float = 0.01,
        bm_temp: float = 0.4,
        um_weight: float = 0.01,
        um_temp: float = 0.1,
        vt_weight: float = 0.1,
        reg_weight_1: float = 1e-5,
        reg_weight_2: float = 0.1,
        reg_batch_size: int = 2048,
        noise_scale: float = 0.1,
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
        require_at_least("model.reg_batch_size", reg_batch_size, 1)
        require_at_least("model.lr_decay_epochs", lr_decay_epochs, 1)
        for key, temperature in (("model.bm_temp", bm_temp), ("model.um_temp", um_temp)):
            if not temperature > 0:
                raise ValueError(f"{key} must be > 0, got {temperature}")
        check_interactions_shape(train_interactions, n_users, n_items)
        refined = refined_graph_argument(item_graph, "GUME")
        names = tuple(modalities or type(self).modalities)
        if len(names) != 2:
            raise ValueError(f"GUME (as its authors implement it) needs two modalities, got model.modalities={list(names)}")
        feats = require_modalities(item_modalities, names, "GUME", n_items)
        self.save_hyperparameters(ignore=["item_modalities", "item_graph", "train_interactions", "optimizer"])
        self.hparams["item_graph"] = "refined" if refined is not None else "own"
        self.n_users, self.n_items, self.d, self.names = n_users, n_items, d, names
        self.mm_layers, self.ui_layers = mm_layers, ui_layers
        self.bm_weight, self.bm_temp = float(bm_weight), float(bm_temp)
        self.um_weight, self.um_temp, self.vt_weight = float(um_weight), float(um_temp), float(vt_weight)
        self.reg_weight_1, self.reg_weight_2 = float(reg_weight_1), float(reg_weight_2)
        self.reg_batch_size, self.noise_scale = int(reg_batch_size), float(noise_scale)
        self.lr_decay, self.lr_decay_epochs = float(lr_decay), int(lr_decay_epochs)

        graphs = modality_graphs(feats, knn_k, refined)
        self.item_graphs = nn.ModuleDict({name: SparseOperator(g) for name, g in graphs.items()})
        item_rows, item_cols = agreement_edges(graphs[names[0]], graphs[names[1]])
        self.n_agreement_edges = int(item_rows.numel())

        users, items = bipartite_edges(train_interactions)
        adjacency = normalize_adjacency(
            enhanced_bipartite_adjacency(users, items, item_rows, item_cols, n_users, n_items))
        self.ui_graph = SparseOperator(adjacency)
        self.user_item = SparseOperator(_user_item_block(adjacency, n_users))  # R̂ [U, I]

        self.user_embedding = nn.Embedding(n_users, d)
        self.item_embedding = nn.Embedding(n_items, d)
        self.extended_users = nn.ModuleDict({name: nn.Embedding(n_users, d) for name in names})
        for table in (self.user_embedding, self.item_embedding, *self.extended_users.values()):
            nn.init.xavier_uniform_(table.weight)
        # the authors: Embedding.from_pretrained(freeze=False) and torch's default Linear initialisation
        self.feature_tables = nn.ParameterDict({n: nn.Parameter(f.clone()) for n, f in feats.items()})
        self.feature_gates = nn.ModuleDict({
            n: nn.Sequential(nn.Linear(f.shape[1], d), nn.Linear(d, d), nn.Sigmoid()) for n, f in feats.items()})
        self.separate_coarse = nn.Sequential(nn.Linear(d, d), nn.Tanh(), nn.Linear(d, 1, bias=False))
        self.behavior_gates = nn.ModuleDict({n: nn.Sequential(nn.Linear(d, d), nn.Sigmoid()) for n in names})

    # ------------------------------------------------------------------ representations
    def forward(self) -> GumeOutputs:
        """Every embedding of one pass (:class:`GumeOutputs`)."""
        first, second = self.names
        explicit, extended_inputs = {}, []
        for name in self.names:
            x = self.item_embedding.weight * self.feature_gates[name](self.feature_tables[name])  # [I, d]
            for _ in range(self.mm_layers):
                x = self.item_graphs[name](x)
            explicit[name] = torch.cat([self.user_item(x), x])  # [U + I, d]
            extended_inputs.append(torch.cat([self.extended_users[name].weight, x]))
        ego = torch.cat([self.user_embedding.weight, self.item_embedding.weight])
        # one propagation for the ID and both modalities' extended embeddings: columns [h | g_1 | g_2]
        stacked = propagate(self.ui_graph, torch.cat([ego, *extended_inputs], dim=1), self.ui_layers, reduce="mean")
        extended_id, extended_first, extended_second = stacked.split(self.d, dim=1)
        weights = torch.softmax(torch.cat([self.separate_coarse(explicit[first]),
                                           self.separate_coarse(explicit[second])], dim=-1), dim=-1)
        coarse = weights[:, :1] * explicit[first] + weights[:, 1:] * explicit[second]
        fine = [self.behavior_gates[n](extended_id) * (explicit[n] - coarse) for n in self.names]
        integration = (fine[0] + fine[1] + coarse) / 3
        return GumeOutputs(final=extended_id + integration, integration=integration, extended_id=extended_id,
                           extended_modal=(extended_first + extended_second) / 2,
                           explicit=(explicit[first], explicit[second]))

    # ------------------------------------------------------------------ loss
    def noisy_infonce(self, users: Tensor, embeddings: Tensor) -> Tensor:
        """InfoNCE between two perturbed views of the batch's user rows of ``embeddings`` [U, d]
        (duplicate users share their noise, as when the whole table is perturbed)."""
        distinct, inverse = users.unique(return_inverse=True)
        rows = embeddings[distinct]
        view1 = perturb(rows, self.noise_scale)[inverse]
        view2 = perturb(rows, self.noise_scale)[inverse]
        return in_batch_infonce(view1, view2, self.um_temp)

    def loss_terms(self, users: Tensor, positives: Tensor, negatives: Tensor) -> dict[str, Tensor]:
        """The weighted terms of the loss: ``bpr``, ``reg_1``, ``vt``, ``bm``, ``um``, ``reg_2``."""
        out = self.forward()
        u = self.n_users
        final_u, final_i = out.final[:u], out.final[u:]
        e_u, e_pos, e_neg = final_u[users], final_i[positives], final_i[negatives]
        integ_u, integ_i = out.integration[:u], out.integration[u:]
        id_u, id_i = out.extended_id[:u], out.extended_id[u:]
        modal_u, modal_i = out.extended_modal[:u], out.extended_modal[u:]
        contrast_user_modality = (in_batch_infonce(modal_u[users], integ_u[users], self.um_temp)
                                  + self.noisy_infonce(users, integ_u) + self.noisy_infonce(users, modal_u))
        return {
            "bpr": bpr_loss((e_u * e_pos).sum(-1), (e_u * e_neg).sum(-1)),
            "reg_1": self.reg_weight_1 * half_squared_norms(e_u, e_pos, e_neg) / self.reg_batch_size,
            "vt": self.vt_weight * moment_alignment(*out.explicit),
            "bm": self.bm_weight * (in_batch_infonce(integ_u[users], id_u[users], self.bm_temp)
                                    + in_batch_infonce(integ_i[positives], id_i[positives], self.bm_temp)),
            "um": self.um_weight * contrast_user_modality,
            "reg_2": self.reg_weight_2 * half_squared_norms(modal_i[positives]) / self.reg_batch_size,
        }

    def loss(self, users: Tensor, positives: Tensor, negatives: Tensor) -> Tensor:
        return sum(self.loss_terms(users, positives, negatives).values())

    def prepare_eval(self) -> None:
        final = self.forward().final
        self._eval_users, self._eval_items = final[: self.n_users], final[self.n_users:]

    def configure_optimizers(self):
        return lr_decay_schedule(super().configure_optimizers(), self.lr_decay, self.lr_decay_epochs)


def _user_item_block(adjacency: Tensor, n_users: int) -> Tensor:
    """``Â[:U, U:]`` of a coalesced sparse ``[U + I, U + I]`` as a sparse ``[U, I]``."""
    rows, cols, values = sparse_edges(adjacency)
    keep = (rows < n_users) & (cols >= n_users)
    n_items = adjacency.shape[0] - n_users
    return torch.sparse_coo_tensor(torch.stack([rows[keep], cols[keep] - n_users]), values[keep],
                                   (n_users, n_items), check_invariants=False).coalesce()
