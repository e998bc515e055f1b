"""The training app: configs, the task, outputs, early stopping, resume, MMRec-format folders."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from mllmrec.data import DatasetError
from mllmrec.train.checks import ConfigError
from mllmrec.train.task import build_datamodule, train

from train_helpers import CONF, ROOT, SMALL_DEMO

METRICS = {"recall@10", "recall@20", "ndcg@10", "ndcg@20"}


def _group_choices(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize(
    "group",
    ["dataset", "mllm", "encoder", "graph", "model", "trainer", "logger", "callbacks", "experiment",
     "hparams_search"],
)
def test_every_group_choice_composes(group):
    choices = _group_choices(group)
    if group in ("dataset", "mllm", "encoder", "graph", "model", "trainer", "logger", "callbacks"):
        assert choices, f"conf/{group} has no options"
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        for choice in choices:
            override = f"{group}={choice}"
            extra = ["dataset.root=/x", "dataset.name=baby"] if (group, choice) == ("dataset", "mmrec") else []
            cfg = compose(config_name="train", overrides=[override, *extra], return_hydra_config=True)
            assert cfg.graph.ks >= 1
    GlobalHydra.instance().clear()


def test_tuned_defaults_follow_the_dataset():
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        expected = {"baby": (0.7, 10), "sports": (0.4, 10), "clothing": (0.6, 15)}
        for name, (alpha, kc) in expected.items():
            cfg = compose(config_name="train", overrides=[f"dataset={name}"])
            assert (cfg.graph.alpha, cfg.graph.kc, cfg.graph.ks, cfg.graph.layers) == (alpha, kc, 10, 1)
            assert (cfg.model.d, cfg.data.batch_size, cfg.model.optimizer.lr, cfg.seed) == (64, 2048, 1e-3, 999)
            assert cfg.callbacks.early_stopping.patience == 20
            assert cfg.callbacks.early_stopping.monitor == "val/recall@20"
        cfg = compose(config_name="train", overrides=["dataset=baby", "graph.alpha=0.4"])
        assert cfg.graph.alpha == 0.4
    GlobalHydra.instance().clear()


def test_two_epoch_run_writes_metrics_json(train_cfg, tmp_path):
    cfg = train_cfg("trainer.max_epochs=2")
    summary, objs = train(cfg)
    written = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert written["best_epoch"] in (0, 1)
    assert set(written["valid"]) == METRICS and set(written["test"]) == METRICS
    assert all(0.0 <= v <= 1.0 for v in written["test"].values())
    assert [h["epoch"] for h in written["history"]] == [0, 1]
    best = max(written["history"], key=lambda h: h["recall@20"])
    assert written["valid"]["recall@20"] == pytest.approx(best["recall@20"])
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()
    # the frozen-feature propagation ran once for the whole run, not per batch or per epoch
    assert objs["model"].n_propagations == 1


def test_a_cached_runs_fit_start_does_no_knn_search(train_cfg, tmp_path, monkeypatch):
    """Issue 16: the graph statistics come out of the graph build (and its cache), so a second run on
    the same inputs, GraphStatistics callback included, never searches neighbours again."""
    import mllmrec.graph.knn as knn

    overrides = ("trainer.max_epochs=1", "dataset.max_epochs=1", "callbacks.user_tsne=null", "skip_finished=false")
    train(train_cfg(*overrides))
    stats_file = tmp_path / "run" / "plots" / "graph_statistics.json"
    first = json.loads(stats_file.read_text())
    stats_file.unlink()

    def no_search(*args, **kwargs):
        raise AssertionError("a kNN search ran in a run whose graph is cached")

    monkeypatch.setattr(knn, "semantic_knn", no_search)
    monkeypatch.setattr(knn, "cooccurrence_knn", no_search)
    train(train_cfg(*overrides))
    assert json.loads(stats_file.read_text()) == first  # written again, from the cached statistics
    assert first["knn_edges"] > 0 and first["final_edges"] > 0


def test_fast_dev_run(train_cfg):
    summary, objs = train(train_cfg("+trainer.fast_dev_run=true"))
    assert set(summary["test"]) == METRICS
    assert objs["trainer"].current_epoch == 1


def test_early_stopping_stops(train_cfg):
    # lr 0 -> validation never improves after epoch 0 -> stops after patience + 1 epochs
    cfg = train_cfg("model.optimizer.lr=1e-12", "callbacks.early_stopping.patience=2", "trainer.max_epochs=30",
                    "dataset.max_epochs=30")
    summary, objs = train(cfg)
    assert summary["epochs_run"] == 3
    assert summary["best_epoch"] == 0


def test_resume_continues_epoch_count(train_cfg, tmp_path):
    first, _ = train(train_cfg("trainer.max_epochs=2"))
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert last.is_file()
    resumed, objs = train(train_cfg("trainer.max_epochs=4", f"ckpt_path={last}"))
    assert [h["epoch"] for h in resumed["history"]] == [0, 1, 2, 3]
    assert resumed["history"][:2] == first["history"]
    assert objs["trainer"].current_epoch == 4


def test_negatives_never_hit_training_positives(train_cfg):

    from mllmrec.train.datamodule import MLLMRecDataModule

    cfg = train_cfg()
    dm: MLLMRecDataModule = build_datamodule(cfg)
    dm.setup("fit")
    train_csr = dm.data.train
    loader = dm.train_dataloader()
    seen = 0
    epochs = []
    for epoch in range(3):
        loader.sampler.set_epoch(epoch)
        batches = list(loader)
        users, pos, neg = (torch.cat(x).numpy().copy() for x in zip(*batches))
        assert len(users) == train_csr.nnz  # every training interaction once per epoch
        assert np.all(np.asarray(train_csr[users, pos]).ravel() == 1)
        assert np.all(np.asarray(train_csr[users, neg]).ravel() == 0)
        seen += len(users)
        epochs.append(neg)
    assert not np.array_equal(epochs[0], epochs[1])  # reshuffled / resampled each epoch
    loader.sampler.set_epoch(0)
    again = torch.cat([b[2] for b in loader]).numpy().copy()
    assert np.array_equal(again, epochs[0])  # seeded by (seed, epoch): a resumed run sees the same


def test_sample_negatives_dense_user():
    """A user who interacted with all items but one always gets that one."""
    import scipy.sparse as sp

    from mllmrec.train.batches import _pair_keys, sample_negatives

    n_items = 50
    rows = np.r_[np.zeros(49, int), np.ones(3, int)]
    cols = np.r_[np.arange(49), [0, 1, 2]]
    csr = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(2, n_items))
    users = np.array([0] * 200 + [1] * 200)
    neg = sample_negatives(users, n_items, _pair_keys(csr), np.random.default_rng(0))
    assert np.all(neg[:200] == 49)
    assert not np.isin(neg[200:], [0, 1, 2]).any()


def test_negatives_from_training_items_only_as_mmrec_samples_them():
    """data.negative_items=train: negatives never hit an item without a training interaction
    (MMRec's TrainDataLoader samples from the training set's items); 'all' does hit them."""
    import scipy.sparse as sp

    from mllmrec.train.batches import BPRTriplets

    rng = np.random.default_rng(0)
    n_users, n_items = 40, 30
    cold = np.arange(20, 30)  # items 20..29: no training interaction
    rows = np.repeat(np.arange(n_users), 4)
    cols = np.concatenate([rng.choice(20, 4, replace=False) for _ in range(n_users)])
    train = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(n_users, n_items))
    for mode, expect_cold in (("train", False), ("all", True)):
        triplets = BPRTriplets(train, batch_size=64, seed=1, negative_items=mode)
        users, negatives = [], []
        for epoch in range(5):
            triplets.build_epoch(epoch)
            for b in range(len(triplets)):
                u, _, n = triplets[b]
                users.append(u.numpy())
                negatives.append(n.numpy())
        users, negatives = np.concatenate(users), np.concatenate(negatives)
        assert np.isin(negatives, cold).any() == expect_cold
        assert not np.asarray(train[users, negatives]).any()  # never a training positive
    with pytest.raises(ValueError, match="data.negative_items"):
        BPRTriplets(train, batch_size=64, seed=1, negative_items="seen")


@pytest.mark.parametrize(
    "override, key",
    [("graph.alpha=1.5", "graph.alpha"), ("graph.ks=0", "graph.ks"), ("model.d=0", "model.d"),
     ("graph.kc=-1", "graph.kc"), ("optimized_metric=test/recall@20", "optimized_metric"),
     ("ckpt_path=/nonexistent.ckpt", "ckpt_path")],
)
def test_bad_config_values_are_rejected_before_work(train_cfg, override, key):
    with pytest.raises(ConfigError, match=key.replace("@", ".")):
        train(train_cfg(override))


def test_unknown_key_is_rejected_by_hydra(train_cfg):
    with pytest.raises(Exception) as err:
        train_cfg("graph.alfa=0.5")
    assert "alfa" in str(err.value)


def test_missing_reasoning_outputs_name_the_command(train_cfg, data_dir):
    # a processed dataset with no reasoning outputs for this mllm
    cfg = train_cfg("mllm=qwen25vl") if (CONF / "mllm" / "qwen25vl.yaml").exists() else train_cfg("mllm.name=qwen25vl")
    with pytest.raises(DatasetError, match=r"python reason.py dataset=demo mllm=qwen25vl"):
        train(cfg)


def test_missing_processed_dataset_names_prepare(train_cfg, tmp_path):
    cfg = train_cfg("dataset=baby", f"paths.data_dir={tmp_path / 'empty'}")
    with pytest.raises(DatasetError, match=r"python prepare.py dataset=baby"):
        train(cfg)


def _write_mmrec_folder(folder: Path, n_users=60, n_items=40, dim=16, seed=0) -> None:
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        items = rng.choice(n_items, size=8, replace=False)
        labels = [0] * 6 + [1, 2]
        rows += [(u, int(i), 5.0, 1_000 + k, lab) for k, (i, lab) in enumerate(zip(items, labels))]
    folder.mkdir(parents=True)
    pd.DataFrame(rows, columns=["userID", "itemID", "rating", "timestamp", "x_label"]).to_csv(
        folder / "toy.inter", sep="\t", index=False)
    np.save(folder / "image_text_feat.npy", rng.normal(size=(n_items, dim)))  # float64 on purpose
    np.save(folder / "user_preferences_feat.npy", rng.normal(size=(n_users, dim)).astype(np.float32))


def test_trains_on_an_mmrec_format_folder(train_cfg, tmp_path):
    folder = tmp_path / "mmrec_toy"
    _write_mmrec_folder(folder)
    before = sorted(p.name for p in folder.iterdir())
    summary, objs = train(train_cfg("dataset=mmrec", f"dataset.root={folder}", "dataset.name=toy",
                                    "trainer.max_epochs=2"))
    assert set(summary["test"]) == METRICS
    assert objs["datamodule"].item_features.shape == (40, 16)
    assert objs["datamodule"].item_features.dtype == torch.float32
    # the MMRec folder itself is left as it was (caches go to a hidden subfolder)
    assert sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) == before


def test_mmrec_folder_serves_named_modalities_to_freedom(train_cfg, tmp_path):
    folder = tmp_path / "mmrec_toy"
    _write_mmrec_folder(folder)
    rng = np.random.default_rng(1)
    text, image = rng.normal(size=(40, 12)).astype(np.float32), rng.normal(size=(40, 24))
    np.save(folder / "text_feat.npy", text)
    np.save(folder / "image_feat.npy", image)  # float64: cast to float32
    summary, objs = train(train_cfg("dataset=mmrec", f"dataset.root={folder}", "dataset.name=toy",
                                    "experiment=baseline_freedom", "trainer.max_epochs=1"))
    dm, model = objs["datamodule"], objs["model"]
    assert set(summary["test"]) == METRICS
    assert set(dm._modalities) == {"text", "image"}  # only what FREEDOM declares
    torch.testing.assert_close(dm._modalities["text"], torch.from_numpy(text))
    torch.testing.assert_close(model.feature_projections["image"].in_features, 24)
    assert not dm.has_item_graph  # model.item_graph=own: no refined graph built


@pytest.mark.parametrize("model", ["freedom", "lattice", "lgmrec", "gume"])
def test_mmrec_plus_gr_switch_trains_on_the_datamodules_refined_graph(train_cfg, tmp_path, model):
    from mllmrec.graph import normalize_adjacency

    folder = tmp_path / "mmrec_toy"
    _write_mmrec_folder(folder)
    rng = np.random.default_rng(2)
    np.save(folder / "text_feat.npy", rng.normal(size=(40, 12)).astype(np.float32))
    np.save(folder / "image_feat.npy", rng.normal(size=(40, 20)).astype(np.float32))
    summary, objs = train(train_cfg("dataset=mmrec", f"dataset.root={folder}", "dataset.name=toy",
                                    f"experiment=baseline_{model}_gr", "trainer.max_epochs=2"))
    dm, trained = objs["datamodule"], objs["model"]
    assert set(summary["test"]) == METRICS and len(summary["history"]) == 2
    assert dm.has_item_graph and trained.hparams["item_graph"] == "refined"
    expected = normalize_adjacency(dm.item_graph).to_dense()
    if model == "lattice":
        got = torch.zeros_like(expected).index_put_((trained.frozen_rows_0, trained.frozen_cols_0),
                                                    trained.frozen_values_0, accumulate=True)
    elif model == "gume":
        got = trained.item_graphs["image"].to_dense()
        torch.testing.assert_close(trained.item_graphs["text"].to_dense(), expected)
    else:
        got = trained.item_item.to_dense()
    torch.testing.assert_close(got, expected)


def test_baseline_on_mmrecs_own_folder_needs_no_authors_feature_files(train_cfg, tmp_path):
    folder = tmp_path / "mmrec_own"
    _write_mmrec_folder(folder)
    (folder / "image_text_feat.npy").unlink()  # MMRec's own folders hold only text/image features
    (folder / "user_preferences_feat.npy").unlink()
    rng = np.random.default_rng(3)
    np.save(folder / "text_feat.npy", rng.normal(size=(40, 8)).astype(np.float32))
    np.save(folder / "image_feat.npy", rng.normal(size=(40, 8)).astype(np.float32))
    args = ("dataset=mmrec", f"dataset.root={folder}", "dataset.name=toy", "trainer.max_epochs=1")
    summary, objs = train(train_cfg(*args, "experiment=baseline_freedom"))
    assert set(summary["test"]) == METRICS and objs["datamodule"].data.item_features is None
    with pytest.raises(ConfigError, match="dataset.item_features"):  # the refined graph is built from it
        train(train_cfg(*args, "experiment=baseline_freedom_gr"))


def test_mmrec_folder_without_image_file_names_the_file(train_cfg, tmp_path):
    folder = tmp_path / "mmrec_toy"
    _write_mmrec_folder(folder)
    np.save(folder / "text_feat.npy", np.ones((40, 4), np.float32))
    with pytest.raises(DatasetError, match=r"'image'.*image_feat.npy does not exist"):
        train(train_cfg("dataset=mmrec", f"dataset.root={folder}", "dataset.name=toy", "model=vbpr"))
    with pytest.raises(DatasetError, match=r"dataset.modalities.image=image_feat.npy"):
        train(train_cfg("dataset=mmrec", f"dataset.root={folder}", "dataset.name=toy", "model=vbpr",
                        "dataset.modalities.image=null"))


def test_mmrec_folder_missing_root_is_a_clear_error(train_cfg):
    with pytest.raises(ConfigError, match="dataset.root"):
        train(train_cfg("dataset=mmrec", "dataset.root=/does/not/exist", "dataset.name=toy"))


def test_mmrec_dataset_without_root_says_how(train_cfg):
    with pytest.raises(ConfigError, match="dataset=mmrec dataset.root="):
        train(train_cfg("dataset=mmrec"))


def _run_train(args: list[str], cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *args], cwd=cwd, capture_output=True, text=True,
        timeout=timeout, env={**__import__("os").environ, "PROJECT_ROOT": str(cwd)},
    )


@pytest.mark.slow
def test_two_job_multirun(tmp_path, data_dir):
    sweep = tmp_path / "sweep"
    result = _run_train(
        ["-m", "graph.alpha=0.5,0.7", f"paths.data_dir={data_dir}", "logger=none", *SMALL_DEMO,
         "trainer.max_epochs=1", "compare_popularity=false", "callbacks.progress_bar=null",
         f"hydra.sweep.dir={sweep}"],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = sorted(sweep.rglob("metrics.json"))
    assert len(metrics) == 2
    alphas = sorted(
        float(next(line for line in (m.parent / ".hydra" / "overrides.yaml").read_text().splitlines()
                   if "graph.alpha" in line).split("=")[1])
        for m in metrics
    )
    assert alphas == [0.5, 0.7]


@pytest.mark.slow
def test_ddp_on_two_cpu_ranks_matches_one_process(tmp_path, data_dir):
    """trainer=ddp with two gloo ranks on the CPU. Each rank ranks a share of the users and the shares
    are merged, so the metrics must equal the single-process run's exactly (lr ~0: training cannot
    make them differ). Also: the frozen sparse graph is not broadcast (DDP cannot), and only rank 0
    writes metrics.json."""
    common = [f"paths.data_dir={data_dir}", "logger=none", *SMALL_DEMO, "trainer.max_epochs=2",
              "model.optimizer.lr=1e-12", "compare_popularity=false", "callbacks.progress_bar=null"]
    single = _run_train([*common, f"hydra.run.dir={tmp_path / 'single'}"], cwd=tmp_path)
    assert single.returncode == 0, single.stderr[-3000:]
    ddp = _run_train([*common, "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
                      f"hydra.run.dir={tmp_path / 'ddp'}"], cwd=tmp_path)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    one, two = (json.loads((tmp_path / run / "metrics.json").read_text()) for run in ("single", "ddp"))
    assert one["history"] == two["history"] and len(two["history"]) == 2
    assert one["valid"] == two["valid"] and one["test"] == two["test"]
    assert (ddp.stdout + ddp.stderr).count("metrics written to") == 1


@pytest.mark.slow
def test_default_demo_beats_popularity(tmp_path):
    """`python train.py` with no arguments: the embedded demo, offline, on CPU."""
    result = _run_train([f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert summary["test"]["recall@20"] > 1.3 * summary["popularity"]["test"]["recall@20"]
    assert summary["valid"]["recall@20"] > 1.3 * summary["popularity"]["valid"]["recall@20"]
    assert "popularity test" in result.stdout
