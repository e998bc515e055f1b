"""Synthetic datasets at the paper's Baby / Sports / Clothing shapes, shared by the training benchmarks.

Each is an MMRec-format folder (``<name>.inter`` + ``item_feat.npy`` + ``user_feat.npy`` + MMRec's
``text_feat.npy`` (384-d) / ``image_feat.npy`` (4096-d)), so the
benchmarks run the real loading path (``dataset=mmrec``). Interactions: exact user / item /
interaction counts of Table 1 (Section 5.1.1), every user with >= 5 distinct items, long-tailed item
popularity, every item used, MMRec's per-user random 8:1:1 split. Features: 384-d (MiniLM's size),
random with a low-rank cluster structure so the kNN graph is not degenerate. Only timings and memory
are meaningful on this data, never the metrics.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from mllmrec.data.split import mmrec_split

__all__ = ["SHAPES", "Shape", "synthetic_interactions", "ensure_mmrec_folder", "FEATURE_DIM"]

FEATURE_DIM = 384
IMAGE_FEATURE_DIM = 4096
_VERSION = 2  # bump when the generator changes, so cached folders are rebuilt


@dataclass(frozen=True)
class Shape:
    name: str
    n_users: int
    n_items: int
    n_interactions: int


SHAPES = {
    "baby": Shape("baby", 19_445, 7_050, 160_792),
    "sports": Shape("sports", 35_598, 18_357, 296_337),
    "clothing": Shape("clothing", 39_387, 23_033, 278_677),
}


def _user_degrees(shape: Shape, rng: np.random.Generator) -> np.ndarray:
    """Per-user counts >= 5 summing to ``n_interactions`` (a geometric-like tail, as in 5-core data)."""
    extra = shape.n_interactions - 5 * shape.n_users
    if extra < 0:
        raise ValueError(f"{shape.name}: fewer than 5 interactions per user")
    weights = rng.exponential(1.0, shape.n_users) ** 2
    degrees = 5 + np.floor(extra * weights / weights.sum()).astype(np.int64)
    short = shape.n_interactions - int(degrees.sum())
    degrees[rng.choice(shape.n_users, size=short, replace=False)] += 1
    return np.minimum(degrees, shape.n_items)  # a user cannot hold more distinct items than exist


def synthetic_interactions(shape: Shape, seed: int = 0) -> pd.DataFrame:
    """``userID, itemID, rating, timestamp, x_label`` rows with the exact counts of ``shape``.

    Shapes: ``n_interactions`` rows (fewer only if a user's degree had to be capped at ``n_items``).
    """
    rng = np.random.default_rng(seed)
    degrees = _user_degrees(shape, rng)
    users = np.repeat(np.arange(shape.n_users, dtype=np.int64), degrees)
    popularity = rng.pareto(1.2, shape.n_items) + 1.0
    popularity /= popularity.sum()
    # every item at least once (MMRec's data is 5-core, so no item is unused), the rest by popularity
    items = np.concatenate([
        rng.permutation(shape.n_items),
        rng.choice(shape.n_items, size=len(users) - shape.n_items, p=popularity),
    ])
    items = items[rng.permutation(len(items))]
    # redraw (user, item) pairs that repeat until all pairs are distinct
    while True:
        keys = users * shape.n_items + items
        _, first = np.unique(keys, return_index=True)
        duplicate = np.ones(len(keys), dtype=bool)
        duplicate[first] = False
        if not duplicate.any():
            break
        items[duplicate] = rng.choice(shape.n_items, size=int(duplicate.sum()), p=popularity)
    timestamps = rng.integers(1_300_000_000, 1_400_000_000, size=len(users))
    return pd.DataFrame({
        "userID": users,
        "itemID": items,
        "rating": np.full(len(users), 5.0),
        "timestamp": timestamps,
        "x_label": mmrec_split(users, timestamps, seed=999),
    })


def _features(n: int, rng: np.random.Generator, n_clusters: int = 64, dim: int = FEATURE_DIM) -> np.ndarray:
    """[n, dim] float32: a cluster centre + noise per row (cosine kNN then has real neighbours)."""
    centres = rng.standard_normal((n_clusters, dim)).astype(np.float32)
    labels = rng.integers(n_clusters, size=n)
    return (centres[labels] + 0.8 * rng.standard_normal((n, dim)).astype(np.float32)).astype(np.float32)


def ensure_mmrec_folder(shape: Shape, root: Path, seed: int = 0) -> Path:
    """Write (once) the MMRec-format folder of ``shape`` under ``root / shape.name`` and return it."""
    folder = Path(root) / shape.name
    stamp = folder / "synthetic.json"
    wanted = {"version": _VERSION, "seed": seed, **shape.__dict__}
    if stamp.is_file() and json.loads(stamp.read_text()) == wanted:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed + 1)
    synthetic_interactions(shape, seed).to_csv(folder / f"{shape.name}.inter", sep="\t", index=False)
    np.save(folder / "item_feat.npy", _features(shape.n_items, rng))
    np.save(folder / "user_feat.npy", _features(shape.n_users, rng))
    # MMRec's own modalities at their sizes: 384-d text, 4096-d image (VBPR, FREEDOM, LATTICE, LGMRec)
    np.save(folder / "text_feat.npy", _features(shape.n_items, rng))
    np.save(folder / "image_feat.npy", _features(shape.n_items, rng, dim=IMAGE_FEATURE_DIM))
    stamp.write_text(json.dumps(wanted))
    return folder
