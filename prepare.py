"""Build a dataset in the processed format.

    python prepare.py dataset=baby            # also sports, clothing (Amazon 2014, MMRec processing)
    python prepare.py dataset=amazon2018 dataset.source.category=Gift_Cards
    python prepare.py dataset=mmrec dataset.root=/path/to/baby dataset.name=baby   # import MMRec's files

See docs/prepare.md and conf/prepare.yaml.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from dotenv import load_dotenv

# before Hydra composes the config: conf/paths reads PROJECT_ROOT / MLLMREC_DATA_DIR from the env
os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parent))
load_dotenv(Path(__file__).resolve().parent / ".env")

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

log = logging.getLogger("prepare")


@hydra.main(version_base="1.3", config_path="conf", config_name="prepare")
def main(cfg: DictConfig) -> str:
    """Prepare ``cfg.dataset``; returns the processed folder. Bad input exits with status 2 and
    the error's message (which names the file/field and the fix) instead of a traceback."""
    from mllmrec.errors import exit_on_user_error
    from mllmrec.prepare.cli import run_prepare

    with exit_on_user_error(log):
        outcome = run_prepare(cfg)
    return str(outcome.layout.processed)


if __name__ == "__main__":
    main()
