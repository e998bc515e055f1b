"""Evaluate a trained run's checkpoint again, with no training: ``python evaluate.py run=<run dir>``.

Loads the run's saved config and its best checkpoint (:mod:`mllmrec.train.restore`), recomputes the
validation and test metrics with the same evaluation path as training (Lightning's validate/test
loops over the datamodule's user batches, MMRec's full-ranking protocol), and writes them to
``<run dir>/evaluation.json`` (atomically; ``metrics.json`` is never touched). A checkpoint loaded
under other result-relevant settings than it was trained with is an error listing the differences
unless ``allow_config_change=true``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mllmrec.errors import ConfigError

log = logging.getLogger(__name__)

__all__ = ["EVALUATION_FILE", "evaluate_run", "USAGE"]

#: the file ``evaluate.py`` writes into the run folder
EVALUATION_FILE = "evaluation.json"

USAGE = """usage: python evaluate.py run=<run dir> [ckpt_path=<file or run dir>] [key=value ...]
                          [allow_config_change=true] [output=evaluation.json] [extras.print_config=false]

Recomputes a trained run's valid/test metrics from its best checkpoint (or ckpt_path=) under the run's
saved config (.hydra/config.yaml), with no training, and writes them to <run dir>/<output>.
key=value changes a key of the saved config (e.g. data.exclude_valid_at_test=true); a result-relevant
difference between the checkpoint's own config and the one used is an error unless
allow_config_change=true."""

_PROTECTED = ("metrics.json", "error.json")


def _output_path(run_dir: Path, output: str) -> Path:
    name = Path(output)
    if name.name != output or not output.endswith(".json") or output in _PROTECTED:
        raise ConfigError(f"output={output}: a new .json file name inside the run folder (not {', '.join(_PROTECTED)})")
    return run_dir / name


def _json_copy(value: Any) -> Any:
    """``value`` as it reads back from a JSON file (tuples -> lists), for comparing with metrics.json."""
    return None if value is None else json.loads(json.dumps(value))


def evaluate_run(run: str | Path | None = None, ckpt_path: str | Path | None = None, overrides: Sequence[str] = (),
                 allow_config_change: bool = False, output: str = EVALUATION_FILE,
                 print_table: bool = True) -> dict[str, Any]:
    """Recompute a run's valid and test metrics from a checkpoint and write them to ``<run>/<output>``.

    Returns what was written: ``{"checkpoint", "valid", "test", "validation", "config_changes", "overrides",
    "matches_metrics_json"}`` (the last is None when the run has no ``metrics.json`` or the
    config was changed), and ``cold_start`` for a run trained with ``data.cold_start_items > 0``
    (:func:`~mllmrec.train.task.cold_start_summary`: the same block as metrics.json's).
    """
    import hydra

    from mllmrec.cache import atomic_write_json
    from mllmrec.train.restore import resolve_run, restore_run
    from mllmrec.train.task import _print_table, cold_start_summary, model_name

    run_dir, _ = resolve_run(run, ckpt_path)
    target = _output_path(run_dir, output)  # checked before any data is loaded
    started = time.perf_counter()
    restored = restore_run(run, ckpt_path, overrides, allow_config_change)
    cfg, model, datamodule = restored.cfg, restored.model, restored.datamodule
    # the training evaluation path itself (validate/test loops), on one device, writing nothing
    trainer = hydra.utils.instantiate(cfg.trainer, devices=1, strategy="auto", callbacks=[], logger=False,
                                      enable_progress_bar=False, enable_checkpointing=False,
                                      enable_model_summary=False)
    trainer.validate(model=model, datamodule=datamodule, verbose=False)
    trainer.test(model=model, datamodule=datamodule, verbose=False)
    result: dict[str, Any] = {
        "checkpoint": str(restored.checkpoint),
        "valid": dict(model.eval_results["val"]),
        "test": dict(model.eval_results["test"]),
        "validation": datamodule.validation_summary(),  # all users, or the data.valid_users sample
        "config_changes": [str(c) for c in restored.changes],
        "overrides": list(overrides),
        "matches_metrics_json": None,
    }
    rows = {"valid (evaluated)": result["valid"], "test (evaluated)": result["test"]}
    if datamodule.cold_split is not None:  # data.cold_start_items > 0: the block train.py writes, again
        result["cold_start"] = cold_start_summary(cfg, datamodule, model)
        rows["cold-start test (evaluated)"] = result["cold_start"]["test"]
    recorded_path = run_dir / "metrics.json"
    if recorded_path.is_file():
        recorded = json.loads(recorded_path.read_text(encoding="utf-8"))
        rows |= {"valid (metrics.json)": recorded.get("valid", {}), "test (metrics.json)": recorded.get("test", {})}
        if "cold_start" in recorded:
            rows["cold-start test (metrics.json)"] = recorded["cold_start"].get("test", {})
        if not overrides and recorded.get("valid") and recorded.get("test"):
            result["matches_metrics_json"] = (recorded["valid"] == result["valid"]
                                              and recorded["test"] == result["test"]
                                              and recorded.get("cold_start") == _json_copy(result.get("cold_start")))
    atomic_write_json(target, result)
    if print_table:
        _print_table(rows, model_name(cfg))
    log.info("evaluated %s in %.1fs; written to %s", restored.checkpoint, time.perf_counter() - started, target)
    return result
