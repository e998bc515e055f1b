"""Config checks run before any data is loaded, name the key, and suggest the closest valid one."""

from __future__ import annotations

import pytest
from omegaconf import open_dict

from mllmrec.data import DatasetError
from mllmrec.errors import ConfigError
from mllmrec.train.checks import check_added_keys, validate_train_config
from mllmrec.train.task import train


@pytest.fixture
def no_data_loads(monkeypatch):
    """Fail the test if the dataset is opened: every check must come before that."""
    import mllmrec.train.datamodule as datamodule

    def refuse(*args, **kwargs):
        raise AssertionError("the dataset was opened before the config was checked")

    monkeypatch.setattr(datamodule, "open_dataset", refuse)


@pytest.mark.parametrize(
    "override, message",
    [
        ("data.batch_size=0", "data.batch_size=0: must be an integer >= 1"),
        ("data.eval_batch_size=0", "data.eval_batch_size=0: must be an integer >= 1"),
        ("model.optimizer.weight_decay=-1", "model.optimizer.weight_decay=-1: must be a number >= 0"),
        ("model.optimizer.lr=0", "model.optimizer.lr=0: the learning rate must be a number > 0"),
        ("trainer.max_epochs=-5", "trainer.max_epochs=-5: must be an integer >= 1"),
        ("trainer.max_epochs=0", "trainer.max_epochs=0: 0 would test an untrained model"),
        ("model.negative_slope=abc", "model.negative_slope='abc': must be a number"),
        ("model.d=1.5", "model.d=1.5: must be an integer"),
        ("seed=abc", "seed='abc': must be an integer"),
        ("+model.hiden_dim=8", "model.hiden_dim: not a parameter of MLLMRec (did you mean 'hidden_dim'?)"),
        ("+data.batchsize=8", "data.batchsize: not a parameter of MLLMRecDataModule (did you mean 'batch_size'?)"),
        ("+graph.alpah=0.5", "graph.alpah: not a setting of mllmrec.graph.GraphSpec (did you mean 'alpha'?)"),
        ("graph.alpha=1.5", "graph.alpha=1.5: alpha must be a real number in [-1, 1]"),
        ("graph.ks=0", "graph.ks=0: k_s must be an integer >= 1"),
        ("graph.knn=annoy", "graph.knn='annoy': knn_method must be one of exact, faiss, auto"),
        ("graph.ann.probes=0", "graph.ann.probes must be an integer >= 1, got 0"),
        ("+graph.ann.probe=3", "graph.ann.probe is not a setting; the settings are"),
        ("encoder.batch_size=0", "encoder.batch_size=0: must be an integer >= 1"),
        ("+model.optimizer.betass=[0.9,0.99]", "model.optimizer.betass: not a parameter of Adam (did you mean 'betas'?)"),
    ],
)
def test_bad_values_are_named_before_any_data_is_loaded(train_cfg, no_data_loads, override, message):
    with pytest.raises(ConfigError) as err:
        train(train_cfg(override))
    assert message in str(err.value)


def test_a_plus_key_nothing_reads_is_rejected_with_the_closest_key(train_cfg):
    cfg = train_cfg()
    with open_dict(cfg):
        cfg.dataset.tunedd = 1
    with pytest.raises(ConfigError, match=r"\+dataset.tunedd: no such setting.*did you mean 'tuned'"):
        check_added_keys(cfg, added=["dataset.tunedd"])
    check_added_keys(cfg, added=["mllm.vllm.swap_space", "callbacks.extra"])  # free-form nodes: fine


def test_gpu_trainer_without_a_gpu_is_a_clear_error(train_cfg, no_data_loads, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # as on a machine without one
    with pytest.raises(ConfigError, match="trainer.accelerator='gpu': no CUDA GPU is visible"):
        validate_train_config(train_cfg("trainer=gpu"))


def test_graph_alpha_has_one_name_from_cli_to_the_build(train_cfg, monkeypatch):
    """graph.alpha reaches the graph build as the GraphSpec built from the graph group, and nowhere
    else: the datamodule config holds no copy of it."""
    import mllmrec.train.datamodule as datamodule

    seen = {}

    def fake_build(features, interactions, k_s, alpha, k_c, cache_dir=None, *, knn_method, ann_params):
        seen.update(alpha=alpha, k_s=k_s, k_c=k_c, knn=knn_method, probes=ann_params.probes)
        raise DatasetError("stop here")

    monkeypatch.setattr(datamodule, "build_refined_item_graph", fake_build)
    cfg = train_cfg("graph.alpha=0.55", "graph.kc=3", "graph.knn=exact", "graph.ann.probes=7")
    assert "graph" not in cfg.data and "alpha" not in str(cfg.data)
    with pytest.raises(DatasetError, match="stop here"):
        train(cfg)
    assert seen == {"alpha": 0.55, "k_s": 10, "k_c": 3, "knn": "exact", "probes": 7}
