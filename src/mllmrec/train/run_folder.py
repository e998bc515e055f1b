"""Where a run's checkpoints are, and how a command line names them.

A run folder (``logs/train/runs/<time>/`` or a sweep's job folder) holds ``.hydra/config.yaml``,
``metrics.json`` and ``checkpoints/`` with ``epoch_NNN.ckpt`` (best validation) and ``last.ckpt``
(latest, for resuming). Sweep job folders are named by their overrides
(``graph.alpha=0.5,graph.kc=5``), which Hydra's override grammar cannot take unquoted after
``ckpt_path=``: :func:`quote_path_overrides` quotes such values before Hydra parses the command line,
so ``python train.py ckpt_path=multirun/grid/graph.alpha=0.5,graph.kc=5/checkpoints/last.ckpt`` works
as typed. Torch-free.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from mllmrec.errors import ConfigError

__all__ = ["PATH_KEYS", "quote_path_overrides", "best_checkpoint", "resume_checkpoint",
           "run_dir_of_checkpoint", "saved_config_path"]

#: command-line keys whose value is a file or folder (never a sweep, never a grammar expression)
PATH_KEYS = ("ckpt_path", "run")


def quote_path_overrides(argv: Sequence[str], keys: Sequence[str] = PATH_KEYS) -> list[str]:
    """``argv`` with the values of ``key=<path>`` quoted for Hydra's override parser.

    A path may hold ``=`` and ``,`` (sweep job folders), which the grammar reads as a sweep or a syntax
    error; inside quotes it is a plain string. Values already quoted are left as they are.
    """
    out = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        if sep and key.lstrip("+") in keys and value and value[0] not in "'\"":
            quote = "'" if "'" not in value else '"'
            if quote not in value:
                arg = f"{key}={quote}{value}{quote}"
        out.append(arg)
    return out


def saved_config_path(run_dir: Path) -> Path:
    """``<run dir>/.hydra/config.yaml``: the config the run was trained with."""
    return Path(run_dir) / ".hydra" / "config.yaml"


def _epoch_checkpoints(run_dir: Path) -> list[Path]:
    return sorted((Path(run_dir) / "checkpoints").glob("epoch_*.ckpt"))


def best_checkpoint(run_dir: str | Path) -> Path:
    """The run's best-validation checkpoint: ``metrics.json``'s ``test_checkpoint`` when it is still
    there (the one the run's test metrics were computed with), else the one ``epoch_*.ckpt``."""
    run_dir = Path(run_dir)
    metrics = run_dir / "metrics.json"
    if metrics.is_file():
        try:
            recorded = json.loads(metrics.read_text(encoding="utf-8")).get("test_checkpoint")
        except (OSError, ValueError):
            recorded = None
        if recorded:
            candidates = [Path(recorded), run_dir / "checkpoints" / Path(recorded).name]  # moved runs
            for path in candidates:
                if path.is_file():
                    return path
    found = _epoch_checkpoints(run_dir)
    if len(found) == 1:
        return found[0]
    if not found:
        raise ConfigError(f"run={run_dir}: no best-validation checkpoint (checkpoints/epoch_*.ckpt) in this "
                          "run folder. Pass ckpt_path=<file> to name one.")
    names = ", ".join(p.name for p in found)
    raise ConfigError(f"run={run_dir}: several best-validation checkpoints ({names}) and no metrics.json "
                      "naming the one tested. Pass ckpt_path=<file> to choose one.")


def resume_checkpoint(path: str | Path) -> Path:
    """``ckpt_path`` for resuming training: a checkpoint file, or a run/job folder (its
    ``checkpoints/last.ckpt``)."""
    path = Path(path)
    if path.is_dir():
        last = path / "checkpoints" / "last.ckpt"
        if not last.is_file():
            raise ConfigError(f"ckpt_path={path}: a folder without checkpoints/last.ckpt. Name a checkpoint "
                              "file, or a run folder that holds one.")
        return last
    if not path.is_file():
        raise ConfigError(f"ckpt_path={path}: no such checkpoint file or run folder.")
    return path


def run_dir_of_checkpoint(ckpt: str | Path) -> Path | None:
    """The run folder a checkpoint belongs to (``<run>/checkpoints/<file>``) when it holds a saved
    config, else None."""
    run_dir = Path(ckpt).resolve().parent.parent
    return run_dir if saved_config_path(run_dir).is_file() else None
