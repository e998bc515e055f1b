"""Each Table 3 ablation is one config choice away from the full model and changes exactly what it
names: the config keys, then the graph's edges / the user table / the item description text."""

from __future__ import annotations

import hydra
import pandas as pd
import pytest
import torch
from omegaconf import DictConfig, OmegaConf

from mllmrec.data import DatasetError
from mllmrec.data.open import open_dataset
from mllmrec.graph import cooccurrence_graph, refined_item_graph, semantic_graph
from mllmrec.train.datamodule import MLLMRecDataModule
from mllmrec.train.task import build_datamodule, model_inputs

ABLATIONS = {  # experiment -> (variant, resolved keys that differ from ablation_full)
    "ablation_wo_rs": ("w/o RS", {"data.use_user_features"}),
    "ablation_wo_gd": ("w/o GD", {"graph.alpha"}),
    "ablation_wo_te": ("w/o TE", {"graph.kc"}),
    "ablation_wo_gcn_ii": ("w/o GCN_II", {"graph.layers"}),
    "ablation_wo_v": ("w/o V", {"data.item_text_source"}),
    "ablation_wo_t": ("w/o T", {"data.item_text_source"}),
    "ablation_w_gcn_ui": ("w/ GCN_UI", {"model.ui_layers"}),
}


def flatten(tree, prefix: str = "") -> dict[str, object]:
    if isinstance(tree, dict):
        out: dict[str, object] = {}
        for key, value in tree.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: tree}


def resolved(cfg: DictConfig) -> dict[str, object]:
    tree = OmegaConf.to_container(cfg, resolve=True)
    tree.pop("hydra")
    return flatten(tree)


def build(cfg: DictConfig) -> tuple[MLLMRecDataModule, torch.nn.Module]:
    datamodule = build_datamodule(cfg)
    datamodule.check_inputs()
    datamodule.setup("fit")
    model = hydra.utils.instantiate(cfg.model, **model_inputs(cfg, datamodule))
    return datamodule, model


def same_graph(a: torch.Tensor, b: torch.Tensor) -> bool:
    a, b = a.coalesce(), b.coalesce()
    return torch.equal(a.indices(), b.indices()) and torch.equal(a.values(), b.values())


@pytest.mark.parametrize("experiment", sorted(ABLATIONS))
def test_ablation_changes_only_its_keys(train_cfg, experiment):
    variant, keys = ABLATIONS[experiment]
    full = resolved(train_cfg("experiment=ablation_full"))
    ablated = resolved(train_cfg(f"experiment={experiment}"))
    assert ablated["variant"] == variant and full["variant"] == "full"
    changed = {k for k in full.keys() | ablated.keys() if full.get(k) != ablated.get(k)}
    assert changed == keys | {"variant"}


def test_graph_ablations_change_only_their_part_of_the_graph(train_cfg):
    # the demo's kNN similarities spread (demo version 2), so its own alpha (0.5) prunes edges and the
    # denoising (and therefore "w/o GD", which sets graph.alpha itself) is observable
    tuned = "dataset.tuned.alpha=0.5"
    full_dm, full_model = build(train_cfg("experiment=ablation_full", tuned))
    features, train = full_dm.item_features, full_dm.data.train
    g = full_dm.graph_spec
    assert g.alpha == 0.5
    n_items = full_dm.data.n_items
    semantic = semantic_graph(features, g.ks, g.alpha)
    semantic_plain = semantic_graph(features, g.ks, -1.0)
    cooc = cooccurrence_graph(train, g.kc)
    assert same_graph(full_dm.item_graph, refined_item_graph(features, train, g.ks, g.alpha, g.kc))
    assert semantic_plain._nnz() == n_items * g.ks > semantic._nnz()
    assert cooc._nnz() > 0
    # S* - S~ = C~ (dense is fine on the 90-item test graph)
    torch.testing.assert_close((full_dm.item_graph - semantic).to_dense(), cooc.to_dense())

    gd_dm, _ = build(train_cfg("experiment=ablation_wo_gd", tuned))
    assert same_graph(gd_dm.item_graph, refined_item_graph(features, train, g.ks, -1.0, g.kc))
    assert gd_dm.item_graph._nnz() > full_dm.item_graph._nnz()
    # every kNN edge kept, co-occurrence edges unchanged
    torch.testing.assert_close((gd_dm.item_graph - semantic_plain).to_dense(), cooc.to_dense())

    te_dm, _ = build(train_cfg("experiment=ablation_wo_te", tuned))
    assert same_graph(te_dm.item_graph, semantic)  # only the (denoised) semantic edges, weight 1
    assert te_dm.item_graph._nnz() == semantic._nnz() < full_dm.item_graph._nnz()

    ii_dm, ii_model = build(train_cfg("experiment=ablation_wo_gcn_ii", tuned))
    assert same_graph(ii_dm.item_graph, full_dm.item_graph)  # the graph is built, just not used
    assert ii_model.layers == 0 and full_model.layers == 1
    torch.testing.assert_close(ii_model.propagated_items(), features)
    assert not torch.allclose(full_model.propagated_items(), features)


def test_wo_rs_replaces_profiles_by_a_user_table(train_cfg):
    full_dm, full_model = build(train_cfg("experiment=ablation_full"))
    rs_dm, rs_model = build(train_cfg("experiment=ablation_wo_rs"))
    assert full_dm.user_features is not None and full_model.user_table is None
    assert rs_dm.user_features is None
    assert tuple(rs_model.user_table.weight.shape) == (rs_dm.data.n_users, rs_dm.item_features.shape[1])
    assert same_graph(rs_dm.item_graph, full_dm.item_graph)
    torch.testing.assert_close(rs_dm.item_features, full_dm.item_features)


def test_w_gcn_ui_adds_the_user_item_graph_only(train_cfg):
    full_dm, full_model = build(train_cfg("experiment=ablation_full"))
    ui_dm, ui_model = build(train_cfg("experiment=ablation_w_gcn_ui"))
    assert full_model.ui_graph is None
    assert ui_model.ui_layers == 2 and ui_model.ui_graph.nnz == 2 * ui_dm.data.train.nnz
    assert same_graph(ui_dm.item_graph, full_dm.item_graph)
    # the branch changes the scores of the same towers
    ui_model.load_state_dict(full_model.state_dict(), strict=False)
    users = torch.arange(5)
    with torch.no_grad():
        full_model.prepare_eval()
        ui_model.prepare_eval()
        assert not torch.allclose(full_model.full_scores(users), ui_model.full_scores(users))


def test_text_ablations_without_mllm(train_cfg):
    full_dm, _ = build(train_cfg("experiment=ablation_full"))
    v_dm, _ = build(train_cfg("experiment=ablation_wo_v"))
    # mllm=none: the item description is the item text already, so w/o V equals the full model
    assert v_dm.item_and_user_texts(v_dm.data) == full_dm.item_and_user_texts(full_dm.data)
    torch.testing.assert_close(v_dm.item_features, full_dm.item_features)
    t_dm = build_datamodule(train_cfg("experiment=ablation_wo_t"))
    with pytest.raises(DatasetError, match="image descriptions.*mllm=none"):
        t_dm.check_inputs()


def test_text_ablations_pick_the_description_parts(train_cfg, tmp_path):
    """With MLLM outputs: full = text + image description, w/o V = text, w/o T = image description."""
    overrides = [f"paths.data_dir={tmp_path / 'data'}", "mllm.name=fake-mllm"]
    full_cfg = train_cfg("experiment=ablation_full", *overrides)
    full_dm = build_datamodule(full_cfg)
    data = open_dataset(OmegaConf.to_container(full_cfg.dataset, resolve=True))  # generates the demo
    folder = full_dm.layout.reasoning("fake-mllm")
    folder.mkdir(parents=True)
    ids = range(data.n_items)
    pd.DataFrame({
        "item_id": list(ids),
        "text": [f"text {i}" for i in ids],
        "image_description": [f"image {i}" for i in ids],
        "description": [f"text {i} image {i}" for i in ids],
    }).to_parquet(folder / "item_descriptions.parquet")
    pd.DataFrame({"user_id": range(data.n_users), "profile": [f"profile {u}" for u in range(data.n_users)]}
                 ).to_parquet(folder / "user_profiles.parquet")
    expected = {"ablation_full": "text 3 image 3", "ablation_wo_v": "text 3", "ablation_wo_t": "image 3"}
    for experiment, text in expected.items():
        dm = build_datamodule(train_cfg(f"experiment={experiment}", *overrides))
        dm.check_inputs()
        items, users = dm.item_and_user_texts(data)
        assert items[3] == text
        assert users[7] == "profile 7"  # the profiles are untouched
