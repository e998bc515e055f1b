"""The paper's figures as PNG files: similarity histogram (Fig. 1b), degree histogram, t-SNE scatter
(Fig. 6), alpha x K_c heatmap (Fig. 4) and the d curve (Fig. 5).

Figures are built with ``matplotlib.figure.Figure`` (no pyplot: no global state, no GUI backend, safe in
worker processes and threads) and written atomically.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

__all__ = ["save_figure", "similarity_histogram", "degree_histogram", "scatter_2d", "heatmap", "curves"]

DPI = 100


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` as PNG to ``path`` atomically (a reader never sees half a file)."""
    from mllmrec.cache import atomic_path

    path = Path(path)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight")
    return path


def similarity_histogram(similarities: np.ndarray, alpha: float, path: str | Path, bins: int = 50) -> Path:
    """Fig. 1b: cosine similarity of the top-K_s semantic (kNN) edges, with the alpha threshold.

    The title gives the share of edges below 0.5 (the paper: ~12% on Baby) and below alpha (pruned).
    """
    sims = np.asarray(similarities, dtype=np.float64).ravel()
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    if sims.size:
        ax.hist(sims, bins=bins, color="#4c72b0", edgecolor="white")
        below_half, below_alpha = float((sims < 0.5).mean()), float((sims < alpha).mean())
        title = f"kNN edge similarity: {below_half:.1%} < 0.5, {below_alpha:.1%} < alpha (pruned)"
    else:
        title = "kNN edge similarity: no edges"
    ax.axvline(alpha, color="#c44e52", linestyle="--", label=f"alpha = {alpha:g}")
    ax.set(xlabel="cosine similarity", ylabel="edges", title=title)
    ax.legend()
    return save_figure(fig, path)


def degree_histogram(degrees: np.ndarray, path: str | Path, title: str = "item graph out-degree") -> Path:
    """Histogram of the refined graph's per-item out-degree (non-zeros per row)."""
    degrees = np.asarray(degrees, dtype=np.int64).ravel()
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    if degrees.size:
        edges = np.arange(degrees.min(), degrees.max() + 2) - 0.5
        ax.hist(degrees, bins=edges, color="#55a868", edgecolor="white")
        title = f"{title} (mean {degrees.mean():.1f}, max {degrees.max()})"
    ax.set(xlabel="out-degree", ylabel="items", title=title)
    return save_figure(fig, path)


def scatter_2d(
    coords: np.ndarray, values: np.ndarray, path: str | Path, title: str, colorbar_label: str
) -> Path:
    """Fig. 6: a 2-D embedding (e.g. t-SNE of user representations), coloured by ``values``."""
    coords = np.asarray(coords, dtype=np.float64)
    fig = Figure(figsize=(6, 5))
    ax = fig.add_subplot()
    points = ax.scatter(coords[:, 0], coords[:, 1], c=values, s=10, cmap="viridis", alpha=0.85)
    fig.colorbar(points, ax=ax, label=colorbar_label)
    ax.set(title=title, xticks=[], yticks=[])
    return save_figure(fig, path)


def heatmap(
    values: np.ndarray,
    row_labels: Sequence,
    col_labels: Sequence,
    path: str | Path,
    title: str,
    xlabel: str,
    ylabel: str,
) -> Path:
    """Fig. 4: a matrix of scores (rows x columns), annotated; missing cells (NaN) stay blank."""
    values = np.asarray(values, dtype=np.float64)
    fig = Figure(figsize=(1.1 * len(col_labels) + 2.5, 0.8 * len(row_labels) + 1.8))
    ax = fig.add_subplot()
    image = ax.imshow(np.ma.masked_invalid(values), cmap="viridis", aspect="auto")
    fig.colorbar(image, ax=ax)
    ax.set_xticks(range(len(col_labels)), [f"{c:g}" if isinstance(c, float) else str(c) for c in col_labels])
    ax.set_yticks(range(len(row_labels)), [f"{r:g}" if isinstance(r, float) else str(r) for r in row_labels])
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    finite = values[np.isfinite(values)]
    middle = (finite.min() + finite.max()) / 2 if finite.size else 0.0
    for (i, j), v in np.ndenumerate(values):
        if np.isfinite(v):
            ax.text(j, i, f"{v:.4f}", ha="center", va="center", fontsize=8,
                    color="black" if v > middle else "white")
    return save_figure(fig, path)


def curves(
    x: Sequence[float],
    series: Mapping[str, tuple[Sequence[float], Sequence[float] | None]],
    path: str | Path,
    title: str,
    xlabel: str,
    ylabel: str,
    log_x: bool = False,
) -> Path:
    """Fig. 5: one line per series (``name -> (means, stds or None)``) over ``x``."""
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    for name, (means, stds) in series.items():
        ax.errorbar(x, means, yerr=stds, marker="o", capsize=3, label=name)
    if log_x:
        ax.set_xscale("log", base=2)
        ax.set_xticks(list(x), [f"{v:g}" for v in x])
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, path)


def grouped_bars(
    groups: Sequence[str],
    series: dict[str, Sequence[float]],
    path: str | Path,
    title: str,
    ylabel: str,
) -> Path:
    """Fig. 3: one group of bars per entry of ``groups`` (host models), one bar per series
    (without / with GR), each bar labelled with its value; NaN bars are left out."""
    fig = Figure(figsize=(1.4 * len(groups) + 2.5, 3.8))
    ax = fig.add_subplot()
    width = 0.8 / max(len(series), 1)
    x = np.arange(len(groups))
    for k, (name, values) in enumerate(series.items()):
        values = np.asarray(values, dtype=np.float64)
        bars = ax.bar(x + (k - (len(series) - 1) / 2) * width, np.nan_to_num(values), width, label=name)
        for bar, v in zip(bars, values):
            if np.isfinite(v):
                ax.annotate(f"{v:.4f}", (bar.get_x() + bar.get_width() / 2, v), ha="center", va="bottom", fontsize=7)
    ax.set_xticks(x, list(groups))
    ax.set(ylabel=ylabel, title=title)
    ax.legend()
    return save_figure(fig, path)
