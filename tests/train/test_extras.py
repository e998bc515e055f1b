"""Console manners: the config tree, Lightning's noise filtered narrowly, the results table's title,
and the t-SNE figure opt-in (callbacks=tsne)."""

from __future__ import annotations

import logging
import warnings

import pytest
from omegaconf import OmegaConf

from mllmrec.train.extras import LightningTipFilter, print_config_tree, quiet_lightning


def test_config_tree_shows_every_top_level_key_resolved_and_no_hydra_node(train_cfg, capsys):
    cfg = train_cfg("graph.kc=7")
    printed = print_config_tree(cfg)
    assert capsys.readouterr().out == printed
    for key in ("dataset", "model", "graph", "trainer", "seed"):
        assert f"── {key}" in printed
    assert "kc: 7" in printed and "${" not in printed.split("── graph")[1].split("──")[0]
    assert "── hydra" not in printed
    # the dataset..trainer branches come first, in that order
    assert printed.index("── dataset") < printed.index("── model") < printed.index("── trainer")


def test_unresolvable_values_are_shown_as_written(monkeypatch, capsys):
    from hydra.core.hydra_config import HydraConfig

    monkeypatch.setattr(HydraConfig.instance(), "cfg", None)  # outside a Hydra run
    printed = print_config_tree(OmegaConf.create({"paths": {"output_dir": "${hydra:runtime.output_dir}"}, "x": 1}))
    assert "${hydra:runtime.output_dir}" in printed


def test_lightning_noise_is_filtered_by_message_only():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_lightning()
        warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, use `isinstance(treespec, TreeSpec)`", stacklevel=1)
        warnings.warn("The 'val_dataloader' does not have many workers which may be a bottleneck.", stacklevel=1)
        warnings.warn("The number of training batches (1) is smaller than the logging interval Trainer(...)", stacklevel=1)
        warnings.warn("something else is deprecated", stacklevel=1)  # any other warning still shows
    assert [str(w.message) for w in caught] == ["something else is deprecated"]


def test_lightning_tips_are_dropped_and_other_lines_kept():
    quiet_lightning()
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    assert sum(isinstance(f, LightningTipFilter) for f in logger.filters) == 1  # idempotent
    tip = logging.LogRecord(logger.name, logging.INFO, "", 0, "💡 Tip: try installing litlogger", None, None)
    gpu = logging.LogRecord(logger.name, logging.INFO, "", 0, "GPU available: False, used: False", None, None)
    assert not logger.filter(tip) and logger.filter(gpu)


@pytest.mark.parametrize("overrides, title", [
    ((), "MLLMRec"), (("model=bpr",), "BPR"), (("experiment=baseline_vbpr",), "VBPR"),
    (("variant=mine",), "mine"),
])
def test_results_table_is_titled_with_the_model(train_cfg, overrides, title, capsys):
    from mllmrec.train.task import _print_table, model_name

    cfg = train_cfg(*overrides)
    assert model_name(cfg) == title
    _print_table({"test": {"recall@20": 0.5}}, model_name(cfg))
    assert f"{title} results" in capsys.readouterr().out


def test_user_tsne_is_opt_in(train_cfg):
    from mllmrec.train.task import instantiate_group

    assert train_cfg().callbacks.user_tsne is None
    assert not any(type(c).__name__ == "UserTSNE" for c in instantiate_group(train_cfg().callbacks))
    opted = train_cfg("callbacks=tsne")
    names = [type(c).__name__ for c in instantiate_group(opted.callbacks)]
    assert "UserTSNE" in names and "GraphStatistics" in names and "ModelCheckpoint" in names
    assert train_cfg("callbacks=tsne", "callbacks.user_tsne=null").callbacks.user_tsne is None
