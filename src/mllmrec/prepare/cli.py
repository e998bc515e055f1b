"""The body of ``prepare.py``: turn the composed Hydra config into one prepare call."""

from __future__ import annotations

import logging
from typing import Any

from omegaconf import DictConfig, OmegaConf

from mllmrec.data.errors import DatasetError
from mllmrec.prepare.pipeline import AmazonSource, PrepareOptions, PrepareOutcome, prepare_amazon

log = logging.getLogger(__name__)

__all__ = ["run_prepare"]


def _require(node: DictConfig, key: str, hint: str) -> Any:
    if key not in node or OmegaConf.is_missing(node, key) or node[key] in (None, ""):
        raise DatasetError(f"dataset.{key} is not set. {hint}")
    return node[key]


def run_prepare(cfg: DictConfig) -> PrepareOutcome:
    """Dispatch on the dataset config.

    - ``format: mmrec`` -> import an MMRec folder (``dataset.root``, ``dataset.name``);
    - ``generate: demo`` -> generate the synthetic demo dataset;
    - an ``interactions:`` key (``dataset=custom``) -> your own interactions (+ items) file;
    - a ``source:`` block -> the Amazon pipeline (2014 or 2018 release).
    """
    # httpx logs every request at INFO: tens of thousands of lines for the images
    logging.getLogger("httpx").setLevel(logging.WARNING)
    ds = cfg.dataset
    # output_root is resolved later: it names ${dataset.name}, which an mmrec import must set first
    opts = PrepareOptions.from_config(
        {str(k): cfg.prepare[k] for k in cfg.prepare if k not in ("output_root", "meta_file")}
    )
    meta_file = cfg.prepare.get("meta_file")

    if ds.get("format") == "mmrec":
        hint = ("Import MMRec's released files with: python prepare.py dataset=mmrec "
                "dataset.root=/path/to/folder dataset.name=<stem of the .inter file, e.g. baby>")
        name = _require(ds, "name", hint)
        root = _require(ds, "root", hint)
        from mllmrec.prepare.mmrec_import import import_mmrec

        out = cfg.prepare.get("output_root") or root
        features = {"item": ds.get("item_features"), "user": ds.get("user_features")}
        return import_mmrec(root, name, out, opts, meta_file=meta_file, display_name=ds.get("display_name"),
                            feature_files=features)

    if "interactions" in ds:
        from mllmrec.prepare.custom import CustomSource, prepare_custom

        source = CustomSource.from_config(OmegaConf.to_container(ds, resolve=True))
        return prepare_custom(name=str(ds.name), root=str(ds.root), source=source,
                              split_seed=int(ds.get("split_seed", 999)), opts=opts,
                              display_name=ds.get("display_name"))

    if ds.get("generate"):
        from mllmrec.data.open import ensure_generated
        from mllmrec.data.processed import DatasetLayout, read_manifest

        layout = ensure_generated(OmegaConf.to_container(ds, resolve=True))
        log.info("demo dataset ready in %s", layout.processed)
        return PrepareOutcome(DatasetLayout(layout.root), True, read_manifest(layout.root))

    if "source" not in ds or ds.source is None:
        raise DatasetError(
            f"dataset {ds.get('name')!r} has no source: block, so prepare.py does not know where its raw "
            "files come from. Use dataset=baby|sports|clothing, dataset=amazon2018 "
            "dataset.source.category=<Category>, dataset=mmrec to import MMRec's files, or dataset=custom "
            "dataset.interactions=<file> for your own data."
        )
    source_cfg = OmegaConf.to_container(ds.source, resolve=True)
    assert isinstance(source_cfg, dict)
    source = AmazonSource.from_config(source_cfg, opts)
    return prepare_amazon(
        name=str(ds.name), root=str(ds.root), source=source, split_seed=int(ds.get("split_seed", 999)),
        opts=opts, display_name=ds.get("display_name"),
    )
