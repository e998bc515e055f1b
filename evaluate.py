"""Evaluate a trained run again, without training:

    python evaluate.py run=<run dir>                      # its best checkpoint, its saved config
    python evaluate.py ckpt_path=<run dir>/checkpoints/epoch_012.ckpt
    python evaluate.py run=<run dir> data.exclude_valid_at_test=true allow_config_change=true

Writes <run dir>/evaluation.json. Sweep job folders (graph.alpha=0.5,graph.kc=5) need no quoting.
"""

import logging
import os
import sys
from pathlib import Path

from dotenv import load_dotenv

ROOT = Path(__file__).resolve().parent
os.environ.setdefault("PROJECT_ROOT", str(ROOT))
load_dotenv(ROOT / ".env")  # MLLMREC_DATA_DIR, ...: see .env.example

log = logging.getLogger("evaluate")


def main(argv: list[str]) -> None:
    """Parse ``argv``, evaluate; a user error prints one message and exits with status 2."""
    from mllmrec.errors import exit_on_user_error
    from mllmrec.train.cli import parse_cli, setup_console_logging
    from mllmrec.train.evaluate import EVALUATION_FILE, USAGE

    setup_console_logging()
    with exit_on_user_error(log):
        options, overrides = parse_cli(argv, {"run": None, "ckpt_path": None, "allow_config_change": False,
                                              "output": EVALUATION_FILE, "extras.print_config": True}, USAGE)
        from mllmrec.train.evaluate import evaluate_run

        if options["extras.print_config"]:
            from mllmrec.train.extras import print_config_tree
            from mllmrec.train.restore import load_run_config, resolve_run

            print_config_tree(load_run_config(resolve_run(options["run"], options["ckpt_path"])[0], overrides))
        evaluate_run(options["run"], options["ckpt_path"], overrides, options["allow_config_change"],
                     options["output"])


if __name__ == "__main__":
    main(sys.argv[1:])
