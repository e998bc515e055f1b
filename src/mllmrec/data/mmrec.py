"""MMRec-format folders (``<name>.inter`` + feature ``.npy`` files), loaded as they are."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from mllmrec.data.errors import DatasetError
from mllmrec.data.interactions import InteractionData, interaction_data_from_frame
from mllmrec.data.validation import load_feature_matrix, require_file, validate_interaction_frame

MMREC_COLUMNS = {"user": "userID", "item": "itemID", "timestamp": "timestamp", "x_label": "x_label"}

__all__ = ["load_mmrec_dataset", "read_mmrec_inter", "MMREC_COLUMNS"]


def read_mmrec_inter(root: str | Path, name: str) -> tuple[pd.DataFrame, Path]:
    """Read and validate ``<root>/<name>.inter``; returns (frame with user/item/timestamp/x_label, path)."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(
            f"MMRec dataset folder {root} does not exist. Set dataset.root to the folder holding "
            f"{name}.inter (e.g. dataset=mmrec dataset.root=/data/baby dataset.name=baby)."
        )
    path = require_file(
        root / f"{name}.inter", "MMRec interactions",
        "Set dataset.name to the file's stem (baby for baby.inter).",
    )
    try:
        raw = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError as err:
        raise DatasetError(
            f"{path}: the file is empty; expected a header line 'userID itemID rating timestamp "
            "x_label' and one row per interaction, tab-separated."
        ) from err
    except UnicodeDecodeError as err:
        raise DatasetError(f"{path}: not a UTF-8 text file ({err}); is it really an MMRec .inter table?") from err
    except pd.errors.ParserError as err:
        raise DatasetError(f"{path}: cannot parse as a tab-separated table with a header ({err}).") from err
    if len(raw.columns) == 1 and "," in raw.columns[0]:
        raise DatasetError(f"{path}: looks comma-separated; MMRec .inter files are tab-separated.")
    return validate_interaction_frame(raw, path, MMREC_COLUMNS), path


def load_mmrec_dataset(
    root: str | Path,
    name: str,
    item_features: str | None = "image_text_feat.npy",
    user_features: str | None = "user_preferences_feat.npy",
) -> InteractionData:
    """Load an MMRec-format folder.

    Args:
        root: folder holding ``<name>.inter`` and the feature files.
        name: the ``.inter`` file's stem.
        item_features / user_features: file names inside ``root`` (None to skip). The defaults are
            the paper authors' names; MMRec's own are ``text_feat.npy`` / ``image_feat.npy``.
            float64 files are cast to float32.
    """
    frame, path = read_mmrec_inter(root, name)
    data = interaction_data_from_frame(frame, name=name, source=Path(root), origin=str(path))
    if item_features:
        data.item_features = load_feature_matrix(Path(root) / item_features, data.n_items, "item")
    if user_features:
        data.user_features = load_feature_matrix(Path(root) / user_features, data.n_users, "user")
    return data
