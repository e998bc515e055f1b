"""Train and evaluate MLLMRec:  python train.py [dataset=baby mllm=qwen25vl graph.alpha=0.7 ...]

Resume:  python train.py ckpt_path=<run or sweep job folder>[/checkpoints/last.ckpt]   (no quoting needed)
Sweeps:  python train.py -m graph.alpha=0.4,0.5,0.6,0.7 graph.kc=5,10,15,20 [hydra/launcher=gpus]
         python train.py -m hparams_search=optuna          (docs/sweeps.md)
"""

import logging
import os
from pathlib import Path

import hydra
from dotenv import load_dotenv
from omegaconf import DictConfig

ROOT = Path(__file__).resolve().parent
os.environ.setdefault("PROJECT_ROOT", str(ROOT))
load_dotenv(ROOT / ".env")  # WANDB_*, MLLMREC_DATA_DIR, ...: see .env.example

log = logging.getLogger("train")


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float:
    """Fit and evaluate one configuration; returns ``optimized_metric`` (what sweepers optimise).
    A user error (bad value, missing data) prints one message and exits with status 2."""
    from mllmrec.errors import exit_on_user_error
    from mllmrec.sweep.resume import finished_summary
    from mllmrec.train.objective import objective

    if cfg.get("extras", {}).get("print_config", True):
        from mllmrec.train.extras import print_config_tree

        print_config_tree(cfg)
    with exit_on_user_error(log):
        summary = finished_summary(cfg)  # a rerun of a named sweep skips the jobs it already finished
        if summary is None:
            from mllmrec.train.job import job_context
            from mllmrec.train.task import train

            with job_context(cfg):  # records a failure; finishes this job's W&B run
                summary, _ = train(cfg)
        return objective(summary, cfg.optimized_metric)


if __name__ == "__main__":
    import sys

    from mllmrec.train.run_folder import quote_path_overrides

    # ckpt_path=<sweep job folder>/...: job folders are named like graph.alpha=0.5,graph.kc=5, which
    # Hydra's override grammar reads as a sweep unless quoted; quote it here so it works as typed
    sys.argv = quote_path_overrides(sys.argv)
    main()
