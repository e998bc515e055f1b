"""Tables and figures of a sweep: ``python report.py multirun/<sweep dir> [--out DIR] [--ttest A B]``.

Reads every job folder under the sweep dir (``metrics.json`` + ``.hydra/config.yaml`` +
``.hydra/overrides.yaml``) and writes into ``<sweep dir>/report/``:

* ``jobs.csv`` — one row per finished job; ``summary.csv`` / ``summary.md`` — mean +- std over seeds of
  every configuration; ``best.md`` — per dataset the configuration with the best **validation**
  score, its test score beside it (never selected by test);
* ``heatmap_<dataset>_<metric>.png`` — test R@20 / N@20 over alpha x K_c (the paper's Fig. 4);
* ``d_curve_<metric>.png`` — test R@20 / N@20 against the output dimension d (Fig. 5);
* ``mllm_table.md`` — Table 4's layout (rows: ``mllm``, columns: datasets);
* ``ablation_table.md`` — Table 3's layout (rows: the config key ``variant``, columns: datasets);
* ``ttest.md`` — paired t-test (``scipy.stats.ttest_rel``) of two variants' test R@20 over seeds;
* ``report.md`` — all of it, with a note for every section that had no data.

Wherever several configurations compete for one cell (a heatmap cell, a table cell, a point of a
curve), the one with the best mean validation score is shown, with its mean test score over seeds.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

__all__ = [
    "SPLITS", "METRICS", "load_jobs", "config_keys", "summarize", "best_by_validation", "alpha_kc_grid",
    "layout_table", "reference_variant", "paired_ttest",
    "markdown_table", "Section", "build_report", "main",
]

SPLITS = ("valid", "test")
METRICS = ("recall@10", "recall@20", "ndcg@10", "ndcg@20")
# short names of the config keys the tables are organised by
DATASET, MLLM, VARIANT, ALPHA, KC, D, SEED = (
    "dataset.name", "mllm.name", "variant", "graph.alpha", "graph.kc", "model.d", "seed")
# the full model's variant names (conf/train.yaml's default; conf/experiment/ablation_full.yaml)
REFERENCE_VARIANTS = ("MLLMRec", "full")
# keys that describe where things went, not what was run: never part of a configuration's identity
_NOT_CONFIG = ("paths.", "logger.", "callbacks.", "hydra.", "tags", "task_name", "ckpt_path",
               "skip_finished", "dataset.root", "trainer.default_root_dir")


# --------------------------------------------------------------------------- loading
def _leaves(cfg: Any, prefix: str = "") -> dict[str, Any]:
    """Every scalar leaf of a config as ``dotted.key -> value``; interpolations are resolved when
    they can be (``${hydra:...}`` cannot outside the job: those leaves are left out)."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    out: dict[str, Any] = {}
    for key in cfg.keys() if isinstance(cfg, DictConfig) else []:
        path = f"{prefix}{key}"
        try:
            value = cfg[key]
        except Exception:  # an interpolation that needs the job's Hydra context
            continue
        if isinstance(value, DictConfig):
            out.update(_leaves(value, path + "."))
        elif isinstance(value, ListConfig):
            try:
                out[path] = json.dumps(OmegaConf.to_container(value, resolve=True))
            except Exception:
                continue
        else:
            out[path] = value
    return out


def load_jobs(sweep_dir: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(finished, unfinished)`` jobs under ``sweep_dir``.

    ``finished``: one row per folder holding ``metrics.json``: the config's leaves, ``overrides``,
    ``job_dir``, ``best_epoch`` and ``<split>_<metric>`` columns. ``unfinished``: folders with a
    ``.hydra/config.yaml`` but no metrics (``job_dir``, ``overrides``, ``error``).
    """
    from omegaconf import OmegaConf

    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"{sweep_dir} is not a folder (expected a sweep dir such as multirun/<name>)")
    rows, unfinished = [], []
    for config_file in sorted(sweep_dir.rglob(".hydra/config.yaml")):
        job_dir = config_file.parent.parent
        if job_dir == sweep_dir and (sweep_dir / "multirun.yaml").is_file() and not (job_dir / "metrics.json").exists():
            continue
        overrides_file = job_dir / ".hydra" / "overrides.yaml"
        overrides = " ".join(OmegaConf.load(overrides_file)) if overrides_file.is_file() else ""
        metrics_file = job_dir / "metrics.json"
        if not metrics_file.is_file():
            error_file = job_dir / "error.json"
            error = ""
            if error_file.is_file():
                record = json.loads(error_file.read_text(encoding="utf-8"))
                message = str(record.get("message", "")).strip().splitlines()
                error = f"{record.get('error_type')}: {message[0] if message else ''}"
            unfinished.append({"job_dir": str(job_dir.relative_to(sweep_dir)), "overrides": overrides,
                               "error": error or "no metrics.json (running, killed or not started)"})
            continue
        summary = json.loads(metrics_file.read_text(encoding="utf-8"))
        row: dict[str, Any] = _leaves(OmegaConf.load(config_file))
        row.update(job_dir=str(job_dir.relative_to(sweep_dir)), overrides=overrides,
                   best_epoch=summary.get("best_epoch"))
        for split in SPLITS:
            for metric in METRICS:
                row[f"{split}_{metric}"] = (summary.get(split) or {}).get(metric, np.nan)
        rows.append(row)
    finished = pd.DataFrame(rows)
    for key, default in ((DATASET, "?"), (MLLM, "none"), (VARIANT, "MLLMRec"), (SEED, 0)):
        if len(finished) and key not in finished:
            finished[key] = default
    return finished, pd.DataFrame(unfinished, columns=["job_dir", "overrides", "error"])


# --------------------------------------------------------------------------- aggregation
def config_keys(jobs: pd.DataFrame) -> list[str]:
    """The config keys that tell the jobs' configurations apart (varying ones, seed excluded), plus
    dataset / mllm / variant, which the tables always show. The tables' own keys come first, so that
    an interpolated copy (``data.graph.alpha``, ``dataset.tuned.alpha`` behind ``graph.alpha``) is the
    one dropped."""
    metric_cols = {f"{s}_{m}" for s in SPLITS for m in METRICS} | {"job_dir", "overrides", "best_epoch"}
    canonical = [k for k in (DATASET, MLLM, VARIANT, ALPHA, KC, D) if k in jobs]
    others = [c for c in jobs.columns if c not in canonical and c not in metric_cols and c != SEED
              and not c.startswith(_NOT_CONFIG)]
    keys: list[str] = []
    seen: list[pd.Series] = []
    for c in canonical + others:
        text = jobs[c].astype(str)
        always = c in (DATASET, MLLM, VARIANT)
        if (always or text.nunique(dropna=False) > 1) and not any(text.equals(other) for other in seen):
            keys.append(c)
            seen.append(text)
    return keys


def _key_frame(jobs: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    """The key columns as objects with missing values spelled "null" (groupable, comparable)."""
    frame = jobs[list(keys)].astype(object)
    return frame.where(frame.notna(), "null")


def summarize(jobs: pd.DataFrame) -> pd.DataFrame:
    """Mean and std over seeds of every metric, per configuration (``n`` = number of seeds)."""
    keys = config_keys(jobs)
    values = [f"{s}_{m}" for s in SPLITS for m in METRICS]
    frame = _key_frame(jobs, keys).join(jobs[values])
    frame["_seed"] = jobs[SEED].astype(str) if SEED in jobs else "0"
    grouped = frame.groupby(keys, sort=True, dropna=False)
    out = grouped[values].mean().add_suffix("_mean").join(grouped[values].std(ddof=1).add_suffix("_std"))
    out["n"] = grouped.size()
    out["seeds"] = grouped["_seed"].agg(lambda seeds: ",".join(sorted(seeds)))
    return out.reset_index()


def best_by_validation(summary: pd.DataFrame, by: Sequence[str], metric: str = "recall@20") -> pd.DataFrame:
    """Per group of ``by``, the configuration with the highest mean **validation** ``metric``."""
    column = f"valid_{metric}_mean"
    ranked = summary.sort_values(column, ascending=False, kind="stable")
    if not by:
        return ranked.head(1)
    return ranked.groupby(list(by), sort=True, dropna=False).head(1).sort_values(list(by))


def _key_text(value: Any) -> str:
    return format(value, "g") if isinstance(value, (float, np.floating)) else str(value)


def _cell(mean: float, std: float, n: int) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "-"
    if n > 1 and std is not None and not math.isnan(std):
        return f"{mean:.4f} ± {std:.4f}"
    return f"{mean:.4f}"


def layout_table(summary: pd.DataFrame, row_key: str, metric: str = "recall@20") -> pd.DataFrame:
    """Rows ``row_key``, columns datasets: test ``metric`` (mean ± std over seeds) of the configuration
    chosen by validation in each cell (Tables 3 and 4 of the paper)."""
    best = best_by_validation(summary, [row_key, DATASET], metric)
    cells = {
        (r[row_key], r[DATASET]): _cell(r[f"test_{metric}_mean"], r[f"test_{metric}_std"], int(r["n"]))
        for _, r in best.iterrows()
    }
    datasets = sorted({d for _, d in cells})
    rows = list(dict.fromkeys(best.sort_values(f"test_{metric}_mean", ascending=False)[row_key]))
    return pd.DataFrame([[cells.get((r, d), "-") for d in datasets] for r in rows],
                        index=pd.Index(rows, name=row_key), columns=datasets)


def reference_variant(variants: Sequence[str]) -> str:
    """The variant the others are compared with: the full model (``MLLMRec``, or ``full`` in the
    ablation configs), else the first one."""
    return next((v for v in REFERENCE_VARIANTS if v in variants), variants[0])


def paired_ttest(jobs: pd.DataFrame, a: str, b: str, metric: str = "test_recall@20",
                 select: str = "recall@20") -> pd.DataFrame:
    """Paired t-test (``scipy.stats.ttest_rel``) of variant ``a`` vs ``b`` per dataset, pairing runs by
    seed. Each variant's configuration is the one with the best mean validation ``select``."""
    from scipy.stats import ttest_rel

    keys = config_keys(jobs)
    summary = summarize(jobs)
    job_keys = _key_frame(jobs, keys).astype(str)
    rows = []
    for dataset in sorted(jobs[DATASET].astype(str).unique()):
        per_variant = {}
        for variant in (a, b):
            candidates = summary[(summary[DATASET].astype(str) == dataset) & (summary[VARIANT] == variant)]
            if candidates.empty:
                break
            best = best_by_validation(candidates, [], select).iloc[0]
            mask = np.logical_and.reduce([job_keys[k] == str(best[k]) for k in keys])
            per_variant[variant] = jobs[mask].groupby(SEED)[metric].mean()
        if len(per_variant) < 2:
            continue
        paired = pd.concat(per_variant, axis=1, join="inner").dropna()
        if len(paired) < 2:
            rows.append({DATASET: dataset, "pairs": len(paired), f"{a} mean": np.nan, f"{b} mean": np.nan,
                         "t": np.nan, "p": np.nan})
            continue
        result = ttest_rel(paired[a], paired[b])
        rows.append({DATASET: dataset, "pairs": len(paired), f"{a} mean": paired[a].mean(),
                     f"{b} mean": paired[b].mean(), "t": float(result.statistic), "p": float(result.pvalue)})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- output
def markdown_table(frame: pd.DataFrame, index: bool = False, floatfmt: str = ".4f") -> str:
    """A GitHub-flavoured Markdown table (no tabulate dependency)."""
    frame = frame.reset_index() if index else frame

    def fmt(v: Any) -> str:
        if isinstance(v, (float, np.floating)):
            return "-" if math.isnan(v) else format(v, floatfmt)
        return str(v).replace("|", "\\|")

    header = "| " + " | ".join(str(c) for c in frame.columns) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = ["| " + " | ".join(fmt(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body])


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


def alpha_kc_grid(summary: pd.DataFrame, metric: str = "recall@20") -> tuple[list, list, np.ndarray]:
    """``(alphas, K_cs, grid)`` of one dataset's summary: the mean test ``metric`` of the configuration
    chosen by validation in each (alpha, K_c) cell (NaN where nothing ran)."""
    best = best_by_validation(summary, [ALPHA, KC])
    alphas = sorted(best[ALPHA].unique(), key=float)
    kcs = sorted(best[KC].unique(), key=float)
    grid = np.full((len(alphas), len(kcs)), np.nan)
    for _, r in best.iterrows():
        grid[alphas.index(r[ALPHA]), kcs.index(r[KC])] = r[f"test_{metric}_mean"]
    return alphas, kcs, grid


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
            _layout_section(summary, out, MLLM, "MLLM comparison (Table 4 layout)", "mllm_table"),
            _layout_section(summary, out, VARIANT, "Ablations (Table 3 layout)", "ablation_table"),
            _ttest_section(jobs, out, ttest),
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
    parser = argparse.ArgumentParser(prog="report.py", description=__doc__.split("\n\n")[0])
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
