"""``hydra/launcher=gpus``: run a sweep's jobs in parallel, one job per GPU, never two on one GPU.

Design (the issue's pitfalls, and why this is not a joblib config):

* A job runs in a **fresh process** (:mod:`mllmrec.sweep.worker`) started with
  ``CUDA_VISIBLE_DEVICES=<its GPU>``; loky reuses its workers, so a job there cannot choose its GPU
  once CUDA is initialised (joblib#1064).
* A job takes a GPU through a **lease** (:class:`mllmrec.sweep.lease.DeviceLease`: a lock file per GPU)
  and gives it back when its process ends; a job whose ``hydra.launcher.gpus_per_job`` (resolved in
  the job's own config, e.g. an MLLM's tensor parallel size) is ``n`` leases ``n`` GPUs together, so uneven job durations cannot put two jobs on one GPU
  (the ``job.num % n_gpus`` collision). The locks are OS locks under ``lock_dir``, so other sweeps
  using the same folder (e.g. several Optuna workers) share the GPUs safely too.
* Without GPUs it runs ``cpu_workers`` CPU jobs at once, each limited to ``cores / workers`` threads.
* A failing or crashing job ends only itself; the others go on and the failures are reported at the
  end (log + ``<sweep dir>/failures.json``), each as a :class:`~mllmrec.sweep.failures.JobFailure`
  naming the job's overrides.
* ``<sweep dir>/.launcher/jobs.jsonl`` records, per job, the device, the start/end times and the status.

``launch`` may be called from several threads at once (the Optuna sweeper does, one trial per call).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

log = logging.getLogger(__name__)

_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


class GpuLauncher(Launcher):
    """One process per job; a GPU lease per job (or ``cpu_workers`` CPU jobs at once)."""

    # the Optuna sweeper may call launch() from several threads (one trial each)
    thread_safe = True

    def __init__(
        self,
        gpus: Any = None,
        cpu_workers: int | None = None,
        threads_per_job: int | None = None,
        lock_dir: str | None = None,
        poll_s: float = 0.5,
        gpus_per_job: Any = 1,
    ) -> None:
        self.gpus = gpus
        self.cpu_workers = cpu_workers
        self.threads_per_job = threads_per_job
        self.lock_dir = lock_dir
        self.poll_s = poll_s
        # the launch-level value; an interpolation in the config is resolved per job (_gpus_for)
        self.gpus_per_job = gpus_per_job
        # sweepers that report failures themselves (the Optuna sweeper) switch this off
        self.report_failures = True
        self.config: DictConfig | None = None
        self.task_function: TaskFunction | None = None
        self.hydra_context: HydraContext | None = None
        self._devices: list[str] | None = None
        self._lease: Any = None
        self._procs: set[subprocess.Popen] = set()
        self._guard = threading.Lock()
        self._compose_guard = threading.Lock()  # Hydra's config loader is not known to be thread-safe

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.task_function = task_function
        self.hydra_context = hydra_context

    # ------------------------------------------------------------------ slots
    def devices(self) -> list[str]:
        """The GPU ids jobs are spread over (empty: CPU jobs). Resolved once."""
        with self._guard:
            if self._devices is None:
                from mllmrec.sweep.lease import resolve_gpus

                self._devices = resolve_gpus(self.gpus)
            return self._devices

    def n_slots(self) -> int:
        """How many jobs run at once: one per GPU, else ``cpu_workers`` (default: CPU cores)."""
        devices = self.devices()
        if devices:
            return len(devices)
        workers = self.cpu_workers or os.cpu_count() or 1
        if workers < 1:
            raise ValueError(f"hydra.launcher.cpu_workers must be >= 1, got {workers}")
        return workers

    def _threads(self) -> int:
        return self.threads_per_job or max(1, (os.cpu_count() or 1) // self.n_slots())

    def _lease_for(self, sweep_dir: Path) -> Any:
        from mllmrec.sweep.lease import DeviceLease

        with self._guard:
            if self._lease is None and self._devices:
                lock_dir = Path(self.lock_dir) if self.lock_dir else sweep_dir / ".launcher" / "leases"
                self._lease = DeviceLease(self._devices, lock_dir, poll_s=self.poll_s)
            return self._lease

    # ------------------------------------------------------------------ launch
    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        import cloudpickle

        assert self.config is not None and self.task_function is not None and self.hydra_context is not None
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        work_dir = sweep_dir / ".launcher"
        work_dir.mkdir(parents=True, exist_ok=True)
        slots, devices = self.n_slots(), self.devices()
        lease = self._lease_for(sweep_dir)
        where = f"GPUs {devices} (each job leases its gpus_per_job)" if devices else f"CPU ({slots} at once, {self._threads()} threads each)"
        log.info("Launching %d job(s) on %s; sweep dir %s", len(job_overrides), where, sweep_dir)
        for i, overrides in enumerate(job_overrides):
            log.info("\t#%d : %s", initial_job_idx + i, " ".join(filter_overrides(overrides)))

        common = cloudpickle.dumps(
            (self.hydra_context, self.config, self.task_function, Singleton.get_state())
        )
        with tempfile.TemporaryDirectory(dir=work_dir, prefix="launch-") as tmp:
            common_path = Path(tmp) / "common.pkl"
            common_path.write_bytes(common)
            with ThreadPoolExecutor(max_workers=slots, thread_name_prefix="gpu-launcher") as pool:
                futures = [
                    pool.submit(self._run_one, initial_job_idx + i, list(o), common_path, lease, work_dir)
                    for i, o in enumerate(job_overrides)
                ]
                try:
                    results = [f.result() for f in futures]
                except BaseException:  # Ctrl-C, SIGTERM: do not leave jobs running on the GPUs
                    for f in futures:
                        f.cancel()
                    self._terminate_all()
                    raise
        if self.report_failures:
            self._report(results, sweep_dir)
        return results

    def _gpus_for(self, overrides: list[str]) -> int:
        """How many GPUs this job leases: ``hydra.launcher.gpus_per_job`` of the job's own config.

        A plain number applies to every job as it is; an interpolation (the default reads the app's
        ``gpus_per_job`` key, e.g. ``${mllm.vllm.tensor_parallel_size}`` in reason.yaml) is resolved
        in the config this job will run with, so ``mllm=gemma3_27b`` jobs can lease 2 and the others 1.
        """
        from omegaconf import OmegaConf

        assert self.config is not None and self.hydra_context is not None
        node = self.config.hydra.launcher
        if "gpus_per_job" not in node:
            value: Any = 1
        elif not OmegaConf.is_interpolation(node, "gpus_per_job"):
            value = node.gpus_per_job
        else:
            with self._compose_guard:
                job_config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            value = job_config.hydra.launcher.gpus_per_job
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"hydra.launcher.gpus_per_job must resolve to an integer >= 1, got {value!r}")
        return value

    def _run_one(self, idx: int, overrides: list[str], common: Path, lease: Any, work_dir: Path) -> JobReturn:
        job_file = common.with_name(f"job{idx}.json")
        result_file = common.with_name(f"job{idx}.result.pkl")
        job_file.write_text(json.dumps({"idx": idx, "overrides": overrides}), encoding="utf-8")
        if lease is not None:
            try:
                count = self._gpus_for(overrides)
                if count > len(lease.devices):
                    raise ValueError(
                        f"the job needs {count} GPUs together (hydra.launcher.gpus_per_job) but the launcher "
                        f"has {len(lease.devices)}: {lease.devices}. Give it more (hydra.launcher.gpus) or "
                        "lower the job's need (e.g. mllm.vllm.tensor_parallel_size)."
                    )
            except Exception as err:  # a bad request fails this job only, before it waits for GPUs
                from mllmrec.sweep.failures import failure_from_exception

                ret = JobReturn(overrides=overrides, status=JobStatus.FAILED)
                ret.return_value = failure_from_exception(idx, overrides, err)
                return ret
        with (lease.acquire_many(count) if lease is not None else nullcontext(None)) as held:
            device = ",".join(held) if held is not None else None
            env = dict(os.environ)
            # set before the job's process starts: CUDA reads it once, at initialisation
            env["CUDA_VISIBLE_DEVICES"] = device if device is not None else ""
            for var in _THREAD_VARS:
                env.setdefault(var, str(self._threads()))
            started = time.time()
            log.info("job %d started on %s", idx, f"GPU {device}" if device is not None else "CPU")
            proc = subprocess.Popen(
                [sys.executable, "-m", "mllmrec.sweep.worker", str(common), str(job_file), str(result_file)],
                env=env,
            )
            with self._guard:
                self._procs.add(proc)
            try:
                code = proc.wait()
            finally:
                with self._guard:
                    self._procs.discard(proc)
            ended = time.time()
        ret = self._result(idx, overrides, result_file, code)
        record = {"job": idx, "device": device, "devices": held, "start": started, "end": ended, "exit_code": code,
                  "status": ret.status.name, "overrides": overrides}
        with self._guard, open(work_dir / "jobs.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        return ret

    @staticmethod
    def _result(idx: int, overrides: list[str], result_file: Path, code: int) -> JobReturn:
        import cloudpickle

        from mllmrec.sweep.failures import JobFailure

        if result_file.is_file():
            return cloudpickle.loads(result_file.read_bytes())
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            reason = f"the job's process was killed by {name}"
        else:
            reason = f"the job's process exited with code {code} before reporting a result"
        ret = JobReturn(overrides=overrides, status=JobStatus.FAILED)
        ret.return_value = JobFailure(idx, overrides, "ProcessDied", reason,
                                      "See the job's log in its output dir (and dmesg for OOM kills).")
        return ret

    def _terminate_all(self) -> None:
        with self._guard:
            procs = list(self._procs)
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()

    @staticmethod
    def _report(results: Sequence[JobReturn], sweep_dir: Path) -> None:
        failures = [r._return_value for r in results if r.status == JobStatus.FAILED]
        path = sweep_dir / "failures.json"
        if not failures:
            path.unlink(missing_ok=True)  # a rerun that fixed everything leaves no stale report
            log.info("All %d job(s) finished", len(results))
            return
        from mllmrec.cache import atomic_write_text  # imports torch: only when there is something to write
        from mllmrec.sweep.failures import dumps_failures, format_failures

        atomic_write_text(path, dumps_failures(failures))
        log.error(format_failures(failures, len(results), sweep_dir))
