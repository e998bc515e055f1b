"""GPU leases and the gpus launcher: never two holders of one device at once, whatever the durations."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from sweep_helpers import HERE, die_holding_lease, hold_lease, launcher_records, max_concurrency, overlapping  # noqa: E402

from mllmrec.sweep.lease import DeviceLease, resolve_gpus, visible_gpus  # noqa: E402


def _intervals_by_device(records: list[dict]) -> dict[str, list[tuple[float, float]]]:
    by_device: dict[str, list[tuple[float, float]]] = {}
    for r in records:
        by_device.setdefault(r["device"], []).append((r["start"], r["end"]))
    return by_device


def test_threads_with_uneven_durations_never_share_a_device(tmp_path):
    lease = DeviceLease(["fake-a", "fake-b", "fake-c"], tmp_path / "locks", poll_s=0.01)
    durations = [0.30, 0.02, 0.15, 0.01, 0.25, 0.05, 0.20, 0.02, 0.10, 0.03, 0.12, 0.01]
    records: list[dict] = []
    guard = threading.Lock()

    def job(duration: float) -> None:
        with lease.acquire(timeout=30) as device:
            start = time.monotonic()
            time.sleep(duration)
            end = time.monotonic()
        with guard:
            records.append({"device": device, "start": start, "end": end})

    threads = [threading.Thread(target=job, args=(d,)) for d in durations]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(records) == len(durations)
    by_device = _intervals_by_device(records)
    assert set(by_device) == {"fake-a", "fake-b", "fake-c"}  # all devices used
    for device, intervals in by_device.items():
        assert overlapping(intervals) == [], f"{device} held twice at once"
    # 12 jobs on 3 devices: the devices were really used in parallel
    assert max_concurrency([(r["start"], r["end"]) for r in records]) == 3


def test_processes_share_devices_through_the_lock_files(tmp_path):
    ctx = mp.get_context("spawn")
    durations = [0.8, 0.1, 0.5, 0.2, 0.3, 0.1]
    outs = [tmp_path / f"r{i}.json" for i in range(len(durations))]
    procs = [ctx.Process(target=hold_lease, args=(["g0", "g1"], str(tmp_path / "locks"), d, str(o)))
             for d, o in zip(durations, outs)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    records = [json.loads(o.read_text()) for o in outs]
    by_device = _intervals_by_device(records)
    assert set(by_device) <= {"g0", "g1"}
    for device, intervals in by_device.items():
        assert overlapping(intervals) == [], f"{device} held by two processes at once"


def test_a_dead_holder_frees_its_device(tmp_path):
    ctx = mp.get_context("spawn")
    p = ctx.Process(target=die_holding_lease, args=(["only"], str(tmp_path / "locks")))
    p.start()
    p.join(60)
    assert p.exitcode == 0
    with DeviceLease(["only"], tmp_path / "locks").acquire(timeout=5) as device:
        assert device == "only"


def test_acquire_times_out_when_every_device_is_held(tmp_path):
    lease = DeviceLease(["x"], tmp_path / "locks", poll_s=0.01)
    with lease.acquire():
        with pytest.raises(TimeoutError, match="no free device"):
            with lease.acquire(timeout=0.2):
                pass
    with lease.acquire(timeout=1) as device:  # released on exit
        assert device == "x"


def test_duplicate_or_missing_devices_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="unique"):
        DeviceLease(["0", "0"], tmp_path)
    with pytest.raises(ValueError, match="at least one"):
        DeviceLease([], tmp_path)


@pytest.mark.parametrize(
    "env, gpus, expected",
    [("0,2", None, ["0", "2"]), ("", None, []), ("-1", None, []), ("3,5", 1, ["3"]), ("3,5", 0, []),
     ("GPU-aa,GPU-bb", "auto", ["GPU-aa", "GPU-bb"]), ("0", ["a", "b"], ["a", "b"]), ("0", "4,7", ["4", "7"])],
)
def test_gpu_selection(monkeypatch, env, gpus, expected):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", env)
    assert resolve_gpus(gpus) == expected


def test_asking_for_more_gpus_than_visible_is_an_error(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    assert visible_gpus() == ["0", "1"]
    with pytest.raises(ValueError, match="only 2 GPU"):
        resolve_gpus(3)


def _tiny_sweep(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "CUDA_VISIBLE_DEVICES")}
    return subprocess.run(
        [sys.executable, str(HERE / "tiny_app.py"), "-m", "hydra/launcher=mllmrec_gpus",
         f"hydra.sweep.dir={tmp_path / 'sweep'}", f"out={tmp_path / 'out'}", *args],
        cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env,
    )


@pytest.mark.slow
def test_gpus_launcher_gives_each_job_its_own_gpu(tmp_path):
    """Six jobs of uneven length on two fake GPUs: each job's process sees one GPU id in
    CUDA_VISIBLE_DEVICES, and no GPU ever runs two jobs at once."""
    durations = [1.5, 0.1, 0.8, 0.2, 0.1, 0.6]
    result = _tiny_sweep(tmp_path, "hydra.launcher.gpus=[fake0,fake1]",
                         "duration=" + ",".join(map(str, durations)))
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = [json.loads(p.read_text()) for p in (tmp_path / "out").glob("job-*.json")]
    assert sorted(j["duration"] for j in jobs) == sorted(durations)
    by_device = _intervals_by_device(jobs)
    assert set(by_device) == {"fake0", "fake1"}
    for device, intervals in by_device.items():
        assert overlapping(intervals) == [], f"two jobs on {device} at once"
    assert len({j["pid"] for j in jobs}) == len(durations)  # a fresh process per job
    # the launcher's own record agrees: two at a time, leases never overlapping
    records = launcher_records(tmp_path / "sweep")
    assert {r["status"] for r in records} == {"COMPLETED"}
    assert max_concurrency([(r["start"], r["end"]) for r in records]) == 2
    for device, intervals in _intervals_by_device(records).items():
        assert overlapping(intervals) == []


@pytest.mark.slow
def test_failing_and_killed_jobs_do_not_stop_the_sweep(tmp_path):
    """One job raises, one is SIGKILLed: the other jobs finish, and the end report names both
    failures with their overrides (stderr + failures.json); the command exits non-zero."""
    result = _tiny_sweep(tmp_path, "hydra.launcher.gpus=0", "hydra.launcher.cpu_workers=2",
                         "duration=0.1,0.3", "fail=false,true", "kill=false,true")
    assert result.returncode != 0
    jobs = [json.loads(p.read_text()) for p in (tmp_path / "out").glob("job-*.json")]
    # fail=false,kill=false ran for both durations; the two kill=true jobs and fail=true jobs did not
    assert sorted(j["duration"] for j in jobs) == [0.1, 0.3]
    assert all(j["device"] == "" for j in jobs)  # CPU jobs: no GPU visible
    assert {j["threads"] for j in jobs} == {str(max(1, (os.cpu_count() or 1) // 2))}
    failures = json.loads((tmp_path / "sweep" / "failures.json").read_text())
    assert len(failures) == 6
    kinds = {(f["error_type"], " ".join(o for o in f["overrides"] if not o.startswith("out="))) for f in failures}
    assert ("RuntimeError", "duration=0.3 fail=True kill=False") in kinds
    assert ("ProcessDied", "duration=0.1 fail=False kill=True") in kinds
    assert any("SIGKILL" in f["message"] for f in failures)
    output = result.stdout + result.stderr
    assert "6 of 8 sweep job(s) failed" in output
    assert "duration=0.3 fail=True kill=False]: RuntimeError: tiny job with duration=0.3 was asked to fail" in output
