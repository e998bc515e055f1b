"""The base Recommender's training step: the epoch's train/loss, the non-finite guard, the optimiser."""

from __future__ import annotations

import functools

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from mllmrec.models import BPR


class RecordingBPR(BPR):
    """BPR that remembers each step's loss and batch size."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.seen: list[tuple[int, float, int]] = []

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        self.seen.append((self.current_epoch, float(loss.detach()), len(batch[0])))
        return loss


def _batches(sizes, n_users=12, n_items=9, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randint(0, n_users, (n,), generator=g), torch.randint(0, n_items, (n,), generator=g),
         torch.randint(0, n_items, (n,), generator=g))
        for n in sizes
    ]


def _fit(model, batches, epochs=2):
    trainer = L.Trainer(
        accelerator="cpu", max_epochs=epochs, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
    )
    trainer.fit(model, train_dataloaders=DataLoader(batches, batch_size=None))
    return trainer


def test_train_loss_is_the_epochs_mean_over_triplets():
    torch.manual_seed(0)
    model = RecordingBPR(n_users=12, n_items=9, d=4, optimizer=functools.partial(torch.optim.Adam, lr=0.05))
    trainer = _fit(model, _batches([7, 2, 5]))  # unequal batches: a plain mean of batch losses differs
    last = [(loss, n) for epoch, loss, n in model.seen if epoch == 1]
    assert len(last) == 3
    expected = sum(loss * n for loss, n in last) / sum(n for _, n in last)
    assert float(trainer.callback_metrics["train/loss"]) == pytest.approx(expected, rel=1e-6)
    assert expected != pytest.approx(sum(loss for loss, _ in last) / 3, rel=1e-3)


def test_non_finite_loss_stops_training_with_the_epoch():
    class NaNBPR(BPR):
        def loss(self, users, positives, negatives):
            return super().loss(users, positives, negatives) * float("nan")

    with pytest.raises(FloatingPointError, match="non-finite BPR loss .* epoch 0"):
        _fit(NaNBPR(n_users=12, n_items=9, d=4), _batches([4]))


def test_optimiser_is_adam_with_the_configured_settings():
    model = BPR(n_users=5, n_items=4, d=3, optimizer=functools.partial(torch.optim.Adam, lr=0.01, weight_decay=0.1))
    optimiser = model.configure_optimizers()
    assert isinstance(optimiser, torch.optim.Adam)
    assert optimiser.defaults["lr"] == 0.01 and optimiser.defaults["weight_decay"] == 0.1
    # the fused kernel, since every parameter is a float tensor on the CPU
    assert optimiser.defaults["fused"] is True


def test_frozen_inputs_are_kept_out_of_ddp_broadcasts():
    """Non-persistent (frozen) and sparse buffers are named for DDP to ignore; trained weights are not."""
    from mllmrec.models import MLLMRec

    model = MLLMRec(torch.randn(6, 4), torch.randn(5, 4), torch.eye(6).to_sparse(), d=2)
    assert model.frozen_buffer_names() == ["item_features", "item_graph", "item_inputs", "user_features"]
    model.setup("fit")
    assert set(model._ddp_params_and_buffers_to_ignore) == set(model.frozen_buffer_names())
    assert not any(name in model._ddp_params_and_buffers_to_ignore for name, _ in model.named_parameters())


def test_hook_name_fast_path_keeps_module_semantics(monkeypatch):
    """Lightning's per-hook ``_current_fx_name`` skips nn.Module's bookkeeping; everything else keeps it."""
    model = BPR(n_users=3, n_items=4, d=2)
    extra = torch.nn.Linear(2, 2)
    calls: list[str] = []
    module_setattr = torch.nn.Module.__setattr__

    def counting(self, name, value):
        calls.append(name)
        module_setattr(self, name, value)

    monkeypatch.setattr(torch.nn.Module, "__setattr__", counting)
    model._current_fx_name = "training_step"
    assert model._current_fx_name == "training_step"
    assert calls == []  # the fast path
    n_params = len(list(model.parameters()))
    model.extra = extra  # a submodule still registers, with its parameters
    model.scale = torch.nn.Parameter(torch.ones(()))
    assert calls == ["extra", "scale"]
    assert "extra" in dict(model.named_children())
    assert len(list(model.parameters())) == n_params + 3
    assert "_current_fx_name" not in model.state_dict()
