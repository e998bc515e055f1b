"""The whole Amazon pipeline against a local server: counts, split, text, images, manifest,
no-op re-runs, rebuilds on changed input, atomic replacement, and clear errors."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mllmrec import __version__
from mllmrec.data import load_processed_dataset, read_items, split_sizes
from mllmrec.data.errors import DatasetError
from mllmrec.data.processed import DatasetLayout
from mllmrec.prepare.pipeline import PREPARE_VERSION, AmazonSource, PrepareOptions, prepare_amazon

from prepare_fixtures import (
    Route,
    image_bytes,
    random_ratings,
    reference_mmrec,
    serve_amazon_2014,
    write_json_lines_gz,
)

SEED = 3


def _opts(server, **kw) -> PrepareOptions:
    base = {"base_url_2014": server.url(""), "base_url_2018": server.url(""), "timeout_s": 5, "retries": 1,
            "backoff_s": 0.01, "image_workers": 4, "image_timeout_s": 5, "image_retries": 1, "progress": False}
    return PrepareOptions(**{**base, **kw})


def _source(opts: PrepareOptions, **kw) -> AmazonSource:
    return AmazonSource.from_config({"release": 2014, "category": "Baby", **kw}, opts)


def _prepare(root: Path, server, **opt_kw):
    opts = _opts(server, **opt_kw)
    return prepare_amazon("baby", root, _source(opts), split_seed=7, opts=opts, display_name="Baby")


@pytest.fixture
def served(http_server):
    rows = random_ratings(SEED)
    kept, uid, iid = reference_mmrec(rows)
    asins = list(iid)
    files = serve_amazon_2014(http_server, "baby", rows, no_meta={asins[1]}, bad_images={asins[2]})
    return http_server, rows, (kept, uid, iid), files


def test_pipeline_output(served, tmp_path: Path, caplog) -> None:
    server, rows, (kept, uid, iid), files = served
    with caplog.at_level(logging.INFO):
        outcome = _prepare(tmp_path / "baby", server)
    assert outcome.built
    layout = DatasetLayout(tmp_path / "baby")
    inter = pd.read_parquet(layout.interactions)
    # interactions: the reference's rows, ids and order
    assert list(zip(inter.user_id, inter.item_id, inter.timestamp)) == [(uid[u], iid[i], t) for u, i, _, t in kept]
    assert f"{len(uid):,} users, {len(iid):,} items, {len(kept):,} interactions" in caplog.text
    # split: MMRec's per-user counts
    per_user = inter.groupby("user_id")["x_label"].apply(lambda s: tuple(np.bincount(s, minlength=3)))
    n = inter.groupby("user_id").size()
    want = dict(zip(n.index, zip(*(a.tolist() for a in split_sizes(n.to_numpy())))))
    assert per_user.to_dict() == want
    # users and items tables
    users = pd.read_parquet(layout.users)
    assert users.source_id.tolist() == list(uid)
    items = read_items(layout.root, len(iid))
    assert items.source_id.tolist() == list(iid)
    assert items.title[0].startswith('Bottle ') and '"Deluxe"' in items.title[0]
    assert items.text[0] == " ".join([items.title[0], items.brand[0], *items.categories[0], items.description[0]])
    assert items.title[1] == "" and items.text[1] == "" and pd.isna(items.image_url[1])  # no metadata
    assert pd.isna(items.image_path[2])                                                   # corrupt image
    assert items.image_path[0] == "images/0.jpg" and (layout.root / items.image_path[0]).is_file()
    assert items.image_path.notna().sum() == len(iid) - 2
    # manifest: inputs, counts, split, code version
    m = outcome.manifest
    assert m["source"]["files"]["ratings_Baby.csv"]["sha256"] == hashlib.sha256(files["ratings"]).hexdigest()
    assert m["source"]["files"]["meta_Baby.json.gz"]["sha256"] == hashlib.sha256(files["meta"]).hexdigest()
    assert (m["n_users"], m["n_items"], m["n_interactions"]) == (len(uid), len(iid), len(kept))
    assert m["split"] == {"rule": "mmrec", "mode": "random", "seed": 7}
    assert m["code"] == {"mllmrec": __version__, "prepare": PREPARE_VERSION}
    assert m["filter"]["duplicate_rows"] == 6 and m["items"]["without_metadata"] == 1
    assert m["images"]["failed"] == 2  # corrupt + no URL
    data = load_processed_dataset(layout.root)
    assert data.n_users == len(uid) and data.n_items == len(iid)


def test_rerun_is_a_noop_and_changed_input_rebuilds(served, tmp_path: Path, caplog) -> None:
    server, rows, _, _ = served
    root = tmp_path / "baby"
    first = _prepare(root, server)
    stamp = DatasetLayout(root).interactions.stat().st_mtime_ns
    server.requests.clear()
    with caplog.at_level(logging.INFO):
        again = _prepare(root, server)
    assert not again.built and "up to date" in caplog.text
    assert server.requests == []                                    # nothing downloaded again
    assert DatasetLayout(root).interactions.stat().st_mtime_ns == stamp
    assert again.manifest["key"] == first.manifest["key"]
    # another split seed is another dataset
    opts = _opts(server)
    other = prepare_amazon("baby", root, _source(opts), split_seed=8, opts=opts)
    assert other.built and other.manifest["key"] != first.manifest["key"]
    # a changed raw file rebuilds with the new content
    raw = root / "raw" / "ratings_Baby.csv"
    raw.write_text(raw.read_text() + "".join(f"ANEW,B{n},5.0,{1_400_000_000 + n}\n" for n in range(3)))
    changed = prepare_amazon("baby", root, _source(opts), split_seed=8, opts=opts)
    assert changed.built and changed.manifest["filter"]["rows_read"] == len(rows) + 3


def test_killed_write_leaves_the_previous_dataset(served, tmp_path: Path, monkeypatch) -> None:
    server, *_ = served
    root = tmp_path / "baby"
    _prepare(root, server, images=False)
    layout = DatasetLayout(root)
    before = {p.name: p.read_bytes() for p in layout.processed.iterdir()}
    calls = {"n": 0}
    real = pd.DataFrame.to_parquet

    def dies_on_second_file(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("killed mid-write")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(pd.DataFrame, "to_parquet", dies_on_second_file)
    with pytest.raises(KeyboardInterrupt):
        _prepare(root, server, images=False, split_mode="chronological")
    monkeypatch.undo()
    assert calls["n"] == 2
    assert {p.name: p.read_bytes() for p in layout.processed.iterdir()} == before
    assert [p.name for p in root.iterdir() if p.name.startswith(".processed")] == []  # no staging left
    assert load_processed_dataset(root).n_users > 0


def test_chronological_split_puts_latest_rows_in_test(served, tmp_path: Path) -> None:
    server, *_ = served
    _prepare(tmp_path / "baby", server, images=False, split_mode="chronological")
    inter = pd.read_parquet(DatasetLayout(tmp_path / "baby").interactions)
    for _, g in inter.groupby("user_id"):
        train, valid, test = (g.timestamp[g.x_label == k] for k in (0, 1, 2))
        assert train.max() <= valid.min() <= valid.max() <= test.min()


def test_collapse_under_5_core_is_a_clear_error(http_server, tmp_path: Path) -> None:
    rows = [(f"A{u}", f"B{(u + j) % 9}", 5.0, 1_300_000_000 + j) for u in range(30) for j in range(3)]
    serve_amazon_2014(http_server, "tiny", rows)
    with pytest.raises(DatasetError, match=r"nothing survives the 5-core.*90 rows"):
        _prepare(tmp_path / "baby", http_server)
    assert not DatasetLayout(tmp_path / "baby").processed.exists()


def test_expected_counts_mismatch_warns_loudly(served, tmp_path: Path, caplog) -> None:
    server, _, (kept, uid, iid), _ = served
    opts = _opts(server, images=False)
    source = _source(opts, expected={"users": 19445, "items": len(iid), "interactions": 160792})
    with caplog.at_level(logging.WARNING):
        out = prepare_amazon("baby", tmp_path / "baby", source, split_seed=7, opts=opts)
    assert "DIFFER from MMRec's" in caplog.text and "users: expected 19,445, got" in caplog.text
    assert "items:" not in caplog.text  # only the differing counts are listed
    assert out.manifest["counts_match_expected"] is False


def test_bad_options_fail_before_any_download(http_server, tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="split_mode"):
        PrepareOptions(split_mode="temporal").validate()
    with pytest.raises(DatasetError, match="release must be 2014 or 2018"):
        AmazonSource.from_config({"release": 2016, "category": "Baby"}, _opts(http_server))
    with pytest.raises(DatasetError, match="unknown key"):
        PrepareOptions.from_config({"image_worker": 3})
    assert http_server.requests == []


def test_amazon_2018_release(http_server, tmp_path: Path) -> None:
    rows = random_ratings(SEED + 1)
    kept, uid, iid = reference_mmrec(rows)
    reviews = [{"reviewerID": u, "asin": i, "overall": r, "unixReviewTime": t, "reviewText": "x"} for u, i, r, t in rows]
    meta = [{"asin": a, "title": f"T {a}", "category": ["Gift Cards", "Sub"], "description": ["d1", "d2"],
             "brand": "", "image": [http_server.url(f"images/I/{a}._SX38_SY50_CR,0,0,38,50_.jpg")]} for a in iid]
    write_json_lines_gz(tmp_path / "src" / "r.json.gz", reviews)
    write_json_lines_gz(tmp_path / "src" / "m.json.gz", meta)
    http_server.routes["/categoryFilesSmall/Gift_Cards_5.json.gz"] = Route((tmp_path / "src" / "r.json.gz").read_bytes())
    http_server.routes["/metaFiles2/meta_Gift_Cards.json.gz"] = Route((tmp_path / "src" / "m.json.gz").read_bytes())
    for a in iid:
        http_server.routes[f"/images/I/{a}.jpg"] = Route(image_bytes())  # only the large version exists
    opts = _opts(http_server)
    source = AmazonSource.from_config({"release": 2018, "category": "Gift_Cards"}, opts)
    out = prepare_amazon("gc", tmp_path / "gc", source, split_seed=1, opts=opts)
    assert (out.manifest["n_users"], out.manifest["n_items"], out.manifest["n_interactions"]) == (
        len(uid), len(iid), len(kept))
    items = read_items(tmp_path / "gc")
    assert items.text[0] == f"T {items.source_id[0]} Gift Cards Sub d1 d2"
    assert items.image_path.notna().all()


def test_images_of_renumbered_items_are_not_reused(served, tmp_path: Path) -> None:
    from mllmrec.prepare.images import read_sources

    server, *_ = served
    root = tmp_path / "baby"
    _prepare(root, server)
    # five new users x five new items at the top of the file take ids 0..4 and shift every other id
    raw = root / "raw" / "ratings_Baby.csv"
    block = "".join(f"ANEW{u},BNEW{i},5.0,{1_400_000_000 + i}\n" for u in range(5) for i in range(5))
    raw.write_text(block + raw.read_text())
    _prepare(root, server, images=False)
    items = read_items(root)
    assert items.source_id[:5].tolist() == [f"BNEW{i}" for i in range(5)]
    assert items.image_path[:5].isna().all()
    # every old item moved 5 ids up, so each file on disk now shows another product: none is used
    assert items.image_path.isna().all()
    # with images on, they are fetched again for their new ids
    _prepare(root, server)
    items = read_items(root)
    sources = read_sources(root / "images")
    shown = items[items.image_path.notna()]
    assert len(shown) == items.image_url.notna().sum() - 1  # all but the corrupt one
    assert all(sources[i] == url for i, url in zip(shown.item_id, shown.image_url))
