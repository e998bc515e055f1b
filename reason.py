"""Generate MLLM image descriptions and user preference profiles (paper Section 4.1).

    python reason.py dataset=baby mllm=qwen25vl                 # vLLM on a GPU
    python reason.py dataset=baby mllm=gemma3_27b reason.backend=openai   # Ollama / vllm serve
    python reason.py mllm=gemma3_270m reason.limit_users=5      # the tiny CPU model on the demo
    python reason.py -m dataset=baby,sports mllm=gemma3_4b,gemma3_27b hydra/launcher=gpus   # a sweep

Outputs go to <data_dir>/<dataset>/reasoning/<mllm>/ (see docs/reasoning.md). A job whose outputs
are complete for the same config returns at once; jobs for the same outputs never run together
(docs/sweeps.md).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import hydra
from dotenv import load_dotenv
from omegaconf import DictConfig

# before Hydra composes the config: ${oc.env:...} entries read these (data/ under the repo root)
os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parent))
load_dotenv(Path(__file__).resolve().parent / ".env", override=False)

log = logging.getLogger("reason")


#: exit status of a shard whose own work is saved but whose siblings' work is still missing
EXIT_SHARDS_PENDING = 3


@hydra.main(version_base="1.3", config_path="conf", config_name="reason")
def main(cfg: DictConfig) -> str:
    """Run the reasoning stage (or skip it when finished); returns the output folder."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from mllmrec.errors import exit_on_user_error
    from mllmrec.reasoning import ShardsPending
    from mllmrec.reasoning.stage import run_stage

    try:
        with exit_on_user_error(log):  # bad config / data / backend: one message, exit 2
            out_dir = run_stage(cfg, skip_finished=bool(cfg.get("skip_finished", True)))
    except ShardsPending as pending:
        # not a crash: this shard finished its part; a rerun (or the last shard) will merge
        log.warning("%s", pending)
        if HydraConfig.get().mode == RunMode.MULTIRUN:  # a failed job of the sweep, listed at its end; exiting would end the sweep
            raise
        sys.exit(EXIT_SHARDS_PENDING)
    log.info("tables and manifest in %s", out_dir)
    return str(out_dir)


if __name__ == "__main__":  # vLLM spawns worker processes: keep the entry point guarded
    main()
