"""The embedded demo dataset: a small deterministic synthetic multimodal catalogue.

Items have attributes (category or a long-tail kind, colour, material, style) rendered into
title/description text of varied wording (so that kNN similarities spread as on real data) and a
small procedurally drawn PNG; users have latent attribute preferences and 5+ interactions drawn
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

DEMO_VERSION = 2

CATEGORIES = ["shirt", "dress", "sneakers", "boots", "handbag", "scarf", "jacket", "watch"]
COLOURS = {
    "red": (200, 30, 40), "navy": (20, 30, 110), "green": (30, 140, 60), "black": (15, 15, 15),
    "white": (240, 240, 235), "yellow": (235, 205, 40), "pink": (240, 130, 180), "brown": (120, 75, 40),
}
MATERIALS = ["cotton", "leather", "wool", "denim", "silk", "canvas", "linen", "suede", "nylon", "velvet",
             "cashmere", "polyester", "satin", "corduroy"]
STYLES = ["casual", "formal", "sporty", "vintage", "minimalist", "bohemian"]
# many brands, as in a real catalogue: a brand's name is in its items' text twice (title and brand
# field), so six brands shared by fifty items each made every item look like fifty others
BRANDS = sorted({  # 120 made-up names from a fixed generator (not the dataset's seed)
    "".join(np.random.default_rng(7 + n).choice(list("bdfgklmnprstvz"), 3)[j] + "aeiou"[(n + j) % 5]
            for j in range(3)).capitalize()
    for n in range(120)
})

DEPARTMENTS = ["Women", "Men", "Girls", "Boys", "Baby", "Novelty & More", "Uniforms, Work & Safety",
               "Costumes & Accessories", "Luggage & Travel Gear", "Shoe, Jewelry & Watch Accessories",
               "Traditional & Cultural Wear", "Surf, Skate & Street"]

# How the texts spread (version 2). Version 1 rendered every item from one sentence template with six
# brands, so every item's 10 nearest neighbours had cosine >= 0.71 and graph.alpha in 0.4-0.7 pruned
# nothing (on Baby/Sports/Clothing about 12% of kNN edges have cosine < 0.5, the paper's Fig. 1b).
# Real listings differ in wording, length and in how much of the text is about the product at all.
# Here: 120 brands; half the items are of a long-tail kind (TAIL_KINDS) with words of their own; the
# attribute sentence comes in several wordings; optional construction details and "listing theme"
# sentences (care, sizing, shipping, brand story...). With the defaults about 5% of the demo's kNN
# edges are below 0.5, half below 0.6 and 90% below 0.7, so alpha in 0.4-0.7 prunes different
# amounts, while items of one kind and colour still cluster (a text-reading model beats popularity).
ATTRIBUTE_SENTENCES = [
    "A {s} {c} made of {m} in a {k} finish.",
    "{k} {m} {c} for {s} days.",
    "This {c} is cut from {m}; the colour is {k} and the look is {s}.",
    "Our {s} {c}: {m}, {k}.",
    "{m} {c} in {k}, styled {s}.",
]
LISTING_THEMES = [
    ["Machine wash cold with like colours.", "Tumble dry low or hang to dry.", "Do not bleach.",
     "Iron on the reverse side at a low setting."],
    ["Please check the size chart before ordering.", "Measurements are taken flat and may vary by 2 cm.",
     "If you are between sizes we recommend sizing up.", "Model is 178 cm tall and wears size M."],
    ["Ships within 24 hours from our warehouse in Ohio.", "Free returns within 30 days of delivery.",
     "Tracking number emailed after dispatch.", "International buyers are responsible for customs fees."],
    ["Makes a thoughtful birthday or anniversary present.", "Arrives in a gift box with a ribbon.",
     "A card with your personal message can be added at checkout."],
    ["Our family workshop was founded in 1962 in a small Italian village.",
     "Every piece is finished by hand by three generations of artisans.",
     "We still use the wooden lasts our grandfather carved."],
    ["Made from recycled fibres and packed in compostable packaging.", "Certified carbon neutral shipping.",
     "One tree is planted for every order."],
    ["Perfect for hiking, camping and long weekends outdoors.", "Breathable and quick drying on the trail.",
     "Tested on a two-week trek across the Scottish Highlands."],
    ["Ideal for weddings, galas and black-tie evenings.", "Pairs well with pearls and a clutch.",
     "Dress it up for the opera or down for dinner."],
    ["Water resistant to 50 metres.", "Japanese quartz movement with a two-year battery.",
     "Scratch resistant mineral crystal and luminous hands."],
    ["Warning: small parts, not suitable for children under three.", "Contains natural latex.",
     "Keep away from open flame."],
    ["Officially licensed merchandise.", "Printed with the team crest for match day.",
     "Show your colours in the stands this season."],
    ["Halloween costume accessory for parties and cosplay.", "Spooky and fun for trick-or-treat night.",
     "Pair with face paint for the full zombie look."],
    ["Non-slip rubber sole approved for kitchen and hospital floors.", "Steel toe cap meets safety standards.",
     "Comfortable through a twelve-hour shift."],
    ["Vegan leather alternative, no animal products used.", "PETA approved.",
     "Free from PVC and phthalates."],
    ["Customer reviews say it runs small.", "Colour may look slightly different on your monitor.",
     "Photos taken in natural daylight."],
    ["Limited edition of 500 pieces, each numbered.", "Collaboration with a Berlin street artist.",
     "Once sold out it will not be restocked."],
]
FEATURES = [
    "a hidden zip pocket", "an adjustable strap", "reinforced stitching", "a detachable hood",
    "brass buttons", "a padded collar", "reflective piping", "a magnetic clasp", "a quilted lining",
    "cushioned insoles", "a drawstring waist", "contrast cuffs", "a keyring loop", "pearl snaps",
    "a fold-over top", "thumb holes", "a sapphire crystal", "a chronograph dial", "fringed edges",
    "embroidered initials", "a chain handle", "taped seams", "a removable belt", "puff sleeves",
]
# the long tail of a real clothing catalogue: kinds with a handful of items each and their own words
TAIL_KINDS = {
    "umbrella": "Opens automatically and survives gusts of wind in the rain.",
    "sunglasses": "Polarised lenses block UV400 glare at the beach.",
    "cufflinks": "Engraved for the groom's French-cuff shirt.",
    "wig": "Synthetic curly hair for stage and theatre performances.",
    "sewing kit": "Needles, thread and a thimble for emergency repairs.",
    "shoe polish": "Restores the shine of leather shoes with beeswax.",
    "suspenders": "Elastic braces with clips that hold trousers up.",
    "hair clip": "Claw barrette that keeps a ponytail in place.",
    "baby bib": "Absorbs drool and food spills at mealtime for toddlers.",
    "wedding veil": "Cathedral-length tulle for the bride walking down the aisle.",
    "knee pads": "Foam protection for gardening, tiling and skateboarding.",
    "lanyard": "Holds an ID badge and keys around the neck at conferences.",
    "apron": "Protects clothes while cooking, baking or painting.",
    "swim cap": "Silicone keeps hair dry in the pool during laps.",
    "tie clip": "Keeps a necktie flat against the shirt in the office.",
    "compression socks": "Improve blood circulation on long flights.",
    "earmuffs": "Keep ears warm while skiing in freezing snow.",
    "name tag": "Iron-on labels so school uniforms come back from camp.",
    "costume mask": "Venetian masquerade mask for carnival balls.",
    "insoles": "Arch support for flat feet and plantar fasciitis.",
    "rain poncho": "A waterproof cape that folds into its own pouch for festivals.",
    "bow tie": "Pre-tied for a tuxedo at a prom or a jazz club.",
    "anklet": "A delicate chain worn above the foot on summer holidays.",
    "beanie": "Knitted cap for cold mornings on the ski lift.",
    "passport wallet": "Organises boarding passes and currency on international travel.",
    "headband": "Absorbs sweat during yoga and marathon training.",
    "leg warmers": "Ballet dancers wear them to keep muscles warm in rehearsal.",
    "shoelaces": "Round replacement laces, 120 cm, fit six to eight eyelets.",
    "brooch": "An enamel pin shaped like a hummingbird for a lapel.",
    "mittens": "Fleece-lined hand warmers for building snowmen.",
}
TAIL_NAMES = list(TAIL_KINDS)
TAIL_SHARE = 0.5  # items of a long-tail kind instead of one of the eight main categories
TAIL_ATTRIBUTE_SHARE = 0.3  # long-tail listings that also spell out colour, material and style
THEMED_SHARE = 0.5  # listings that carry sentences of one listing theme

__all__ = ["make_demo_dataset", "ensure_demo_dataset", "export_demo_csv", "export_demo_new_items", "DEMO_VERSION"]


def _plural(noun: str) -> str:
    """``watch`` -> ``watches``, ``sneakers`` -> ``sneakers``, ``hair clip`` -> ``hair clips``."""
    return noun if noun.endswith("s") else noun + ("es" if noun.endswith(("ch", "sh")) else "s")


def _description(rng: np.random.Generator, kind: str, k: str, m: str, s: str) -> str:
    """One item's description, from its kind (a main category or a long-tail kind), colour ``k``,
    material ``m`` and style ``s``:

    * a long-tail kind's own sentence (:data:`TAIL_KINDS`);
    * the attribute sentence in a random wording: always for a main category, with probability
      :data:`TAIL_ATTRIBUTE_SHARE` for a long-tail kind;
    * with probability 1/2, one to three construction details (:data:`FEATURES`);
    * with probability :data:`THEMED_SHARE`, two or more sentences of one listing theme.
    """
    parts = [TAIL_KINDS[kind]] if kind in TAIL_KINDS else []
    if kind not in TAIL_KINDS or rng.random() < TAIL_ATTRIBUTE_SHARE:
        wording = ATTRIBUTE_SENTENCES[rng.integers(len(ATTRIBUTE_SENTENCES))]
        parts.append(wording.format(c=kind, k=k, m=m, s=s))
    if rng.random() < 0.5:
        details = rng.choice(len(FEATURES), size=int(rng.integers(1, 4)), replace=False)
        parts.append("With " + ", ".join(FEATURES[f] for f in details) + ".")
    if rng.random() < THEMED_SHARE:
        theme = LISTING_THEMES[rng.integers(len(LISTING_THEMES))]
        n = int(rng.integers(2, len(theme) + 1))
        parts += [theme[j] for j in sorted(rng.choice(len(theme), size=n, replace=False))]
    return " ".join(p[0].upper() + p[1:] for p in parts)


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


def _demo_items(rng: np.random.Generator, n_items: int, root: Path, prefix: str,
                ) -> tuple[pd.DataFrame, np.ndarray, np.ndarray, np.ndarray]:
    """``n_items`` items drawn from ``rng`` (raw ids ``<prefix>0000``...), their PNGs written to
    ``root/images/<row>.png``: the items table (processed.py's columns) and the category, colour and
    style index of each item (what users like)."""
    colour_names = list(COLOURS)
    cat = rng.integers(len(CATEGORIES), size=n_items)
    col = rng.integers(len(COLOURS), size=n_items)
    mat = rng.integers(len(MATERIALS), size=n_items)
    sty = rng.integers(len(STYLES), size=n_items)
    brand = rng.integers(len(BRANDS), size=n_items)
    tail = np.where(rng.random(n_items) < TAIL_SHARE, rng.integers(len(TAIL_KINDS), size=n_items), -1)
    # a long-tail kind belongs to one main category (users who like it like the kind): the text still
    # carries the preference, through the kind's own words instead of the category's name
    cat = np.where(tail >= 0, tail % len(CATEGORIES), cat)

    rows = []
    for i in range(n_items):
        c, k, m, s = CATEGORIES[cat[i]], colour_names[col[i]], MATERIALS[mat[i]], STYLES[sty[i]]
        if tail[i] >= 0:  # drawn (and liked) as its category, listed as a long-tail kind
            c = TAIL_NAMES[tail[i]]
        title = f"{BRANDS[brand[i]]} {k} {m} {c}"
        categories = ["Clothing, Shoes & Jewelry", DEPARTMENTS[rng.integers(len(DEPARTMENTS))], _plural(c).capitalize()]
        description = _description(rng, c, k, m, s)
        image_path = f"images/{i}.png"
        _draw_image(root / image_path, int(cat[i]), COLOURS[k], int(sty[i]))
        rows.append({
            "item_id": i, "source_id": f"{prefix}{i:04d}", "title": title, "brand": BRANDS[brand[i]],
            "categories": categories, "description": description, "image_url": None,
            "image_path": image_path,
            "text": mmrec_item_text(title, BRANDS[brand[i]], categories, description),
        })
    return pd.DataFrame(rows), cat, col, sty


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
    items, cat, col, sty = _demo_items(rng, n_items, layout.root, "D")

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


def export_demo_csv(out_dir: str | Path, n_users: int = 400, n_items: int = 300, seed: int = 0) -> tuple[Path, Path]:
    """The demo as someone's own data would arrive: ``interactions.csv`` (``user_id, item_id,
    timestamp`` as ISO 8601 dates, ``rating``; raw string ids ``U0007`` / ``D0042``; no split) and
    ``items.csv`` (``item_id, title, description, image`` = a path relative to the file) with the
    PNGs under ``images/``. Used by docs/prepare.md's walk-through of ``dataset=custom`` and its test.

    Returns the two file paths.
    """
    import shutil
    import tempfile

    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        layout = make_demo_dataset(tmp, n_users=n_users, n_items=n_items, seed=seed)
        inter = pd.read_parquet(layout.interactions)
        items = pd.read_parquet(layout.items)
        users = pd.read_parquet(layout.users)
        for row in items.itertuples():
            shutil.copyfile(layout.root / row.image_path, out / "images" / f"{row.source_id}.png")
    user_ids = users.set_index("user_id")["source_id"]
    item_ids = items.set_index("item_id")["source_id"]
    interactions = pd.DataFrame({
        "user_id": inter["user_id"].map(user_ids),
        "item_id": inter["item_id"].map(item_ids),
        "timestamp": pd.to_datetime(inter["timestamp"], unit="s", utc=True).dt.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "rating": inter["rating"],
    })
    table = pd.DataFrame({"item_id": items["source_id"], "title": items["title"],
                          "description": items["description"],
                          "image": [f"images/{a}.png" for a in items["source_id"]]})
    paths = out / "interactions.csv", out / "items.csv"
    interactions.to_csv(paths[0], index=False)
    table.to_csv(paths[1], index=False)
    return paths


def export_demo_new_items(out_dir: str | Path, n_items: int = 6, seed: int = 1) -> Path:
    """A table of new items for the demo (items no demo run was trained on), as
    ``recommend.py new_items=`` reads it: ``new_items.csv`` (``item_id`` = ``N0000``..., ``title``,
    ``description``, ``image`` = ``images/N0000.png``, relative to the file) with the PNGs.

    They are drawn by the demo's own generator from another seed, so they look like catalogue items.
    ``description`` holds the brand, the category path and the description in that order, so that
    title + description is the demo items' text (``mmrec_item_text(title, brand, categories,
    description)``). Returns the file's path. ``python -m mllmrec.data.demo new-items <dir>``.
    """
    import shutil
    import tempfile

    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        (Path(tmp) / "images").mkdir()
        items, *_ = _demo_items(np.random.default_rng(10_000 + seed), n_items, Path(tmp), "N")
        for row in items.itertuples():
            shutil.copyfile(Path(tmp) / row.image_path, out / "images" / f"{row.source_id}.png")
    table = pd.DataFrame({
        "item_id": items["source_id"], "title": items["title"],
        "description": [mmrec_item_text(None, b, c, d) for b, c, d in
                        zip(items["brand"], items["categories"], items["description"])],
        "image": [f"images/{a}.png" for a in items["source_id"]],
    })
    path = out / "new_items.csv"
    table.to_csv(path, index=False)
    return path


if __name__ == "__main__":  # python -m mllmrec.data.demo new-items <dir> [n]
    import sys

    if len(sys.argv) < 3 or sys.argv[1] != "new-items":
        sys.exit("usage: python -m mllmrec.data.demo new-items <out dir> [number of items]")
    print(export_demo_new_items(sys.argv[2], *(int(a) for a in sys.argv[3:4])))
