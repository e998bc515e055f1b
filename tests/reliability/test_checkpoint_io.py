"""Crash-safe checkpoints (issue 18, point 2): a save that runs out of disk space never destroys the
previous checkpoint and never leaves a truncated file under a final name."""

from __future__ import annotations

import builtins
import errno
import os
import shutil
from pathlib import Path

import pytest
import torch
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate

from mllmrec.train.checkpointing import AtomicCheckpointIO

from train_helpers import compose_config


class _FullDisk:
    """A checkpoint folder on its own small filesystem, faked in-process.

    * every write to a file inside ``folder`` counts against ``budget`` bytes and fails with ``ENOSPC``
      past it (after writing what still fits, as a real full disk does);
    * a rename into ``folder`` from another folder fails with ``EXDEV`` (another filesystem), so
      ``shutil.move`` falls back to copying, as it does from a local ``$TMPDIR`` to NFS.
    """

    def __init__(self, folder: Path, budget: int) -> None:
        self.folder = folder.resolve()
        self.budget = budget

    def inside(self, path) -> bool:
        try:
            return Path(os.fsdecode(path)).resolve().parent == self.folder
        except TypeError:  # a file descriptor
            return False

    def install(self, monkeypatch) -> None:
        real_open, real_rename, real_replace = builtins.open, os.rename, os.replace
        disk = self

        class Writer:
            def __init__(self, f) -> None:
                self._f = f

            def write(self, data) -> int:
                data = bytes(data)
                if len(data) > disk.budget:
                    self._f.write(data[: disk.budget])
                    self._f.flush()
                    disk.budget = 0
                    raise OSError(errno.ENOSPC, "No space left on device")
                disk.budget -= len(data)
                return self._f.write(data)

            def __enter__(self):
                return self

            def __exit__(self, *exc) -> None:
                self._f.close()

            def __getattr__(self, name):
                return getattr(self._f, name)

        def fake_open(file, mode="r", *args, **kwargs):
            f = real_open(file, mode, *args, **kwargs)
            return Writer(f) if any(c in mode for c in "wax+") and disk.inside(file) else f

        def across(real):
            def move(src, dst, *args, **kwargs):
                if disk.inside(dst) and not disk.inside(src):
                    raise OSError(errno.EXDEV, "Invalid cross-device link")
                return real(src, dst, *args, **kwargs)
            return move

        monkeypatch.setattr(builtins, "open", fake_open)
        monkeypatch.setattr(os, "rename", across(real_rename))
        monkeypatch.setattr(os, "replace", across(real_replace))
        monkeypatch.setattr(shutil, "_USE_CP_SENDFILE", False)  # copies go through write()


def _checkpoint(value: float) -> dict:
    return {"state_dict": {"w": torch.full((4096,), value)}, "epoch": int(value)}


def _configured_checkpoint_io(tmp_path: Path, trainer: str):
    cfg = compose_config("train", ["logger=none", f"trainer={trainer}"], tmp_path / "run")
    GlobalHydra.instance().clear()
    plugins = instantiate(cfg.trainer.get("plugins")) or []  # the plugins alone (gpu/ddp need a GPU)
    return next((p for p in plugins if hasattr(p, "save_checkpoint")), None)


@pytest.mark.parametrize("trainer", ["cpu", "gpu", "ddp"])
def test_every_trainer_config_saves_through_the_atomic_checkpoint_io(tmp_path, trainer):
    assert isinstance(_configured_checkpoint_io(tmp_path, trainer), AtomicCheckpointIO)


def test_a_full_disk_during_a_save_keeps_the_old_last_ckpt(tmp_path, monkeypatch):
    # the checkpoint IO the trainer configs install (Lightning's own when none is configured)
    from lightning.pytorch.plugins.io import TorchCheckpointIO

    io = _configured_checkpoint_io(tmp_path, "cpu") or TorchCheckpointIO()
    folder = tmp_path / "run" / "checkpoints"
    last = folder / "last.ckpt"
    io.save_checkpoint(_checkpoint(1.0), last)
    good = last.read_bytes()

    _FullDisk(folder, budget=len(good) // 3).install(monkeypatch)  # room for a third of the new file
    with pytest.raises(OSError) as failure:
        io.save_checkpoint(_checkpoint(2.0), last)
    assert failure.value.errno == errno.ENOSPC
    monkeypatch.undo()

    assert last.read_bytes() == good  # the resume point survived, byte for byte
    assert torch.equal(torch.load(last, weights_only=True)["state_dict"]["w"], _checkpoint(1.0)["state_dict"]["w"])
    assert sorted(p.name for p in folder.iterdir()) == ["last.ckpt"]  # no truncated or temp file left


def test_atomic_checkpoint_io_round_trips_and_replaces(tmp_path):
    io = AtomicCheckpointIO()
    path = tmp_path / "deep" / "last.ckpt"  # the folder is created
    io.save_checkpoint(_checkpoint(1.0), path)
    io.save_checkpoint(_checkpoint(3.0), path)
    loaded = io.load_checkpoint(path)
    assert loaded["epoch"] == 3 and torch.equal(loaded["state_dict"]["w"], torch.full((4096,), 3.0))
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]
