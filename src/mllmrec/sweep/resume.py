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

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

__all__ = ["RESULT_NEUTRAL_KEYS", "config_fingerprint", "finished_summary"]

# Keys (dotted paths) that cannot change a job's results: where files go, how runs are logged and
# drawn, and this switch itself. Everything else (model, graph, data, trainer, early stopping, seed,
# ...) is part of the fingerprint, so an unknown key errs on the side of running again.
RESULT_NEUTRAL_KEYS = (
    "paths", "logger", "tags", "task_name", "skip_finished", "auto_resume", "data.cache_dir",
    "callbacks.progress_bar", "callbacks.graph_statistics", "callbacks.user_tsne",
    # how checkpoints are written and what they carry for an exact resume: an uninterrupted run's
    # results are the same with or without them (so sweeps finished before they existed still match)
    "trainer.plugins", "callbacks.random_state",
)


def _drop(container: dict, dotted: str) -> None:
    *parents, last = dotted.split(".")
    for key in parents:
        container = container.get(key)
        if not isinstance(container, dict):
            return
    container.pop(last, None)


def config_fingerprint(cfg: DictConfig) -> str:
    """sha256 (16 hex chars) of the resolved config without :data:`RESULT_NEUTRAL_KEYS`.

    Absolute folders of ``paths`` (data, output, root) are replaced by placeholders wherever they appear
    (e.g. in ``dataset.root``), so a sweep or data folder that was moved still matches: where things
    are is not what was run. Plain ``hashlib`` over canonical JSON rather than
    :func:`mllmrec.cache.stable_hash`, so that checking a finished job does not import torch.
    """
    container = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    assert isinstance(container, dict)
    folders = {k: str(v) for k, v in (container.get("paths") or {}).items()
               if isinstance(v, str) and len(v) > 1 and os.path.isabs(v)}
    container.pop("hydra", None)
    for key in RESULT_NEUTRAL_KEYS:
        _drop(container, key)
    text = json.dumps(container, sort_keys=True, default=str, separators=(",", ":"))
    for key, folder in sorted(folders.items(), key=lambda kv: -len(kv[1])):  # longest (innermost) first
        text = text.replace(json.dumps(folder)[1:-1], f"<paths.{key}>")
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


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
        log.info("%s was written for another config (fingerprint %s, now %s): running the job again",
                 path, found, wanted)
        return None
    log.info("skipping: %s already holds this config's results (skip_finished=false reruns it)", path)
    return summary
