"""`python report.py <sweep dir>` on a fake sweep folder: tables (mean ± std over seeds), selection by
validation, the Fig. 4 heatmaps, the Fig. 5 curve, Tables 3/4 layouts, the paired t-test, and notes
for sections without data."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.stats import ttest_rel

sys.path.insert(0, str(Path(__file__).resolve().parent))

from mllmrec.report import (  # noqa: E402
    alpha_kc_grid,
    best_by_validation,
    build_report,
    config_keys,
    layout_table,
    load_jobs,
    paired_ttest,
    reference_variant,
    summarize,
)

from sweep_helpers import FAKE_SEEDS, ROOT, fake_scores, write_fake_sweep  # noqa: E402


@pytest.fixture(scope="module")
def fake_sweep(tmp_path_factory) -> Path:
    return write_fake_sweep(tmp_path_factory.mktemp("reports") / "multirun" / "fake")


@pytest.fixture(scope="module")
def summary(fake_sweep):
    jobs, _ = load_jobs(fake_sweep)
    return summarize(jobs)


def _test_r20(dataset, variant="MLLMRec", mllm="gemma3_27b", alpha=0.7, kc=10, d=64) -> np.ndarray:
    return np.array([fake_scores(dataset, variant, mllm, alpha, kc, d, s)["test"]["recall@20"] for s in FAKE_SEEDS])


def _assert_picture(path: Path, min_drawn: float) -> None:
    """A real figure: plausible size, at least ``min_drawn`` of it not background, many colours."""
    with Image.open(path) as image:
        width, height = image.size
        pixels = np.asarray(image.convert("RGB"), dtype=np.int32)
    assert 300 <= width <= 900 and 200 <= height <= 700, image.size
    not_white = (pixels.sum(axis=2) < 3 * 250).mean()
    assert not_white > min_drawn, f"{path.name} is almost blank ({not_white:.0%} drawn)"
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50


@pytest.mark.slow
def test_report_command_writes_tables_and_figures(fake_sweep):
    result = subprocess.run([sys.executable, str(ROOT / "report.py"), str(fake_sweep)], capture_output=True,
                            text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    out = fake_sweep / "report"
    for name in ("jobs.csv", "summary.csv", "summary.md", "best.md", "mllm_table.md", "ablation_table.md",
                 "ttest.md", "report.md", "d_curve_recall@20.png", "d_curve_ndcg@20.png"):
        assert (out / name).stat().st_size > 0, name
    for dataset in ("baby", "sports"):
        for metric in ("recall@20", "ndcg@20"):
            _assert_picture(out / f"heatmap_{dataset}_{metric}.png", min_drawn=0.4)  # filled cells
    _assert_picture(out / "d_curve_recall@20.png", min_drawn=0.03)  # lines on white
    rows = [[cell.strip() for cell in line.strip("|").split("|")]
            for line in (out / "summary.md").read_text().splitlines()]
    assert rows[0][:7] == ["dataset.name", "mllm.name", "variant", "graph.alpha", "graph.kc", "model.d", "n"]
    assert set(rows[1][0]) <= {"-", ":"}  # the header rule
    assert [r[0] for r in rows[2:]].count("baby") == 8 and [r[0] for r in rows[2:]].count("sports") == 8
    report = (out / "report.md").read_text()
    assert "48 finished job(s), 1 without results" in report
    assert "ConfigError: graph.kc=-1: K_c must be >= 0" in report  # the failed job is listed
    assert "report.md" in result.stdout


def test_mean_and_std_are_over_seeds(summary):
    row = summary[(summary["dataset.name"] == "sports") & (summary["graph.alpha"] == 0.5)
                  & (summary["graph.kc"] == 5)].iloc[0]
    values = _test_r20("sports", alpha=0.5, kc=5)
    assert row["n"] == 3 and row["seeds"] == "1,2,3"
    assert row["test_recall@20_mean"] == pytest.approx(values.mean())
    assert row["test_recall@20_std"] == pytest.approx(values.std(ddof=1))
    assert len(summary) == 16  # 8 configurations per dataset; seeds folded in


def test_best_configuration_is_chosen_on_validation_not_test(summary):
    grid_only = summary[(summary["variant"] == "MLLMRec") & (summary["mllm.name"] == "gemma3_27b")
                        & (summary["model.d"] == 64)]
    best = best_by_validation(grid_only, ["dataset.name"])
    # test would prefer (0.5, 5); validation prefers (0.7, 10), and that is what is reported
    assert best[["graph.alpha", "graph.kc"]].values.tolist() == [[0.7, 10], [0.7, 10]]
    assert best.iloc[0]["test_recall@20_mean"] == pytest.approx(_test_r20("baby").mean())
    assert grid_only["test_recall@20_mean"].max() > best["test_recall@20_mean"].max()


def test_heatmap_grid_is_alpha_by_kc_of_test_scores(summary):
    alphas, kcs, grid = alpha_kc_grid(summary[summary["dataset.name"] == "baby"], "recall@20")
    assert alphas == [0.5, 0.7] and kcs == [5, 10]
    assert grid[0, 0] == pytest.approx(_test_r20("baby", alpha=0.5, kc=5).mean())
    # (0.7, 10) holds several configurations: the one chosen by validation (Qwen2.5-VL) is shown
    assert grid[1, 1] == pytest.approx(_test_r20("baby", mllm="qwen25vl").mean())


def test_tables_in_the_papers_layouts(summary):
    ablation = layout_table(summary, "variant")
    assert list(ablation.columns) == ["baby", "sports"] and list(ablation.index) == ["MLLMRec", "w/o RS"]
    values = _test_r20("baby", variant="w/o RS")
    assert ablation.loc["w/o RS", "baby"] == f"{values.mean():.4f} ± {values.std(ddof=1):.4f}"
    mllm = layout_table(summary, "mllm.name", "recall@20")
    assert list(mllm.index) == ["qwen25vl", "gemma3_27b"]
    assert mllm.loc["gemma3_27b", "sports"].startswith(f"{_test_r20('sports').mean():.4f}")


def test_paired_ttest_over_seeds_matches_scipy(fake_sweep):
    jobs, _ = load_jobs(fake_sweep)
    result = paired_ttest(jobs, "MLLMRec", "w/o RS").set_index("dataset.name")
    for dataset in ("baby", "sports"):
        # MLLMRec's configuration chosen by validation is Qwen2.5-VL at (0.7, 10)
        expected = ttest_rel(_test_r20(dataset, mllm="qwen25vl"), _test_r20(dataset, variant="w/o RS"))
        assert result.loc[dataset, "pairs"] == 3
        assert result.loc[dataset, "t"] == pytest.approx(expected.statistic)
        assert result.loc[dataset, "p"] == pytest.approx(expected.pvalue)


def test_variants_are_compared_with_the_full_model():
    assert reference_variant(["w/o RS", "MLLMRec", "BPR"]) == "MLLMRec"
    assert reference_variant(["w/o GD", "full", "w/o RS"]) == "full"  # conf/experiment/ablation_full.yaml
    assert reference_variant(["BPR", "LightGCN"]) == "BPR"


def test_sections_without_data_are_skipped_with_a_note(tmp_path):
    one_config = [dict(dataset="baby", variant="MLLMRec", mllm="none", alpha=0.7, kc=10, d=64, seed=s) for s in (1, 2)]
    sweep = write_fake_sweep(tmp_path / "small", one_config, failed=False)
    sections = {s.title: s for s in build_report(sweep)}
    notes = {title: s.note for title, s in sections.items() if s.note}
    assert set(notes) == {"alpha x K_c (Fig. 4, test scores)", "Output dimension d (Fig. 5, test scores)",
                          "MLLM comparison (Table 4 layout)", "Ablations (Table 3 layout)",
                          "Paired t-test over seeds (test Recall@20)", "Jobs without results",
                          "Model comparison (Table 2 layout, test scores)",
                          "Plug-and-play refined graph (Fig. 3, test R@20)"}
    assert not list((sweep / "report").glob("*.png"))
    assert "_Skipped: model.d does not vary in this sweep_" in (sweep / "report" / "report.md").read_text()
    assert "2 | " in (sweep / "report" / "summary.md").read_text()  # one configuration, two seeds

    empty = tmp_path / "empty"
    empty.mkdir()
    [results, jobs] = build_report(empty)
    assert "no job" in results.note and jobs.note


def test_a_missing_sweep_dir_is_a_clear_error(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "report.py"), str(tmp_path / "nope")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "is not a folder" in result.stderr


def test_table4_reports_all_four_metrics_of_one_validation_selected_configuration(summary):
    """Per MLLM and dataset, the configuration with the best mean validation Recall@20 (the fake
    sweep's validation prefers (0.7, 10), its test (0.5, 5)); every metric of the cell is that
    configuration's test mean ± std over seeds; the w/o RS ablation is not an MLLM's result."""
    from mllmrec.report import selected_table

    table = selected_table(summary, "mllm.name")
    assert list(table.index) == ["gemma3_27b", "qwen25vl"]
    assert list(table.columns[:6]) == ["baby R@10", "baby R@20", "baby N@10", "baby N@20", "baby config", "baby seeds"]
    for dataset in ("baby", "sports"):
        assert table.loc["gemma3_27b", f"{dataset} config"] == "graph.alpha=0.7, graph.kc=10, model.d=64"
        for metric, short in (("recall@10", "R@10"), ("recall@20", "R@20"), ("ndcg@10", "N@10"), ("ndcg@20", "N@20")):
            values = np.array([fake_scores(dataset, "MLLMRec", "gemma3_27b", 0.7, 10, 64, s)["test"][metric]
                               for s in FAKE_SEEDS])
            assert table.loc["gemma3_27b", f"{dataset} {short}"] == f"{values.mean():.4f} ± {values.std(ddof=1):.4f}"
        assert table.loc["gemma3_27b", f"{dataset} seeds"] == "3"


def test_interpolated_copies_of_the_seed_do_not_split_configurations(tmp_path):
    """A real job's config holds data.seed: ${seed}; the summary must still average over seeds."""
    from omegaconf import OmegaConf

    jobs = [dict(dataset="baby", variant="MLLMRec", mllm="gemma3_27b", alpha=a, kc=10, d=64, seed=s)
            for a in (0.5, 0.7) for s in FAKE_SEEDS]
    sweep = write_fake_sweep(tmp_path / "s", jobs, failed=False)
    for config in sweep.glob("*/.hydra/config.yaml"):
        cfg = OmegaConf.load(config)
        cfg.data.seed = "${seed}"
        OmegaConf.save(cfg, config)
    jobs_frame, _ = load_jobs(sweep)
    assert "data.seed" in jobs_frame and "data.seed" not in config_keys(jobs_frame)
    summary = summarize(jobs_frame)
    assert len(summary) == 2 and set(summary["n"]) == {3}
