"""A callback for the kill -9 resume test: SIGKILLs its own process at the start of an epoch when the
environment variable ``MLLMREC_TEST_KILL_AT_EPOCH`` names that epoch (so the previous epoch's
``last.ckpt`` is on disk). Without the variable it does nothing, so the rerun has the same config."""

from __future__ import annotations

import os
import signal

from lightning.pytorch.callbacks import Callback


class KillAtEpoch(Callback):
    def on_train_epoch_start(self, trainer, pl_module) -> None:
        target = os.environ.get("MLLMREC_TEST_KILL_AT_EPOCH")
        if target is not None and trainer.current_epoch == int(target):
            os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no finally: a preemption or the OOM killer
