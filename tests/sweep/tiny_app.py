"""A tiny Hydra app for launcher tests: each job sleeps, records what it saw, and can fail on request.

    python tiny_app.py -m hydra/launcher=mllmrec_gpus 'hydra.launcher.gpus=[g0,g1]' out=<dir> duration=0.1,0.5
"""

import json
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import hydra
from hydra.core.config_store import ConfigStore


@dataclass
class TinyConf:
    duration: float = 0.1
    out: str = "???"
    fail: bool = False  # raise an exception (a job that fails)
    kill: bool = False  # SIGKILL itself (a job that crashes hard, e.g. OOM-killed)
    gpus_per_job: int = 1  # what the gpus launcher leases for this job (its default reads this key)


ConfigStore.instance().store(name="tiny", node=TinyConf)


@hydra.main(version_base="1.3", config_path=None, config_name="tiny")
def main(cfg) -> float:
    start = time.time()
    time.sleep(cfg.duration)
    if cfg.fail:
        raise RuntimeError(f"tiny job with duration={cfg.duration} was asked to fail")
    if cfg.kill:
        os.kill(os.getpid(), signal.SIGKILL)
    record = {"device": os.environ.get("CUDA_VISIBLE_DEVICES"), "threads": os.environ.get("OMP_NUM_THREADS"),
              "start": start, "end": time.time(), "pid": os.getpid(), "duration": cfg.duration,
              "gpus_per_job": cfg.gpus_per_job}
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    Path(cfg.out, f"job-{os.getpid()}.json").write_text(json.dumps(record), encoding="utf-8")
    return cfg.duration


if __name__ == "__main__":
    main()
