"""Table 2's layout, the improvement over the best baseline (selected on validation, paired t-test over
seeds) and Fig. 3's data (R@20 without / with the refined graph per host), on a fake sweep whose
scores are known: validation and test disagree on purpose, so selecting on test would show."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf
from scipy.stats import ttest_rel

from mllmrec.report import build_report, gr_comparison, improvement_over_best_baseline, load_jobs, summarize, table2

SEEDS = (1, 2, 3)
DATASETS = ("baby", "sports")
# (variant, model.reg_weight) -> base R@20 on (valid, test). For FREEDOM validation prefers reg 1e-4
# and test would prefer 1e-3; LightGCN is the best baseline on validation but FREEDOM is on test.
BASE = {
    ("MLLMRec", 0.0): (0.150, 0.160),
    ("BPR", 1e-4): (0.050, 0.055),
    ("LightGCN", 1e-4): (0.120, 0.080),
    ("FREEDOM", 1e-4): (0.100, 0.100),
    ("FREEDOM", 1e-3): (0.090, 0.130),
    ("FREEDOM+GR", 1e-4): (0.110, 0.115),
    ("LATTICE", 1e-4): (0.085, 0.090),
    ("LATTICE+GR", 1e-4): (0.095, 0.098),
}


def scores(dataset: str, variant: str, reg: float, seed: int) -> dict:
    valid, test = BASE[(variant, reg)]
    shift = 0.01 if dataset == "sports" else 0.0
    noise = 0.003 * seed * (1 + len(variant) % 3) + 0.001 * (seed % 2)
    out = {}
    for split, base in (("valid", valid), ("test", test)):
        r20 = base + shift + noise
        out[split] = {"recall@20": r20, "recall@10": 0.6 * r20, "ndcg@20": 0.45 * r20, "ndcg@10": 0.4 * r20}
    return out


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("comparison") / "multirun" / "models"
    for dataset in DATASETS:
        for (variant, reg) in BASE:
            for seed in SEEDS:
                folder = root / f"{dataset}_{variant}_{reg}_{seed}"
                (folder / ".hydra").mkdir(parents=True)
                config = {"variant": variant, "seed": seed, "dataset": {"name": dataset},
                          "mllm": {"name": "none"}, "model": {"reg_weight": reg}}
                OmegaConf.save(OmegaConf.create(config), folder / ".hydra" / "config.yaml")
                OmegaConf.save(OmegaConf.create([f"seed={seed}"]), folder / ".hydra" / "overrides.yaml")
                (folder / "metrics.json").write_text(json.dumps({"best_epoch": 1, **scores(dataset, variant, reg, seed)}))
    return root


def _mean_test(dataset, variant, reg, metric="recall@20"):
    return float(np.mean([scores(dataset, variant, reg, s)["test"][metric] for s in SEEDS]))


def test_table2_cells_are_test_means_of_the_validation_choice_with_marks(sweep):
    jobs, _ = load_jobs(sweep)
    values, marked = table2(summarize(jobs))
    assert set(values.index) == {"BPR", "FREEDOM", "LATTICE", "LightGCN", "MLLMRec"}
    assert not any(v.endswith("+GR") for v in values.index)  # +GR rows belong to Fig. 3
    assert set(values.columns) == {(d, m) for d in DATASETS for m in ("recall@10", "recall@20", "ndcg@10", "ndcg@20")}
    for dataset in DATASETS:
        # FREEDOM's cell is reg 1e-4 (validation's choice), not 1e-3 (test's)
        assert values.loc["FREEDOM", (dataset, "recall@20")] == pytest.approx(_mean_test(dataset, "FREEDOM", 1e-4))
        assert values.loc["BPR", (dataset, "ndcg@10")] == pytest.approx(_mean_test(dataset, "BPR", 1e-4, "ndcg@10"))
        column = values[(dataset, "recall@20")].sort_values(ascending=False)
        assert marked.loc[column.index[0], (dataset, "recall@20")] == f"**{column.iloc[0]:.4f}**"
        assert marked.loc[column.index[1], (dataset, "recall@20")] == f"_{column.iloc[1]:.4f}_"
        assert column.index[0] == "MLLMRec" and column.index[1] == "FREEDOM"
        third = column.index[2]
        assert marked.loc[third, (dataset, "recall@20")] == f"{column.iloc[2]:.4f}"


def test_improvement_is_over_the_best_baseline_on_validation_with_a_paired_ttest(sweep):
    jobs, _ = load_jobs(sweep)
    result = improvement_over_best_baseline(jobs)
    assert list(result["dataset.name"]) == list(DATASETS)
    for _, row in result.iterrows():
        dataset = row["dataset.name"]
        assert row["best baseline"] == "LightGCN"  # best on validation, though FREEDOM is better on test
        ours, base = _mean_test(dataset, "MLLMRec", 0.0), _mean_test(dataset, "LightGCN", 1e-4)
        assert row["improv. recall@20"] == pytest.approx((ours - base) / base)
        a = [scores(dataset, "MLLMRec", 0.0, s)["test"]["recall@20"] for s in SEEDS]
        b = [scores(dataset, "LightGCN", 1e-4, s)["test"]["recall@20"] for s in SEEDS]
        expected = ttest_rel(a, b)
        assert row["pairs"] == 3
        assert row["t"] == pytest.approx(expected.statistic) and row["p"] == pytest.approx(expected.pvalue)


def test_fig3_data_pairs_each_host_with_its_gr_variant(sweep):
    jobs, _ = load_jobs(sweep)
    data = gr_comparison(summarize(jobs))
    assert len(data) == 4
    for dataset in DATASETS:
        for host in ("FREEDOM", "LATTICE"):
            row = data[(data["dataset.name"] == dataset) & (data["host"] == host)].iloc[0]
            assert row["without"] == pytest.approx(_mean_test(dataset, host, 1e-4))  # validation's choice
            assert row["with"] == pytest.approx(_mean_test(dataset, f"{host}+GR", 1e-4))


def test_report_writes_table2_and_fig3_from_that_data(sweep, tmp_path):
    out = tmp_path / "report"
    sections = build_report(sweep, out)
    titles = {s.title: s for s in sections}
    assert not titles["Model comparison (Table 2 layout, test scores)"].note
    table = (out / "table2.md").read_text()
    assert "**" in table and "LightGCN" in table and "FREEDOM+GR" not in table.split("Improvement")[0]
    written = pd.read_csv(out / "fig3.csv")
    pd.testing.assert_frame_equal(written, gr_comparison(summarize(load_jobs(sweep)[0])).reset_index(drop=True),
                                  check_dtype=False)
    for dataset in DATASETS:
        assert (out / f"fig3_{dataset}.png").stat().st_size > 5000
