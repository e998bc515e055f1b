"""A run's fingerprint: what was run, independent of where its files live.

``metrics.json`` records it; a rerun of a named sweep skips a job only when the fingerprint matches
(:mod:`mllmrec.sweep.resume`). Torch-free, so that checking a finished job stays fast.
"""

from __future__ import annotations

import hashlib
import json
import os

from omegaconf import DictConfig, OmegaConf

__all__ = ["RESULT_NEUTRAL_KEYS", "config_fingerprint"]

# Keys (dotted paths) that cannot change a job's results: where files go, how runs are logged and
# drawn, and this switch itself. Everything else (model, graph, data, trainer, early stopping, seed,
# ...) is part of the fingerprint, so an unknown key errs on the side of running again.
RESULT_NEUTRAL_KEYS = (
    "paths", "logger", "tags", "task_name", "skip_finished", "reason.auto",
    "callbacks.progress_bar", "callbacks.graph_statistics", "callbacks.user_tsne",
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
