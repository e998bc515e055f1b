"""hparams_search=optuna: search space from Hydra overrides, persistent/resumable studies, failed and
NaN trials, and a real search on the demo that is resumed."""

from __future__ import annotations

import math
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
from optuna.trial import TrialState

sys.path.insert(0, str(Path(__file__).resolve().parent))

from mllmrec.sweep.optuna_search import Param, encode_value, open_study, run_study, search_space  # noqa: E402

from sweep_helpers import FAST_JOB, NO_PLOTS, encoded_data_dir, run_train  # noqa: E402, F401

optuna.logging.set_verbosity(optuna.logging.WARNING)

PARAMS = {"graph.alpha": "interval(0.4, 0.7)", "graph.kc": "choice(5, 10, 15, 20)",
          "model.d": "choice(16, 32, 64, 128, 256)", "model.optimizer.lr": "tag(log, interval(1e-4, 1e-2))"}


def test_search_space_from_override_grammar():
    space, fixed = search_space({**PARAMS, "graph.ks": "tag(int, interval(5, 20))", "seed": "range(1, 4)"},
                                ["graph.kc=choice(5, 10)", "trainer.max_epochs=3", "model.d=64"])
    assert space["graph.alpha"] == Param("float", low=0.4, high=0.7)
    assert space["model.optimizer.lr"] == Param("float", low=1e-4, high=1e-2, log=True)
    assert space["graph.kc"] == Param("categorical", choices=(5, 10))  # the command line wins
    assert space["graph.ks"] == Param("int", low=5, high=20)
    assert space["seed"] == Param("categorical", choices=(1, 2, 3))  # Hydra's range excludes its stop
    assert "model.d" not in space  # a plain value on the command line fixes it
    assert fixed == ["trainer.max_epochs=3", "model.d=64"]


def test_an_empty_interval_is_rejected():
    with pytest.raises(ValueError, match="start must be below its end"):
        search_space({"graph.alpha": "interval(0.7, 0.4)"})


@pytest.mark.parametrize("value, text", [(0.5, "0.5"), (1e-05, "1e-05"), (10, "10"), (True, "true"),
                                         (None, "null"), ("abc", "abc"), ("a b,c", "'a b,c'"), ("it's", "'it\\'s'")])
def test_values_are_written_as_override_text(value, text):
    assert encode_value(value) == text


def _sampler(seed: int = 0):
    return lambda offset: optuna.samplers.TPESampler(seed=seed + offset, n_startup_trials=10)


def test_failed_and_nan_trials_are_marked_failed_and_the_search_goes_on():
    calls = []

    def evaluate(number, overrides):
        calls.append(overrides)
        if number == 1:
            raise RuntimeError("CUDA out of memory")
        if number == 2:
            return float("nan"), {}
        if number == 3:
            return None, {}
        return 0.1 * number, {"output_dir": f"/runs/{number}"}

    space, fixed = search_space(PARAMS, ["trainer.max_epochs=1"])
    study = run_study(open_study(None, "s", "maximize"), space, fixed, evaluate, n_trials=3,
                      sampler_factory=_sampler())
    # a run makes at most the missing number of attempts; failures leave the target unmet ...
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.FAIL]
    # ... and each rerun tops it up, until 3 trials have completed
    for _ in range(3):
        run_study(study, space, fixed, evaluate, n_trials=3, sampler_factory=_sampler())
    states = [t.state for t in study.trials]
    assert states == [TrialState.COMPLETE, TrialState.FAIL, TrialState.FAIL, TrialState.FAIL,
                      TrialState.COMPLETE, TrialState.COMPLETE]
    assert study.trials[1].user_attrs["error"] == "RuntimeError: CUDA out of memory"
    assert "nan" in study.trials[2].user_attrs["error"]
    assert study.best_trial.number == 5 and study.best_trial.user_attrs["output_dir"] == "/runs/5"
    assert all(o[0] == "trainer.max_epochs=1" and len(o) == 5 for o in calls)
    assert study.trials[0].user_attrs["overrides"] == calls[0]


def test_study_resumes_from_sqlite_and_does_not_replay_start_up_points(tmp_path):
    storage = f"sqlite:///{tmp_path / 'sweep' / 'optuna.db'}"
    space, fixed = search_space(PARAMS)
    runs = []

    def evaluate(number, overrides):
        runs.append(number)
        return len(runs) / 10, {}

    run_study(open_study(storage, "s", "maximize"), space, fixed, evaluate, 3, sampler_factory=_sampler())
    run_study(open_study(storage, "s", "maximize"), space, fixed, evaluate, 3, sampler_factory=_sampler())
    assert runs == [0, 1, 2]  # the target was reached: a rerun adds nothing
    study = run_study(open_study(storage, "s", "maximize"), space, fixed, evaluate, 5, sampler_factory=_sampler())
    assert runs == [0, 1, 2, 3, 4]  # numbering continues
    params = [t.params for t in study.trials]
    assert params[3] != params[0] and params[4] != params[1]  # the seed moved on with the study
    # the same seed reproduces the same trials
    again = run_study(open_study(None, "t", "maximize"), space, fixed, lambda n, o: (0.0, {}), 3,
                      sampler_factory=_sampler())
    assert [t.params for t in again.trials] == params[:3]


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
def test_a_trial_of_a_killed_process_is_failed_on_resume(tmp_path):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = open_study(storage, "s", "maximize", heartbeat_s=1, grace_s=1)
    orphan = study.ask()  # a process took this trial and was killed: its heartbeat stops
    study._storage.record_heartbeat(orphan._trial_id)
    time.sleep(2.5)
    study = run_study(open_study(storage, "s", "maximize", heartbeat_s=1, grace_s=1), *search_space(PARAMS),
                      lambda n, o: (1.0, {}), 1, sampler_factory=_sampler())
    assert study.trials[0].state == TrialState.FAIL
    assert study.trials[1].state == TrialState.COMPLETE


def test_parallel_trials_need_a_process_per_job_launcher():
    from hydra_plugins.mllmrec_sweep.optuna_sweeper import OptunaSweeper

    sweeper = OptunaSweeper(sampler={}, direction="maximize", storage=None, study_name="s", n_trials=1,
                            n_jobs=2, heartbeat_s=0, grace_s=0, params=PARAMS)
    sweeper.launcher = SimpleNamespace()  # e.g. Hydra's basic launcher: one job at a time, in-process
    with pytest.raises(ValueError, match="hydra/launcher=gpus"):
        sweeper._n_jobs()
    sweeper.launcher = SimpleNamespace(thread_safe=True, n_slots=lambda: 4)
    assert sweeper._n_jobs() == 2
    sweeper.n_jobs = None
    assert sweeper._n_jobs() == 4  # default: one trial per launcher slot (GPU)


@pytest.mark.slow
def test_optuna_search_on_the_demo_and_its_resumption(tmp_path, encoded_data_dir):
    sweep_dir = tmp_path / "multirun" / "search"
    args = ["-m", "hparams_search=optuna", f"hydra.sweep.dir={sweep_dir}", f"paths.data_dir={encoded_data_dir}",
            *FAST_JOB, *NO_PLOTS, "model.d=choice(16,32)"]  # a sweep on the command line narrows the space
    first = run_train([*args, "hydra.sweeper.n_trials=3"], cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-4000:]
    storage = f"sqlite:///{sweep_dir / 'optuna.db'}"
    study = optuna.load_study(study_name="mllmrec_demo", storage=storage)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 3
    first_params = [t.params for t in study.trials]
    assert set(first_params[0]) == {"graph.alpha", "graph.kc", "model.d", "model.optimizer.lr"}
    for t in study.trials:  # each trial's value is its job's validation Recall@20
        assert 0.4 <= t.params["graph.alpha"] <= 0.7 and t.params["model.d"] in (16, 32)
        job_dir = Path(t.user_attrs["output_dir"])
        summary = __import__("json").loads((job_dir / "metrics.json").read_text())
        assert math.isclose(t.value, summary["valid"]["recall@20"])
    assert (sweep_dir / "optimization_results.yaml").is_file()

    resumed = run_train([*args, "hydra.sweeper.n_trials=4"], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    study = optuna.load_study(study_name="mllmrec_demo", storage=storage)
    assert [t.number for t in study.trials] == [0, 1, 2, 3]
    assert [t.params for t in study.trials[:3]] == first_params
    assert study.trials[3].state == TrialState.COMPLETE


@pytest.mark.slow
def test_parallel_trials_each_lease_their_own_gpu(tmp_path):
    """hparams_search with the gpus launcher: one trial per (fake) GPU at a time, a new trial as soon
    as a GPU is free, never two trials on one GPU."""
    from sweep_helpers import HERE, launcher_records, max_concurrency, overlapping

    sweep_dir = tmp_path / "sweep"
    result = subprocess.run(
        [sys.executable, str(HERE / "tiny_app.py"), "-m", "hydra/sweeper=mllmrec_optuna",
         "hydra/launcher=mllmrec_gpus", "hydra.launcher.gpus=[fake0,fake1]", f"hydra.sweep.dir={sweep_dir}",
         "hydra.sweeper.n_trials=5", f"out={tmp_path / 'out'}", "duration=interval(0.1, 1.0)"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    study = optuna.load_study(study_name="mllmrec", storage=f"sqlite:///{sweep_dir / 'optuna.db'}")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 5
    records = launcher_records(sweep_dir)
    assert sorted(r["job"] for r in records) == [0, 1, 2, 3, 4]  # job number = trial number
    assert max_concurrency([(r["start"], r["end"]) for r in records]) == 2
    for device in ("fake0", "fake1"):
        assert overlapping([(r["start"], r["end"]) for r in records if r["device"] == device]) == []
