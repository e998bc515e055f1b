"""The numbers of a sweep: job records, per-configuration summaries, selection on validation,
the paper's table layouts and paired t-tests (pandas frames; no files written here)."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

__all__ = [
    "SPLITS", "METRICS", "load_jobs", "config_keys", "summarize", "best_by_validation", "alpha_kc_grid",
    "layout_table", "selected_table", "reference_variant", "paired_ttest", "GR_SUFFIX", "table2",
    "improvement_over_best_baseline", "gr_comparison", "ablation_variants",
]

SPLITS = ("valid", "test")
METRICS = ("recall@10", "recall@20", "ndcg@10", "ndcg@20")
# short names of the config keys the tables are organised by
DATASET, MLLM, VARIANT, ALPHA, KC, D, SEED = (
    "dataset.name", "mllm.name", "variant", "graph.alpha", "graph.kc", "model.d", "seed")
# the full model's variant names (conf/train.yaml's default; conf/experiment/ablation_full.yaml)
REFERENCE_VARIANTS = ("MLLMRec", "full")
#: the variant-name suffix of a host model run with MLLMRec's refined graph (conf/experiment/*_gr.yaml)
GR_SUFFIX = "+GR"
#: the config leaf naming a run's model class (every conf/model/*.yaml sets it)
MODEL_CLASS = "model._target_"
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
    an interpolated copy (``dataset.tuned.alpha`` behind ``graph.alpha``) is the one dropped. Copies of
    the seed (``data.seed: ${seed}``) are dropped too: they vary with the seed, and keeping them would
    make every seed a configuration of its own (no mean ± std over seeds)."""
    metric_cols = {f"{s}_{m}" for s in SPLITS for m in METRICS} | {"job_dir", "overrides", "best_epoch"}
    canonical = [k for k in (DATASET, MLLM, VARIANT, ALPHA, KC, D) if k in jobs]
    others = [c for c in jobs.columns if c not in canonical and c not in metric_cols and c != SEED
              and not c.startswith(_NOT_CONFIG)]
    keys: list[str] = []
    seen: list[pd.Series] = [jobs[SEED].astype(str)] if SEED in jobs else []
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


#: the paper's short metric names (Tables 2-4)
SHORT_METRIC = {"recall@10": "R@10", "recall@20": "R@20", "ndcg@10": "N@10", "ndcg@20": "N@20"}


def _summary_keys(summary: pd.DataFrame) -> list[str]:
    """The configuration columns of a :func:`summarize` frame (everything but statistics)."""
    return [c for c in summary.columns if not c.endswith(("_mean", "_std")) and c not in ("n", "seeds")]


def selected_table(summary: pd.DataFrame, row_key: str, select: str = "recall@20",
                   metrics: Sequence[str] = METRICS) -> pd.DataFrame:
    """Table 4's layout: one row per ``row_key`` value (an MLLM), per dataset the test ``metrics``
    (mean ± std over seeds) of **one** configuration, chosen on mean validation ``select``, plus
    that configuration (``<dataset> config``: the values of the other varying keys, e.g. graph.alpha
    and graph.kc) and its seed count.

    Only the full model's runs count when several variants were swept (an ablation is not an MLLM's
    result). Unlike :func:`layout_table`, the metrics of a cell all come from the same configuration.
    """
    if VARIANT in summary and summary[VARIANT].nunique() > 1:
        summary = summary[summary[VARIANT] == reference_variant(list(dict.fromkeys(summary[VARIANT])))]
    best = best_by_validation(summary, [row_key, DATASET], select)
    # what was chosen: the swept keys, not the row's or dataset's own settings (mllm.model_id, ...)
    own = tuple(f"{k.split('.')[0]}." for k in (row_key, DATASET) if "." in k)
    described = [k for k in _summary_keys(summary) if k not in (row_key, DATASET, VARIANT) and not k.startswith(own)]
    datasets = sorted(best[DATASET].astype(str).unique())
    rows = sorted(best[row_key].astype(str).unique())
    table = pd.DataFrame(index=pd.Index(rows, name=row_key), dtype=object)
    for dataset in datasets:
        for metric in metrics:
            table[f"{dataset} {SHORT_METRIC.get(metric, metric)}"] = "-"
        table[f"{dataset} config"] = "-"
        table[f"{dataset} seeds"] = "-"
    for _, r in best.iterrows():
        row, dataset = str(r[row_key]), str(r[DATASET])
        for metric in metrics:
            table.loc[row, f"{dataset} {SHORT_METRIC.get(metric, metric)}"] = _cell(
                r[f"test_{metric}_mean"], r[f"test_{metric}_std"], int(r["n"]))
        table.loc[row, f"{dataset} config"] = ", ".join(f"{k}={_key_text(r[k])}" for k in described) or "-"
        table.loc[row, f"{dataset} seeds"] = str(int(r["n"]))
    return table


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


# --------------------------------------------------------------------------- Table 2 and Fig. 3
def _best_per_variant(summary: pd.DataFrame, select: str = "recall@20") -> pd.DataFrame:
    """Per (variant, dataset), the configuration with the best mean validation ``select``."""
    return best_by_validation(summary, [VARIANT, DATASET], select)


def ablation_variants(jobs: pd.DataFrame) -> list[str]:
    """The variants that run the full model's own class (``model._target_``) under another name: the
    ablations of Table 3 (``w/o RS``, ...), which are not baselines. Empty when the jobs' configs do
    not name their model class (then every other variant counts as a model)."""
    if MODEL_CLASS not in jobs or VARIANT not in jobs:
        return []
    variant = jobs[VARIANT].astype(str)
    model_class = jobs[MODEL_CLASS].astype(str)
    variants = list(dict.fromkeys(variant))
    reference = reference_variant(variants)
    own = set(model_class[variant == reference])
    return [v for v in variants if v != reference and not v.endswith(GR_SUFFIX)
            and set(model_class[variant == v]) <= own]


def table2(summary: pd.DataFrame, select: str = "recall@20",
           exclude: Sequence[str] = ()) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Table 2's layout: rows = models (variants without ``+GR``, minus ``exclude``: pass
    :func:`ablation_variants` of the jobs), columns = (dataset, metric) for R@10, R@20, N@10, N@20;
    each cell the mean test score of the configuration chosen by validation.

    Returns ``(values, marked)``: the float means, and the same as text with the best of each column in
    ``**bold**`` and the second best ``_underlined_`` (the paper's marks).
    """
    best = _best_per_variant(summary, select)
    best = best[~best[VARIANT].astype(str).str.endswith(GR_SUFFIX) & ~best[VARIANT].astype(str).isin(list(exclude))]
    datasets = sorted(best[DATASET].astype(str).unique())
    variants = list(dict.fromkeys(best[VARIANT].astype(str)))
    columns = pd.MultiIndex.from_product([datasets, list(METRICS)], names=[DATASET, "metric"])
    values = pd.DataFrame(np.nan, index=pd.Index(variants, name=VARIANT), columns=columns)
    for _, r in best.iterrows():
        for metric in METRICS:
            values.loc[str(r[VARIANT]), (str(r[DATASET]), metric)] = r[f"test_{metric}_mean"]
    marked = values.map(lambda v: "-" if pd.isna(v) else f"{v:.4f}")
    for column in values.columns:
        order = values[column].dropna().sort_values(ascending=False, kind="stable").index
        if len(order) > 0:
            marked.loc[order[0], column] = f"**{values.loc[order[0], column]:.4f}**"
        if len(order) > 1:
            marked.loc[order[1], column] = f"_{values.loc[order[1], column]:.4f}_"
    return values, marked


def improvement_over_best_baseline(jobs: pd.DataFrame, reference: str | None = None,
                                   select: str = "recall@20") -> pd.DataFrame:
    """Per dataset: the best baseline (the variant with the best *validation* ``select`` among those that
    are neither the reference, a ``+GR`` host nor an ablation of the reference, :func:`ablation_variants`),
    the reference model's relative test improvement over it per metric, and the paired t-test over seeds
    of test ``select`` (:func:`paired_ttest`, both chosen on validation). Empty when no dataset has both."""
    ablations = ablation_variants(jobs)
    summary = summarize(jobs)
    best = _best_per_variant(summary, select)
    variants = list(dict.fromkeys(best[VARIANT].astype(str)))
    reference = reference or reference_variant(variants)
    rows = []
    for dataset, frame in best.groupby(DATASET, sort=True):
        ours = frame[frame[VARIANT] == reference]
        name = frame[VARIANT].astype(str)
        others = frame[(name != reference) & ~name.str.endswith(GR_SUFFIX) & ~name.isin(ablations)]
        if ours.empty or others.empty:
            continue
        baseline = others.sort_values(f"valid_{select}_mean", ascending=False, kind="stable").iloc[0]
        row = {DATASET: dataset, "model": reference, "best baseline": baseline[VARIANT]}
        for metric in METRICS:
            a, b = float(ours.iloc[0][f"test_{metric}_mean"]), float(baseline[f"test_{metric}_mean"])
            row[f"improv. {metric}"] = (a - b) / b if b else np.nan
        test = paired_ttest(jobs[jobs[DATASET].astype(str) == str(dataset)], reference, str(baseline[VARIANT]),
                            metric=f"test_{select}", select=select)
        row["pairs"] = int(test["pairs"].iloc[0]) if not test.empty else 0
        row["t"] = float(test["t"].iloc[0]) if not test.empty else np.nan
        row["p"] = float(test["p"].iloc[0]) if not test.empty else np.nan
        rows.append(row)
    return pd.DataFrame(rows)


def gr_comparison(summary: pd.DataFrame, metric: str = "recall@20") -> pd.DataFrame:
    """Fig. 3's data: per dataset and host model with a ``<host>+GR`` variant, the mean test ``metric``
    without and with the refined graph, each configuration chosen by validation ``metric``.

    Columns: dataset, host, without, with (NaN where the host's plain run is missing).
    """
    best = _best_per_variant(summary, metric)
    score = {(str(r[DATASET]), str(r[VARIANT])): float(r[f"test_{metric}_mean"]) for _, r in best.iterrows()}
    rows = []
    for (dataset, variant), value in sorted(score.items()):
        if variant.endswith(GR_SUFFIX):
            host = variant[: -len(GR_SUFFIX)]
            rows.append({DATASET: dataset, "host": host, "without": score.get((dataset, host), np.nan),
                         "with": value})
    return pd.DataFrame(rows, columns=[DATASET, "host", "without", "with"])
