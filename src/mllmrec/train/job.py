"""The wrapper around one training job (``train.py``'s task function).

Like the lightning-hydra-template's ``task_wrapper``: the exception is logged and re-raised (Hydra's
launcher records it and the sweep goes on with the other jobs), and whatever happens the job's W&B
run is finished, so that the next job in the same process gets a run of its own. Additionally the
error is written to ``<output dir>/error.json``, so a failure leaves a record with any launcher.
"""

from __future__ import annotations

import contextlib
import logging
import os
import traceback
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from mllmrec.errors import MllmrecError, mark_reported
from mllmrec.train.loggers import finish_wandb

log = logging.getLogger(__name__)

__all__ = ["ERROR_FILE", "failure_record", "job_context", "job_overrides"]

#: the record a failed job leaves in its output dir (any launcher); ``report.py`` lists them
ERROR_FILE = "error.json"


def failure_record(error: BaseException, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """The content of a job's ``error.json``: what failed, with the traceback text (which pickles
    and serialises where the exception itself may not)."""
    return {"overrides": list(overrides), "error_type": type(error).__name__, "message": str(error),
            "traceback": "".join(traceback.format_exception(type(error), error, error.__traceback__)),
            "pid": os.getpid()}


def job_overrides() -> list[str]:
    """This job's command-line overrides (empty outside a Hydra run)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return []
    return list(HydraConfig.get().overrides.task)


@contextlib.contextmanager
def job_context(cfg: DictConfig) -> Iterator[None]:
    """Run a job's body: log + record + re-raise its exception; always finish its W&B run.

    Results left in the output dir by an earlier, different config of the same job folder
    (``metrics.json``, ``error.json``) are removed first, so the folder never pairs this config with
    another config's numbers.
    """
    from mllmrec.cache import atomic_write_json

    output_dir = Path(cfg.paths.output_dir)
    for stale in ("metrics.json", ERROR_FILE):
        (output_dir / stale).unlink(missing_ok=True)
    failed = False
    try:
        yield
    except Exception as err:
        failed = True
        where = " ".join(job_overrides()) or "no overrides"
        if isinstance(err, MllmrecError):  # the user's to fix: one clean message, no traceback
            log.error("job stopped (%s): %s", where, err)
            mark_reported(err)
        else:
            log.exception("job failed (%s): %s", where, err)
        atomic_write_json(output_dir / ERROR_FILE, failure_record(err, job_overrides()))
        raise
    finally:
        finish_wandb(failed=failed)
