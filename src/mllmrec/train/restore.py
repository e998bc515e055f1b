"""Bring a trained run back: its saved config, its checkpoint, the model inputs and the weights.

Used by ``evaluate.py`` and ``recommend.py`` (and :func:`mllmrec.recommend`). The config is the one the
run was trained with (``<run>/.hydra/config.yaml``), optionally changed by ``key=value`` overrides;
the checkpoint is the run's best (:func:`~mllmrec.train.run_folder.best_checkpoint`) or a named file.
A checkpoint is only loaded under the settings it was trained with: when the config evaluated under
differs from the checkpoint's own run config in a result-relevant key (everything but
:data:`~mllmrec.train.fingerprint.RESULT_NEUTRAL_KEYS`), that is a :class:`ConfigError` listing the
differences, unless ``allow_config_change`` is set.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from mllmrec.errors import ConfigError
from mllmrec.train.fingerprint import result_config
from mllmrec.train.run_folder import best_checkpoint, resume_checkpoint, run_dir_of_checkpoint, saved_config_path

log = logging.getLogger(__name__)

__all__ = ["ConfigChange", "RestoredRun", "apply_overrides", "config_changes", "load_run_config",
           "project_root", "resolve_run", "restore_run", "EVALUATION_NEUTRAL_KEYS"]

#: keys that differ between runs without changing what a checkpoint computes when it is loaded
#: (beyond :data:`RESULT_NEUTRAL_KEYS`): where training resumed from
EVALUATION_NEUTRAL_KEYS = ("ckpt_path",)

# the project root of an editable install (where train.py sets PROJECT_ROOT)
_PROJECT_ROOT = Path(__file__).resolve().parents[3]


def project_root() -> Path:
    """The project checkout whose ``conf/`` the scripts compose from: ``PROJECT_ROOT`` (set by the
    entry points), else the root of this editable install."""
    return Path(os.environ.get("PROJECT_ROOT") or _PROJECT_ROOT)


@dataclass(frozen=True)
class ConfigChange:
    """One result-relevant key whose value differs: ``trained`` (the checkpoint's run) vs ``now``."""

    key: str
    trained: Any
    now: Any

    def __str__(self) -> str:
        return f"{self.key}: {self.trained!r} (checkpoint) -> {self.now!r} (now)"


@dataclass
class RestoredRun:
    """A run brought back: ``cfg`` (the config evaluated under), the checkpoint, the datamodule (set up),
    the model (weights loaded, eval mode) and the result-relevant changes that were allowed."""

    run_dir: Path
    cfg: DictConfig
    checkpoint: Path
    datamodule: Any
    model: Any
    changes: list[ConfigChange] = field(default_factory=list)


def apply_overrides(cfg: DictConfig, overrides: Sequence[str]) -> DictConfig:
    """``cfg`` with ``key=value`` overrides (Hydra's grammar) applied to existing keys.

    A saved config has no defaults list, so a config group cannot be swapped here (``model=bpr``) and
    a key that does not exist cannot be added: both are errors naming the override.
    """
    if not overrides:
        return cfg
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import OverrideType
    from hydra.errors import OverrideParseException

    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except OverrideParseException as err:
        raise ConfigError(f"cannot parse the overrides {list(overrides)}: {err}") from None
    cfg = cfg.copy()
    for override in parsed:
        key, line = override.key_or_group, override.input_line
        if override.is_sweep_override():
            raise ConfigError(f"{line}: a sweep; evaluate or recommend one configuration at a time")
        if override.type != OverrideType.CHANGE:
            raise ConfigError(f"{line}: only key=value overrides of the run's saved config are accepted here")
        value = override.value()
        if isinstance(OmegaConf.select(cfg, key), DictConfig) and not isinstance(value, dict):
            raise ConfigError(f"{line}: the run's saved config has no config groups to swap; change single keys "
                              f"({key}.<name>=<value>) or train a new run with {line}")
        if OmegaConf.select(cfg, key, default="<absent>") == "<absent>":
            raise ConfigError(f"{line}: the run's saved config has no key {key!r}")
        OmegaConf.update(cfg, key, value, merge=False)
    return cfg


def load_run_config(run_dir: str | Path, overrides: Sequence[str] = ()) -> DictConfig:
    """The config a run was trained with, ``overrides`` applied, its output dir set to the run dir."""
    path = saved_config_path(Path(run_dir))
    if not path.is_file():
        raise ConfigError(f"run={run_dir}: no saved config ({path}). Name a training run folder "
                          "(logs/train/runs/<time> or a sweep's job folder).")
    os.environ.setdefault("PROJECT_ROOT", str(_PROJECT_ROOT))  # ${oc.env:PROJECT_ROOT} as in train.py
    cfg = OmegaConf.load(path)
    assert isinstance(cfg, DictConfig)
    cfg = apply_overrides(cfg, overrides)
    with open_dict(cfg):
        # ${hydra:runtime.output_dir} has no Hydra run here: the run folder is the output folder
        cfg.paths.output_dir = str(Path(run_dir).resolve())
    return cfg


def _flatten(container: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(container, dict):
        out: dict[str, Any] = {}
        for key, value in container.items():
            out |= _flatten(value, f"{prefix}{key}.")
        return out or {prefix[:-1]: {}}
    return {prefix[:-1]: container}


def config_changes(trained: DictConfig, now: DictConfig) -> list[ConfigChange]:
    """Result-relevant keys whose resolved values differ between the two configs (sorted by key).
    Folders of ``paths`` are compared as placeholders (a moved data folder is the same data)."""
    before, after = (_flatten(result_config(c, EVALUATION_NEUTRAL_KEYS)) for c in (trained, now))
    absent = "<absent>"
    return [ConfigChange(k, before.get(k, absent), after.get(k, absent))
            for k in sorted(before.keys() | after.keys()) if before.get(k, absent) != after.get(k, absent)]


def resolve_run(run: str | Path | None, ckpt_path: str | Path | None) -> tuple[Path, Path]:
    """``(run dir, checkpoint)`` from ``run=`` and/or ``ckpt_path=`` (a file or a run folder)."""
    if run is None and ckpt_path is None:
        raise ConfigError("name what to load: run=<run folder> (its best checkpoint) and/or ckpt_path=<file>")
    if ckpt_path is not None and Path(ckpt_path).is_dir():  # ckpt_path=<run folder>: its best checkpoint
        run, ckpt_path = run or ckpt_path, best_checkpoint(ckpt_path)
    checkpoint = resume_checkpoint(ckpt_path) if ckpt_path is not None else None
    if run is None:
        assert checkpoint is not None
        run = run_dir_of_checkpoint(checkpoint)
        if run is None:
            raise ConfigError(f"ckpt_path={ckpt_path}: not inside a run folder with a saved config "
                              "(<run>/checkpoints/<file> with <run>/.hydra/config.yaml); add run=<run folder> "
                              "to say which config to load it under.")
    run_dir = Path(run)
    if not run_dir.is_dir():
        raise ConfigError(f"run={run}: no such folder")
    return run_dir, checkpoint if checkpoint is not None else best_checkpoint(run_dir)


def checked_config(run_dir: Path, checkpoint: Path, overrides: Sequence[str],
                   allow_config_change: bool) -> tuple[DictConfig, list[ConfigChange]]:
    """The config to load ``checkpoint`` under, after comparing it with the checkpoint's own run
    config (the same run's, or the run folder the checkpoint lives in)."""
    cfg = load_run_config(run_dir, overrides)
    trained_dir = run_dir_of_checkpoint(checkpoint) or run_dir
    trained = load_run_config(trained_dir)
    changes = config_changes(trained, cfg)
    if changes and not allow_config_change:
        listed = "\n  ".join(str(c) for c in changes)
        loaded_under = f"the config of {run_dir}" + (f" with {' '.join(overrides)}" if overrides else "")
        raise ConfigError(f"checkpoint {checkpoint} was trained ({trained_dir}) under other settings than "
                          f"{loaded_under}:\n  {listed}\nLoad it with its own settings, or pass "
                          "allow_config_change=true to accept the difference.")
    for change in changes:
        log.warning("allowed config change (allow_config_change=true): %s", change)
    return cfg, changes


def restore_run(run: str | Path | None = None, ckpt_path: str | Path | None = None,
                overrides: Sequence[str] = (), allow_config_change: bool = False) -> RestoredRun:
    """Load a run's config and checkpoint: datamodule set up, model inputs built (what the model asks
    for), model instantiated with them and the checkpoint's weights loaded, in eval mode.

    Every check (folders, config, differences) happens before any data is loaded.
    """
    import hydra
    import torch

    from mllmrec.reasoning.stage import reasoning_output_name
    from mllmrec.train.checks import validate_train_config
    from mllmrec.train.extras import quiet_lightning
    from mllmrec.train.task import build_datamodule, model_inputs

    run_dir, checkpoint = resolve_run(run, ckpt_path)
    cfg, changes = checked_config(run_dir, checkpoint, overrides, allow_config_change)
    validate_train_config(cfg)
    quiet_lightning()
    log.info("loading %s under the config of %s", checkpoint, run_dir)
    datamodule = build_datamodule(cfg, mllm=reasoning_output_name(cfg))  # <mllm>-fake for reason.backend=fake
    datamodule.check_inputs()
    datamodule.setup("test")
    model = hydra.utils.instantiate(cfg.model, **model_inputs(cfg, datamodule))
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    try:
        model.load_state_dict(state["state_dict"])
    except (KeyError, RuntimeError) as err:
        raise ConfigError(f"checkpoint {checkpoint} does not fit the model of this config "
                          f"({cfg.model._target_}): {err}") from None
    model.on_load_checkpoint(state)
    model.eval()
    return RestoredRun(run_dir, cfg, checkpoint, datamodule, model, changes)
