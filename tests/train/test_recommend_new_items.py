"""recommend with a table of new items (``recommend.py new_items=``, ``mllmrec.recommend(new_items=...)``)
on a demo run trained with a vision MLLM's (fake backend) descriptions, against references built by
hand: the description (item text + the fake model's own answer to Prompt 1 on the image), the dense
cosine neighbours among the trained items, the threshold, the normalised propagation and the tower."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from new_items_reference import dense_neighbours, dense_new_item_representations  # noqa: E402
from run_helpers import train_demo_run  # noqa: E402

from mllmrec.data.errors import DatasetError  # noqa: E402
from mllmrec.errors import ConfigError  # noqa: E402

from train_helpers import ROOT, SMALL_DEMO, compose_config  # noqa: E402

pytestmark = pytest.mark.slow

MLLM = ["mllm=qwen25vl", "reason.backend=fake"]
COPIED = 7  # the catalogue item the table copies


@pytest.fixture(scope="module")
def fake_run(tmp_path_factory, data_dir):
    """A small demo run trained on the fake backend's qwen25vl descriptions (reason.py's outputs)."""
    from hydra.core.global_hydra import GlobalHydra

    from mllmrec.reasoning import run_reasoning

    cfg = compose_config("reason", [f"paths.data_dir={data_dir}", *SMALL_DEMO[:2], *MLLM, "reason.progress=false"],
                         tmp_path_factory.mktemp("reason"))
    GlobalHydra.instance().clear()
    run_reasoning(cfg)
    run = tmp_path_factory.mktemp("new_items") / "run"
    train_demo_run(run, data_dir, *MLLM)
    return run


@pytest.fixture(scope="module")
def restored(fake_run):
    from mllmrec.train.restore import restore_run

    return restore_run(fake_run)


@pytest.fixture(scope="module")
def table(tmp_path_factory, restored):
    """The demo's new-items table (4 items) + an exact copy of catalogue item COPIED's content (its
    image copied under another name) + an item whose image file does not exist."""
    from mllmrec.data import read_items
    from mllmrec.data.demo import export_demo_new_items
    from mllmrec.data.text import mmrec_item_text

    folder = tmp_path_factory.mktemp("table")
    path = export_demo_new_items(folder, n_items=4)
    frame = pd.read_csv(path)
    layout = restored.datamodule.layout
    item = read_items(layout.root).iloc[COPIED]
    shutil.copyfile(layout.root / item["image_path"], folder / "images" / "copy.png")
    copy = {"item_id": "COPY", "title": item["title"], "image": "images/copy.png",
            "description": mmrec_item_text(None, item["brand"], list(item["categories"]), item["description"])}
    broken = {"item_id": "NOIMG", "title": "Zoriva red wool scarf", "image": "images/missing.png",
              "description": "A formal scarf made of wool in a red finish."}
    frame = pd.concat([frame, pd.DataFrame([copy, broken])], ignore_index=True)
    frame.to_csv(path, index=False)
    return path


def _fake_image_description(image: Path, display_name: str) -> str:
    """What the fake backend answers to Prompt 1 on ``image`` (built here from its parts)."""
    import hashlib

    from mllmrec.reasoning import image_prompt
    from mllmrec.reasoning.backends import Message, Request
    from mllmrec.reasoning.backends.base import ImagePart, Sampling
    from mllmrec.reasoning.backends.fake import FakeBackend

    data = image.read_bytes()
    request = Request((Message("user", image_prompt(display_name),
                               ImagePart(data, "image/png", hashlib.sha256(data).hexdigest())),),
                      Sampling(max_tokens=160, temperature=0.0, top_p=1.0, seed=0))
    return FakeBackend("Qwen/Qwen2.5-VL-7B-Instruct@main").generate([request])[0].text


def test_new_item_scores_equal_a_hand_computed_reference(fake_run, restored, table):
    import mllmrec
    from mllmrec.encoding import encode_texts

    frame = mllmrec.recommend(fake_run, k=10, new_items=table)
    described = frame.attrs["new_item_descriptions"]
    raw = pd.read_csv(table)
    assert frame["new"].all() and set(frame["item"]) <= set(raw["item_id"]) and frame["item_idx"].isna().all()
    # 6 new items, k=10: every user gets all six, ranked
    data, dm, model = restored.datamodule.data, restored.datamodule, restored.model
    assert len(frame) == data.n_users * 6
    # the descriptions, by hand: title + text, a space, the fake model's description of the image
    display = str(restored.cfg.dataset.display_name)
    expected_desc = []
    for row in raw.itertuples():
        text = f"{row.title} {row.description}"
        image = table.parent / row.image
        expected_desc.append(f"{text} {_fake_image_description(image, display)}" if image.is_file() else text)
    assert described["description"].tolist() == expected_desc
    assert described["image_status"].tolist() == ["ok"] * 5 + ["unreadable"]
    assert "missing.png" in described["image_error"].iloc[5]
    # the scores, by hand: encode, dense neighbours + threshold, normalised propagation, tower, h_u . h_n
    features = torch.from_numpy(encode_texts(expected_desc, dm.encoder_spec))
    spec = dm.graph_spec
    h_new = dense_new_item_representations(model, dm.item_graph, dm.item_features, features, spec.ks, spec.alpha)
    with torch.no_grad():
        reference = (model.user_repr(torch.arange(data.n_users)) @ h_new.T).numpy()
    column = {item: j for j, item in enumerate(raw["item_id"])}
    got = reference[frame["user_idx"].to_numpy(), frame["item"].map(column).to_numpy()]
    np.testing.assert_allclose(frame["score"], got, rtol=1e-4, atol=1e-5)
    # ranked by that score, titles from the table
    for _, rows in frame.groupby("user_idx"):
        assert rows["rank"].tolist() == list(range(1, 7)) and (np.diff(rows["score"]) <= 1e-6).all()
    assert (frame["title"] == frame["item"].map(dict(zip(raw["item_id"], raw["title"])))).all()


def test_a_copy_of_a_catalogue_item_gets_that_items_semantic_neighbours(fake_run, restored, table):
    import mllmrec
    from mllmrec.encoding import encode_texts
    from mllmrec.graph import semantic_graph
    from mllmrec.models.cold_start import new_item_neighbours

    dm = restored.datamodule
    described = mllmrec.recommend(fake_run, k=1, new_items=table).attrs["new_item_descriptions"]
    copy = described.set_index("item").loc["COPY"]
    # described exactly as the catalogue item was by reason.py (same text, same image description)
    outputs = pd.read_parquet(dm.layout.reasoning("qwen25vl-fake") / "item_descriptions.parquet")
    assert copy["description"] == outputs.set_index("item_id").loc[COPIED, "description"]
    spec = dm.graph_spec
    features = torch.from_numpy(encode_texts([copy["description"]], dm.encoder_spec))
    _, neighbours = new_item_neighbours(dm.item_features, features, spec.ks, spec.alpha)
    row = semantic_graph(dm.item_features, spec.ks, spec.alpha).coalesce()
    own = row.indices()[1][row.indices()[0] == COPIED]
    assert COPIED in own.tolist() and len(own) >= 2
    assert sorted(neighbours.tolist()) == sorted(own.tolist())
    # and the dense reference agrees
    assert sorted(dense_neighbours(dm.item_features.numpy().astype(np.float64), features.numpy().astype(np.float64),
                                   spec.ks, spec.alpha)[0]) == sorted(own.tolist())


def test_merged_with_the_catalogue_matches_a_brute_force_ranking(fake_run, restored, table):
    from mllmrec.train.recommend import recommend

    data, model = restored.datamodule.data, restored.model
    k = 15
    frame = recommend(fake_run, k=k, new_items=table, new_items_merge=True)
    described = frame.attrs["new_item_descriptions"]
    from mllmrec.train.new_items import new_item_vectors

    h_new = new_item_vectors(restored.datamodule, model, described["description"].tolist())
    users = torch.arange(data.n_users)
    with torch.no_grad():
        model.prepare_eval()
        catalogue = model.full_scores(users).numpy().astype(np.float64)
        new = (model.user_repr(users) @ h_new.T).numpy().astype(np.float64)
    seen = ((data.train + data.valid).toarray() > 0)
    scores = np.concatenate([np.where(seen, -np.inf, catalogue), new], axis=1)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    n_items = data.n_items
    ids = np.concatenate([pd.read_parquet(restored.datamodule.layout.items)["source_id"].to_numpy(),
                          described["item"].to_numpy()])
    expected = [list(ids[row]) for row in order]
    got = frame.groupby("user_idx", sort=True)["item"].apply(list)
    assert [got[u] for u in range(data.n_users)] == expected
    assert (frame["new"] == frame["item"].isin(set(described["item"]))).all()
    assert frame["new"].any() and (~frame["new"]).any()  # both kinds reach some top-15
    old = frame[~frame["new"]]
    assert (old["item_idx"].astype(int) < n_items).all() and frame.loc[frame["new"], "item_idx"].isna().all()


def test_exported_new_item_vectors_reproduce_their_scores(fake_run, table, tmp_path):
    from mllmrec.train.recommend import recommend

    frame = recommend(fake_run, k=6, new_items=table, export=tmp_path / "emb")
    users = np.load(tmp_path / "emb" / "user_embeddings.npy")
    new = np.load(tmp_path / "emb" / "new_item_embeddings.npy")
    rows = pd.read_parquet(tmp_path / "emb" / "new_items.parquet")
    assert rows["item"].tolist() == pd.read_csv(table)["item_id"].tolist() and new.shape == (6, users.shape[1])
    column = {item: j for j, item in enumerate(rows["item"])}
    np.testing.assert_allclose(frame["score"], (users @ new.T)[frame["user_idx"], frame["item"].map(column)],
                               rtol=1e-5, atol=1e-5)


def test_a_rerun_generates_nothing_again(fake_run, table, monkeypatch):
    from mllmrec.reasoning.backends.fake import FakeBackend
    from mllmrec.train.recommend import recommend

    calls = []
    original = FakeBackend.generate
    monkeypatch.setattr(FakeBackend, "generate", lambda self, requests: calls.append(len(requests)) or
                        original(self, requests))
    first = recommend(fake_run, k=2, new_items=table).attrs["new_item_descriptions"]
    assert sum(calls) <= 4  # the copy's image was described by reason.py: same key, never asked again
    calls.clear()
    again = recommend(fake_run, k=2, new_items=table).attrs["new_item_descriptions"]
    assert calls == []  # every description comes from the generation store
    pd.testing.assert_frame_equal(first, again)


def test_image_urls_are_downloaded_then_described(fake_run, table, tmp_path):
    import functools
    import http.server
    import threading

    from mllmrec.train.recommend import recommend

    raw = pd.read_csv(table).iloc[:2].copy()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(table.parent))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        raw["item_id"] = ["U1", "U2"]
        raw["image"] = [f"{base}/{raw['image'].iloc[0]}", f"{base}/images/absent.png"]
        path = tmp_path / "urls.csv"
        raw.to_csv(path, index=False)
        described = recommend(fake_run, k=1, new_items=path).attrs["new_item_descriptions"]
    finally:
        server.shutdown()
    assert described["image_status"].tolist() == ["ok", "unreadable"]
    assert described["image_description"].iloc[0].startswith("fake-image")
    assert (fake_run / "new_items" / "images" / "0.jpg").is_file()


def test_an_mllm_none_run_encodes_the_new_items_text(tmp_path, data_dir, table):
    from mllmrec.train.recommend import recommend

    run = tmp_path / "run"
    train_demo_run(run, data_dir)
    frame = recommend(run, k=2, new_items=table, reason_overrides=["reason.backend=fake"])
    described = frame.attrs["new_item_descriptions"]
    raw = pd.read_csv(table)
    assert described["description"].tolist() == [f"{t} {d}" for t, d in zip(raw["title"], raw["description"])]
    assert set(described["image_status"]) == {"no_mllm"}


# ------------------------------------------------------------------ errors: one message, exit 2
def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "disabled", "HYDRA_FULL_ERROR": "0"}
    return subprocess.run([sys.executable, str(ROOT / "recommend.py"), *args, "extras.print_config=false"],
                          capture_output=True, text=True, env=env, timeout=300)


def _bad_table(folder: Path, name: str, frame: pd.DataFrame) -> Path:
    path = folder / name
    frame.to_csv(path, index=False)
    return path


@pytest.mark.parametrize("case, message", [
    ("no_id_column", "new_items.item='item_id' is not a column of"),
    ("duplicate_ids", "1 item id(s) appear more than once in column 'item_id': N1"),
    ("catalogue_ids", "2 item id(s) are already catalogue items of the run's dataset: D0003, D0005"),
])
def test_bad_new_items_tables_are_one_message_and_exit_2(fake_run, tmp_path, case, message):
    rows = {"no_id_column": pd.DataFrame({"id": ["N1"], "title": ["a"], "description": ["b"]}),
            "duplicate_ids": pd.DataFrame({"item_id": ["N1", "N2", "N1"], "title": ["a", "b", "c"],
                                           "description": ["x", "y", "z"]}),
            "catalogue_ids": pd.DataFrame({"item_id": ["D0003", "N2", "D0005"], "title": ["a", "b", "c"],
                                           "description": ["x", "y", "z"]})}[case]
    result = _cli(f"run={fake_run}", f"new_items={_bad_table(tmp_path, 'new.csv', rows)}")
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert output.count(message) == 1, output
    assert "Traceback" not in output, output
    # the library raises the same error, before any data or weights are loaded
    import mllmrec.train.restore as restore
    from mllmrec.train.recommend import recommend

    def no_loading(*args, **kwargs):
        raise AssertionError("the run was restored before the table was checked")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(restore, "restore_run", no_loading)
        with pytest.raises(DatasetError, match=message.replace("(", r"\(").replace(")", r"\)")):
            recommend(fake_run, new_items=tmp_path / "new.csv")


def test_bad_reasoning_overrides_and_column_keys_are_errors(fake_run, table):
    from mllmrec.train.recommend import recommend

    with pytest.raises(ConfigError, match="reason.nope=1: conf/reason.yaml has no key 'reason.nope'"):
        recommend(fake_run, new_items=table, reason_overrides=["reason.nope=1"])
    with pytest.raises(DatasetError, match="new_items.colour: unknown key"):
        recommend(fake_run, new_items=table, new_item_columns={"colour": "c"})
    with pytest.raises(DatasetError, match="new_items.image='picture' is not a column of"):
        recommend(fake_run, new_items=table, new_item_columns={"image": "picture"})
    with pytest.raises(ConfigError, match="need new_items="):
        recommend(fake_run, new_items_merge=True)


def test_an_id_only_model_cannot_score_new_items(tmp_path, data_dir, table):
    run = tmp_path / "bpr"
    train_demo_run(run, data_dir, "model=bpr")
    result = _cli(f"run={run}", f"new_items={table}")
    output = result.stdout + result.stderr
    message = "new_items: the run's model BPR (mllmrec.models.BPR) reads no item content"
    assert result.returncode == 2, output
    assert output.count(message) == 1 and "Traceback" not in output, output
    from mllmrec.train.recommend import recommend

    with pytest.raises(ConfigError, match="an ID-only model"):
        recommend(run, new_items=table)


def test_the_documented_command_writes_both_tables(fake_run, table, tmp_path):
    out = tmp_path / "top.csv"
    result = _cli(f"run={fake_run}", f"new_items={table}", "k=3", "reason.backend=fake", f"output={out}")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    written = pd.read_csv(out)
    assert list(written.columns) == ["user", "rank", "item", "score", "title", "new", "user_idx", "item_idx"]
    assert written["new"].all() and (written.groupby("user")["rank"].max() == 3).all()
    described = pd.read_parquet(tmp_path / "new_item_descriptions.parquet")
    assert described["item"].tolist() == pd.read_csv(table)["item_id"].tolist()
    assert described.set_index("item").loc["NOIMG", "image_status"] == "unreadable"
    # the unreadable image is a warning with its file, not an error
    assert "missing.png" in result.stderr + result.stdout
