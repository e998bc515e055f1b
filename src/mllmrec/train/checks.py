"""Start-up checks of a composed config: clear messages before anything heavy runs."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from mllmrec.errors import ConfigError

__all__ = ["ConfigError", "validate_train_config"]


def _require(cond: bool, key: str, value: object, rule: str) -> None:
    if not cond:
        raise ConfigError(f"{key}={value!r}: {rule}")


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
    g = cfg.graph
    for key in ("ks", "kc", "layers"):
        _require(isinstance(g[key], int) and not isinstance(g[key], bool), f"graph.{key}", g[key],
                 "must be an integer")
    _require(g.ks >= 1, "graph.ks", g.ks, "K_s must be >= 1 (each item keeps its top-K_s neighbours)")
    _require(g.kc >= 0, "graph.kc", g.kc, "K_c must be >= 0 (0 disables the co-occurrence graph)")
    _require(g.layers >= 0, "graph.layers", g.layers, "L must be >= 0 (0 disables propagation)")
    _require(isinstance(g.alpha, (int, float)) and -1.0 <= float(g.alpha) <= 1.0, "graph.alpha",
             g.alpha, "alpha is a cosine threshold and must lie in [-1, 1] (-1 = no denoising)")
    if "d" in cfg.model:
        _require(isinstance(cfg.model.d, int) and cfg.model.d >= 1, "model.d", cfg.model.d,
                 "the output dimension must be an integer >= 1")
    if cfg.model.get("hidden_dim") is not None:
        _require(cfg.model.hidden_dim >= 1, "model.hidden_dim", cfg.model.hidden_dim, "must be >= 1 or null")
    if "lr" in cfg.model:
        _require(float(cfg.model.lr) > 0, "model.lr", cfg.model.lr, "the learning rate must be > 0")
    ds = cfg.dataset
    if ds.get("format") == "mmrec":
        root = Path(ds.root)
        _require(root.is_dir(), "dataset.root", ds.root,
                 "folder does not exist; point it at the folder holding <name>.inter")
        for key in ("item_features", "user_features"):
            if ds.get(key):
                _require((root / ds[key]).is_file(), f"dataset.{key}", ds[key],
                         f"no such file in {root}; set the file name or null")
        _require((root / f"{ds.name}.inter").is_file(), "dataset.name", ds.name,
                 f"{root / (ds.name + '.inter')} does not exist")
    if cfg.get("ckpt_path"):
        _require(Path(cfg.ckpt_path).is_file(), "ckpt_path", cfg.ckpt_path, "checkpoint file not found")
    _require(str(cfg.optimized_metric).startswith("val/"), "optimized_metric", cfg.optimized_metric,
             "must be a validation metric (val/...): selecting on test leaks the test set")
