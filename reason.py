"""Generate MLLM image descriptions and user preference profiles (paper Section 4.1).

    python reason.py dataset=baby mllm=qwen25vl                 # vLLM on a GPU
    python reason.py dataset=baby mllm=gemma3_27b reason.backend=openai   # Ollama / vllm serve
    python reason.py mllm=gemma3_270m reason.limit_users=5      # the tiny CPU model on the demo

Outputs go to <data_dir>/<dataset>/reasoning/<mllm>/ (see docs/reasoning.md).
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
    """Run the reasoning stage; returns the output folder."""
    from mllmrec.errors import exit_on_user_error
    from mllmrec.reasoning import ShardsPending, run_reasoning

    try:
        with exit_on_user_error(log):  # bad config / data / backend: one message, exit 2
            result = run_reasoning(cfg)
    except ShardsPending as pending:
        # not a crash: this shard finished its part; a rerun (or the last shard) will merge
        log.warning("%s", pending)
        sys.exit(EXIT_SHARDS_PENDING)
    if result.merged:
        log.info("tables and manifest written to %s", result.out_dir)
    else:  # another shard of this run wrote this exact set
        log.info("tables and manifest already up to date in %s", result.out_dir)
    return str(result.out_dir)


if __name__ == "__main__":  # vLLM spawns worker processes: keep the entry point guarded
    main()
