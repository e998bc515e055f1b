"""notebooks/results.ipynb runs top to bottom on fixture sweeps (nbclient), so it cannot rot; the
tables and figure it shows are checked against numbers computed by hand from the fixtures' scores."""

from __future__ import annotations

import base64
import re
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from scipy.stats import ttest_rel

sys.path.insert(0, str(Path(__file__).resolve().parent))

from sweep_helpers import (  # noqa: E402
    COMPARISON_DATASETS,
    COMPARISON_SEEDS,
    ROOT,
    comparison_mean_test,
    comparison_scores,
    write_comparison_sweep,
    write_fake_sweep,
)

METRICS = ("recall@10", "recall@20", "ndcg@10", "ndcg@20")
# the configuration validation chooses per model (FREEDOM: reg 1e-4, though test prefers 1e-3)
CHOSEN = {"MLLMRec": 0.0, "BPR": 1e-4, "LightGCN": 1e-4, "FREEDOM": 1e-4, "LATTICE": 1e-4}


def _outputs(nb, mime: str) -> list[str]:
    found = []
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            if mime == "stream" and output.get("output_type") == "stream":
                found.append(output["text"])
            elif mime in output.get("data", {}):
                found.append(output["data"][mime])
    return found


def _run_notebook(sweep: Path, tmp_path: Path, monkeypatch) -> nbformat.NotebookNode:
    monkeypatch.setenv("MLLMREC_SWEEP_DIR", str(sweep))
    nb = nbformat.read(ROOT / "notebooks" / "results.ipynb", as_version=4)
    assert all(not cell.get("outputs") for cell in nb.cells if cell.cell_type == "code")  # stored clean
    NotebookClient(nb, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()  # raises on any cell error
    return nb


def _markdown_table(text: str) -> list[dict[str, str]]:
    """The rows of the first GitHub Markdown table in ``text``, as ``header -> cell`` (cells stripped)."""
    lines = [line for line in text.splitlines() if line.startswith("|")]
    split = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]
    header, body = split[0], [row for row in split[2:]]  # split[1] is the |---| separator
    return [dict(zip(header, row)) for row in body]


def _shown(nb, starts: str) -> str:
    matches = [m for m in _outputs(nb, "text/markdown") if m.startswith(starts)]
    assert len(matches) == 1, f"expected one output starting with {starts!r}, got {len(matches)}"
    return matches[0]


@pytest.mark.slow
def test_results_notebook_runs_on_a_fixture_sweep(tmp_path, monkeypatch):
    sweep = write_fake_sweep(tmp_path / "multirun" / "fake")
    nb = _run_notebook(sweep, tmp_path, monkeypatch)
    text = "\n".join(_outputs(nb, "stream") + _outputs(nb, "text/plain") + _outputs(nb, "text/markdown"))
    assert "48 finished job(s), 1 without results" in text
    assert "**MLLMRec vs w/o RS** (paired over seeds)" in text
    # Tables 3 and 4 (pandas pads the Markdown cells)
    assert re.search(r"\|\s*w/o RS\s*\|", text) and re.search(r"\|\s*qwen25vl\s*\|", text)
    assert len(_outputs(nb, "image/png")) == 6  # 4 heatmaps + 2 d curves
    assert (sweep / "report" / "heatmap_baby_recall@20.png").is_file()
    # only MLLMRec and its ablation ran: no Table 2, no Fig. 3, and the notebook says why
    assert "_No baselines in this sweep (models: MLLMRec; ablations left out: w/o RS)" in text
    assert "_No `<model>+GR` variant in this sweep, so no Fig. 3" in text
    assert "**Table 2**" not in text


def _expected_table2(dataset: str, metric: str) -> dict[str, str]:
    """Hand-built column of Table 2: each model's mean test score (validation's configuration), the
    best in bold, the second underlined."""
    means = {model: comparison_mean_test(dataset, model, reg, metric) for model, reg in CHOSEN.items()}
    ranked = sorted(means, key=means.get, reverse=True)
    cells = {model: f"{value:.4f}" for model, value in means.items()}
    cells[ranked[0]] = f"**{cells[ranked[0]]}**"
    cells[ranked[1]] = f"_{cells[ranked[1]]}_"
    return cells


@pytest.mark.slow
def test_results_notebook_shows_table2_the_improvement_and_fig3(tmp_path, monkeypatch):
    from mllmrec import plots

    sweep = write_comparison_sweep(tmp_path / "multirun" / "models")
    nb = _run_notebook(sweep, tmp_path, monkeypatch)

    # Table 2: models x datasets x R/N@10/20, the cells and marks of a hand-built expectation
    rows = {row["variant"]: row for row in _markdown_table(_shown(nb, "**Table 2**"))}
    assert set(rows) == set(CHOSEN)  # no +GR rows (Fig. 3's), no ablation (w/o RS beats baselines on valid)
    for dataset in COMPARISON_DATASETS:
        for metric in METRICS:
            expected = _expected_table2(dataset, metric)
            assert {model: rows[model][f"{dataset} {metric}"] for model in CHOSEN} == expected, (dataset, metric)
    assert rows["MLLMRec"]["baby recall@20"].startswith("**") and rows["FREEDOM"]["baby recall@20"].startswith("_")

    # the improvement over the best baseline on validation (LightGCN, though FREEDOM is better on test)
    improvement = _markdown_table(_shown(nb, "**Improvement of the full model over the best baseline**"))
    assert [row["dataset.name"] for row in improvement] == list(COMPARISON_DATASETS)
    for row in improvement:
        dataset = row["dataset.name"]
        assert (row["model"], row["best baseline"], row["pairs"]) == ("MLLMRec", "LightGCN", "3")
        for metric in METRICS:
            ours, base = (comparison_mean_test(dataset, m, CHOSEN[m], metric) for m in ("MLLMRec", "LightGCN"))
            assert float(row[f"improv. {metric}"]) == pytest.approx((ours - base) / base, abs=6e-5)
        expected = ttest_rel(*[[comparison_scores(dataset, m, CHOSEN[m], s)["test"]["recall@20"]
                                for s in COMPARISON_SEEDS] for m in ("MLLMRec", "LightGCN")])
        assert float(row["t"]) == pytest.approx(expected.statistic, abs=6e-5)
        assert float(row["p"]) == pytest.approx(expected.pvalue, abs=6e-5)

    # Fig. 3: its data table, and each bar chart equals one drawn from the hand-computed values
    fig3 = _markdown_table(_shown(nb, "| dataset.name"))
    hosts = ("FREEDOM", "LATTICE")
    assert [(row["dataset.name"], row["host"]) for row in fig3] == [(d, h) for d in COMPARISON_DATASETS for h in hosts]
    expected_bars = {}
    for row in fig3:
        dataset, host = row["dataset.name"], row["host"]
        without, with_gr = comparison_mean_test(dataset, host, 1e-4), comparison_mean_test(dataset, f"{host}+GR", 1e-4)
        assert (row["without"], row["with"]) == (f"{without:.4f}", f"{with_gr:.4f}")
        expected_bars.setdefault(dataset, {"without GR": [], "with GR": []})
        expected_bars[dataset]["without GR"].append(without)
        expected_bars[dataset]["with GR"].append(with_gr)
    images = [base64.b64decode(png) for png in _outputs(nb, "image/png")]
    assert len(images) == len(COMPARISON_DATASETS)  # Fig. 3 once per dataset (not again with the figures)
    for dataset, shown in zip(COMPARISON_DATASETS, images):
        drawn = plots.grouped_bars(list(hosts), expected_bars[dataset], tmp_path / f"expected_{dataset}.png",
                                   f"{dataset}: test recall@20", "recall@20")
        assert shown == drawn.read_bytes(), dataset
    assert (sweep / "report" / "fig3_baby.png").read_bytes() == images[0]  # report.py's file, same figure
