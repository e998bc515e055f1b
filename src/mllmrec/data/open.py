"""One place that turns a ``dataset`` config into interactions: processed, MMRec-format or the demo.

``prepare.py``, ``reason.py`` and ``train.py`` all open datasets through :func:`open_dataset`, and
check them first with :func:`check_dataset` (cheap: files and folders only, before any heavy work).
The demo's size and seeds come from the ``dataset`` config alone (``conf/dataset/demo.yaml``); this
module has no defaults of its own for them.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mllmrec.data.errors import DatasetError
from mllmrec.data.interactions import InteractionData
from mllmrec.data.mmrec import load_mmrec_dataset
from mllmrec.data.processed import DatasetLayout, load_processed_dataset

__all__ = ["DATASET_FORMATS", "check_dataset", "demo_arguments", "ensure_generated", "open_dataset"]

DATASET_FORMATS = ("processed", "mmrec")
#: ``dataset.*`` keys of a generated demo -> :func:`mllmrec.data.demo.make_demo_dataset`'s arguments
_DEMO_KEYS = {"n_users": "n_users", "n_items": "n_items", "generator_seed": "seed", "split_seed": "split_seed"}


def _format(dataset: Mapping[str, Any]) -> str:
    fmt = dataset.get("format", "processed")
    if fmt not in DATASET_FORMATS:
        raise DatasetError(f"dataset.format must be one of {DATASET_FORMATS}, got {fmt!r}")
    return fmt


def demo_arguments(dataset: Mapping[str, Any]) -> dict[str, int]:
    """The generator's arguments given by a demo ``dataset`` config (keys it leaves out keep
    :func:`~mllmrec.data.demo.make_demo_dataset`'s defaults)."""
    return {arg: int(dataset[key]) for key, arg in _DEMO_KEYS.items() if dataset.get(key) is not None}


def ensure_generated(dataset: Mapping[str, Any]) -> DatasetLayout | None:
    """Generate a ``generate: demo`` dataset into its root unless a matching one is there; None for
    any other dataset."""
    if dataset.get("generate") is None:
        return None
    if dataset["generate"] != "demo":
        raise DatasetError(f"dataset.generate must be 'demo' or null, got {dataset['generate']!r}")
    from mllmrec.data.demo import ensure_demo_dataset

    return ensure_demo_dataset(dataset["root"], **demo_arguments(dataset))


def check_dataset(dataset: Mapping[str, Any], *, user_features: bool = True) -> None:
    """Cheap checks that the dataset's files exist, with the command or key that fixes each."""
    fmt = _format(dataset)
    root, name = Path(dataset["root"]), dataset["name"]
    if fmt == "mmrec":
        keys = ("item_features", "user_features") if user_features else ("item_features",)
        files = [root / f"{name}.inter"] + [root / dataset[k] for k in keys if dataset.get(k)]
        for f in files:
            if not f.is_file():
                raise DatasetError(
                    f"dataset=mmrec: {f} does not exist. Set dataset.root to the folder holding "
                    f"{name}.inter and dataset.item_features/user_features to its feature files "
                    "(null to skip user features)."
                )
        return
    if dataset.get("generate"):
        return  # made on first use
    layout = DatasetLayout(root)
    if not layout.manifest.is_file():
        # dataset=custom: the config group is "custom" whatever dataset.name says
        command = (f"python prepare.py dataset=custom dataset.name={name} dataset.interactions=<file> "
                   "[dataset.items=<file>]" if "interactions" in dataset else f"python prepare.py dataset={name}")
        raise DatasetError(
            f"dataset={name}: no processed dataset at {layout.processed}. Create it with `{command}`."
        )


def open_dataset(dataset: Mapping[str, Any], *, user_features: bool = True) -> InteractionData:
    """The interactions (and, for MMRec folders, the feature files) of a ``dataset`` config.

    ``user_features=False`` leaves an MMRec folder's user feature file unread (the w/o RS ablation
    and the ID-only baselines do not use it).
    """
    check_dataset(dataset, user_features=user_features)
    if _format(dataset) == "mmrec":
        return load_mmrec_dataset(
            dataset["root"], dataset["name"], item_features=dataset.get("item_features"),
            user_features=dataset.get("user_features") if user_features else None,
        )
    ensure_generated(dataset)
    return load_processed_dataset(dataset["root"], name=dataset["name"])
