"""Start-up checks of a composed config: clear messages before anything heavy runs."""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, ListConfig, OmegaConf

from mllmrec.data.errors import did_you_mean
from mllmrec.errors import ConfigError

__all__ = ["ConfigError", "build_spec", "unread_feature_keys", "check_added_keys", "check_constructor_keys", "validate_train_config"]


#: config nodes whose keys are passed on as free-form arguments (``+mllm.vllm.swap_space=4`` is fine
#: there), or that hold whole ``_target_`` entries (``+callbacks.my_callback={_target_: ...}``)
FREE_FORM_NODES = ("callbacks", "logger", "mllm.vllm", "mllm.sampling", "reason", "hydra", "tags", "local")


def _require(cond: bool, key: str, value: object, rule: str) -> None:
    if not cond:
        raise ConfigError(f"{key}={value!r}: {rule}")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def build_spec(node: DictConfig, key: str) -> Any:
    """The typed spec of a config group with a ``_target_`` (``GraphSpec``, ``EncoderSpec``, ...).

    Called directly rather than through ``hydra.utils.instantiate``, which would wrap the spec's own
    :class:`ConfigError` (naming the key and the fix) in an ``InstantiationException``.
    """
    values = {k: v for k, v in OmegaConf.to_container(node, resolve=True).items() if not k.startswith("_")}
    spec_class = hydra.utils.get_class(node._target_)
    unknown = sorted(set(values) - set(inspect.signature(spec_class).parameters))
    if unknown:
        name = unknown[0]
        raise ConfigError(f"{key}.{name}: not a setting of {node._target_}"
                          f"{did_you_mean(name, inspect.signature(spec_class).parameters)}")
    return spec_class(**values)


def _annotation_check(hint: Any, value: Any) -> str | None:
    """The expected type's name when ``value`` does not fit a simple ``int``/``float``/``bool``/``str``
    annotation (optionally ``| None``), else None. Other annotations are not checked."""
    args = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    simple = [a for a in args if a in (int, float, bool, str)]
    if not simple or len(simple) + (type(None) in args) != len(args):
        return None
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
    expected = " or ".join(names[a] for a in simple) + (" or null" if type(None) in args else "")
    if value is None:
        return None if type(None) in args else expected
    fits = {int: _is_int(value), float: _is_number(value), bool: isinstance(value, bool), str: isinstance(value, str)}
    return None if any(fits[a] for a in simple) else expected


def _check_arguments(node: DictConfig, key: str, target: Any, skip: Iterable[str] = ()) -> None:
    """Every key of ``node`` is a parameter of ``target`` (else the closest name is suggested), and
    values of ``int``/``float``/``bool``/``str`` parameters have that type."""
    signature = inspect.signature(target)
    params = signature.parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    try:
        hints = typing.get_type_hints(target.__init__ if inspect.isclass(target) else target)
    except Exception:  # unresolvable annotations: keys are still checked, types are not
        hints = {}
    for name in node:
        if name.startswith("_") or name in skip:
            continue
        if name not in params:
            raise ConfigError(f"{key}.{name}: not a parameter of {getattr(target, '__qualname__', target)}"
                              f"{did_you_mean(name, [p for p in params if p != 'self'])}. Remove it or fix its name.")
        value = node[name]
        if name in hints and not isinstance(value, (DictConfig, ListConfig)):
            expected = _annotation_check(hints[name], value)
            if expected is not None:
                raise ConfigError(f"{key}.{name}={value!r}: must be {expected}")


def check_constructor_keys(cfg: DictConfig) -> None:
    """``model.*``, ``model.optimizer.*`` and ``data.*`` keys against their ``_target_``'s signature,
    before any data is loaded (a typo would otherwise fail after loading and encoding, or never)."""
    model_class = hydra.utils.get_class(cfg.model._target_)
    _check_arguments(cfg.model, "model", model_class)
    optimizer = cfg.model.get("optimizer")
    if optimizer is not None and "_target_" in optimizer:
        _check_arguments(optimizer, "model.optimizer", hydra.utils.get_class(optimizer._target_))
    _check_arguments(cfg.data, "data", hydra.utils.get_class(cfg.data._target_))


def _added_keys() -> list[str]:
    """The keys this run added with ``+key=value`` on the command line (not ``++``)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return []
    added = []
    for override in HydraConfig.get().overrides.task:
        if override.startswith("+") and not override.startswith("++") and "=" in override:
            key = override[1:].split("=", 1)[0]
            if "@" not in key and "/" not in key:  # +group@pkg=choice adds a config, not a key
                added.append(key)
    return added


def check_added_keys(cfg: DictConfig, added: Iterable[str] | None = None) -> None:
    """A key added with ``+`` must be read by something: a parameter of a ``_target_`` node (checked
    by :func:`check_constructor_keys` and the specs) or a free-form node (:data:`FREE_FORM_NODES`).
    Anything else (``+graph.alpah=0.5``) would be silently ignored: it is an error naming the
    closest existing key."""
    for key in _added_keys() if added is None else added:
        if any(key == node or key.startswith(node + ".") for node in FREE_FORM_NODES):
            continue
        parent_key, _, name = key.rpartition(".")
        parent = OmegaConf.select(cfg, parent_key) if parent_key else cfg
        if isinstance(parent, DictConfig) and "_target_" in parent:
            continue  # its constructor's signature decides (checked above)
        siblings = [k for k in parent] if isinstance(parent, DictConfig) else []
        known = [k for k in siblings if k != name]
        raise ConfigError(f"+{key}: no such setting; a key added with '+' would be ignored"
                          f"{did_you_mean(name, known)}. Set an existing key without '+'.")


def unread_feature_keys(cfg: DictConfig) -> list[str]:
    """The MMRec-folder feature keys (``dataset.item_features`` / ``dataset.user_features``) the model
    does not read: a baseline on MMRec's own folder needs neither the authors' ``image_text_feat.npy``
    (the ``mllm`` modality, also what the refined graph is built from) nor their user features."""
    if cfg.dataset.get("format") != "mmrec":
        return []
    model_class = hydra.utils.get_class(cfg.model._target_)
    params = inspect.signature(model_class.__init__).parameters
    unread = []
    modalities = (cfg.model.get("modalities") or getattr(model_class, "modalities", ())) \
        if "item_modalities" in params else ()
    graph_used = "item_graph" in params and cfg.model.get("item_graph", "refined") == "refined"
    if "item_features" not in params and not graph_used and "mllm" not in modalities:
        unread.append("item_features")
    if "user_features" not in params:
        unread.append("user_features")
    return unread


def _check_accelerator(accelerator: Any) -> None:
    if accelerator in ("gpu", "cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ConfigError(f"trainer.accelerator={accelerator!r}: no CUDA GPU is visible to this process "
                              "(torch.cuda.is_available() is False). Use trainer=cpu, or check "
                              "CUDA_VISIBLE_DEVICES and that a CUDA build of torch is installed.")


def validate_train_config(cfg: DictConfig) -> None:
    """Range and file checks for ``train.yaml`` (unknown keys are rejected by Hydra's struct mode)."""
    unset = [k for k in ("name", "root") if OmegaConf.is_missing(cfg.dataset, k)]
    if unset:  # checked first: other keys interpolate these
        raise ConfigError(
            f"dataset.{' and dataset.'.join(unset)} must be set. For an MMRec-format folder: "
            "dataset=mmrec dataset.root=<folder holding <name>.inter> dataset.name=<name>."
        )
    missing = sorted(OmegaConf.missing_keys(cfg))
    missing = [m for m in missing if not m.startswith("hydra")]
    if missing:
        hint = ""
        if any(m.startswith("dataset.") for m in missing):
            hint = (" For an MMRec-format folder: dataset=mmrec dataset.root=<folder holding "
                    "<name>.inter> dataset.name=<name>.")
        raise ConfigError(f"config values required but not set: {missing}.{hint}")
    for group in ("graph", "encoder"):  # the specs check their own values, once
        build_spec(cfg[group], group)
    check_constructor_keys(cfg)
    check_added_keys(cfg)
    data, trainer = cfg.data, cfg.trainer
    for key in ("batch_size", "eval_batch_size"):
        _require(_is_int(data.get(key)) and data[key] >= 1, f"data.{key}", data.get(key), "must be an integer >= 1")
    valid_users = data.get("valid_users")
    _require(valid_users is None or (_is_int(valid_users) and valid_users >= 1), "data.valid_users", valid_users,
             "must be a positive integer (the number of users validation ranks, a fixed seeded sample) or "
             "null (every user)")
    _require(_is_int(cfg.seed), "seed", cfg.seed, "must be an integer")
    max_epochs = trainer.get("max_epochs")
    _require(max_epochs is None or (_is_int(max_epochs) and max_epochs >= -1), "trainer.max_epochs", max_epochs,
             "must be an integer >= 1 (-1 = no limit)")
    _require(max_epochs != 0, "trainer.max_epochs", max_epochs,
             "0 would test an untrained model and write its scores as this run's results; train at "
             "least one epoch (to score a trained model, load its checkpoint: ckpt_path=<run>/checkpoints/last.ckpt)")
    if "d" in cfg.model:
        _require(_is_int(cfg.model.d) and cfg.model.d >= 1, "model.d", cfg.model.d,
                 "the output dimension must be an integer >= 1")
    if "item_graph" in cfg.model:  # the +GR switch of models with their own item-item graph
        from mllmrec.graph.spec import ITEM_GRAPH_CHOICES

        _require(cfg.model.item_graph in ITEM_GRAPH_CHOICES, "model.item_graph", cfg.model.item_graph,
                 f"must be one of {ITEM_GRAPH_CHOICES} (refined = MLLMRec's refined graph, built from graph.*)")
    if cfg.model.get("hidden_dim") is not None:
        _require(_is_int(cfg.model.hidden_dim) and cfg.model.hidden_dim >= 1, "model.hidden_dim",
                 cfg.model.hidden_dim, "must be an integer >= 1 or null")
    optimizer = cfg.model.get("optimizer")
    if optimizer is not None:
        lr, decay = optimizer.get("lr"), optimizer.get("weight_decay", 0.0)
        _require(_is_number(lr) and lr > 0, "model.optimizer.lr", lr, "the learning rate must be a number > 0")
        _require(_is_number(decay) and decay >= 0, "model.optimizer.weight_decay", decay, "must be a number >= 0")
    _check_accelerator(trainer.get("accelerator"))
    ds = cfg.dataset
    if ds.get("format") == "mmrec":
        root = Path(ds.root)
        _require(root.is_dir(), "dataset.root", ds.root,
                 "folder does not exist; point it at the folder holding <name>.inter")
        unread = unread_feature_keys(cfg)
        for key in ("item_features", "user_features"):
            if ds.get(key) and key not in unread:
                _require((root / ds[key]).is_file(), f"dataset.{key}", ds[key],
                         f"no such file in {root}; set the file name or null")
        _require((root / f"{ds.name}.inter").is_file(), "dataset.name", ds.name,
                 f"{root / (ds.name + '.inter')} does not exist")
    if cfg.get("ckpt_path"):
        _require(Path(cfg.ckpt_path).is_file(), "ckpt_path", cfg.ckpt_path, "checkpoint file not found")
    _require(str(cfg.optimized_metric).startswith("val/"), "optimized_metric", cfg.optimized_metric,
             "must be a validation metric (val/...): selecting on test leaks the test set")
