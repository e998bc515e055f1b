"""Table 2's layout, the improvement over the best baseline (selected on validation, paired t-test over
seeds) and Fig. 3's data (R@20 without / with the refined graph per host), on a fake sweep whose
scores are known (tests/sweep/sweep_helpers.py: COMPARISON_BASE): validation and test disagree on
purpose, so selecting on test would show, and an ablation of MLLMRec beats the baselines on validation,
so counting it as a baseline would show."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import pytest
from scipy.stats import ttest_rel

from mllmrec.report import (
    ablation_variants,
    build_report,
    gr_comparison,
    improvement_over_best_baseline,
    load_jobs,
    summarize,
    table2,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))

from sweep_helpers import COMPARISON_DATASETS as DATASETS  # noqa: E402
from sweep_helpers import COMPARISON_SEEDS as SEEDS  # noqa: E402
from sweep_helpers import comparison_mean_test as _mean_test  # noqa: E402
from sweep_helpers import comparison_scores as scores  # noqa: E402
from sweep_helpers import write_comparison_sweep  # noqa: E402


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    return write_comparison_sweep(tmp_path_factory.mktemp("comparison") / "multirun" / "models")


def test_ablations_are_the_variants_running_the_full_models_class(sweep, tmp_path):
    jobs, _ = load_jobs(sweep)
    assert ablation_variants(jobs) == ["w/o RS"]
    # configs that do not name their model class: nothing is known to be an ablation
    unnamed = write_comparison_sweep(tmp_path / "unnamed", model_class=False)
    assert ablation_variants(load_jobs(unnamed)[0]) == []


def test_table2_cells_are_test_means_of_the_validation_choice_with_marks(sweep):
    jobs, _ = load_jobs(sweep)
    values, marked = table2(summarize(jobs), exclude=ablation_variants(jobs))
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
    # without the exclusion the ablation is a row (and takes the second place)
    assert "w/o RS" in table2(summarize(jobs))[0].index


def test_improvement_is_over_the_best_baseline_on_validation_with_a_paired_ttest(sweep):
    jobs, _ = load_jobs(sweep)
    result = improvement_over_best_baseline(jobs)
    assert list(result["dataset.name"]) == list(DATASETS)
    for _, row in result.iterrows():
        dataset = row["dataset.name"]
        # best on validation, though FREEDOM is better on test and the ablation w/o RS better on validation
        assert row["best baseline"] == "LightGCN"
        ours, base = _mean_test(dataset, "MLLMRec", 0.0), _mean_test(dataset, "LightGCN", 1e-4)
        assert row["improv. recall@20"] == pytest.approx((ours - base) / base)
        a = [scores(dataset, "MLLMRec", 0.0, s)["test"]["recall@20"] for s in SEEDS]
        b = [scores(dataset, "LightGCN", 1e-4, s)["test"]["recall@20"] for s in SEEDS]
        expected = ttest_rel(a, b)
        assert row["pairs"] == 3
        assert row["t"] == pytest.approx(expected.statistic) and row["p"] == pytest.approx(expected.pvalue)


def test_no_baseline_means_no_improvement_row(tmp_path):
    only_ours = write_comparison_sweep(tmp_path / "ours", variants={"MLLMRec", "w/o RS"})
    jobs, _ = load_jobs(only_ours)
    assert improvement_over_best_baseline(jobs).empty
    assert list(table2(summarize(jobs), exclude=ablation_variants(jobs))[0].index) == ["MLLMRec"]


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
    rows = table.split("Improvement")[0]
    assert "**" in rows and "LightGCN" in rows and "FREEDOM+GR" not in rows and "w/o RS" not in rows
    written = pd.read_csv(out / "fig3.csv")
    pd.testing.assert_frame_equal(written, gr_comparison(summarize(load_jobs(sweep)[0])).reset_index(drop=True),
                                  check_dtype=False)
    for dataset in DATASETS:
        assert (out / f"fig3_{dataset}.png").stat().st_size > 5000


def test_report_notes_a_sweep_without_baselines(tmp_path):
    sections = build_report(write_comparison_sweep(tmp_path / "ours", variants={"MLLMRec", "w/o RS"}), tmp_path / "r")
    note = {s.title: s for s in sections}["Model comparison (Table 2 layout, test scores)"].note
    assert note.startswith("fewer than two models")
