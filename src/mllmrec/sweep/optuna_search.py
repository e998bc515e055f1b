"""Hyper-parameter search with Optuna's current API, driven by Hydra overrides.

Why not ``hydra-optuna-sweeper``: its last release (1.3.0) pins ``optuna<3`` (the resolver installs
2.10.1 over our Optuna 4/5), and its SQLite storage then also needs ``sqlalchemy<2`` and
``alembic<1.17``; it runs trials in whole batches (hydra#3091) and cannot resume. This module keeps
its configuration style (``params`` in Hydra's override grammar) on top of ``study.optimize``:

* the study is persisted (SQLite under the sweep dir by default) and opened with
  ``load_if_exists``, so several processes share one study and a killed search resumes;
* ``n_trials`` is the study's target number of finished trials, so a rerun only adds what is missing;
* a trial whose job raised, or returned NaN/None, is marked FAIL and the search goes on;
* with a heartbeat, trials of a killed process are marked FAIL instead of staying RUNNING forever;
* the sampler is seeded: ``seed + number of trials already in the study``, so a resumed search does
  not replay the random start-up points of the first run.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

__all__ = ["Param", "search_space", "encode_value", "open_study", "run_study", "study_report"]

_PLAIN = re.compile(r"^[A-Za-z0-9_.:/+-]+$")


@dataclass(frozen=True)
class Param:
    """One searched hyper-parameter: ``float`` / ``int`` ranges or ``categorical`` choices."""

    kind: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple = ()

    def suggest(self, trial: Any, name: str) -> Any:
        if self.kind == "categorical":
            return trial.suggest_categorical(name, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(name, int(self.low), int(self.high), log=self.log, step=int(self.step or 1))
        return trial.suggest_float(name, self.low, self.high, log=self.log, step=self.step)


def _param_from_override(override: Any) -> Param:
    """``choice(...)`` / ``range(...)`` -> categorical; ``interval(a, b)`` -> float (``tag(int, ...)``:
    int; ``tag(log, ...)``: log scale). Hydra's ``range`` excludes its stop, so it becomes the list of
    its values rather than an Optuna range (which would include the stop)."""
    from hydra.core.override_parser.types import IntervalSweep

    value = override.value()
    if override.is_choice_sweep() or override.is_range_sweep():
        return Param("categorical", choices=tuple(override.sweep_iterator()))
    if isinstance(value, IntervalSweep):
        kind = "int" if "int" in value.tags else "float"
        low, high = (int(value.start), int(value.end)) if kind == "int" else (float(value.start), float(value.end))
        if low >= high:
            raise ValueError(f"{override.input_line}: the interval's start must be below its end")
        return Param(kind, low=low, high=high, log="log" in value.tags)
    raise ValueError(f"{override.input_line}: unsupported sweep for Optuna (use choice, range or interval)")


def search_space(params: Mapping[str, Any], arguments: Sequence[str] = ()) -> tuple[dict[str, Param], list[str]]:
    """``(space, fixed overrides)`` from the config's ``params`` and the command line's overrides.

    A sweep (``choice``/``range``/``interval``) becomes a searched parameter, a plain ``key=value`` a
    fixed override of every trial. The command line wins over ``params`` for the same key.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    lines = [f"{k}={v}" for k, v in params.items()] + list(arguments)
    space: dict[str, Param] = {}
    fixed: dict[str, str] = {}
    for override in OverridesParser.create().parse_overrides(lines):
        key = override.get_key_element()
        space.pop(key, None)
        fixed.pop(key, None)
        if override.is_sweep_override():
            space[key] = _param_from_override(override)
        else:
            fixed[key] = override.input_line
    return space, list(fixed.values())


def encode_value(value: Any) -> str:
    """A value as Hydra override text (strings quoted when they hold grammar characters)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    text = str(value)
    if _PLAIN.match(text):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def open_study(
    storage: str | None,
    study_name: str | None,
    direction: str,
    heartbeat_s: int | None = 60,
    grace_s: int | None = 180,
) -> Any:
    """Create or load the study. SQLite files get their folder created and a 60 s busy timeout (several
    processes write to one file); creation is serialised by a file lock (table creation races)."""
    import optuna
    from filelock import FileLock

    if storage is None:
        return optuna.create_study(study_name=study_name, direction=direction)
    engine_kwargs: dict[str, Any] = {}
    lock = None
    if storage.startswith("sqlite:///"):
        db = Path(storage[len("sqlite:///"):])
        db.parent.mkdir(parents=True, exist_ok=True)
        engine_kwargs = {"connect_args": {"timeout": 60}}
        lock = FileLock(str(db) + ".lock")
    with lock if lock is not None else contextlib.nullcontext(), warnings.catch_warnings():
        # the heartbeat has been "experimental" since Optuna 2.9; it is what fails killed trials
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        rdb = optuna.storages.RDBStorage(
            storage, engine_kwargs=engine_kwargs,
            heartbeat_interval=heartbeat_s or None, grace_period=grace_s or None,
        )
        return optuna.create_study(storage=rdb, study_name=study_name, direction=direction, load_if_exists=True)


def _finished(study: Any) -> int:
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


def run_study(
    study: Any,
    space: Mapping[str, Param],
    fixed: Sequence[str],
    evaluate: Callable[[int, list[str]], tuple[Any, dict[str, Any]]],
    n_trials: int,
    n_jobs: int = 1,
    sampler_factory: Callable[[int], Any] | None = None,
) -> Any:
    """Run trials until the study holds ``n_trials`` finished (complete or pruned) trials.

    ``evaluate(trial_number, overrides) -> (value, info)`` runs one job; ``info`` is stored as the
    trial's user attributes (e.g. its output dir). An exception, NaN or None marks the trial FAIL
    (with the reason in its ``error`` attribute) and the search continues.
    """
    import optuna
    from optuna.study import MaxTrialsCallback
    from optuna.trial import TrialState

    if n_trials < 1:
        raise ValueError(f"n_trials must be >= 1, got {n_trials}")
    if n_jobs < 1:
        raise ValueError(f"n_jobs must be >= 1, got {n_jobs}")
    if sampler_factory is not None:
        study.sampler = sampler_factory(len(study.trials))
    remaining = n_trials - _finished(study)
    log.info("study %r: %d finished trial(s) of %d, running %d more (%d at once)",
             study.study_name, n_trials - remaining, n_trials, max(remaining, 0), n_jobs)
    if remaining <= 0:
        return study

    def objective(trial: optuna.Trial) -> float:
        values = {name: param.suggest(trial, name) for name, param in space.items()}
        overrides = list(fixed) + [f"{name}={encode_value(v)}" for name, v in values.items()]
        trial.set_user_attr("overrides", overrides)
        try:
            value, info = evaluate(trial.number, overrides)
        except Exception as err:
            trial.set_user_attr("error", f"{type(err).__name__}: {err}"[:2000])
            raise
        for key, item in info.items():
            trial.set_user_attr(key, item)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            trial.set_user_attr("error", f"the job returned {value!r}")
            return float("nan")  # Optuna marks the trial FAIL and goes on
        return float(value)

    study.optimize(
        objective, n_trials=remaining, n_jobs=n_jobs, catch=(Exception,),
        callbacks=[MaxTrialsCallback(n_trials, states=(TrialState.COMPLETE, TrialState.PRUNED))],
    )
    return study


def study_report(study: Any) -> dict[str, Any]:
    """Best trial (when any completed), trial counts by state and the failed trials with their errors."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    counts: dict[str, int] = {}
    for t in trials:
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
    report: dict[str, Any] = {"study_name": study.study_name, "direction": study.direction.name.lower(),
                              "trials": counts}
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    if complete:
        best = study.best_trial
        report.update(best_trial=best.number, best_value=best.value, best_params=dict(best.params),
                      best_overrides=best.user_attrs.get("overrides"),
                      best_output_dir=best.user_attrs.get("output_dir"))
    report["failed"] = [
        {"trial": t.number, "params": dict(t.params), "error": t.user_attrs.get("error", "see the log")}
        for t in trials if t.state == TrialState.FAIL
    ]
    return report
