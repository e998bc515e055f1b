"""Helpers of the sweep tests (imported by name: each test module puts this folder on sys.path).

The demo data folder is the session's ``data_dir`` (tests/conftest.py); :func:`encode_demo` builds and
encodes the small demo there once, in-process, so that every sweep job only loads caches.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent

sys.path.insert(0, str(ROOT / "tests"))
from train_helpers import SMALL_DEMO, compose_config  # noqa: E402  (the training tests' helpers)

# one epoch, no popularity baseline, no progress bar, no logger: the cheapest real training job
FAST_JOB = [*SMALL_DEMO, "trainer.max_epochs=1", "compare_popularity=false", "callbacks.progress_bar=null",
            "logger=none"]
# for tests that do not look at the figures (t-SNE and graph statistics cost seconds per job)
NO_PLOTS = ["callbacks.user_tsne=null", "callbacks.graph_statistics=null"]


def run_train(args: list[str], cwd: Path, timeout: int = 900, **env: str) -> subprocess.CompletedProcess:
    """``python train.py <args>`` in ``cwd`` (its multirun/ and logs/ go there), offline."""
    full_env = {**os.environ, "PROJECT_ROOT": str(cwd), "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1",
                "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **env}
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env=full_env)


def encode_demo(data_dir: Path) -> Path:
    """Generate + encode the small demo into ``data_dir`` (a no-op when its caches exist)."""
    from hydra.core.global_hydra import GlobalHydra

    from mllmrec.train.task import build_datamodule

    try:
        cfg = compose_config("train", [f"paths.data_dir={data_dir}", *SMALL_DEMO], data_dir / "encode-run")
        datamodule = build_datamodule(cfg)
        datamodule.setup("fit")
        datamodule.user_features, datamodule.item_graph  # encode both and build the graph into the caches
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
    import mllmrec.graph.knn as graph_knn
    from mllmrec.cache import stable_hash

    def fake_encode(texts, spec, desc="encoding"):  # no model download/load in a test child
        with open(counter, "a", encoding="utf-8") as f:
            f.write("embeddings\n")
        time.sleep(0.5)
        rng = np.random.default_rng(len(texts))
        return rng.standard_normal((len(texts), 16)).astype(np.float32)

    real_graph = graph_knn.semantic_knn  # the search every graph build starts with

    def counted_graph(*args, **kwargs):
        with open(counter, "a", encoding="utf-8") as f:
            f.write("graph\n")
        time.sleep(0.5)
        return real_graph(*args, **kwargs)

    encoding.encode_texts = fake_encode
    graph_knn.semantic_knn = counted_graph
    texts = [f"item {i} description" for i in range(20)]
    interactions = sp.random(30, 20, density=0.3, format="csr", random_state=0)
    barrier.wait(timeout=120)
    features = encoding.cached_encode(texts, encoding.EncoderSpec(), Path(cache_dir) / "embeddings", "items")
    barrier.wait(timeout=120)  # both have their features: now race for the graph
    adj = graph.cached_refined_item_graph(torch.from_numpy(features), interactions, 3, 0.2, 2,
                                          Path(cache_dir) / "graphs")
    Path(result).write_text(json.dumps({"features": stable_hash(features), "graph": stable_hash(adj)}),
                            encoding="utf-8")


def compose_train(overrides: list[str], output_dir: Path, **hydra_fields):
    """The task config ``python train.py`` would hand to a job (``hydra`` node removed), with the
    Hydra config registered; ``hydra_fields`` set Hydra values first (``sweep__dir=...`` sets
    ``hydra.sweep.dir``), e.g. to look like a multirun job."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict, read_write

    cfg = compose_config("train", overrides, output_dir)
    with read_write(cfg.hydra), open_dict(cfg.hydra):  # registering it made the hydra node read-only
        for dotted, value in hydra_fields.items():
            node = cfg.hydra
            *parents, last = dotted.split("__")
            for key in parents:
                node = node[key]
            node[last] = value
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def read_wandb_records(path: Path) -> list:
    """The protobuf records of a ``run-*.wandb`` file (LevelDB log format behind a 7-byte W&B header);
    wandb >= 0.19 no longer ships a Python reader for its own files."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", "not a W&B transaction log"
    block, pos, pending, records = 32768, 7, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # the rest of a block too short for a header is padding
            pos += block - pos % block
            continue
        length = int.from_bytes(data[pos + 4 : pos + 6], "little")
        kind = data[pos + 6]
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 1:  # FULL
            payload = chunk
        elif kind == 2:  # FIRST
            pending = chunk
            continue
        elif kind == 3:  # MIDDLE
            pending += chunk
            continue
        elif kind == 4:  # LAST
            payload = pending + chunk
        else:
            continue
        record = pb.Record()
        record.ParseFromString(payload)
        records.append(record)
    return records


# ---------------------------------------------------------------- a fake sweep folder for report tests
FAKE_DATASETS = ("baby", "sports")
FAKE_SEEDS = (1, 2, 3)
# validation prefers (0.7, 10); test would prefer (0.5, 5): the report must select on validation
_VALID_BONUS = {(0.5, 5): 0.00, (0.5, 10): 0.01, (0.7, 5): 0.02, (0.7, 10): 0.03}
_TEST_BONUS = {(0.5, 5): 0.05, (0.5, 10): 0.01, (0.7, 5): 0.02, (0.7, 10): 0.03}


def fake_scores(dataset: str, variant: str, mllm: str, alpha: float, kc: int, d: int, seed: int) -> dict:
    """Deterministic valid/test metrics of a fake job (seed-dependent, variant-dependent noise)."""
    base = {"baby": 0.10, "sports": 0.08}[dataset]
    shift = (-0.03 if variant == "w/o RS" else 0.0) + (0.005 if mllm == "qwen25vl" else 0.0)
    shift += {32: -0.01, 64: 0.0, 128: -0.005}[d]
    noise = 0.002 * seed * (2 if variant == "w/o RS" else 1) + 0.0007 * (seed % 2)
    out = {}
    for split, bonus in (("valid", _VALID_BONUS), ("test", _TEST_BONUS)):
        r20 = base + bonus[(alpha, kc)] + shift + noise
        out[split] = {"recall@20": r20, "recall@10": 0.6 * r20, "ndcg@20": 0.45 * r20, "ndcg@10": 0.4 * r20}
    return out


def fake_jobs() -> list[dict]:
    """The configurations of the fake sweep: a 2x2 alpha x K_c grid per dataset, plus an ablation
    variant, a second MLLM and two more values of d at (0.7, 10); three seeds each."""
    jobs = []
    for dataset in FAKE_DATASETS:
        for seed in FAKE_SEEDS:
            for alpha, kc in _VALID_BONUS:
                jobs.append(dict(dataset=dataset, variant="MLLMRec", mllm="gemma3_27b", alpha=alpha, kc=kc, d=64, seed=seed))
            jobs.append(dict(dataset=dataset, variant="w/o RS", mllm="gemma3_27b", alpha=0.7, kc=10, d=64, seed=seed))
            jobs.append(dict(dataset=dataset, variant="MLLMRec", mllm="qwen25vl", alpha=0.7, kc=10, d=64, seed=seed))
            for d in (32, 128):
                jobs.append(dict(dataset=dataset, variant="MLLMRec", mllm="gemma3_27b", alpha=0.7, kc=10, d=d, seed=seed))
    return jobs


def write_fake_sweep(root: Path, jobs: list[dict] | None = None, failed: bool = True) -> Path:
    """A sweep folder as `python train.py -m` leaves it: per job ``.hydra/config.yaml`` (with
    interpolations, like Hydra saves it), ``.hydra/overrides.yaml`` and ``metrics.json``; plus a job
    that failed (``error.json``, no metrics)."""
    from omegaconf import OmegaConf

    root.mkdir(parents=True, exist_ok=True)
    (root / "multirun.yaml").write_text("hydra: {}\n", encoding="utf-8")
    for job in (fake_jobs() if jobs is None else jobs) + ([{"failed": True}] if failed else []):
        j = {**dict(dataset="baby", variant="MLLMRec", mllm="gemma3_27b", alpha=0.5, kc=-1, d=64, seed=1), **job}
        overrides = [f"dataset={j['dataset']}", f"variant={j['variant']}", f"mllm={j['mllm']}",
                     f"graph.alpha={j['alpha']}", f"graph.kc={j['kc']}", f"model.d={j['d']}", f"seed={j['seed']}"]
        folder = root / ",".join(sorted(o.replace("/", "_") for o in overrides))
        (folder / ".hydra").mkdir(parents=True)
        config = {
            "task_name": "train", "variant": j["variant"], "seed": j["seed"],
            "paths": {"output_dir": "${hydra:runtime.output_dir}"},
            "dataset": {"name": j["dataset"], "tuned": {"alpha": j["alpha"], "kc": j["kc"]}},
            "mllm": {"name": j["mllm"]},
            "graph": {"ks": 10, "alpha": "${dataset.tuned.alpha}", "kc": "${dataset.tuned.kc}", "layers": 1},
            "model": {"_target_": "mllmrec.models.MLLMRec", "d": j["d"], "lr": 0.001, "layers": "${graph.layers}"},
            "data": {"graph": "${graph}", "batch_size": 2048},
            "callbacks": {"model_checkpoint": {"dirpath": "${paths.output_dir}/checkpoints"}},
        }
        OmegaConf.save(OmegaConf.create(config), folder / ".hydra" / "config.yaml")
        OmegaConf.save(OmegaConf.create(overrides), folder / ".hydra" / "overrides.yaml")
        if job.get("failed"):
            (folder / "error.json").write_text(json.dumps(
                {"error_type": "ConfigError", "message": "graph.kc=-1: K_c must be >= 0"}), encoding="utf-8")
            continue
        scores = fake_scores(j["dataset"], j["variant"], j["mllm"], j["alpha"], j["kc"], j["d"], j["seed"])
        (folder / "metrics.json").write_text(json.dumps({"best_epoch": 3, **scores}), encoding="utf-8")
    return root


# ------------------------------------------- a fake sweep of models x {without, with} GR (Table 2, Fig. 3)
COMPARISON_DATASETS = ("baby", "sports")
COMPARISON_SEEDS = (1, 2, 3)
# (variant, model.reg_weight) -> (base valid R@20, base test R@20, model class). For FREEDOM validation
# prefers reg 1e-4 and test would prefer 1e-3; LightGCN is the best baseline on validation but FREEDOM is
# on test; the ablation "w/o RS" (MLLMRec's own class) beats every baseline on validation but is no baseline.
COMPARISON_BASE = {
    ("MLLMRec", 0.0): (0.150, 0.160, "mllmrec.models.MLLMRec"),
    ("w/o RS", 0.0): (0.140, 0.150, "mllmrec.models.MLLMRec"),
    ("BPR", 1e-4): (0.050, 0.055, "mllmrec.models.BPR"),
    ("LightGCN", 1e-4): (0.120, 0.080, "mllmrec.models.LightGCN"),
    ("FREEDOM", 1e-4): (0.100, 0.100, "mllmrec.models.FREEDOM"),
    ("FREEDOM", 1e-3): (0.090, 0.130, "mllmrec.models.FREEDOM"),
    ("FREEDOM+GR", 1e-4): (0.110, 0.115, "mllmrec.models.FREEDOM"),
    ("LATTICE", 1e-4): (0.085, 0.090, "mllmrec.models.LATTICE"),
    ("LATTICE+GR", 1e-4): (0.095, 0.098, "mllmrec.models.LATTICE"),
}


def comparison_scores(dataset: str, variant: str, reg: float, seed: int) -> dict:
    """Deterministic valid/test metrics of one job of the comparison sweep (seed- and variant-dependent)."""
    valid, test, _ = COMPARISON_BASE[(variant, reg)]
    shift = 0.01 if dataset == "sports" else 0.0
    noise = 0.003 * seed * (1 + len(variant) % 3) + 0.001 * (seed % 2)
    out = {}
    for split, base in (("valid", valid), ("test", test)):
        r20 = base + shift + noise
        out[split] = {"recall@20": r20, "recall@10": 0.6 * r20, "ndcg@20": 0.45 * r20, "ndcg@10": 0.4 * r20}
    return out


def comparison_mean_test(dataset: str, variant: str, reg: float, metric: str = "recall@20") -> float:
    """The hand-computed mean over seeds of one configuration's test ``metric``."""
    return sum(comparison_scores(dataset, variant, reg, s)["test"][metric] for s in COMPARISON_SEEDS) / len(COMPARISON_SEEDS)


def write_comparison_sweep(root: Path, variants: set[str] | None = None, model_class: bool = True) -> Path:
    """A sweep folder of :data:`COMPARISON_BASE` (all, or only ``variants``) x datasets x seeds; with
    ``model_class`` each config names its ``model._target_`` as train.py's configs do."""
    from omegaconf import OmegaConf

    for dataset in COMPARISON_DATASETS:
        for (variant, reg), (_, _, target) in COMPARISON_BASE.items():
            if variants is not None and variant not in variants:
                continue
            for seed in COMPARISON_SEEDS:
                folder = root / f"{dataset}_{variant.replace('/', '_')}_{reg}_{seed}"
                (folder / ".hydra").mkdir(parents=True)
                model = {"reg_weight": reg, **({"_target_": target} if model_class else {})}
                config = {"variant": variant, "seed": seed, "dataset": {"name": dataset},
                          "mllm": {"name": "none"}, "model": model}
                OmegaConf.save(OmegaConf.create(config), folder / ".hydra" / "config.yaml")
                OmegaConf.save(OmegaConf.create([f"seed={seed}"]), folder / ".hydra" / "overrides.yaml")
                scores = comparison_scores(dataset, variant, reg, seed)
                (folder / "metrics.json").write_text(json.dumps({"best_epoch": 1, **scores}), encoding="utf-8")
    return root


def log_interval(log_path: str, record: dict) -> None:
    """Append one JSON line to a log shared by processes (O_APPEND: lines never interleave)."""
    line = (json.dumps(record) + "\n").encode("utf-8")
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def hold_many(devices: list[str], lock_dir: str, job: str, count: int, duration: float, log_path: str) -> None:
    """Child process of the multi-device lease tests: lease ``count`` devices together, hold them
    ``duration`` s, log ``{job, devices, start, end, asked}`` to the shared log."""
    import time

    from mllmrec.sweep.lease import DeviceLease

    asked = time.time()
    with DeviceLease(devices, lock_dir, poll_s=0.01).acquire_many(count, timeout=120) as held:
        start = time.time()
        time.sleep(duration)
        end = time.time()
    log_interval(log_path, {"job": job, "devices": held, "start": start, "end": end, "asked": asked})


def stream_small_jobs(devices: list[str], lock_dir: str, job: str, stop_file: str, duration: float,
                      log_path: str) -> None:
    """Child process: 1-device jobs back to back, each asking again at once, until ``stop_file`` exists."""
    import time

    from mllmrec.sweep.lease import DeviceLease

    lease = DeviceLease(devices, lock_dir, poll_s=0.01)
    n = 0
    while not os.path.exists(stop_file):
        asked = time.time()
        with lease.acquire_many(1, timeout=120) as held:
            start = time.time()
            time.sleep(duration)
            end = time.time()
        log_interval(log_path, {"job": f"{job}.{n}", "devices": held, "start": start, "end": end, "asked": asked})
        n += 1
