"""``python prepare.py`` as a user runs it: a subprocess with Hydra overrides, against a local server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from prepare_fixtures import random_ratings, reference_mmrec, serve_amazon_2014

REPO = Path(__file__).resolve().parents[2]
BABY_SHA256 = "a219f779b2694f660f1ee243f2af71d63c2c9828425e716569faace305e978d1"


def _run(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "prepare.py", f"paths.data_dir={tmp_path / 'data'}", f"paths.log_dir={tmp_path / 'logs'}",
           "prepare.progress=false", *overrides]
    env = {k: v for k, v in os.environ.items() if k not in ("MLLMREC_DATA_DIR", "PROJECT_ROOT")}
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


def test_prepare_baby_end_to_end(http_server, tmp_path: Path) -> None:
    rows = random_ratings(11)
    kept, uid, iid = reference_mmrec(rows)
    serve_amazon_2014(http_server, "cli", rows)
    args = (f"prepare.base_url_2014={http_server.url('')}", "prepare.backoff_s=0.01", "prepare.image_workers=4")
    first = _run(tmp_path, "dataset=baby", *args)
    out = first.stdout + first.stderr
    assert first.returncode == 0, out
    assert "CHECKSUM MISMATCH" in out and BABY_SHA256 in out           # the fixture is not the real file
    assert "DIFFER from MMRec's" in out and "users: expected 19,445" in out
    assert f"{len(uid):,} users, {len(iid):,} items, {len(kept):,} interactions" in out
    root = tmp_path / "data" / "baby"
    assert (root / "raw" / "ratings_Baby.csv").is_file()               # kept despite the mismatch
    manifest = json.loads((root / "processed" / "manifest.json").read_text())
    assert (manifest["n_users"], manifest["n_items"], manifest["n_interactions"]) == (len(uid), len(iid), len(kept))
    assert manifest["split"] == {"rule": "mmrec", "mode": "random", "seed": 999}
    assert len(list((root / "images").glob("*.jpg"))) == len(iid)
    assert list((tmp_path / "logs" / "prepare" / "baby").iterdir())    # Hydra's run dir under paths.log_dir

    again = _run(tmp_path, "dataset=baby", *args)
    assert again.returncode == 0 and "up to date" in again.stdout + again.stderr

    bad = _run(tmp_path, "dataset=baby", "prepare.split_mode=temporal", *args)
    assert bad.returncode == 2
    assert "prepare.split_mode must be one of" in bad.stdout + bad.stderr
    assert "Traceback" not in bad.stdout + bad.stderr


def test_prepare_mmrec_import_command(tmp_path: Path) -> None:
    src = tmp_path / "released" / "toy"
    src.mkdir(parents=True)
    rows = [(u, (u + j) % 7, 5.0, 1_300_000_000 + j, [0, 0, 0, 1, 2][j]) for u in range(9) for j in range(5)]
    pd.DataFrame(rows, columns=["userID", "itemID", "rating", "timestamp", "x_label"]).to_csv(
        src / "toy.inter", sep="\t", index=False)
    # (all-zero features are refused since issue 18: they carry no information)
    np.save(src / "image_text_feat.npy", np.random.default_rng(0).random((7, 3)).astype(np.float32))
    result = _run(tmp_path, "dataset=mmrec", f"dataset.root={src}", "dataset.name=toy")
    assert result.returncode == 0, result.stdout + result.stderr
    manifest = json.loads((tmp_path / "data" / "toy" / "processed" / "manifest.json").read_text())
    assert (manifest["n_users"], manifest["n_items"], manifest["n_interactions"]) == (9, 7, 45)
    assert sorted(p.name for p in src.iterdir()) == ["image_text_feat.npy", "toy.inter"]
