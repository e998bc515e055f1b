"""The embedded demo dataset: a small deterministic synthetic multimodal catalogue.

Items have attributes (category, colour, material, style) rendered into title/description text and
a small procedurally drawn PNG; users have latent attribute preferences and 5+ interactions drawn
from them (plus some popularity noise); the split is MMRec's rule. It exists so that
``python train.py`` runs offline on a CPU in well under two minutes, and so that a model that reads
the item/user texts can clearly beat popularity.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import pandas as pd

from mllmrec.cache import file_lock
from mllmrec.data.processed import DatasetLayout, is_processed, write_processed_dataset
from mllmrec.data.split import mmrec_split
from mllmrec.data.text import mmrec_item_text

DEMO_VERSION = 1

CATEGORIES = ["shirt", "dress", "sneakers", "boots", "handbag", "scarf", "jacket", "watch"]
COLOURS = {
    "red": (200, 30, 40), "navy": (20, 30, 110), "green": (30, 140, 60), "black": (15, 15, 15),
    "white": (240, 240, 235), "yellow": (235, 205, 40), "pink": (240, 130, 180), "brown": (120, 75, 40),
}
MATERIALS = ["cotton", "leather", "wool", "denim", "silk", "canvas"]
STYLES = ["casual", "formal", "sporty", "vintage", "minimalist", "bohemian"]
BRANDS = ["Northwind", "Aurelia", "Kestrel", "Oakline", "Brightfold", "Mistral & Co"]

__all__ = ["make_demo_dataset", "ensure_demo_dataset", "DEMO_VERSION"]


def _draw_image(path: Path, category_idx: int, rgb: tuple[int, int, int], style_idx: int) -> None:
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (64, 64), (250, 250, 250))
    draw = ImageDraw.Draw(img)
    # silhouette by category, fill by colour, a pattern by style: what Prompt 1 would describe
    shapes = [
        lambda: draw.polygon([(12, 14), (52, 14), (58, 28), (48, 30), (48, 58), (16, 58), (16, 30), (6, 28)], fill=rgb),
        lambda: draw.polygon([(24, 8), (40, 8), (54, 58), (10, 58)], fill=rgb),
        lambda: draw.rounded_rectangle([6, 34, 58, 52], radius=8, fill=rgb),
        lambda: draw.polygon([(18, 6), (36, 6), (36, 40), (58, 44), (58, 58), (18, 58)], fill=rgb),
        lambda: draw.rounded_rectangle([10, 22, 54, 56], radius=6, fill=rgb),
        lambda: draw.rectangle([4, 26, 60, 38], fill=rgb),
        lambda: draw.polygon([(10, 10), (54, 10), (60, 58), (4, 58)], fill=rgb),
        lambda: draw.ellipse([16, 16, 48, 48], fill=rgb),
    ]
    shapes[category_idx]()
    for k in range(style_idx + 1):
        draw.line([(4, 60 - 3 * k), (60, 60 - 3 * k)], fill=(90, 90, 90), width=1)
    img.save(path, format="PNG")


def make_demo_dataset(
    root: str | Path, n_users: int = 600, n_items: int = 300, seed: int = 0, split_seed: int = 999
) -> DatasetLayout:
    """Generate the demo dataset into ``root`` (processed tables + PNG images)."""
    if n_items < 5 or n_users < 1:
        raise ValueError(
            f"the demo needs n_items >= 5 (every user gets 5+ distinct items) and n_users >= 1; "
            f"got n_items={n_items}, n_users={n_users}"
        )
    rng = np.random.default_rng(seed)
    layout = DatasetLayout(root)
    layout.images.mkdir(parents=True, exist_ok=True)
    colour_names = list(COLOURS)

    cat = rng.integers(len(CATEGORIES), size=n_items)
    col = rng.integers(len(COLOURS), size=n_items)
    mat = rng.integers(len(MATERIALS), size=n_items)
    sty = rng.integers(len(STYLES), size=n_items)
    brand = rng.integers(len(BRANDS), size=n_items)

    rows = []
    for i in range(n_items):
        c, k, m, s = CATEGORIES[cat[i]], colour_names[col[i]], MATERIALS[mat[i]], STYLES[sty[i]]
        title = f"{BRANDS[brand[i]]} {k} {m} {c}"
        categories = ["Clothing, Shoes & Jewelry", c.capitalize() + "s"]
        description = (
            f"A {s} {c} made of {m} in a {k} finish. Designed for everyday {s} looks; "
            f"item code D{i:04d}."
        )
        image_path = f"images/{i}.png"
        _draw_image(layout.root / image_path, int(cat[i]), COLOURS[k], int(sty[i]))
        rows.append({
            "item_id": i, "source_id": f"D{i:04d}", "title": title, "brand": BRANDS[brand[i]],
            "categories": categories, "description": description, "image_url": None,
            "image_path": image_path,
            "text": mmrec_item_text(title, BRANDS[brand[i]], categories, description),
        })
    items = pd.DataFrame(rows)

    # users: a liked category pair, colour pair and style; utility = attribute matches + popularity
    popularity = rng.gamma(0.6, 1.0, size=n_items)
    user_rows = []
    for u in range(n_users):
        likes_cat = rng.choice(len(CATEGORIES), size=2, replace=False)
        likes_col = rng.choice(len(COLOURS), size=2, replace=False)
        likes_sty = rng.integers(len(STYLES))
        utility = (
            2.0 * np.isin(cat, likes_cat) + 1.5 * np.isin(col, likes_col) + 1.0 * (sty == likes_sty)
            + 0.5 * np.log1p(popularity)
        )
        prob = np.exp(2.0 * utility)
        prob /= prob.sum()
        n = int(np.clip(rng.geometric(0.08) + 4, 5, min(40, n_items)))  # distinct items: <= n_items
        chosen = rng.choice(n_items, size=n, replace=False, p=prob)
        start = 1_400_000_000 + int(rng.integers(0, 10_000_000))
        times = start + np.sort(rng.integers(0, 30_000_000, size=n))
        for it, t in zip(chosen, times):
            user_rows.append((u, int(it), float(rng.integers(3, 6)), int(t)))
    inter = pd.DataFrame(user_rows, columns=["user_id", "item_id", "rating", "timestamp"])
    inter["x_label"] = mmrec_split(inter["user_id"].to_numpy(), inter["timestamp"].to_numpy(), seed=split_seed)
    users = pd.DataFrame({"user_id": np.arange(n_users), "source_id": [f"U{u:04d}" for u in range(n_users)]})
    manifest = {
        "name": "demo",
        "source": "synthetic (mllmrec.data.demo)",
        "generator": {"version": DEMO_VERSION, "n_users": n_users, "n_items": n_items, "seed": seed},
        "split": {"rule": "mmrec", "mode": "random", "seed": split_seed},
    }
    return write_processed_dataset(layout.root, inter, items, users, manifest)


def _matching_demo(layout: DatasetLayout, kwargs: dict) -> bool:
    """Whether ``layout`` already holds the demo that ``make_demo_dataset(**kwargs)`` would write."""
    if not is_processed(layout.root):
        return False
    from mllmrec.data.processed import read_manifest

    manifest = read_manifest(layout.root)
    args = {  # make_demo_dataset's defaults, overridden by kwargs
        name: p.default for name, p in inspect.signature(make_demo_dataset).parameters.items()
        if p.default is not inspect.Parameter.empty
    } | kwargs
    wanted = {"version": DEMO_VERSION, "n_users": args["n_users"], "n_items": args["n_items"],
              "seed": args["seed"]}
    split_seed = manifest.get("split", {}).get("seed")
    return manifest.get("generator", {}) == wanted and split_seed == args["split_seed"]


def ensure_demo_dataset(root: str | Path, **kwargs) -> DatasetLayout:
    """Generate the demo into ``root`` unless a matching one is already there (safe under races).

    A matching demo is used without taking the lock (nothing is written: the folder may be read-only);
    generating one takes it.
    """
    layout = DatasetLayout(root)
    if _matching_demo(layout, kwargs):  # the manifest is written last and atomically
        return layout
    with file_lock(layout.root / "demo"):
        if _matching_demo(layout, kwargs):
            return layout
        return make_demo_dataset(layout.root, **kwargs)
