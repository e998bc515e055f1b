"""``hydra/sweeper=mllmrec_optuna`` (used by ``hparams_search=optuna``): Optuna's current API as a
Hydra sweeper. The search itself lives in :mod:`mllmrec.sweep.optuna_search`; this is the Hydra glue:
each trial is one job handed to the configured launcher, with the trial number as its job number.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.core.plugins import Plugins
from hydra.core.utils import JobStatus
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


class OptunaSweeper(Sweeper):
    """Runs ``study.optimize`` over the search space; every trial is a launcher job."""

    def __init__(
        self,
        sampler: Any,
        direction: str,
        storage: str | None,
        study_name: str | None,
        n_trials: int,
        n_jobs: int | None,
        heartbeat_s: int,
        grace_s: int,
        params: Any,
    ) -> None:
        self.sampler_cfg = sampler
        self.direction = direction
        self.storage = storage
        self.study_name = study_name
        self.n_trials = n_trials
        self.n_jobs = n_jobs
        self.heartbeat_s = heartbeat_s
        self.grace_s = grace_s
        self.params = dict(params or {})
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.launcher: Any = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )
        if hasattr(self.launcher, "report_failures"):
            self.launcher.report_failures = False  # failed trials are reported from the study instead

    def _n_jobs(self) -> int:
        if self.n_jobs is not None:
            n_jobs = int(self.n_jobs)
        else:
            n_jobs = self.launcher.n_slots() if hasattr(self.launcher, "n_slots") else 1
        if n_jobs > 1 and not getattr(self.launcher, "thread_safe", False):
            raise ValueError(
                f"hydra.sweeper.n_jobs={n_jobs} runs trials at once, which needs a launcher that starts "
                "a process per job: add hydra/launcher=gpus (or set hydra.sweeper.n_jobs=1)"
            )
        return n_jobs

    def _make_sampler(self, offset: int) -> Any:
        from hydra.utils import instantiate

        cfg = OmegaConf.create(OmegaConf.to_container(self.sampler_cfg, resolve=True)) \
            if isinstance(self.sampler_cfg, DictConfig) else OmegaConf.create(dict(self.sampler_cfg))
        if cfg.get("seed") is not None:
            cfg.seed = int(cfg.seed) + offset
        return instantiate(cfg)

    def _evaluate(self, number: int, overrides: list[str]) -> tuple[Any, dict[str, Any]]:
        self.validate_batch_is_legal([overrides])  # a typo in the search space fails here, clearly
        [ret] = self.launcher.launch([overrides], initial_job_idx=number)
        info: dict[str, Any] = {}
        if ret.hydra_cfg is not None:
            info["output_dir"] = str(ret.hydra_cfg.hydra.runtime.output_dir)
        if ret.status == JobStatus.FAILED:
            raise ret._return_value
        return ret.return_value, info

    def sweep(self, arguments: list[str]) -> Any:
        from mllmrec.cache import atomic_write_text
        from mllmrec.sweep.optuna_search import open_study, run_study, search_space, study_report

        assert self.config is not None and self.launcher is not None
        space, fixed = search_space(self.params, arguments)
        if not space:
            raise ValueError("hparams_search: no parameter to search (hydra.sweeper.params is empty)")
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        log.info("Optuna search over %s (fixed: %s); storage %s", sorted(space), fixed or "none",
                 self.storage or "in memory")
        study = open_study(self.storage, self.study_name, self.direction, self.heartbeat_s, self.grace_s)
        run_study(study, space, fixed, self._evaluate, self.n_trials, self._n_jobs(), self._make_sampler)

        report = study_report(study)
        atomic_write_text(sweep_dir / "optimization_results.yaml", OmegaConf.to_yaml(OmegaConf.create(report)))
        for failure in report["failed"]:
            log.warning("trial %d failed %s: %s", failure["trial"], failure["params"], failure["error"])
        if "best_value" not in report:
            raise RuntimeError(
                f"no trial of study {study.study_name!r} completed ({report['trials']}); "
                f"see {sweep_dir / 'optimization_results.yaml'} and the trials' error.json"
            )
        log.info("Best trial %d: %s = %.4f with %s (%s)", report["best_trial"], self.direction,
                 report["best_value"], report["best_params"], report.get("best_output_dir"))
        return report
