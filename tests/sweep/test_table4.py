"""Table 4 in one go: reasoning as a multirun, training that produces missing reasoning outputs once,
and the whole CPU sequence (reason.py -m, train.py -m, report.py) on the fake backend."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from mllmrec.data import DatasetLayout  # noqa: E402

from sweep_helpers import FAST_JOB, NO_PLOTS, ROOT, launcher_records, overlapping  # noqa: E402

# the tiny demo of the sweep tests, and fake generations that take long enough for jobs to overlap
TINY = ["dataset.n_users=160", "dataset.n_items=90"]
ENV = {"WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
       "TOKENIZERS_PARALLELISM": "false"}


def _env(cwd: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    return {**env, **ENV, "PROJECT_ROOT": str(cwd)}


def _app(script: str, args: list[str], cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / script), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env=_env(cwd))


def generation_rows(folder: Path) -> pd.DataFrame:
    """Every generation ever written for one outputs folder's model: the rows of all shard files of
    its generation cache (a key generated twice appears twice)."""
    # (temp files of a shard being written start with ".", as the store's reader also skips them)
    files = sorted(p for p in (folder / "generations" / "shards").glob("*.parquet") if not p.name.startswith("."))
    return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True) if files else pd.DataFrame()


def _assert_generated_once(folder: Path) -> pd.DataFrame:
    rows = generation_rows(folder)
    assert len(rows) > 0, f"nothing was generated in {folder}"
    duplicated = rows[rows.duplicated("key", keep=False)]
    assert duplicated.empty, f"{len(duplicated)} generations were made twice in {folder}"
    # one generation per image and per user profile the tables hold (demo items that share an image
    # share one generation, so the tables may hold more ok rows than there are keys, never fewer)
    images = pd.read_parquet(folder / "image_descriptions.parquet")
    users = pd.read_parquet(folder / "user_profiles.parquet")
    assert (images["status"] == "ok").all() and (users["status"] == "ok").all()
    assert set(rows["kind"]) == {"image", "profile"}
    assert (rows["kind"] == "profile").sum() == users["profile"].nunique()
    assert (rows["kind"] == "image").sum() == images["image_description"].nunique()
    return rows


# --------------------------------------------------------------------------- train.py reason.auto
@pytest.mark.slow
def test_two_training_jobs_needing_the_same_reasoning_generate_it_once(tmp_path):
    """Two train.py processes with reason.auto=true start together and need gemma3_4b's (fake)
    outputs, which are missing: one runs the reasoning stage, the other waits on the outputs' lock
    and then trains on them; every item and user was generated exactly once in total."""
    data_dir = tmp_path / "data"
    common = [*FAST_JOB, *NO_PLOTS, f"paths.data_dir={data_dir}", "mllm=gemma3_4b", "reason.auto=true",
              "reason.backend=fake", "+reason.fake.delay_s=0.4", "+reason.chunk_size=16"]
    # the demo is generated once up front, so that both processes reach the stage together
    prep = _app("train.py", [*FAST_JOB, *NO_PLOTS, f"paths.data_dir={data_dir}", "mllm=none",
                             f"hydra.run.dir={tmp_path / 'prep'}"], tmp_path)
    assert prep.returncode == 0, prep.stderr[-3000:]
    procs = [subprocess.Popen([sys.executable, str(ROOT / "train.py"), *common, f"seed={seed}",
                               f"hydra.run.dir={tmp_path / f'run{seed}'}"],
                              cwd=tmp_path, env=_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for seed in (1, 2)]
    outputs = [p.communicate(timeout=900)[0] for p in procs]
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out[-3000:]
    folder = DatasetLayout(data_dir / "demo").reasoning("gemma3_4b-fake")
    _assert_generated_once(folder)
    logs = [(tmp_path / f"run{seed}" / "train.log").read_text(encoding="utf-8") for seed in (1, 2)]
    # the two really raced: one of them found the other producing the outputs and waited
    assert sum("another job is producing" in text for text in logs) == 1, logs
    assert all("reasoning/gemma3_4b-fake" in text for text in logs)
    for seed in (1, 2):
        assert json.loads((tmp_path / f"run{seed}" / "metrics.json").read_text())["test"]["recall@20"] >= 0


@pytest.mark.slow
def test_without_reason_auto_missing_outputs_stay_an_error(tmp_path):
    result = _app("train.py", [*FAST_JOB, *NO_PLOTS, f"paths.data_dir={tmp_path / 'data'}", "mllm=gemma3_4b",
                               f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert result.returncode == 2
    assert "Produce them with `python reason.py dataset=demo mllm=gemma3_4b`" in result.stdout + result.stderr
    assert not DatasetLayout(tmp_path / "data" / "demo").reasoning("gemma3_4b").exists()


# --------------------------------------------------------------------------- reason.py -m
@pytest.mark.slow
def test_reason_multirun_leases_tensor_parallel_gpus_skips_finished_and_lists_failures(tmp_path):
    """reason.py -m over 2 MLLMs x tensor_parallel_size 1,2 on 3 simulated GPUs: each job leases as
    many GPUs as its tensor parallel size, no GPU is shared, and the two jobs of one MLLM (same
    outputs) generate once: one waits for the other and then skips. A rerun adding mllm=none skips
    both MLLMs without generating anything, and lists the failing job at the end."""
    data_dir = tmp_path / "data"
    common = ["-m", "hydra/launcher=gpus", "hydra.launcher.gpus=[g0,g1,g2]", "reason.backend=fake",
              "reason.progress=false", "reason.fake.delay_s=0.5", "reason.chunk_size=32", *TINY,
              f"paths.data_dir={data_dir}", f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    first = _app("reason.py", [*common, "mllm=gemma3_4b,gemma3_27b", "mllm.vllm.tensor_parallel_size=1,2"], tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    records = launcher_records(tmp_path / "sweep")
    assert len(records) == 4
    by_device: dict[str, list] = {}
    for r in records:
        tp = int(next(o for o in r["overrides"] if o.startswith("mllm.vllm.tensor_parallel_size=")).split("=")[1])
        assert len(set(r["devices"])) == tp, r
        for d in r["devices"]:
            by_device.setdefault(d, []).append((r["start"], r["end"]))
    assert all(overlapping(v) == [] for v in by_device.values())
    assert (first.stdout + first.stderr).count("already holds these reasoning outputs") == 2
    layout = DatasetLayout(data_dir / "demo")
    before = {name: len(_assert_generated_once(layout.reasoning(name))) for name in ("gemma3_4b-fake", "gemma3_27b-fake")}

    second = _app("reason.py", [*common, "mllm=gemma3_4b,gemma3_27b,none"], tmp_path)
    assert second.returncode != 0  # mllm=none
    text = second.stdout + second.stderr
    assert text.count("already holds these reasoning outputs") == 2
    assert "1 of 3 sweep job(s) failed" in text and "mllm=none means no MLLM" in text
    failures = json.loads((tmp_path / "sweep" / "failures.json").read_text())
    assert len(failures) == 1 and "mllm=none" in failures[0]["overrides"]
    for name, n in before.items():
        assert len(generation_rows(layout.reasoning(name))) == n  # nothing generated again


def test_gpus_per_job_follows_the_mllms_tensor_parallel_size():
    """reason.yaml's gpus_per_job reads mllm.vllm.tensor_parallel_size (1 for models without vLLM
    settings); train.yaml has none, so the launcher's default gives training jobs one GPU."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        tp2 = compose("reason", ["mllm=gemma3_27b", "mllm.vllm.tensor_parallel_size=2"])
        tp1 = compose("reason", ["mllm=qwen25vl"])
        tiny = compose("reason", ["mllm=gemma3_270m"])
        train = compose("train", ["hydra/launcher=gpus"], return_hydra_config=True)
        reason = compose("reason", ["hydra/launcher=gpus", "mllm=gemma3_27b", "mllm.vllm.tensor_parallel_size=2"],
                         return_hydra_config=True)
    assert (tp2.gpus_per_job, tp1.gpus_per_job, tiny.gpus_per_job) == (2, 1, 1)
    assert train.hydra.launcher.gpus_per_job == 1 and reason.hydra.launcher.gpus_per_job == 2
    assert train.reason.auto is False and train.reason.history == "train"


# --------------------------------------------------------------------------- the whole sequence
def _start(script: str, args: list[str], cwd: Path) -> subprocess.Popen:
    """A sweep in its own process group (so a test can kill it with its job processes, like Ctrl-\\)."""
    return subprocess.Popen([sys.executable, str(ROOT / script), *args], cwd=cwd, env=_env(cwd),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def _kill_when(proc: subprocess.Popen, ready, timeout: float = 600) -> bool:
    """SIGKILL the sweep's whole process group as soon as ``ready()``; False if it ended first."""
    import signal
    import time

    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        if ready():
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(60)
            return True
        time.sleep(0.1)
    return False


def _expected_cell(jobs: pd.DataFrame, mllm: str) -> tuple[str, str]:
    """Independent reference for one Table 4 row: the alpha with the best mean validation R@20 over
    seeds, and that alpha's test R@20 as ``mean ± std``."""
    mine = jobs[jobs["mllm"] == mllm]
    valid = mine.groupby("alpha")["valid_r20"].mean()
    alpha = valid.idxmax()
    test = mine[mine["alpha"] == alpha]["test_r20"]
    return f"graph.alpha={alpha:g}", f"{test.mean():.4f} ± {test.std(ddof=1):.4f}"


@pytest.mark.slow
def test_table4_sequence_on_cpu_with_fake_reasoning_killed_and_resumed(tmp_path):
    """docs/sweeps.md's Table 4 sequence on the small demo with the fake backend and two simulated
    GPUs, over 2 MLLMs x 1 dataset: reason.py -m (killed mid-generation, rerun), train.py -m over
    alpha x seed with reason.auto=true (killed after its first finished job, rerun), report.py.
    Nothing is generated twice, finished training jobs are not redone, and each Table 4 row is the
    test score of the alpha chosen on validation."""
    data_dir, reason_sweep, train_sweep = tmp_path / "data", tmp_path / "reason_sweep", tmp_path / "train_sweep"
    mllms = ("gemma3_4b", "qwen25vl")
    layout = DatasetLayout(data_dir / "demo")
    folders = [layout.reasoning(f"{m}-fake") for m in mllms]
    gpus = ["hydra/launcher=gpus", "hydra.launcher.gpus=[g0,g1]"]

    # 1. reasoning, one job per MLLM; killed once generations are being written, then rerun
    reason_args = ["-m", *gpus, f"mllm={','.join(mllms)}", "reason.backend=fake", "reason.progress=false",
                   "reason.fake.delay_s=0.3", "reason.chunk_size=16", *TINY, f"paths.data_dir={data_dir}",
                   f"hydra.sweep.dir={reason_sweep}"]
    killed = _kill_when(_start("reason.py", reason_args, tmp_path),
                        lambda: any(len(generation_rows(f)) >= 16 for f in folders if (f / "generations").exists()))
    assert killed, "the reasoning sweep ended before it could be killed"
    assert not all((f / "manifest.json").exists() for f in folders)
    rerun = _app("reason.py", reason_args, tmp_path)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    generated = {f.name: len(_assert_generated_once(f)) for f in folders}  # the kill cost no duplicate

    # 2. training: 2 MLLMs x 2 alphas x 2 seeds; killed after the first finished job, then rerun
    train_args = ["-m", *gpus, f"mllm={','.join(mllms)}", "reason.auto=true", "reason.backend=fake",
                  "graph.alpha=0.5,0.7", "seed=1,2", *FAST_JOB, *NO_PLOTS, f"paths.data_dir={data_dir}",
                  f"hydra.sweep.dir={train_sweep}"]
    _kill_when(_start("train.py", train_args, tmp_path), lambda: any(train_sweep.glob("*/metrics.json")))
    before = {p: p.stat().st_mtime_ns for p in train_sweep.glob("*/metrics.json")}
    assert before, "no training job finished before the kill"
    rerun = _app("train.py", train_args, tmp_path)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    metrics = sorted(train_sweep.glob("*/metrics.json"))
    assert len(metrics) == 8
    assert all(p.stat().st_mtime_ns == t for p, t in before.items())  # finished jobs were skipped
    assert {f.name: len(generation_rows(f)) for f in folders} == generated  # no generation at all

    # 3. the report: Table 4 rows from the validation-selected alpha of each MLLM
    report = _app("report.py", [str(train_sweep)], tmp_path)
    assert report.returncode == 0, report.stderr[-3000:]
    rows = []
    for path in metrics:
        parts = dict(o.split("=", 1) for o in path.parent.name.split(","))
        summary = json.loads(path.read_text())
        rows.append({"mllm": parts["mllm"], "alpha": float(parts["graph.alpha"]),
                     "valid_r20": summary["valid"]["recall@20"], "test_r20": summary["test"]["recall@20"]})
    jobs = pd.DataFrame(rows)
    table = (train_sweep / "report" / "mllm_table.md").read_text(encoding="utf-8")
    for mllm in mllms:
        line = next(row for row in table.splitlines() if row.startswith(f"| {mllm} "))
        config, r20 = _expected_cell(jobs, mllm)
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[2] == r20 and cells[5] == config and cells[6] == "2", (line, config, r20)


def test_fake_backends_of_two_mllms_answer_differently():
    """A dry run of Table 4 on the fake backend must not give every MLLM the same texts (and so the
    same row); the same model answers the same request the same way."""
    from mllmrec.reasoning.backends.base import Message, Request, Sampling
    from mllmrec.reasoning.backends.fake import FakeBackend

    request = Request((Message("user", "Describe this user's preferences."),), Sampling(max_tokens=40))
    a, b = FakeBackend("google/gemma-3-4b-it@main"), FakeBackend("Qwen/Qwen2.5-VL-7B-Instruct@main")
    assert a.generate([request])[0].text != b.generate([request])[0].text
    assert a.generate([request])[0].text == FakeBackend("google/gemma-3-4b-it@main").generate([request])[0].text
