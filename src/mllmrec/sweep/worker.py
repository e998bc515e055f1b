"""Run one Hydra sweep job in a fresh process: ``python -m mllmrec.sweep.worker <common> <job> <result>``.

The GPU launcher starts one such process per job, with ``CUDA_VISIBLE_DEVICES`` already set to the
job's leased device: CUDA reads that variable once, when it initialises, so it must be in the
environment before the job's process starts (loky workers are reused across jobs, which is why
joblib cannot do this: joblib#1064). A process per job also isolates crashes: a segfault or an
out-of-memory kill ends that job only.

``<common>``: cloudpickled ``(hydra_context, config, task_function, singleton_state)``, shared by the
jobs of a launch; ``<job>``: JSON ``{"idx", "overrides"}``; ``<result>``: where the cloudpickled
``JobReturn`` is written (atomically). The job's own exception becomes a picklable
:class:`~mllmrec.sweep.failures.JobFailure`.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["execute_job", "write_result", "main"]


def execute_job(
    idx: int,
    overrides: Sequence[str],
    hydra_context: Any,
    config: Any,
    task_function: Any,
    singleton_state: dict,
) -> Any:
    """What Hydra's launchers do per job: compose the job's config and ``run_job`` it (here)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.singleton import Singleton
    from hydra.core.utils import JobStatus, run_job, setup_globals
    from omegaconf import open_dict

    from mllmrec.sweep.failures import failure_from_exception

    setup_globals()
    Singleton.set_state(singleton_state)
    sweep_config = hydra_context.config_loader.load_sweep_config(config, list(overrides))
    with open_dict(sweep_config):
        sweep_config.hydra.job.id = f"{sweep_config.hydra.job.name}_{idx}"
        sweep_config.hydra.job.num = idx
    HydraConfig.instance().set_config(sweep_config)
    ret = run_job(
        hydra_context=hydra_context,
        config=sweep_config,
        task_function=task_function,
        job_dir_key="hydra.sweep.dir",
        job_subdir_key="hydra.sweep.subdir",
    )
    if ret.status == JobStatus.FAILED:
        ret.return_value = failure_from_exception(idx, ret.overrides or overrides, ret._return_value)
    return ret


def write_result(path: str | os.PathLike, value: Any) -> None:
    """cloudpickle ``value`` to ``path`` atomically (the launcher treats a missing file as a crash)."""
    import cloudpickle

    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            cloudpickle.dump(value, f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main(argv: Sequence[str]) -> int:
    import cloudpickle

    common_path, job_path, result_path = argv
    hydra_context, config, task_function, singleton_state = cloudpickle.loads(Path(common_path).read_bytes())
    job = json.loads(Path(job_path).read_text(encoding="utf-8"))
    ret = execute_job(job["idx"], job["overrides"], hydra_context, config, task_function, singleton_state)
    try:
        write_result(result_path, ret)
    except Exception as err:  # e.g. a task function returning an object that cannot be pickled
        from hydra.core.utils import JobStatus

        from mllmrec.sweep.failures import failure_from_exception

        ret.status = JobStatus.FAILED
        ret.return_value = failure_from_exception(job["idx"], job["overrides"], err)
        write_result(result_path, ret)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
