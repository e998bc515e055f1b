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

from mllmrec.sweep.lease import DeviceLease, resolve_gpus, visible_gpus  # noqa: E402

from sweep_helpers import (  # noqa: E402
    HERE,
    die_holding_lease,
    hold_lease,
    hold_many,
    launcher_records,
    max_concurrency,
    overlapping,
    stream_small_jobs,
)


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
    for intervals in _intervals_by_device(records).values():
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


# ---------------------------------------------------------------- leases of several devices at once
def _intervals_per_device(records: list[dict]) -> dict[str, list[tuple[float, float]]]:
    """Device -> the (start, end) intervals of every job that held it (jobs may hold several)."""
    by_device: dict[str, list[tuple[float, float]]] = {}
    for r in records:
        for device in r["devices"]:
            by_device.setdefault(device, []).append((r["start"], r["end"]))
    return by_device


def _read_log(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_mixed_job_sizes_in_processes_never_share_a_device(tmp_path):
    """Jobs of 1, 2, 3 and 4 GPUs with uneven durations, each in its own process, on 4 simulated
    GPUs: every job runs, on as many distinct GPUs as it asked for, and no GPU is ever held by two
    jobs at once (checked on a log of intervals the processes share)."""
    ctx = mp.get_context("spawn")
    devices = ["g0", "g1", "g2", "g3"]
    jobs = [("a", 1, 0.6), ("b", 2, 0.3), ("c", 1, 0.1), ("d", 3, 0.4), ("e", 1, 0.05), ("f", 2, 0.5),
            ("g", 1, 0.2), ("h", 4, 0.1), ("i", 2, 0.05), ("j", 1, 0.3)]
    log_path = tmp_path / "intervals.jsonl"
    procs = [ctx.Process(target=hold_many, args=(devices, str(tmp_path / "locks"), name, n, d, str(log_path)))
             for name, n, d in jobs]
    for p in procs:
        p.start()
    for p in procs:
        p.join(180)
        assert p.exitcode == 0
    records = {r["job"]: r for r in _read_log(log_path)}
    assert set(records) == {name for name, _, _ in jobs}  # every job ran
    for name, n, _ in jobs:
        held = records[name]["devices"]
        assert len(held) == n and len(set(held)) == n and set(held) <= set(devices), (name, held)
    for device, intervals in _intervals_per_device(list(records.values())).items():
        assert overlapping(intervals) == [], f"{device} held by two jobs at once"


def test_a_big_job_is_not_starved_by_a_stream_of_small_ones(tmp_path):
    """4 simulated GPUs kept busy by 6 threads that run 1-GPU jobs back to back (each asks again at
    once): a 2-GPU job that asks meanwhile gets its pair soon. Small jobs that ask after it wait
    behind it, so the number of small jobs that start between its request and its start is bounded
    by the waiters already queued (6), not by how long the stream goes on."""
    lease = DeviceLease(["g0", "g1", "g2", "g3"], tmp_path / "locks", poll_s=0.005)
    stop = threading.Event()
    records: list[dict] = []
    guard = threading.Lock()

    def run(job: str, count: int, duration: float) -> None:
        asked = time.monotonic()
        with lease.acquire_many(count, timeout=30) as held:
            start = time.monotonic()
            time.sleep(duration)
            end = time.monotonic()
        with guard:
            records.append({"job": job, "devices": held, "asked": asked, "start": start, "end": end})

    def stream(k: int) -> None:
        n = 0
        while not stop.is_set():
            run(f"small{k}.{n}", 1, 0.02 + 0.01 * (k % 3))
            n += 1

    streams = [threading.Thread(target=stream, args=(k,)) for k in range(6)]
    for t in streams:
        t.start()
    time.sleep(0.3)  # the stream is in full flow
    big = threading.Thread(target=run, args=("big", 2, 0.1))
    big.start()
    big.join(30)
    time.sleep(0.3)  # the stream goes on after the big job
    stop.set()
    for t in streams:
        t.join(30)
    by_job = {r["job"]: r for r in records}
    assert "big" in by_job, "the 2-GPU job never got its GPUs"
    b = by_job["big"]
    assert len(set(b["devices"])) == 2
    # (10 ms of slack: a thread switch between noting the time and taking a ticket may reorder two
    # requests made at the same moment)
    overtaking = [r for r in records
                  if r["job"] != "big" and b["asked"] + 0.01 < r["asked"] and r["start"] < b["start"]]
    assert overtaking == [], f"{len(overtaking)} small jobs that asked later started first"
    jumped = [r for r in records if r["job"] != "big" and b["asked"] < r["start"] < b["start"]]
    assert len(jumped) <= 6, f"{len(jumped)} small jobs started while the big one waited"
    assert sum(r["start"] > b["end"] for r in records) > 6  # the stream really went on afterwards
    for device, intervals in _intervals_per_device(records).items():
        assert overlapping(intervals) == [], f"{device} held twice at once"


def test_a_big_job_is_not_starved_across_processes(tmp_path):
    """The same across processes (the gate is a lock file): 4 processes stream 1-GPU jobs on 4
    simulated GPUs, so a GPU is never idle for long; a 2-GPU job in a fifth process still gets two
    GPUs together, and while it holds them the stream keeps to the other two."""
    ctx = mp.get_context("spawn")
    devices, locks = ["g0", "g1", "g2", "g3"], str(tmp_path / "locks")
    log_path, stop_file = tmp_path / "intervals.jsonl", tmp_path / "stop"
    streams = [ctx.Process(target=stream_small_jobs, args=(devices, locks, f"s{k}", str(stop_file), 0.05, str(log_path)))
               for k in range(4)]
    for p in streams:
        p.start()
    deadline = time.time() + 60
    while (not log_path.exists() or len(_read_log(log_path)) < 20) and time.time() < deadline:
        time.sleep(0.05)  # wait until the stream flows (process start-up takes a while)
    big = ctx.Process(target=hold_many, args=(devices, locks, "big", 2, 0.3, str(log_path)))
    big.start()
    big.join(60)
    time.sleep(0.3)
    stop_file.touch()
    for p in streams:
        p.join(60)
    assert big.exitcode == 0, "the 2-GPU job did not get two GPUs within 120 s"
    records = _read_log(log_path)
    b = next(r for r in records if r["job"] == "big")
    assert b["start"] - b["asked"] < 10
    # the gate is an OS lock, not a queue: small jobs may pass the big one only while it competes
    # for the gate; once it holds the gate, no freed GPU goes elsewhere. Without the gate it would
    # have to find two GPUs free at the same moment, which a busy stream rarely leaves.
    jumped = [r for r in records if r["job"] != "big" and b["asked"] < r["start"] < b["start"]]
    assert len(jumped) <= 40, f"{len(jumped)} small jobs started while the big one waited"
    during = [r for r in records if r["job"] != "big" and r["start"] < b["end"] and r["end"] > b["start"]]
    assert during, "the stream stopped while the big job ran: not a test of starvation"
    assert all(not set(r["devices"]) & set(b["devices"]) for r in during)
    for device, intervals in _intervals_per_device(records).items():
        assert overlapping(intervals) == [], f"{device} held twice at once"


def test_asking_for_more_devices_than_leased_is_an_error_not_a_wait(tmp_path):
    lease = DeviceLease(["g0", "g1"], tmp_path / "locks")
    with pytest.raises(ValueError, match="asks for 3 device"):
        with lease.acquire_many(3, timeout=1):
            pass


@pytest.mark.slow
def test_gpus_launcher_leases_each_job_its_gpus_per_job(tmp_path):
    """Jobs asking for 1, 2 or 3 GPUs (the app's gpus_per_job key, resolved per job by the launcher's
    default interpolation) on 4 simulated GPUs: each job's process sees exactly as many distinct GPU
    ids in CUDA_VISIBLE_DEVICES, and no GPU runs two jobs at once; a job asking for more GPUs than
    the launcher has fails alone, with the reason in the end report."""
    result = _tiny_sweep(tmp_path, "hydra.launcher.gpus=[g0,g1,g2,g3]", "duration=0.1,0.7,0.3",
                         "gpus_per_job=1,2,3,5")
    assert result.returncode != 0  # the gpus_per_job=5 jobs
    jobs = [json.loads(p.read_text()) for p in (tmp_path / "out").glob("job-*.json")]
    assert sorted((j["gpus_per_job"], j["duration"]) for j in jobs) == sorted(
        (n, d) for n in (1, 2, 3) for d in (0.1, 0.7, 0.3))
    for j in jobs:
        ids = j["device"].split(",")
        assert len(set(ids)) == j["gpus_per_job"] and set(ids) <= {"g0", "g1", "g2", "g3"}, j
        j["devices"] = ids
    for device, intervals in _intervals_per_device(jobs).items():
        assert overlapping(intervals) == [], f"two jobs on {device} at once"
    failures = json.loads((tmp_path / "sweep" / "failures.json").read_text())
    assert len(failures) == 3 and all("needs 5 GPUs together" in f["message"] for f in failures)
    assert "3 of 12 sweep job(s) failed" in result.stdout + result.stderr
