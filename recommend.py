"""Top-K recommendations of a trained run:

    python recommend.py run=<run dir> k=20                        # every user -> <run dir>/recommendations.parquet
    python recommend.py run=<run dir> users=U0001,U0002 output=top.csv
    python recommend.py run=<run dir> export=<dir>                # + user/item vectors for an ANN index
    python recommend.py run=<run dir> new_items=new.csv [new_items.merge=true] [reason.backend=fake]
                                                                  # score items that were not in the dataset

The same from Python: mllmrec.recommend(run_dir, users=None, k=20, ...). Sweep job folders
(graph.alpha=0.5,graph.kc=5) need no quoting.
"""

import logging
import os
import sys
from pathlib import Path

from dotenv import load_dotenv

ROOT = Path(__file__).resolve().parent
os.environ.setdefault("PROJECT_ROOT", str(ROOT))
load_dotenv(ROOT / ".env")  # MLLMREC_DATA_DIR, ...: see .env.example

log = logging.getLogger("recommend")


def main(argv: list[str]) -> None:
    """Parse ``argv``, recommend; a user error prints one message and exits with status 2."""
    from mllmrec.errors import ConfigError, exit_on_user_error
    from mllmrec.train.cli import parse_cli, setup_console_logging

    usage = "see: python recommend.py --help"
    if any(a in ("-h", "--help") for a in argv):
        from mllmrec.train.recommend import USAGE as usage
    setup_console_logging()
    with exit_on_user_error(log):
        options, overrides = parse_cli(argv, {
            "run": None, "ckpt_path": None, "k": "20", "users": None, "output": None, "exclude_valid": True,
            "export": None, "batch_size": "1024", "allow_config_change": False, "extras.print_config": True,
            "new_items": None, "new_items.merge": False,
        }, usage)
        # new_items.<column>=... name the table's columns; with new_items=, reason.<key>=... set how the
        # new items are described (not a change of the run's config)
        columns = {o.partition("=")[0][len("new_items."):]: o.partition("=")[2]
                   for o in overrides if o.startswith("new_items.")}
        reason = [o for o in overrides if o.startswith("reason.")] if options["new_items"] else []
        overrides = [o for o in overrides if not o.startswith("new_items.") and o not in reason]
        try:
            k, batch_size = int(options["k"]), int(options["batch_size"])
        except ValueError:
            raise ConfigError(f"k={options['k']} / batch_size={options['batch_size']}: integers expected") from None
        from mllmrec.train.recommend import NEW_ITEM_RECOMMENDATIONS_FILE, RECOMMENDATIONS_FILE, recommend
        from mllmrec.train.restore import load_run_config, resolve_run

        run_dir, _ = resolve_run(options["run"], options["ckpt_path"])
        if options["extras.print_config"]:
            from mllmrec.train.extras import print_config_tree

            print_config_tree(load_run_config(run_dir, overrides))
        default = NEW_ITEM_RECOMMENDATIONS_FILE if options["new_items"] else RECOMMENDATIONS_FILE
        output = options["output"] or str(run_dir / default)
        frame = recommend(options["run"], options["users"], k, ckpt_path=options["ckpt_path"],
                          exclude_valid=options["exclude_valid"], output=output, export=options["export"],
                          batch_size=batch_size, overrides=overrides,
                          allow_config_change=options["allow_config_change"], new_items=options["new_items"],
                          new_items_merge=options["new_items.merge"], new_item_columns=columns,
                          reason_overrides=reason)
        print(frame.head(min(len(frame), 3 * k)).to_string(index=False))


if __name__ == "__main__":
    main(sys.argv[1:])
