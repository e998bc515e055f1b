"""Resume a sweep: a job whose ``metrics.json`` was written for the same configuration is skipped.

Where jobs live across reruns: ``hydra.sweep.dir`` (name it, e.g. ``hydra.sweep.dir=multirun/grid``;
the default is time-stamped, so every plain rerun is a new sweep) and, inside it, one folder per
job named by its overrides (``hydra.sweep.subdir: ${hydra.job.override_dirname}``, see
``conf/hydra/default.yaml``). The same override values therefore map to the same folder whatever
the job's number, so a grid can also be extended or reordered between reruns.

A folder name alone is not proof: ``metrics.json`` records a fingerprint of the resolved config and
a job is skipped only when it matches (code defaults or a config file may have changed since).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from mllmrec.train.fingerprint import config_fingerprint

log = logging.getLogger(__name__)

__all__ = ["finished_summary"]


def finished_summary(cfg: DictConfig) -> dict[str, Any] | None:
    """The ``metrics.json`` of this job's output dir when it was written for this config, else None.

    A file from another config (different fingerprint) or an unreadable one means "run again"; the
    reason is logged so a user can tell why a job was not skipped.
    """
    if not cfg.get("skip_finished", True):
        return None
    path = Path(cfg.paths.output_dir) / "metrics.json"
    if not path.is_file():
        return None
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        log.warning("%s is unreadable (%s): running the job again", path, err)
        return None
    wanted = config_fingerprint(cfg)
    found = summary.get("config_fingerprint") if isinstance(summary, dict) else None
    if found != wanted:
        log.info("%s was written for another config or other input files (fingerprint %s, now %s): "
                 "running the job again", path, found, wanted)
        return None
    log.info("skipping: %s already holds this config's results (skip_finished=false reruns it)", path)
    return summary
