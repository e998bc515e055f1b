"""The reasoning stage as one unit of sweep work: run it once per outputs folder, skip it when done.

Two kinds of jobs produce one MLLM's outputs for one dataset (``<dataset>/reasoning/<mllm>/``):
``python reason.py -m dataset=... mllm=...`` (one job per pair) and ``python train.py
reason.auto=true`` (a training job whose outputs are missing). Both go through :func:`run_stage`:

* **One producer per outputs folder.** The folder is the outputs' identity (dataset root + output
  name, i.e. MLLM and backend, + history: :meth:`DatasetLayout.reasoning`), and a file lock beside
  it is held while the stage runs. Of several jobs that need the same outputs, one generates them
  and the others wait on the lock, then find them done: nothing is generated twice.
* **Finished jobs return at once.** After a complete run, ``stage.json`` in the folder records a
  fingerprint of what determines the outputs (the ``reason`` settings that change texts, the
  ``mllm`` and ``dataset`` configs, the processed dataset's manifest) and the sha256 of the run's
  ``manifest.json``. A rerun whose fingerprint matches, whose manifest is unchanged and whose tables
  still have the hashes the manifest lists is skipped before any model is loaded (the reasoning
  run itself would also find every generation cached, but only after starting the engine).
* **Training with missing outputs** (:func:`reasoning_for_training`): with ``reason.auto=true`` the
  stage is run first, configured by ``conf/reason.yaml`` composed through Hydra's compose API and
  given the training job's own ``dataset`` and ``mllm`` nodes and its ``reason`` node's keys. With
  the default ``reason.auto=false`` the datamodule's error ("run reason.py first") stays.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout
from omegaconf import DictConfig, OmegaConf, open_dict

from mllmrec.cache import sha256_file
from mllmrec.errors import ConfigError
from mllmrec.reasoning.outputs import ITEM_TABLE, MANIFEST, USER_TABLE

log = logging.getLogger(__name__)

__all__ = [
    "STAGE_FILE",
    "RESULT_NEUTRAL_REASON_KEYS",
    "outputs_folder",
    "stage_fingerprint",
    "finished_stage",
    "tables_present",
    "run_stage",
    "reason_config_for_training",
    "reason_config_for_run",
    "reasoning_output_name",
    "reasoning_for_training",
]

#: written into the outputs folder after a complete run (see the module docstring)
STAGE_FILE = "stage.json"
#: the two tables the training app reads (as reasoning.outputs.require_outputs checks)
TRAINING_TABLES = (ITEM_TABLE, USER_TABLE)

# Keys under `reason` / `mllm` that say how the work is run, not what comes out: a rerun that
# changes only these is still finished. Anything else errs on the side of running again (which only
# costs a cache lookup per generation).
RESULT_NEUTRAL_REASON_KEYS = (
    "reason.progress", "reason.image_workers", "reason.poll_s", "reason.shard_wait_s", "reason.shard",
    "reason.num_shards", "reason.chunk_size", "reason.auto", "reason.fake.delay_s",
    "reason.openai.concurrency", "reason.openai.timeout_s", "reason.openai.max_retries",
    "reason.openai.probe_timeout_s", "reason.transformers.num_threads",
    "reason.openai.api_key", "reason.openai.base_url", "reason.transformers.batch_size",
    "reason.transformers.cache_dir", "mllm.vllm.tensor_parallel_size", "mllm.vllm.gpu_memory_utilization",
    "mllm.vllm.max_num_seqs", "dataset.root",
)


def _settings(cfg: DictConfig | Mapping[str, Any]):
    from mllmrec.reasoning.settings import ReasonSettings

    return ReasonSettings.from_config(cfg)


def outputs_folder(cfg: DictConfig | Mapping[str, Any]) -> Path:
    """``<dataset root>/reasoning/<output name>[__history-all]``: where this config's outputs go."""
    from mllmrec.data.processed import DatasetLayout

    settings = _settings(cfg)
    return DatasetLayout(settings.dataset.root).reasoning(settings.output_name, settings.history)


def _drop(container: dict, dotted: str) -> None:
    *parents, last = dotted.split(".")
    for key in parents:
        container = container.get(key)
        if not isinstance(container, dict):
            return
    container.pop(last, None)


def stage_fingerprint(cfg: DictConfig | Mapping[str, Any]) -> str:
    """sha256 (16 hex) of what determines the outputs: ``reason``, ``mllm`` and ``dataset`` without
    :data:`RESULT_NEUTRAL_REASON_KEYS`, plus the processed dataset's manifest (its content hash, so a
    re-prepared dataset reruns the stage)."""
    from mllmrec.data.processed import DatasetLayout

    raw = cfg if isinstance(cfg, DictConfig) else OmegaConf.create(dict(cfg))
    container = {key: OmegaConf.to_container(raw[key], resolve=True) for key in ("reason", "mllm", "dataset")}
    for key in RESULT_NEUTRAL_REASON_KEYS:
        _drop(container, key)
    manifest = DatasetLayout(_settings(cfg).dataset.root).manifest
    container["processed_manifest"] = sha256_file(manifest) if manifest.is_file() else None
    text = json.dumps(container, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _why_not_finished(folder: Path, fingerprint: str) -> str | None:
    """None when ``folder`` holds a complete run for ``fingerprint``, else the reason it does not."""
    record_path, manifest_path = folder / STAGE_FILE, folder / MANIFEST
    if not record_path.is_file() or not manifest_path.is_file():
        return "no complete run recorded"
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        return f"unreadable record ({err})"
    if record.get("fingerprint") != fingerprint:
        return f"made for another config (fingerprint {record.get('fingerprint')}, now {fingerprint})"
    if record.get("manifest_sha256") != sha256_file(manifest_path):
        return "manifest.json changed since the recorded run"
    for name, digest in (manifest.get("tables") or {}).items():
        table = folder / name
        if not table.is_file() or sha256_file(table) != digest:
            return f"{name} is missing or differs from the manifest"
    return None


def finished_stage(cfg: DictConfig | Mapping[str, Any]) -> Path | None:
    """The outputs folder when it holds a complete run of this very config, else None (reason logged)."""
    folder = outputs_folder(cfg)
    why = _why_not_finished(folder, stage_fingerprint(cfg))
    if why is not None:
        log.info("reasoning outputs %s: %s; running the stage", folder, why)
        return None
    return folder


def tables_present(folder: Path) -> bool:
    """Whether the tables the training app reads exist (whoever made them, with whatever settings)."""
    return all((folder / name).is_file() for name in TRAINING_TABLES)


def _lock_for(folder: Path, cfg: DictConfig | Mapping[str, Any]) -> FileLock:
    """The lock of one outputs folder. Shards of one run (``reason.num_shards`` > 1) are meant to run
    at once and wait for each other, so each shard has its own lock."""
    settings = _settings(cfg)
    suffix = "" if settings.num_shards == 1 else f"-shard{settings.shard}of{settings.num_shards}"
    folder.mkdir(parents=True, exist_ok=True)
    return FileLock(str(folder / f".stage{suffix}.lock"))


def run_stage(cfg: DictConfig | Mapping[str, Any], is_done: Callable[[DictConfig | Mapping[str, Any]], bool] | None = None,
              skip_finished: bool = True) -> Path:
    """Run the reasoning stage for ``cfg`` (``reason``, ``mllm``, ``dataset``) unless it is done;
    returns the outputs folder.

    Holds the folder's lock throughout: a second job for the same outputs waits, then (its ``is_done``
    now true) returns without generating anything. ``is_done`` defaults to :func:`finished_stage`
    (``skip_finished=false`` always runs; the generation cache still spares finished generations).
    """
    folder = outputs_folder(cfg)  # validates the config before anything waits or loads
    done = is_done if is_done is not None else (lambda c: finished_stage(c) is not None)
    lock = _lock_for(folder, cfg)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.info("another job is producing %s: waiting for it", folder)
        lock.acquire()
    try:
        if skip_finished and done(cfg):
            log.info("skipping: %s already holds these reasoning outputs (skip_finished=false reruns it)",
                     folder)
            return folder
        from mllmrec.cache import atomic_write_json, sha256_file
        from mllmrec.reasoning.pipeline import run_reasoning

        result = run_reasoning(cfg)
        if result.merged:
            log.info("tables and manifest written to %s", result.out_dir)
        else:  # another shard of this run wrote this exact set
            log.info("tables and manifest already up to date in %s", result.out_dir)
        if result.complete:
            atomic_write_json(result.out_dir / STAGE_FILE, {
                "fingerprint": stage_fingerprint(cfg),
                "manifest_sha256": sha256_file(result.out_dir / MANIFEST),
            })
        return result.out_dir
    finally:
        lock.release()


# --------------------------------------------------------------------------- train.py reason.auto
def reason_config_for_training(train_cfg: DictConfig) -> DictConfig:
    """The config ``python reason.py`` would run for this training job's dataset and MLLM.

    ``conf/reason.yaml`` is composed with Hydra's compose API (in the running app's config search
    path, so the same files); its ``dataset`` and ``mllm`` are replaced by the training job's own
    (resolved: every ``dataset.*`` / ``mllm.*`` override applies), and the keys of the training
    job's ``reason`` node (``history``, ``backend``, any ``+reason.<key>=...``) are set on top.
    """
    from hydra import compose
    from hydra.core.global_hydra import GlobalHydra

    if not GlobalHydra.instance().is_initialized():
        raise ConfigError("reason.auto=true composes conf/reason.yaml and needs train.py's Hydra context "
                          "(run it through train.py, or run reason.py first)")
    base = compose(config_name="reason")
    cfg = _reason_config(base.reason, train_cfg)
    with open_dict(cfg):
        cfg.reason.progress = False  # a sweep job's log is no place for progress bars
    return cfg


def _reason_config(base_reason: DictConfig, train_cfg: DictConfig) -> DictConfig:
    """``reason`` = conf/reason.yaml's node with the training config's ``reason`` keys on top;
    ``mllm`` and ``dataset`` = the training config's (resolved)."""
    reason_node = OmegaConf.to_container(train_cfg.get("reason") or {}, resolve=True)
    assert isinstance(reason_node, dict)
    reason_node.pop("auto", None)
    cfg = OmegaConf.create({
        "reason": OmegaConf.to_container(base_reason, resolve=False),
        "mllm": OmegaConf.to_container(train_cfg.mllm, resolve=True),
        "dataset": OmegaConf.to_container(train_cfg.dataset, resolve=True),
    })
    OmegaConf.set_struct(cfg.reason, True)
    try:
        cfg.reason = OmegaConf.merge(cfg.reason, reason_node)
    except Exception as err:  # an unknown key: name it
        raise ConfigError(f"train.py's reason node holds a key conf/reason.yaml does not know: {err}. "
                          "Only reason.py's keys (see conf/reason.yaml) can be set there.") from None
    return cfg


def reason_config_for_run(train_cfg: DictConfig, overrides: Sequence[str], conf_dir: Path) -> DictConfig:
    """The reasoning config of a trained run's MLLM, for describing items it has not seen
    (``recommend.py new_items=``): ``conf_dir/reason.yaml``'s ``reason`` node, the run's own
    ``reason`` keys (history, backend), then ``overrides`` (``reason.<key>=<value>``, e.g.
    ``reason.backend=fake``); the run's ``mllm`` and ``dataset``. No Hydra app is needed."""
    path = conf_dir / "reason.yaml"
    if not path.is_file():
        raise ConfigError(f"{path} not found: describing new items needs the project's conf/ folder "
                          "(set PROJECT_ROOT to the checkout that trained the run)")
    cfg = _reason_config(OmegaConf.load(path).reason, train_cfg)
    for override in overrides:
        key, sep, value = override.partition("=")
        if not sep or not key.startswith("reason."):
            raise ConfigError(f"{override}: expected reason.<key>=<value>")
        if OmegaConf.select(cfg, key, default="<absent>") == "<absent>":
            raise ConfigError(f"{override}: conf/reason.yaml has no key {key!r}")
        OmegaConf.update(cfg, key, _yaml_value(value), merge=False)
    return cfg


def _yaml_value(text: str) -> Any:
    """A command-line value as YAML reads it (``fake``, ``3``, ``true``, ``null``)."""
    import yaml

    return yaml.safe_load(text) if text.strip() else ""


def _needs_reasoning(train_cfg: DictConfig) -> bool:
    mllm = (train_cfg.get("mllm") or {}).get("name", "none")
    fmt = (train_cfg.get("dataset") or {}).get("format", "processed")
    return mllm != "none" and fmt == "processed"


def reasoning_output_name(train_cfg: DictConfig) -> str | None:
    """The reasoning outputs folder name a training config reads: ``mllm.name``, or ``<mllm>-fake``
    with ``reason.backend=fake``; None when it reads none (``mllm=none``, an MMRec-format dataset).
    Nothing is checked or run (``evaluate.py`` / ``recommend.py`` restoring a run)."""
    if not _needs_reasoning(train_cfg):
        return None
    reason = train_cfg.get("reason") or {}
    name = str(train_cfg.mllm.name)
    backend = reason.get("backend") or train_cfg.mllm.get("backend")
    return f"{name}-fake" if backend == "fake" else name


def reasoning_for_training(train_cfg: DictConfig) -> str | None:
    """Make sure the training job's reasoning outputs exist; returns the output name it reads.

    ``reason.auto=true``: missing outputs are produced first, by :func:`run_stage` under the outputs'
    lock (concurrent training jobs of one MLLM: one generates, the others wait). The output name is
    ``mllm.name``, or ``<mllm>-fake`` with ``reason.backend=fake`` (a dry run of the whole sequence:
    the fake backend's outputs never pose as the model's). None when the job reads no reasoning
    outputs (``mllm=none``, an MMRec-format dataset).
    """
    if not _needs_reasoning(train_cfg):
        return None
    if not (train_cfg.get("reason") or {}).get("auto", False):
        return reasoning_output_name(train_cfg)
    name = str(train_cfg.mllm.name)
    cfg = reason_config_for_training(train_cfg)
    settings = _settings(cfg)
    folder = outputs_folder(cfg)
    if not tables_present(folder):  # made by reason.py or an earlier job: never redone behind the user's back
        log.info("reason.auto=true: %s is missing; running the reasoning stage first (%s, backend %s)",
                 folder, name, settings.backend)
        run_stage(cfg, is_done=lambda c: tables_present(outputs_folder(c)))
    return settings.output_name
