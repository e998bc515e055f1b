"""Structured configs (schemas) of the plugins, registered as ``hydra/launcher=mllmrec_gpus`` and
``hydra/sweeper=mllmrec_optuna``. ``conf/hydra/launcher/gpus.yaml`` and ``conf/hparams_search/optuna.yaml``
build on them. (No ``from __future__ import annotations``: Hydra executes plugin modules without
registering them in ``sys.modules``, where dataclasses would look string annotations up.)"""


from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore


@dataclass
class GpuLauncherConf:
    _target_: str = "hydra_plugins.mllmrec_sweep.gpu_launcher.GpuLauncher"
    # null = every visible GPU (CUDA_VISIBLE_DEVICES, else all); n = the first n; [ids] = exactly those;
    # 0 or no GPU = CPU jobs
    gpus: Any = None
    # CPU fallback: how many jobs run at once (null = number of CPU cores)
    cpu_workers: int | None = None
    # OMP/MKL threads per job (null = cores // parallel jobs); an OMP_NUM_THREADS already set wins
    threads_per_job: int | None = None
    # one lock file per GPU; point several sweeps (or Optuna workers) at one folder to share GPUs safely
    lock_dir: str = "${hydra.sweep.dir}/.launcher/leases"
    # seconds between checks for a free GPU when all are leased (by other sweeps)
    poll_s: float = 0.5
    # GPUs one job leases together (its CUDA_VISIBLE_DEVICES lists them all). An interpolation is
    # resolved per job, in that job's config: the app's own `gpus_per_job` key when it has one
    # (reason.yaml: the MLLM's vllm.tensor_parallel_size), else 1
    gpus_per_job: Any = "${oc.select:gpus_per_job,1}"


@dataclass
class OptunaSweeperConf:
    _target_: str = "hydra_plugins.mllmrec_sweep.optuna_sweeper.OptunaSweeper"
    # the sweeper instantiates the sampler itself (its seed is offset on resume)
    _recursive_: bool = False
    # any optuna sampler; seeded TPE by default
    sampler: Any = field(default_factory=lambda: {"_target_": "optuna.samplers.TPESampler", "seed": 999})
    direction: str = "maximize"
    # the study lives here (null = in memory, lost at exit); SQLite under the sweep dir by default
    storage: str | None = "sqlite:///${hydra.sweep.dir}/optuna.db"
    study_name: str | None = "mllmrec"
    # the study's target number of finished (complete or pruned) trials: a rerun adds only the missing
    # ones, so a killed search resumes and several processes sharing the study stop together
    n_trials: int = 20
    # trials run at once by this process (null = the launcher's parallel slots, e.g. one per GPU)
    n_jobs: int | None = None
    # a RUNNING trial whose process stopped sending heartbeats for grace_s is marked FAIL
    heartbeat_s: int = 60
    grace_s: int = 180
    # search space in Hydra's override grammar: choice(...), range(...), interval(a, b), tag(log, interval(a, b))
    params: dict[str, Any] = field(default_factory=dict)


ConfigStore.instance().store(group="hydra/launcher", name="mllmrec_gpus", node=GpuLauncherConf,
                             provider="mllmrec")
ConfigStore.instance().store(group="hydra/sweeper", name="mllmrec_optuna", node=OptunaSweeperConf,
                             provider="mllmrec")
