"""The small interface every recommender here implements: a BPR loss and full-ranking scores.

Evaluation (MMRec's full-ranking protocol through :class:`mllmrec.metrics.RankingMetrics`), logging
and the optimiser live here once, so a new model is one module with two methods + one YAML file.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator, Sequence

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel

from mllmrec.metrics import RankingMetrics

log = logging.getLogger(__name__)

__all__ = ["EVAL_BLOCK_ITEMS", "dot_score_blocks", "OptimizerFactory", "PrecomputedScores", "Recommender", "bpr_loss", "require_at_least"]

#: Items per score block when a model ranks in blocks (:meth:`PrecomputedScores.score_blocks`): a
#: catalogue up to this size is scored whole, as before. 128k columns x 134 users = 67 MiB a block (smaller
#: blocks cost more per call with 2 threads on a busy machine: 8k columns 23 ms of CPU a user, 128k 4.9).
EVAL_BLOCK_ITEMS = 131_072


def require_at_least(key: str, value: float, minimum: float) -> None:
    """``ValueError`` naming the config key when ``value < minimum`` (models built outside train.py
    get the same message as the start-up check)."""
    if value < minimum:
        raise ValueError(f"{key} must be >= {minimum}, got {value}")


#: ``model.optimizer``: a partially applied optimiser class, called with the model's parameters
OptimizerFactory = Callable[..., torch.optim.Optimizer]

_FUSABLE = (torch.optim.Adam, torch.optim.AdamW)


def _takes_fused(factory: OptimizerFactory) -> bool:
    """Whether ``factory`` is Adam/AdamW with ``fused`` left to us (an explicit value is kept)."""
    return (isinstance(factory, functools.partial) and factory.func in _FUSABLE
            and "fused" not in factory.keywords)


def bpr_loss(pos_scores: Tensor, neg_scores: Tensor) -> Tensor:
    """BPR (Eq. 15): mean over triplets of ``-log sigmoid(y_ui - y_uj)``. Shapes: [B], [B] -> []."""
    return -F.logsigmoid(pos_scores - neg_scores).mean()


def dot_score_blocks(user_rows: Tensor, items: Tensor) -> Iterator[tuple[int, Tensor]] | None:
    """``user_rows @ items.T`` as column blocks ``(start, [B, w])`` of at most :data:`EVAL_BLOCK_ITEMS`
    items, written into one reused buffer (each block must be consumed before the next is computed),
    or None when the catalogue fits in one block (then the caller scores whole rows, as before).

    Measured at 1M items, 134 users a batch, d = 64, 1 thread (bench/rank.py): a fresh ``[B, I]``
    product per batch pays ~0.3 s of page faults on top of ~0.45 s of arithmetic; blocks of 128k
    columns avoid both the faults and a second pass over 512 MiB for the top-K.

    Shapes: user_rows ``[B, d]``, items ``[I, d]`` -> blocks ``[B, w]``, ``w <= EVAL_BLOCK_ITEMS``.
    """
    n_items = items.shape[0]
    if n_items <= EVAL_BLOCK_ITEMS:
        return None

    def blocks() -> Iterator[tuple[int, Tensor]]:
        buffer = torch.empty(user_rows.shape[0] * EVAL_BLOCK_ITEMS, dtype=user_rows.dtype, device=user_rows.device)
        for start in range(0, n_items, EVAL_BLOCK_ITEMS):
            stop = min(start + EVAL_BLOCK_ITEMS, n_items)
            out = buffer[: user_rows.shape[0] * (stop - start)].view(user_rows.shape[0], stop - start)
            yield start, torch.matmul(user_rows, items[start:stop].T, out=out)

    return blocks()


class Recommender(L.LightningModule):
    """Base LightningModule. Subclasses implement :meth:`loss` and :meth:`full_scores`.

    Optionally override :meth:`prepare_eval` to precompute what every evaluation batch shares
    (e.g. all item representations) once per validation/test pass.
    """

    def __init__(self, optimizer: OptimizerFactory | None = None, ks: Sequence[int] = (10, 20)) -> None:
        super().__init__()
        # ``model.optimizer`` in the config (conf/optimizer/, ``_partial_: true``): called with the
        # parameters in :meth:`configure_optimizers`
        self.optimizer_factory: OptimizerFactory = optimizer or functools.partial(torch.optim.Adam, lr=1e-3)
        self.ks = tuple(int(k) for k in ks)
        self._ranking: RankingMetrics | None = None
        self.history: list[dict] = []  # one dict of validation metrics per epoch
        self.eval_results: dict[str, dict[str, float]] = {}  # the last pass's metrics, "val" / "test"
        self._train_loss_sum = torch.zeros(())  # sum over the epoch's triplets of the BPR loss
        self._train_loss_count = 0

    def __setattr__(self, name: str, value) -> None:
        # Lightning records the hook it is in by setting ``_current_fx_name`` (a str or None) around
        # every hook call, ~45 times per training step; nn.Module.__setattr__ checks each assignment
        # against parameters, buffers and submodules, ~0.25 ms a step (~15 ms of a Baby epoch).
        # A plain attribute that is none of those is stored as nn.Module would store it.
        if name == "_current_fx_name":
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    # ------------------------------------------------------------------ to implement
    def loss(self, users: Tensor, positives: Tensor, negatives: Tensor) -> Tensor:
        raise NotImplementedError

    def full_scores(self, users: Tensor) -> Tensor:
        """Scores of ``users`` against every item. Shapes: [B] -> [B, I]."""
        raise NotImplementedError

    def prepare_eval(self) -> None:
        """Called once before each validation/test pass (in eval mode, without grad)."""

    def score_blocks(self, users: Tensor) -> Iterator[tuple[int, Tensor]] | None:
        """The scores of ``users`` as consecutive column blocks ``(start, [B, w])`` that evaluation
        may mask in place, or None (the default) to rank :meth:`full_scores` whole. See
        :meth:`mllmrec.metrics.RankingMetrics.update_blocks`."""
        return None

    def representations(self) -> tuple[Tensor, Tensor]:
        """User ``[U, d]`` and item ``[I, d]`` representations whose dot products are the scores:
        ``full_scores(users) == users_repr[users] @ items_repr.T``. Called after :meth:`prepare_eval`,
        without grad. What ``recommend.py`` exports for an ANN index; a model whose scores are not a
        dot product of two towers does not implement it."""
        raise NotImplementedError(
            f"{type(self).__name__} does not export user/item representations (its scores are not a dot "
            "product of one user and one item vector, or it does not implement representations())")

    # ------------------------------------------------------------------ set-up
    def frozen_buffer_names(self) -> list[str]:
        """Fully qualified names of the frozen inputs: every non-persistent buffer (set or still None)
        and every sparse buffer."""
        names = set()
        for prefix, module in self.named_modules():
            for name, buffer in module._buffers.items():
                frozen = name in module._non_persistent_buffers_set
                if frozen or (buffer is not None and buffer.layout != torch.strided):
                    names.add(f"{prefix}.{name}" if prefix else name)
        return sorted(names)

    def setup(self, stage: str) -> None:
        # DDP must not broadcast the frozen inputs: every rank builds the same ones from the same data,
        # it cannot broadcast sparse tensors at all, and with broadcast_buffers it would re-send them
        # (tens of MB of features) before every forward. Lightning calls this hook before wrapping.
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(self, self.frozen_buffer_names())

    # ------------------------------------------------------------------ training
    def on_train_epoch_start(self) -> None:
        # Lightning sets the epoch on the dataloader's own sampler; under DDP that is a wrapper, so
        # tell the datamodule directly (the epoch seeds the shuffle and the negatives)
        datamodule = getattr(self.trainer, "datamodule", None)
        if hasattr(datamodule, "set_epoch"):
            datamodule.set_epoch(self.current_epoch)
        self._train_loss_sum = torch.zeros((), device=self.device)
        self._train_loss_count = 0

    def training_step(self, batch: tuple[Tensor, Tensor, Tensor], batch_idx: int) -> Tensor:
        users, positives, negatives = batch
        loss = self.loss(users, positives, negatives)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite BPR loss {loss.item()} at epoch {self.current_epoch}")
        # summed here and logged once per epoch (below): a per-step ``self.log(..., on_epoch=True)``
        # costs ~2 ms in Lightning's metric bookkeeping, ~5% of a Baby epoch on CPU
        self._train_loss_sum += loss.detach() * len(users)
        self._train_loss_count += len(users)
        return loss

    def on_train_epoch_end(self) -> None:
        if self._train_loss_count:  # the mean over triplets, as Lightning's batch_size-weighted epoch mean
            self.log("train/loss", self._train_loss_sum / self._train_loss_count, prog_bar=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        params = list(self.parameters())
        factory = self.optimizer_factory
        if _takes_fused(factory) and params and all(
            p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params
        ):
            # Adam's fused kernel (same update rule, one pass per tensor) saves ~1 ms per step on CPU
            # over the default foreach path: ~3% of a Baby epoch. It exists for CPU and CUDA tensors only.
            factory = functools.partial(factory, fused=True)
        return factory(params)

    # ------------------------------------------------------------------ evaluation
    def _start_eval(self, split: str) -> None:
        exclude, truth = self.trainer.datamodule.eval_target(split)
        self._ranking = RankingMetrics(exclude, truth, ks=self.ks)
        with torch.no_grad():
            self.prepare_eval()

    def _eval_step(self, users: Tensor) -> None:
        assert self._ranking is not None
        blocks = self.score_blocks(users)
        if blocks is not None:  # large catalogues: never a whole [B, I] score matrix
            self._ranking.update_blocks(users, blocks)
            return
        scores = self.full_scores(users)
        # a fresh score tensor (a matmul result) may be masked in place, saving a [B, I] copy per
        # batch (about a third of the metric's cost on CPU); a view of a stored matrix must not be
        owned = scores._base is None and not scores.requires_grad
        self._ranking.update(users, scores, inplace=owned)

    def _end_eval(self, prefix: str) -> dict[str, float]:
        assert self._ranking is not None
        if self.trainer.world_size > 1:  # DDP: every rank ranked a share of the users
            self._ranking.synchronize(lambda t: self.all_gather(t.to(self.device)))
        results = self._ranking.compute()
        self._ranking = None
        self.eval_results[prefix] = results
        for name, value in results.items():
            # every rank holds the same merged value, so the mean over ranks (sync_dist) is that value;
            # asking for it keeps Lightning from warning under DDP
            self.log(f"{prefix}/{name}", value, prog_bar=name == f"recall@{max(self.ks)}", sync_dist=True)
        return results

    def on_validation_epoch_start(self) -> None:
        self._start_eval("valid")

    def validation_step(self, users: Tensor, batch_idx: int) -> None:
        self._eval_step(users)

    def on_validation_epoch_end(self) -> None:
        results = self._end_eval("val")
        if not self.trainer.sanity_checking:
            self.history.append({"epoch": self.current_epoch, **results})
            shown = "  ".join(f"{k} {v:.4f}" for k, v in results.items())
            log.info("epoch %3d  valid  %s", self.current_epoch, shown)

    def on_test_epoch_start(self) -> None:
        self._start_eval("test")

    def test_step(self, users: Tensor, batch_idx: int) -> None:
        self._eval_step(users)

    def on_test_epoch_end(self) -> None:
        self._end_eval("test")

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["validation_history"] = self.history

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.history = list(checkpoint.get("validation_history", []))


class PrecomputedScores(Recommender):
    """A recommender whose :meth:`prepare_eval` computes every user's and item's final representation
    once per validation/test pass (graph propagation): scores and exports are their dot products.

    Subclasses set ``self._eval_users`` [U, d] and ``self._eval_items`` [I, d] in ``prepare_eval``.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._eval_users: Tensor | None = None
        self._eval_items: Tensor | None = None

    def full_scores(self, users: Tensor) -> Tensor:
        """Shapes: [B] -> [B, I]."""
        assert self._eval_users is not None and self._eval_items is not None, "call prepare_eval() first"
        return self._eval_users[users] @ self._eval_items.T

    def score_blocks(self, users: Tensor) -> Iterator[tuple[int, Tensor]] | None:
        """The scores in item blocks above :data:`EVAL_BLOCK_ITEMS` items (:func:`dot_score_blocks`)."""
        assert self._eval_users is not None and self._eval_items is not None, "call prepare_eval() first"
        return dot_score_blocks(self._eval_users[users], self._eval_items)

    def representations(self) -> tuple[Tensor, Tensor]:
        """User [U, d] and item [I, d] representations of the last :meth:`prepare_eval`."""
        assert self._eval_users is not None and self._eval_items is not None, "call prepare_eval() first"
        return self._eval_users, self._eval_items
