"""A Hydra callback that prints a sweep's folder when ``-m`` starts, so the user knows where the
jobs, the launcher's records and ``python report.py <folder>`` are before the first job ends.
Torch-free (Hydra instantiates it in the launching process)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger(__name__)

__all__ = ["AnnounceSweepFolder", "sweep_folder_line"]


def sweep_folder_line(sweep_dir: str | Path) -> str:
    """The line printed at the start of a multirun."""
    return f"sweep folder: {Path(sweep_dir).resolve()}  (report: python report.py {sweep_dir})"


class AnnounceSweepFolder(Callback):
    """``on_multirun_start``: print ``hydra.sweep.dir`` (resolved once: ``${now:}`` is cached on the
    config, so this is the folder the launcher writes to)."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        print(sweep_folder_line(str(config.hydra.sweep.dir)), flush=True)
