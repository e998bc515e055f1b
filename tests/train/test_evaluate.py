"""evaluate_run (``python evaluate.py``): a trained run's checkpoint gives back the run's own numbers, with
no training; other settings than the checkpoint's are an error listing them unless allowed."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run_helpers import train_demo_run  # noqa: E402

from mllmrec.errors import ConfigError  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, data_dir):
    run = tmp_path_factory.mktemp("evaluate") / "run"
    summary = train_demo_run(run, data_dir)
    return run, summary


def test_evaluate_reproduces_metrics_json_exactly(trained_run):
    from mllmrec.train.evaluate import evaluate_run

    run, summary = trained_run
    recorded = json.loads((run / "metrics.json").read_text())
    before = (run / "metrics.json").stat().st_mtime_ns
    result = evaluate_run(run, print_table=False)
    # the same float64 values, not just close: same weights, same evaluation path
    assert result["valid"] == recorded["valid"] == summary["valid"]
    assert result["test"] == recorded["test"]
    assert result["matches_metrics_json"] is True and result["config_changes"] == []
    assert Path(result["checkpoint"]) == Path(recorded["test_checkpoint"])
    assert json.loads((run / "evaluation.json").read_text()) == json.loads(json.dumps(result))
    assert (run / "metrics.json").stat().st_mtime_ns == before  # never rewritten
    assert not list(run.glob("*.tmp*")) and not (run / "lightning_logs").exists()


def test_other_graph_settings_are_an_error_listing_the_keys(trained_run):
    from mllmrec.train.evaluate import evaluate_run

    run, _ = trained_run
    with pytest.raises(ConfigError) as caught:
        evaluate_run(run, overrides=["graph.kc=3", "graph.ks=4"], output="changed.json", print_table=False)
    message = str(caught.value)
    assert "graph.kc: 10 (checkpoint) -> 3 (now)" in message and "graph.ks: 10 (checkpoint) -> 4 (now)" in message
    assert "allow_config_change=true" in message
    assert not (run / "changed.json").exists()


def test_allowed_config_change_evaluates_and_records_it(trained_run):
    from mllmrec.train.evaluate import evaluate_run

    run, summary = trained_run
    result = evaluate_run(run, overrides=["data.exclude_valid_at_test=true"], allow_config_change=True,
                          output="recbole.json", print_table=False)
    assert result["config_changes"] == ["data.exclude_valid_at_test: False (checkpoint) -> True (now)"]
    assert result["valid"] == summary["valid"]  # validation masks training items either way
    assert result["test"] != summary["test"]  # RecBole's protocol also masks validation items at test time
    assert result["matches_metrics_json"] is None
    assert json.loads((run / "recbole.json").read_text())["config_changes"] == result["config_changes"]


def test_a_checkpoint_of_another_run_is_compared_with_that_run_s_config(trained_run, tmp_path):
    import shutil

    from mllmrec.train.evaluate import evaluate_run

    run, _ = trained_run
    other = tmp_path / "other"
    shutil.copytree(run / ".hydra", other / ".hydra")
    config = (other / ".hydra" / "config.yaml").read_text().replace("  d: 64", "  d: 32")
    (other / ".hydra" / "config.yaml").write_text(config)
    ckpt = json.loads((run / "metrics.json").read_text())["test_checkpoint"]
    with pytest.raises(ConfigError, match=r"model\.d: 64 \(checkpoint\) -> 32 \(now\)"):
        evaluate_run(other, ckpt_path=ckpt, print_table=False)


@pytest.mark.parametrize("output", ["metrics.json", "sub/x.json", "x.txt"])
def test_output_must_be_a_new_json_file_of_the_run(trained_run, output):
    from mllmrec.train.evaluate import evaluate_run

    with pytest.raises(ConfigError, match="output="):
        evaluate_run(trained_run[0], output=output, print_table=False)


def test_a_cold_start_run_gets_its_cold_start_block_back_exactly(tmp_path, data_dir):
    from mllmrec.train.evaluate import evaluate_run

    run = tmp_path / "cold"
    summary = train_demo_run(run, data_dir, "data.cold_start_items=0.2")
    recorded = json.loads((run / "metrics.json").read_text())
    assert recorded["cold_start"]["items"] > 0
    result = evaluate_run(run, print_table=False)
    written = json.loads((run / "evaluation.json").read_text())
    # the whole block, float for float: same cold items (seeded), same checkpoint, same metric code
    assert written["cold_start"] == recorded["cold_start"]
    assert result["cold_start"]["test"] == summary["cold_start"]["test"]
    assert result["matches_metrics_json"] is True


def test_a_run_without_cold_items_has_no_cold_start_block(trained_run):
    from mllmrec.train.evaluate import evaluate_run

    assert "cold_start" not in evaluate_run(trained_run[0], output="plain.json", print_table=False)
