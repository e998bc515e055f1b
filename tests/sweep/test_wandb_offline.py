"""logger=wandb: offline unless W&B can work, one run per job (grouped by sweep, dataset and MLLM, named by its
overrides) holding the per-epoch metrics, the final table, graph statistics and the figures."""

from __future__ import annotations

import json
import socket
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from mllmrec.train.loggers import wandb_mode  # noqa: E402

from sweep_helpers import SMALL_DEMO, compose_train, encoded_data_dir, read_wandb_records  # noqa: E402, F401


@pytest.fixture
def no_netrc(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc from a `wandb login`
    for var in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_BASE_URL"):
        monkeypatch.delenv(var, raising=False)


def test_without_an_api_key_runs_are_offline(no_netrc):
    mode, reason = wandb_mode()
    assert mode == "offline" and "WANDB_API_KEY" in reason


def test_wandb_mode_set_by_the_user_wins(no_netrc, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert wandb_mode()[0] == "disabled"


def test_a_key_without_a_reachable_server_falls_back_to_offline_quickly(no_netrc, monkeypatch):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{port}")
    started = time.monotonic()
    mode, reason = wandb_mode()
    assert mode == "offline" and "cannot be reached" in reason
    assert time.monotonic() - started < 5  # not wandb.init's ~100 s


def test_a_key_and_a_reachable_server_mean_online(no_netrc, monkeypatch):
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
        monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{server.getsockname()[1]}")
        assert wandb_mode()[0] == "online"


def _finished_records(path: Path, timeout: float = 60.0) -> list:
    """The run's records once W&B's service process has written its exit record (``wandb.finish``
    returns before the service has flushed the run's last records to disk)."""
    deadline = time.monotonic() + timeout
    while True:
        records = read_wandb_records(path)
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.2)


def _values(records, kind: str) -> list[dict]:
    out = []
    for r in records:
        if r.WhichOneof("record_type") == kind:
            items = r.history.item if kind == "history" else r.config.update
            out.append({(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in items})
    return out


@pytest.mark.slow
def test_offline_run_of_a_sweep_job_holds_metrics_table_and_figures(tmp_path, monkeypatch, encoded_data_dir):
    import wandb
    from hydra.types import RunMode

    from mllmrec.train.job import job_context
    from mllmrec.train.task import train

    monkeypatch.setenv("WANDB_MODE", "offline")  # never the network, whatever the machine has
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    out = tmp_path / "sweep" / "graph.alpha=0.6"
    cfg = compose_train(
        [f"paths.data_dir={encoded_data_dir}", *SMALL_DEMO, "trainer.max_epochs=2", "logger=wandb",
         "callbacks.progress_bar=null", "compare_popularity=false", "graph.alpha=0.6", "callbacks=tsne"],
        out, mode=RunMode.MULTIRUN, sweep__dir=str(tmp_path / "sweep"), job__override_dirname="graph.alpha=0.6",
    )
    with job_context(cfg):
        summary, _ = train(cfg)
    assert wandb.run is None  # finished inside the job: the next job gets its own run

    [run_dir] = (out / "wandb").glob("offline-run-*")
    records = _finished_records(next(run_dir.glob("run-*.wandb")))
    [run] = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert run.run_group == "sweep/demo/none" and run.display_name == "graph.alpha=0.6"
    assert {"dataset:demo", "mllm:none"} <= set(run.tags)
    config = {k: v for update in _values(records, "config") for k, v in update.items()}
    assert config["graph"]["alpha"] == 0.6 and config["graph"]["kc"] == 10  # resolved, not ${...}
    history = _values(records, "history")
    epochs = [h["val/recall@20"] for h in history if "val/recall@20" in h]
    assert len(epochs) == 2 and max(epochs) == pytest.approx(summary["valid"]["recall@20"])
    merged = {k: v for h in history for k, v in h.items()}  # media are logged as nested keys
    assert merged["final/test/recall@20"] == pytest.approx(summary["test"]["recall@20"])
    assert merged["results/_type"] == "table-file"
    assert merged["graph/alpha_kept"] + merged["graph/alpha_pruned"] == merged["graph/knn_edges"]
    assert merged["graph/cooccurrence_edges"] > 0
    for key in ("graph/similarity_histogram", "graph/degree_histogram", "plots/user_tsne"):
        assert merged[f"{key}/_type"] == "images/separated"
    assert len(list((run_dir / "files" / "media" / "images").rglob("*.png"))) >= 3
    # the same figures as plain files, for people without W&B
    assert {p.name for p in (out / "plots").glob("*.png")} == {
        "similarity_histogram.png", "degree_histogram.png", "user_tsne.png"}
