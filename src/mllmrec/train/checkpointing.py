"""Checkpoints that survive crashes, and resuming exactly where a run stopped.

* :class:`AtomicCheckpointIO` writes every checkpoint to a temp file in the checkpoint's own folder and
  renames it into place. Lightning's own ``_atomic_save`` stages the file in ``$TMPDIR`` and moves it:
  across filesystems (local ``/tmp``, runs on NFS/Lustre) that move is a copy, and a full disk or a kill
  during it left a truncated file under the final name after the old ``last.ckpt`` was already gone.
* :class:`RandomStateCheckpoint` stores the Python, NumPy and torch random states in the checkpoint and
  restores them on resume (Lightning restores weights, optimisers, loops and callbacks, not these).
* :func:`auto_resume_checkpoint` finds a killed job's ``last.ckpt`` when the same config is run again in
  the same folder (a rerun of a named sweep), so the job continues instead of starting over.
"""

from __future__ import annotations

import io
import logging
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.fabric.utilities.cloud_io import _is_local_file_protocol
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.plugins.io import TorchCheckpointIO

from mllmrec.cache import atomic_path, atomic_write_text

log = logging.getLogger(__name__)

__all__ = ["AtomicCheckpointIO", "RandomStateCheckpoint", "auto_resume_checkpoint",
           "record_run_fingerprint", "FINGERPRINT_FILE"]

# written next to the checkpoints: which config they belong to (see auto_resume_checkpoint)
FINGERPRINT_FILE = "config_fingerprint.txt"


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` into ``.<name>.tmp.*`` beside the target, ``fsync``, then ``os.replace``.

    A save that fails at any point (``ENOSPC``, a kill, an I/O error) leaves the previous file of that
    name intact and no partial file under a final name; the temp file is removed on a Python-level
    error. Remote paths (``s3://`` ...) and ``storage_options`` go to Lightning's own implementation.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike,
                        storage_options: Any | None = None) -> None:
        if storage_options is not None or not _is_local_file_protocol(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        # serialised in memory first (as Lightning does): a write error is then a plain OSError
        # (ENOSPC, EIO) instead of torch's zip writer failing half way with a RuntimeError
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                f.write(buffer.getbuffer())
                f.flush()
                os.fsync(f.fileno())  # the bytes are on disk before the name points at them


class RandomStateCheckpoint(Callback):
    """Python, NumPy and torch (CPU and CUDA) random states, saved with every checkpoint and restored
    on resume, so that anything drawn from the global generators continues as in an unbroken run."""

    def state_dict(self) -> dict[str, Any]:
        # tensors, numbers and strings only: checkpoints are loaded with torch.load(weights_only=True),
        # which refuses pickled NumPy arrays (on purpose: a checkpoint must not run code)
        version, internal, gauss = random.getstate()
        legacy = np.random.get_state(legacy=False)
        state: dict[str, Any] = {
            "python": {"version": version, "internal": torch.tensor(internal, dtype=torch.int64),
                       "gauss": gauss},
            "numpy": {"key": torch.from_numpy(legacy["state"]["key"].astype(np.int64)),
                      "pos": int(legacy["state"]["pos"]), "has_gauss": int(legacy["has_gauss"]),
                      "gauss": float(legacy["gauss"])},
            "torch": torch.get_rng_state(),
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        py = state_dict["python"]
        random.setstate((py["version"], tuple(int(v) for v in py["internal"].tolist()), py["gauss"]))
        npy = state_dict["numpy"]
        np.random.set_state(("MT19937", npy["key"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"],
                             npy["gauss"]))
        torch.set_rng_state(state_dict["torch"])
        if "cuda" in state_dict and torch.cuda.is_available():
            cuda_states = state_dict["cuda"]
            if len(cuda_states) == torch.cuda.device_count():
                torch.cuda.set_rng_state_all(cuda_states)
            else:
                log.warning("checkpoint has %d CUDA random states, this machine %d devices: CUDA random "
                            "state not restored", len(cuda_states), torch.cuda.device_count())


def record_run_fingerprint(checkpoint_dir: str | Path, fingerprint: str) -> None:
    """Write which config the checkpoints in ``checkpoint_dir`` belong to (atomically)."""
    atomic_write_text(Path(checkpoint_dir) / FINGERPRINT_FILE, fingerprint + "\n")


def auto_resume_checkpoint(output_dir: str | Path, fingerprint: str) -> Path | None:
    """``<output_dir>/checkpoints/last.ckpt`` of an unfinished run of the same config, else None.

    A job killed with ``kill -9`` (preemption, OOM killer, a lost node) leaves ``last.ckpt`` and no
    ``metrics.json``; running the same config in the same folder again continues from it. A finished
    run (``metrics.json`` present: running it again means training again) and checkpoints of another
    config (changed code defaults, a reused folder name) are never resumed.
    """
    folder = Path(output_dir) / "checkpoints"
    last = folder / "last.ckpt"
    recorded = folder / FINGERPRINT_FILE
    if (Path(output_dir) / "metrics.json").exists() or not last.is_file() or not recorded.is_file():
        return None
    if recorded.read_text(encoding="utf-8").strip() != fingerprint:
        log.info("%s belongs to another config: starting this run from scratch", last)
        return None
    return last
