"""Helpers of the sweep tests (imported by name: each test module puts this folder on sys.path).

The demo data folder is the session's ``data_dir`` (tests/conftest.py); :func:`encode_demo` builds and
encodes the small demo there once, in-process, so that every sweep job only loads caches.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent


def _root_conftest():
    # tests/conftest.py cannot be imported as "conftest" reliably (other folders have their own)
    spec = importlib.util.spec_from_file_location("_mllmrec_root_conftest", ROOT / "tests" / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SMALL_DEMO: list[str] = list(_root_conftest().SMALL_DEMO)
# one epoch, no popularity baseline, no progress bar, no logger: the cheapest real training job
FAST_JOB = [*SMALL_DEMO, "trainer.max_epochs=1", "compare_popularity=false", "callbacks.progress_bar=null",
            "logger=none"]


def run_train(args: list[str], cwd: Path, timeout: int = 900, **env: str) -> subprocess.CompletedProcess:
    """``python train.py <args>`` in ``cwd`` (its multirun/ and logs/ go there), offline."""
    full_env = {**os.environ, "PROJECT_ROOT": str(cwd), "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1",
                "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **env}
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env=full_env)


def encode_demo(data_dir: Path) -> Path:
    """Generate + encode the small demo into ``data_dir`` (a no-op when its caches exist)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.utils import instantiate

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
            cfg = compose("train", overrides=[f"paths.data_dir={data_dir}", *SMALL_DEMO])
        instantiate(cfg.data).setup("fit")
    finally:
        GlobalHydra.instance().clear()
    return data_dir


@pytest.fixture(scope="session")
def encoded_data_dir(data_dir: Path) -> Path:
    return encode_demo(data_dir)


def launcher_records(sweep_dir: Path) -> list[dict]:
    """The gpus launcher's per-job records (device, start, end, status, overrides)."""
    path = sweep_dir / ".launcher" / "jobs.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def overlapping(intervals: list[tuple[float, float]]) -> list[tuple]:
    """Pairs of intervals that overlap in time (an empty list when none do)."""
    ordered = sorted(intervals)
    return [(a, b) for a, b in zip(ordered, ordered[1:]) if b[0] < a[1]]


def max_concurrency(intervals: list[tuple[float, float]]) -> int:
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    running = best = 0
    for _, step in events:
        running += step
        best = max(best, running)
    return best


def hold_lease(devices: list[str], lock_dir: str, duration: float, out: str) -> None:
    """Child process of the lease test: take a device, hold it ``duration`` s, record the interval."""
    import time

    from mllmrec.sweep.lease import DeviceLease

    with DeviceLease(devices, lock_dir, poll_s=0.02).acquire() as device:
        start = time.time()
        time.sleep(duration)
        end = time.time()
    Path(out).write_text(json.dumps({"device": device, "start": start, "end": end}), encoding="utf-8")


def die_holding_lease(devices: list[str], lock_dir: str) -> None:
    """Child process: take a device and exit without releasing it (as a crashed job would)."""
    from mllmrec.sweep.lease import DeviceLease

    lease = DeviceLease(devices, lock_dir)
    got = lease.try_acquire()
    assert got is not None
    os._exit(0)


def race_for_caches(cache_dir: str, counter: str, result: str, barrier) -> None:
    """Child process of the cache race test: build the item embeddings and the refined graph that
    another process builds at the same moment. Building is counted (one line per build in
    ``counter``) and slowed down so that the two processes really overlap."""
    import time

    import numpy as np
    import scipy.sparse as sp
    import torch

    import mllmrec.encoding as encoding
    import mllmrec.graph as graph
    from mllmrec.cache import stable_hash

    def fake_encode(texts, spec, desc="encoding"):  # no model download/load in a test child
        with open(counter, "a", encoding="utf-8") as f:
            f.write("embeddings\n")
        time.sleep(0.5)
        rng = np.random.default_rng(len(texts))
        return rng.standard_normal((len(texts), 16)).astype(np.float32)

    real_graph = graph.refined_item_graph

    def counted_graph(*args, **kwargs):
        with open(counter, "a", encoding="utf-8") as f:
            f.write("graph\n")
        time.sleep(0.5)
        return real_graph(*args, **kwargs)

    encoding.encode_texts = fake_encode
    graph.refined_item_graph = counted_graph
    texts = [f"item {i} description" for i in range(20)]
    interactions = sp.random(30, 20, density=0.3, format="csr", random_state=0)
    barrier.wait(timeout=120)
    features = encoding.cached_encode(texts, encoding.EncoderSpec(), Path(cache_dir) / "embeddings", "items")
    barrier.wait(timeout=120)  # both have their features: now race for the graph
    adj = graph.cached_refined_item_graph(torch.from_numpy(features), interactions, 3, 0.2, 2,
                                          Path(cache_dir) / "graphs")
    Path(result).write_text(json.dumps({"features": stable_hash(features), "graph": stable_hash(adj)}),
                            encoding="utf-8")
