"""Loading a run back: overrides of a saved config, the differences that block a checkpoint, where a
run's checkpoints are, and the command line of evaluate.py / recommend.py (no training here)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from mllmrec.errors import ConfigError
from mllmrec.train.cli import parse_cli
from mllmrec.train.restore import apply_overrides, config_changes, load_run_config, resolve_run
from mllmrec.train.run_folder import best_checkpoint, quote_path_overrides, resume_checkpoint, run_dir_of_checkpoint

SAVED = {
    "seed": 999, "ckpt_path": None, "task_name": "train",
    "paths": {"root_dir": "/proj", "data_dir": "/data", "output_dir": "/runs/a"},
    "dataset": {"name": "demo", "root": "${paths.data_dir}/${.name}", "tuned": {"alpha": 0.5, "kc": 10}},
    "graph": {"ks": 10, "alpha": "${dataset.tuned.alpha}", "kc": "${dataset.tuned.kc}", "layers": 1},
    "model": {"_target_": "mllmrec.models.MLLMRec", "d": 64},
    "data": {"batch_size": 2048, "exclude_valid_at_test": False},
    "logger": {"csv": {"save_dir": "${paths.output_dir}"}},
}


def make_run(root: Path, name: str = "run", config: dict | None = None, epochs: tuple[int, ...] = (3,)) -> Path:
    run = root / name
    (run / ".hydra").mkdir(parents=True)
    (run / "checkpoints").mkdir()
    OmegaConf.save(OmegaConf.create(config or SAVED), run / ".hydra" / "config.yaml")
    for epoch in epochs:
        (run / "checkpoints" / f"epoch_{epoch:03d}.ckpt").write_bytes(b"x")
    (run / "checkpoints" / "last.ckpt").write_bytes(b"x")
    return run


def test_overrides_change_keys_of_the_saved_config_with_hydra_types():
    cfg = apply_overrides(OmegaConf.create(SAVED), ["graph.ks=5", "data.exclude_valid_at_test=true",
                                                    "dataset.root='/x=1,y'"])
    assert cfg.graph.ks == 5 and cfg.data.exclude_valid_at_test is True and cfg.dataset.root == "/x=1,y"
    assert OmegaConf.create(SAVED).graph.ks == 10  # the input is not changed


@pytest.mark.parametrize("override, message", [
    ("graph.nope=1", "has no key 'graph.nope'"),
    ("model=bpr", "no config groups to swap"),
    ("graph.ks=5,10", "a sweep"),
    ("+extra=1", "only key=value overrides"),
    ("graph.ks=[", "cannot parse"),
])
def test_bad_overrides_are_errors_naming_the_override(override, message):
    with pytest.raises(ConfigError, match=message):
        apply_overrides(OmegaConf.create(SAVED), [override])


def test_config_changes_lists_resolved_result_relevant_differences_only():
    trained = OmegaConf.create(SAVED)
    now = apply_overrides(trained, ["dataset.tuned.alpha=0.7", "graph.kc=5", "paths.data_dir=/moved",
                                    "paths.output_dir=/runs/b", "ckpt_path=/some/last.ckpt"])
    changes = {c.key: (c.trained, c.now) for c in config_changes(trained, now)}
    # graph.alpha follows dataset.tuned.alpha through its interpolation; paths (and dataset.root, which
    # only moved with paths.data_dir), the logger and ckpt_path cannot change what a checkpoint computes
    assert changes == {"dataset.tuned.alpha": (0.5, 0.7), "graph.alpha": (0.5, 0.7), "graph.kc": (10, 5)}
    assert config_changes(trained, trained.copy()) == []


def test_checkpoint_location_rules(tmp_path):
    run = make_run(tmp_path, epochs=(3,))
    assert best_checkpoint(run) == run / "checkpoints" / "epoch_003.ckpt"
    # metrics.json names the tested checkpoint: it wins over any other epoch file
    (run / "checkpoints" / "epoch_001.ckpt").write_bytes(b"x")
    (run / "metrics.json").write_text(json.dumps({"test_checkpoint": "/elsewhere/checkpoints/epoch_001.ckpt"}))
    assert best_checkpoint(run) == run / "checkpoints" / "epoch_001.ckpt"  # found again after the run moved
    (run / "metrics.json").unlink()
    with pytest.raises(ConfigError, match="several best-validation checkpoints"):
        best_checkpoint(run)
    assert resume_checkpoint(run) == run / "checkpoints" / "last.ckpt"
    assert run_dir_of_checkpoint(run / "checkpoints" / "last.ckpt") == run.resolve()
    with pytest.raises(ConfigError, match="no such checkpoint"):
        resume_checkpoint(run / "nope.ckpt")


def test_resolve_run_from_a_checkpoint_file_or_a_job_folder_named_by_overrides(tmp_path):
    job = make_run(tmp_path / "multirun" / "grid", name="graph.alpha=0.5,graph.kc=5")
    assert resolve_run(job, None) == (job, job / "checkpoints" / "epoch_003.ckpt")
    ckpt = job / "checkpoints" / "last.ckpt"
    assert resolve_run(None, ckpt) == (job.resolve(), ckpt)
    assert resolve_run(None, job) == (job, job / "checkpoints" / "epoch_003.ckpt")
    with pytest.raises(ConfigError, match="run=<run folder>"):
        resolve_run(None, None)
    with pytest.raises(ConfigError, match="no saved config"):
        load_run_config(tmp_path)


def test_loaded_run_config_outputs_into_the_run_folder(tmp_path):
    run = make_run(tmp_path)
    cfg = load_run_config(run, ["graph.ks=3"])
    assert cfg.paths.output_dir == str(run.resolve()) and cfg.graph.ks == 3


def test_path_values_are_quoted_for_hydra_and_nothing_else():
    argv = ["train.py", "ckpt_path=multirun/g/graph.alpha=0.5,graph.kc=5/checkpoints/last.ckpt",
            "graph.alpha=0.4,0.5", "run='already'", "ckpt_path=it's"]
    assert quote_path_overrides(argv) == [
        "train.py", "ckpt_path='multirun/g/graph.alpha=0.5,graph.kc=5/checkpoints/last.ckpt'",
        "graph.alpha=0.4,0.5", "run='already'", 'ckpt_path="it\'s"']


def test_quoted_job_folder_parses_as_one_string_in_hydra():
    from hydra.core.override_parser.overrides_parser import OverridesParser

    path = "multirun/g/graph.alpha=0.5,graph.kc=5/checkpoints/last.ckpt"
    [override] = OverridesParser.create().parse_overrides(quote_path_overrides([f"ckpt_path={path}"]))
    assert not override.is_sweep_override() and override.value() == path


def test_cli_splits_options_from_overrides():
    options, overrides = parse_cli(["run=a=b,c", "k=5", "exclude_valid=false", "graph.ks=3"],
                                   {"run": None, "k": "20", "exclude_valid": True}, "usage")
    assert options == {"run": "a=b,c", "k": "5", "exclude_valid": False} and overrides == ["graph.ks=3"]
    with pytest.raises(ConfigError, match="every argument is key=value"):
        parse_cli(["oops"], {}, "usage")
    with pytest.raises(ConfigError, match="exclude_valid=maybe: expected true or false"):
        parse_cli(["exclude_valid=maybe"], {"exclude_valid": True}, "usage")
