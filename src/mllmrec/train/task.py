"""The training task behind ``train.py``: build everything from the config, fit, test, report."""

from __future__ import annotations

import inspect
import logging
import time
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from mllmrec.cache import atomic_write_json
from mllmrec.errors import ConfigError
from mllmrec.graph.spec import ITEM_GRAPH_CHOICES
from mllmrec.metrics import evaluate_full_ranking
from mllmrec.reasoning.stage import reasoning_for_training
from mllmrec.secrets import redact_container
from mllmrec.train.callbacks import log_results
from mllmrec.train.checkpointing import auto_resume_checkpoint, record_run_fingerprint
from mllmrec.train.checks import build_spec, unread_feature_keys, validate_train_config
from mllmrec.train.extras import quiet_lightning
from mllmrec.train.fingerprint import config_fingerprint
from mllmrec.train.loggers import prepare_wandb_logger
from mllmrec.train.objective import objective  # noqa: F401  (public here; defined torch-free for skipped jobs)
from mllmrec.train.run_folder import resume_checkpoint

log = logging.getLogger(__name__)

METRIC_KEYS = ("recall@10", "recall@20", "ndcg@10", "ndcg@20")

__all__ = ["train", "build_datamodule", "declared_modalities", "model_inputs", "popularity_metrics", "cold_start_metrics",
           "cold_start_summary", "best_validation", "instantiate_group"]

#: the model inputs that carry item content: a model taking none of them ranks cold items from
#: untrained rows (reported as such in metrics.json's cold_start block)
CONTENT_INPUTS = ("item_features",)


def instantiate_group(cfg: DictConfig | None) -> list[Any]:
    """Instantiate every ``_target_`` entry of a callbacks/logger group (empty or None -> [])."""
    if not cfg:
        return []
    return [hydra.utils.instantiate(c) for c in cfg.values() if c is not None and "_target_" in c]


def build_datamodule(cfg: DictConfig, mllm: str | None = None):
    """The datamodule of ``cfg.data``, given the dataset, the mllm's name, the encoder and graph specs,
    ``reason.history`` and the seed from their own groups (each value is written under one key).
    ``mllm``: the reasoning outputs' folder name when it is not ``mllm.name`` (``<mllm>-fake``)."""
    factory = hydra.utils.instantiate(cfg.data, _partial_=True)
    return factory(
        dataset=OmegaConf.to_container(cfg.dataset, resolve=True),
        mllm=mllm or str(cfg.mllm.name),
        encoder=build_spec(cfg.encoder, "encoder"),
        graph=build_spec(cfg.graph, "graph"),
        history=str(cfg.reason.history),
        seed=int(cfg.seed),
    )


def model_inputs(cfg: DictConfig, datamodule) -> dict[str, Any]:
    """The data ``cfg.model``'s constructor asks for, by parameter name, built only when asked for.

    A model (in this package or anywhere importable via ``_target_``) declares what it needs in its
    ``__init__`` signature; the available inputs are ``item_features`` [I, d_t], ``user_features``
    [U, d_t] or None, ``item_graph`` (the refined graph, sparse [I, I]), ``train_interactions``
    (scipy CSR [U, I], training split only), ``n_users``, ``n_items``, ``seed``, ``graph_cache_dir``
    (the folder of the graph caches, for a model's own graphs) and
    ``item_modalities``, ``{name: [I, d_name]}`` for the modalities the model declares
    (:func:`declared_modalities`). A model that takes ``item_graph`` and ``layers`` propagates over
    that graph: its ``layers`` is ``graph.layers`` (L). A model whose YAML has an ``item_graph`` key
    (``own`` | ``refined``) can take the refined graph in place of its own item-item graph:
    ``model.item_graph=refined`` passes the datamodule's ``item_graph`` (the same ``graph.*`` settings
    and cache as MLLMRec), ``own`` passes ``"own"``.
    Inputs a model does not ask for are never built: BPR pays for no encoding and no graph build.
    """
    target = cfg.model._target_
    params = inspect.signature(hydra.utils.get_class(target).__init__).parameters
    providers = {
        "item_modalities": lambda: datamodule.item_modalities(declared_modalities(cfg)),
        "item_features": lambda: datamodule.item_features,
        "user_features": lambda: datamodule.user_features,
        "item_graph": lambda: datamodule.item_graph,
        "train_interactions": lambda: datamodule.data.train,
        "n_users": lambda: datamodule.data.n_users,
        "n_items": lambda: datamodule.data.n_items,
        "seed": lambda: int(cfg.seed),
        "graph_cache_dir": lambda: datamodule.cache_dir / "graphs",
    }
    if "item_graph" in params and "layers" in params:
        if "layers" in cfg.model:
            raise ConfigError(f"model.layers={cfg.model.layers}: {target} propagates over the refined item "
                              "graph; set its depth with graph.layers instead")
        providers["layers"] = lambda: datamodule.graph_spec.layers
    inputs = {name: build() for name, build in providers.items() if name in params and name not in cfg.model}
    if "item_graph" in params and "item_graph" in cfg.model:  # the +GR switch: model.item_graph=own|refined
        choice = cfg.model.item_graph
        if choice not in ITEM_GRAPH_CHOICES:
            raise ConfigError(f"model.item_graph={choice!r}: must be one of {ITEM_GRAPH_CHOICES} (refined = "
                              "MLLMRec's refined graph from graph.*, the +GR variant)")
        # the refined graph is built (or read from its cache) only when asked for
        inputs["item_graph"] = datamodule.item_graph if choice == "refined" else "own"
    return inputs


def declared_modalities(cfg: DictConfig) -> tuple[str, ...]:
    """The item modalities ``cfg.model`` reads: ``model.modalities`` when set, else the class's
    ``modalities`` attribute (empty for a model without ``item_modalities``)."""
    model_class = hydra.utils.get_class(cfg.model._target_)
    if "item_modalities" not in inspect.signature(model_class.__init__).parameters:
        return ()
    names = cfg.model.get("modalities") or getattr(model_class, "modalities", ())
    if not names:
        raise ConfigError(f"{cfg.model._target_} takes item_modalities but declares none: give the class a "
                          "`modalities = (...)` attribute or set model.modalities")
    return tuple(str(n) for n in names)


def popularity_metrics(datamodule, split: str, ks=(10, 20)) -> dict[str, float]:
    """Metrics of ranking every user's items by training popularity (the sanity baseline)."""
    exclude, truth = datamodule.eval_target(split)
    popularity = torch.from_numpy(np.asarray(datamodule.data.train.sum(axis=0)).ravel().astype(np.float32))
    return evaluate_full_ranking(
        lambda users: popularity.expand(len(users), -1), exclude, truth, ks=ks
    )


def cold_start_metrics(score_fn, datamodule, split: str, ks=(10, 20), device=None) -> dict[str, float]:
    """Recall/NDCG@K ranking only the held-out cold items (``data.cold_start_items``,
    :mod:`mllmrec.data.cold_start`): the full-ranking metric code on the cold columns.

    ``score_fn(users)`` gives scores over all items ``[B, I]``; only the cold columns are ranked,
    for the users with a cold item in ``split``.
    """
    cold = datamodule.cold_split
    if cold is None:
        raise RuntimeError("cold_start_metrics needs a datamodule set up with data.cold_start_items > 0")
    exclude, truth = datamodule.eval_target(split)
    columns = torch.from_numpy(cold.cold_items)

    def cold_scores(users: torch.Tensor) -> torch.Tensor:
        scores = score_fn(users)
        return scores.index_select(1, columns.to(scores.device))

    return evaluate_full_ranking(cold_scores, cold.restrict(exclude), cold.restrict(truth), ks=ks, device=device)


def cold_start_summary(cfg: DictConfig, datamodule, model) -> dict[str, Any]:
    """metrics.json's ``cold_start`` block: the split's parameters, the model's and popularity's
    cold-item metrics on valid and test (the model as it is: after testing, the best checkpoint)."""
    cold = datamodule.cold_split
    params = inspect.signature(hydra.utils.get_class(cfg.model._target_).__init__).parameters
    reads_content = any(name in params for name in CONTENT_INPUTS)
    if not reads_content:
        log.warning("cold start: %s reads no item content, so its scores for the %d cold items come from "
                    "embedding rows no training step touched (reported as they are)",
                    cfg.model._target_, len(cold.cold_items))
    model.eval()
    with torch.no_grad():
        model.prepare_eval()
    popularity = torch.from_numpy(np.asarray(datamodule.data.train.sum(axis=0)).ravel().astype(np.float32))
    block: dict[str, Any] = {
        "items": int(len(cold.cold_items)), "share": cold.share, "seed": cold.seed, "moved": cold.moved,
        "protocol": "rank the cold items only", "reads_item_content": reads_content,
    }
    for split in ("valid", "test"):
        block[split] = cold_start_metrics(model.full_scores, datamodule, split, model.ks, device=model.device)
    block["popularity"] = {  # every cold item has training popularity 0: ties, i.e. item-id order
        split: cold_start_metrics(lambda users: popularity.expand(len(users), -1), datamodule, split, model.ks)
        for split in ("valid", "test")
    }
    return block


def best_validation(history: list[dict], metric: str) -> dict:
    """The validation record with the highest ``metric`` (earliest on ties, as checkpointing keeps)."""
    if not history:
        raise RuntimeError("no validation epoch completed: nothing to select")
    key = metric.split("/", 1)[-1]
    return max(history, key=lambda rec: (rec[key], -rec["epoch"]))


def model_name(cfg: DictConfig) -> str:
    """What a run's results are called: ``cfg.variant`` (experiment configs set it: BPR, w/o RS, ...)
    when it was changed from the default, else the model class's name."""
    variant = cfg.get("variant")
    model_class = str(cfg.model._target_).rsplit(".", 1)[-1]
    if variant and not (variant == "MLLMRec" and model_class != "MLLMRec"):
        return str(variant)
    return model_class


def _print_table(rows: dict[str, dict[str, float]], title: str = "MLLMRec") -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{title} results (MMRec full-ranking protocol)")
    table.add_column("")
    for key in METRIC_KEYS:
        table.add_column(key, justify="right")
    for name, metrics in rows.items():
        table.add_row(name, *(f"{metrics[k]:.4f}" if k in metrics else "-" for k in METRIC_KEYS))
    Console().print(table)


def train(cfg: DictConfig) -> tuple[dict, dict]:
    """Fit and evaluate one configuration.

    Returns ``(summary, objects)``: ``summary`` is what ``metrics.json`` holds; ``objects`` the
    datamodule, model and trainer (for tests and notebooks).
    """
    validate_train_config(cfg)
    quiet_lightning()  # its tips and deprecations, and its own console handlers (every line twice)
    # a checkpoint file or a run/job folder (its last.ckpt), checked before any data is loaded
    resume_from = str(resume_checkpoint(cfg.ckpt_path)) if cfg.get("ckpt_path") else None
    L.seed_everything(cfg.seed, workers=True)
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)

    # reason.auto=true produces missing reasoning outputs first (one job per outputs folder makes them)
    # (reason.backend=fake: the datamodule reads the fake outputs' own folder, <mllm>-fake)
    reads = reasoning_for_training(cfg)
    log.info("Instantiating datamodule <%s>", cfg.data._target_)
    datamodule = build_datamodule(cfg, mllm=reads)
    for key in unread_feature_keys(cfg):  # e.g. FREEDOM on MMRec's own folder: no image_text_feat.npy needed
        if datamodule.dataset_cfg.get(key):
            log.info("dataset.%s=%s is not read by %s: not loaded", key, datamodule.dataset_cfg[key], cfg.model._target_)
            datamodule.dataset_cfg[key] = None
    datamodule.check_inputs()  # files and reasoning outputs, before any heavy work
    datamodule.check_modalities(declared_modalities(cfg), cfg.model._target_.rsplit(".", 1)[-1])
    started = time.perf_counter()
    datamodule.setup("fit")
    inputs = model_inputs(cfg, datamodule)  # encodes / builds only what the model reads
    log.info("data and model inputs (%s) ready in %.1fs", ", ".join(inputs) or "none",
             time.perf_counter() - started)

    log.info("Instantiating model <%s>", cfg.model._target_)
    model = hydra.utils.instantiate(cfg.model, **inputs)
    callbacks = instantiate_group(cfg.get("callbacks"))
    prepare_wandb_logger(cfg)  # offline unless W&B can be reached; group/name from the sweep
    loggers = instantiate_group(cfg.get("logger"))
    trainer: L.Trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    if loggers:
        hparams = redact_container(OmegaConf.to_container(cfg, resolve=True))  # no API keys in logger configs
        for lg in loggers:
            lg.log_hyperparams(hparams)

    # --- resume (issue 18): a killed run of this very config continues from its last.ckpt
    fingerprint = config_fingerprint(cfg)
    ckpt_path = resume_from
    if ckpt_path is None and cfg.get("auto_resume", True):
        ckpt_path = auto_resume_checkpoint(output_dir, fingerprint)
        if ckpt_path is not None:
            log.warning("resuming the unfinished run in %s from %s", output_dir, ckpt_path)
    if trainer.is_global_zero:
        record_run_fingerprint(output_dir / "checkpoints", fingerprint)
    # ---
    trainer.fit(model=model, datamodule=datamodule, ckpt_path=ckpt_path)
    history = list(model.history)  # testing the best checkpoint reloads an older history
    summary: dict[str, Any] = {"best_epoch": None, "valid": {}, "test": {}}
    if history:
        best = best_validation(history, cfg.optimized_metric)
        summary["best_epoch"] = int(best["epoch"])
        summary["valid"] = {k: float(best[k]) for k in best if k != "epoch"}
    if cfg.get("test"):
        ckpt = None
        checkpointer = getattr(trainer, "checkpoint_callback", None)
        if checkpointer is not None and getattr(checkpointer, "best_model_path", ""):
            ckpt = checkpointer.best_model_path
        trainer.test(model=model, datamodule=datamodule, ckpt_path=ckpt, verbose=False)
        # the float64 values the metric computed (Lightning's returned dict holds float32 copies)
        summary["test"] = dict(model.eval_results["test"])
        summary["test_checkpoint"] = ckpt
    summary["validation"] = datamodule.validation_summary()  # all users, or the data.valid_users sample
    summary["epochs_run"] = int(trainer.current_epoch)
    summary["history"] = history
    rows = {"valid (best epoch)": summary["valid"], "test": summary["test"]}
    if datamodule.cold_split is not None and cfg.get("test"):
        summary["cold_start"] = cold_start_summary(cfg, datamodule, model)
        rows["cold-start test"] = summary["cold_start"]["test"]
        rows["cold-start popularity test"] = summary["cold_start"]["popularity"]["test"]
    if cfg.get("compare_popularity"):
        summary["popularity"] = {
            "valid": popularity_metrics(datamodule, "valid", model.ks),
            "test": popularity_metrics(datamodule, "test", model.ks),
        }
        rows["popularity valid"] = summary["popularity"]["valid"]
        rows["popularity test"] = summary["popularity"]["test"]
    summary["config_fingerprint"] = fingerprint  # lets a rerun of the sweep skip this job
    if trainer.is_global_zero:  # under DDP every rank gets here with the same results; one writes them
        atomic_write_json(output_dir / "metrics.json", summary)
        log_results(loggers, rows)
        _print_table(rows, model_name(cfg))
        log.info("metrics written to %s", output_dir / "metrics.json")
    return summary, {"datamodule": datamodule, "model": model, "trainer": trainer}
