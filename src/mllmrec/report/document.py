"""The report of a sweep: Markdown sections, figures and the ``report.py`` command line."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from mllmrec.report.tables import (
    ALPHA,
    DATASET,
    KC,
    METRICS,
    MLLM,
    SPLITS,
    VARIANT,
    D,
    _cell,
    _key_text,
    ablation_variants,
    alpha_kc_grid,
    best_by_validation,
    gr_comparison,
    improvement_over_best_baseline,
    layout_table,
    load_jobs,
    paired_ttest,
    reference_variant,
    selected_table,
    summarize,
    table2,
)

log = logging.getLogger(__name__)

__all__ = ["markdown_table", "table2_markdown", "fig3_figures", "FIG3_SERIES", "Section", "build_report", "main"]

#: Fig. 3's bar series: the column of :func:`gr_comparison` -> the legend label
FIG3_SERIES = {"without": "without GR", "with": "with GR"}


def markdown_table(frame: pd.DataFrame, index: bool = False, floatfmt: str = ".4f") -> str:
    """A GitHub-flavoured Markdown table (pandas + tabulate); missing numbers are shown as ``-``."""
    return frame.to_markdown(index=index, tablefmt="github", floatfmt=floatfmt, missingval="-")


@dataclass
class Section:
    """One part of the report: Markdown text and the files written, or a note why it was skipped."""

    title: str
    markdown: str = ""
    files: list[Path] = field(default_factory=list)
    note: str = ""

    def render(self) -> str:
        text = self.markdown if not self.note else f"_Skipped: {self.note}_"
        return f"## {self.title}\n\n{text}\n"


def _write(path: Path, text: str) -> Path:
    from mllmrec.cache import atomic_write_text

    atomic_write_text(path, text)
    return path


def _summary_section(summary: pd.DataFrame, out: Path) -> Section:
    keys = [c for c in summary.columns if not c.endswith(("_mean", "_std")) and c not in ("n", "seeds")]
    shown = summary[keys + ["n"]].map(_key_text)
    for split in SPLITS:
        for metric in METRICS:
            shown[f"{split} {metric}"] = [
                _cell(m, s, int(n)) for m, s, n in
                zip(summary[f"{split}_{metric}_mean"], summary[f"{split}_{metric}_std"], summary["n"])
            ]
    summary.to_csv(out / "summary.csv", index=False)
    text = markdown_table(shown)
    _write(out / "summary.md", text + "\n")
    return Section("All configurations (mean ± std over seeds)", text, [out / "summary.csv", out / "summary.md"])


def _best_section(summary: pd.DataFrame, out: Path) -> Section:
    best = best_by_validation(summary, [DATASET])
    keys = [c for c in summary.columns if not c.endswith(("_mean", "_std")) and c not in ("n", "seeds")]
    shown = best[keys + ["n"]].map(_key_text)
    for split in SPLITS:
        for metric in ("recall@20", "ndcg@20"):
            shown[f"{split} {metric}"] = [_cell(m, s, int(n)) for m, s, n in zip(
                best[f"{split}_{metric}_mean"], best[f"{split}_{metric}_std"], best["n"])]
    text = ("Chosen by validation Recall@20; the test score is only reported beside it.\n\n"
            + markdown_table(shown))
    _write(out / "best.md", text + "\n")
    return Section("Best configuration per dataset (selected on validation)", text, [out / "best.md"])


def _heatmap_section(summary: pd.DataFrame, out: Path) -> Section:
    from mllmrec import plots

    section = Section("alpha x K_c (Fig. 4, test scores)")
    if ALPHA not in summary or KC not in summary:
        section.note = "graph.alpha and graph.kc do not both vary in this sweep"
        return section
    for dataset, frame in summary.groupby(DATASET, sort=True):
        for metric in ("recall@20", "ndcg@20"):
            alphas, kcs, grid = alpha_kc_grid(frame, metric)
            if grid.size < 2:
                break
            section.files.append(plots.heatmap(
                grid, [float(a) for a in alphas], [int(k) for k in kcs], out / f"heatmap_{dataset}_{metric}.png",
                f"{dataset}: test {metric}", "K_c", "alpha"))
    if not section.files:
        section.note = "fewer than two (alpha, K_c) combinations per dataset"
    section.markdown = "\n".join(f"![{p.stem}]({p.name})" for p in section.files)
    return section


def _d_section(summary: pd.DataFrame, out: Path) -> Section:
    from mllmrec import plots

    section = Section("Output dimension d (Fig. 5, test scores)")
    if D not in summary or summary[D].nunique() < 2:
        section.note = "model.d does not vary in this sweep"
        return section
    best = best_by_validation(summary, [DATASET, D])
    ds = sorted(best[D].unique(), key=float)
    for metric in ("recall@20", "ndcg@20"):
        series = {}
        for dataset, frame in best.groupby(DATASET, sort=True):
            frame = frame.set_index(D).reindex(ds)
            series[str(dataset)] = (frame[f"test_{metric}_mean"].to_numpy(float),
                                    frame[f"test_{metric}_std"].fillna(0).to_numpy(float))
        path = plots.curves([float(d) for d in ds], series, out / f"d_curve_{metric}.png",
                            f"test {metric} vs d", "d", metric, log_x=True)
        section.files.append(path)
    section.markdown = "\n".join(f"![{p.stem}]({p.name})" for p in section.files)
    return section


def _layout_section(summary: pd.DataFrame, out: Path, key: str, title: str, name: str) -> Section:
    section = Section(title)
    if key not in summary or summary[key].nunique() < 2:
        section.note = f"only one value of `{key}` in this sweep"
        return section
    parts = []
    for metric in ("recall@20", "ndcg@20"):
        table = layout_table(summary, key, metric)
        parts.append(f"Test {metric} (configuration chosen by validation in each cell):\n\n"
                     + markdown_table(table, index=True))
    section.markdown = "\n\n".join(parts)
    section.files.append(_write(out / f"{name}.md", section.markdown + "\n"))
    return section


def _mllm_section(summary: pd.DataFrame, out: Path) -> Section:
    """Table 4: per MLLM and dataset one configuration chosen on validation Recall@20, its test
    R/N@10/20 (mean ± std over seeds) and which configuration it was."""
    section = Section("MLLM comparison (Table 4 layout)")
    if MLLM not in summary or summary[MLLM].nunique() < 2:
        section.note = f"only one value of `{MLLM}` in this sweep"
        return section
    table = selected_table(summary, MLLM, "recall@20")
    section.markdown = ("Test scores, mean ± std over seeds, of each MLLM's configuration with the best "
                        "mean **validation** Recall@20 on each dataset (the `config` column):\n\n"
                        + markdown_table(table, index=True))
    section.files.append(_write(out / "mllm_table.md", section.markdown + "\n"))
    return section


def table2_markdown(marked: pd.DataFrame) -> str:
    """Table 2 (the ``marked`` frame of :func:`table2`) as one Markdown table, columns ``<dataset> <metric>``."""
    flat = marked.copy()
    flat.columns = [f"{dataset} {metric}" for dataset, metric in marked.columns]
    return markdown_table(flat, index=True)


def fig3_figures(data: pd.DataFrame, out: Path) -> list[Path]:
    """Fig. 3 from :func:`gr_comparison`'s frame: per dataset ``out/fig3_<dataset>.png``, grouped bars
    of test R@20 per host model, one bar without and one with the refined graph."""
    from mllmrec import plots

    return [plots.grouped_bars(list(frame["host"]), {label: list(frame[column]) for column, label in FIG3_SERIES.items()},
                               out / f"fig3_{dataset}.png", f"{dataset}: test recall@20", "recall@20")
            for dataset, frame in data.groupby(DATASET, sort=True)]


def _table2_section(jobs: pd.DataFrame, summary: pd.DataFrame, out: Path) -> Section:
    section = Section("Model comparison (Table 2 layout, test scores)")
    values, marked = table2(summary, exclude=ablation_variants(jobs))
    if len(values) < 2:
        section.note = "fewer than two models (variants without +GR, ablations left out) in this sweep"
        return section
    parts = ["Configuration chosen by validation R@20 per cell; **best**, _second best_ per column.\n\n"
             + table2_markdown(marked)]
    improvement = improvement_over_best_baseline(jobs)
    if not improvement.empty:
        parts.append("Improvement of the full model over the best baseline (chosen by validation R@20), "
                     "paired t-test over seeds of test R@20:\n\n" + markdown_table(improvement))
    section.markdown = "\n\n".join(parts)
    section.files.append(_write(out / "table2.md", section.markdown + "\n"))
    return section


def _gr_section(summary: pd.DataFrame, out: Path) -> Section:
    section = Section("Plug-and-play refined graph (Fig. 3, test R@20)")
    data = gr_comparison(summary)
    if data.empty:
        section.note = "no <model>+GR variant in this sweep"
        return section
    section.files += fig3_figures(data, out)
    section.files.append(_write(out / "fig3.csv", data.to_csv(index=False)))
    section.markdown = markdown_table(data) + "\n\n" + "\n".join(
        f"![{p.stem}]({p.name})" for p in section.files if p.suffix == ".png")
    return section


def _ttest_section(jobs: pd.DataFrame, out: Path, pair: Sequence[str] | None) -> Section:
    section = Section("Paired t-test over seeds (test Recall@20)")
    variants = list(dict.fromkeys(jobs[VARIANT])) if VARIANT in jobs else []
    if pair is None:
        if len(variants) < 2:
            section.note = "fewer than two variants in this sweep"
            return section
        first = reference_variant(variants)
        pairs = [(first, v) for v in variants if v != first]
    else:
        pairs = [tuple(pair)]
    parts = []
    for a, b in pairs:
        result = paired_ttest(jobs, a, b)
        if result.empty or result["pairs"].max() < 2:
            parts.append(f"{a} vs {b}: fewer than two seeds run by both on one dataset")
            continue
        parts.append(f"**{a} vs {b}** (`scipy.stats.ttest_rel`, pairs = seeds):\n\n" + markdown_table(result))
    if not any(p.startswith("**") for p in parts):
        section.note = "; ".join(parts) or "no pair of variants"
        return section
    section.markdown = "\n\n".join(parts)
    section.files.append(_write(out / "ttest.md", section.markdown + "\n"))
    return section


def build_report(sweep_dir: str | Path, out_dir: str | Path | None = None,
                 ttest: Sequence[str] | None = None) -> list[Section]:
    """Write every table and figure of the sweep into ``out_dir`` (default ``<sweep>/report``)."""
    sweep_dir = Path(sweep_dir)
    out = Path(out_dir) if out_dir is not None else sweep_dir / "report"
    jobs, unfinished = load_jobs(sweep_dir)
    out.mkdir(parents=True, exist_ok=True)
    sections: list[Section] = []
    if jobs.empty:
        sections.append(Section("Results", note=f"no job under {sweep_dir} has a metrics.json yet"))
    else:
        jobs.to_csv(out / "jobs.csv", index=False)
        summary = summarize(jobs)
        sections += [
            _summary_section(summary, out),
            _best_section(summary, out),
            _heatmap_section(summary, out),
            _d_section(summary, out),
            _mllm_section(summary, out),
            _layout_section(summary, out, VARIANT, "Ablations (Table 3 layout)", "ablation_table"),
            _ttest_section(jobs, out, ttest),
            _table2_section(jobs, summary, out),
            _gr_section(summary, out),
        ]
    failed = Section("Jobs without results")
    if unfinished.empty:
        failed.note = "every job finished"
    else:
        failed.markdown = markdown_table(unfinished)
    sections.append(failed)
    text = f"# Sweep report: {sweep_dir}\n\n{len(jobs)} finished job(s), {len(unfinished)} without results.\n\n"
    text += "\n".join(s.render() for s in sections)
    _write(out / "report.md", text)
    return sections


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="report.py", description="Tables and figures of a sweep (docs/sweeps.md).")
    parser.add_argument("sweep_dir", type=Path, help="a sweep folder, e.g. multirun/2026-01-01_12-00-00")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: <sweep_dir>/report)")
    parser.add_argument("--ttest", nargs=2, metavar=("A", "B"), default=None,
                        help="variants to compare (default: the full model, MLLMRec or 'full', against "
                             "every other variant)")
    args = parser.parse_args(argv)
    try:
        sections = build_report(args.sweep_dir, args.out, args.ttest)
    except FileNotFoundError as err:
        parser.error(str(err))
    out = args.out or args.sweep_dir / "report"
    for s in sections:
        status = f"skipped ({s.note})" if s.note else ", ".join(p.name for p in s.files) or "shown in report.md"
        print(f"{s.title}: {status}")
    print(f"report: {out / 'report.md'}")
    return 0
