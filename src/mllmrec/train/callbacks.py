"""Lightning callbacks that document a run: graph statistics and the paper's per-run figures.

Every figure is written as a PNG under the run's ``plots/`` folder (for people without W&B, whatever
the logger) and, when a W&B logger is configured, logged to it as an image. Scalars go to every
logger. Both callbacks work with any model/datamodule and skip, with a log line, what they cannot draw.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

from mllmrec import plots

log = logging.getLogger(__name__)

__all__ = ["GraphStatistics", "UserTSNE", "log_scalars", "log_images", "log_results"]


def _wandb_loggers(loggers: Sequence[Any]) -> list[Any]:
    from lightning.pytorch.loggers import WandbLogger

    return [lg for lg in loggers if isinstance(lg, WandbLogger)]


def log_scalars(loggers: Sequence[Any], values: Mapping[str, float], step: int = 0) -> None:
    """``values`` to every logger (numbers only)."""
    numbers = {k: float(v) for k, v in values.items() if isinstance(v, (int, float, np.number))}
    for lg in loggers:
        lg.log_metrics(numbers, step=step)


def log_images(loggers: Sequence[Any], images: Mapping[str, Path]) -> None:
    """PNG files to the W&B loggers (the other loggers have the files in the run dir)."""
    for lg in _wandb_loggers(loggers):
        for key, path in images.items():
            lg.log_image(key=key, images=[str(path)])


def log_results(loggers: Sequence[Any], rows: Mapping[str, Mapping[str, float]]) -> None:
    """The final table (rows such as "valid (best epoch)", "test"): scalars ``final/<row>/<metric>`` to
    every logger, plus a W&B table and run summary."""
    keys = sorted({k for metrics in rows.values() for k in metrics})
    flat = {f"final/{row.split(' ')[0]}/{k}": v for row, metrics in rows.items() for k, v in metrics.items()}
    for lg in loggers:
        lg.log_metrics(flat)
    for lg in _wandb_loggers(loggers):
        lg.log_table(key="results", columns=["split", *keys],
                     data=[[row, *(metrics.get(k) for k in keys)] for row, metrics in rows.items()])
        lg.experiment.summary.update(flat)


class GraphStatistics(Callback):
    """At fit start: statistics of the refined item graph and the paper's Fig. 1b.

    Writes ``graph_statistics.json`` (edges kept/pruned by alpha, co-occurrence edges added, overlap,
    final edges, out-degrees, share of kNN edges below 0.5 and below alpha), ``similarity_histogram.png``
    and ``degree_histogram.png`` into ``output_dir``; scalars go to every logger as ``graph/<name>``.
    Needs a datamodule with ``item_graph`` and ``graph_statistics`` (the
    :class:`~mllmrec.graph.GraphBuildStatistics` its graph build produced, or read back from the graph
    cache): nothing here builds or searches anything.
    """

    def __init__(self, output_dir: str | Path, bins: int = 50) -> None:
        self.output_dir = Path(output_dir)
        self.bins = bins
        self.statistics: dict[str, Any] | None = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from mllmrec.cache import atomic_write_json

        dm = trainer.datamodule
        # graph_statistics is set only when this run built (or read) the graph: a model that does not
        # read the graph never makes the datamodule build it, and neither does this callback
        if not trainer.is_global_zero or getattr(dm, "graph_statistics", None) is None:
            log.info("graph statistics skipped: the datamodule has no refined item graph")
            return
        built = dm.graph_statistics
        stats: dict[str, Any] = built.counts()
        similarities = built.knn_similarities
        for threshold, name in ((0.5, "knn_below_0.5"), (built.alpha, "knn_below_alpha")):
            stats[name] = float((similarities < threshold).mean()) if similarities.size else 0.0
        stats.update(ks=built.k_s, alpha=built.alpha, kc=built.k_c)
        degrees = torch.bincount(dm.item_graph.coalesce().indices()[0], minlength=dm.item_graph.shape[0])
        images = {
            "graph/similarity_histogram": plots.similarity_histogram(
                similarities, built.alpha, self.output_dir / "similarity_histogram.png", self.bins),
            "graph/degree_histogram": plots.degree_histogram(
                degrees.cpu().numpy(), self.output_dir / "degree_histogram.png"),
        }
        atomic_write_json(self.output_dir / "graph_statistics.json", stats)
        log.info("item graph: %d kNN edges, %d kept by alpha=%g (%d pruned), %d co-occurrence edges, "
                 "%d in total", stats["knn_edges"], stats["alpha_kept"], built.alpha, stats["alpha_pruned"],
                 stats["cooccurrence_edges"], stats["final_edges"])
        log_scalars(trainer.loggers, {f"graph/{k}": v for k, v in stats.items()})
        log_images(trainer.loggers, images)
        self.statistics = stats


class UserTSNE(Callback):
    """After testing (best checkpoint): t-SNE of ``n_users`` users' learned representations (Fig. 6).

    Users are a seeded sample; points are coloured by the user's number of training interactions.
    Needs a model with ``user_repr(users) -> [B, d]`` (MLLMRec has it; other models are skipped).
    """

    def __init__(self, output_dir: str | Path, n_users: int = 500, seed: int = 999, perplexity: float = 30.0) -> None:
        self.output_dir = Path(output_dir)
        self.n_users = n_users
        self.seed = seed
        self.perplexity = perplexity

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from sklearn.manifold import TSNE

        dm = trainer.datamodule
        if not trainer.is_global_zero:
            return
        if not hasattr(pl_module, "user_repr") or getattr(dm, "data", None) is None:
            log.info("user t-SNE skipped: the model has no user_repr")
            return
        n_total = dm.data.n_users
        users = np.sort(np.random.default_rng(self.seed).choice(n_total, min(self.n_users, n_total), replace=False))
        if len(users) < 4:
            log.info("user t-SNE skipped: only %d users", len(users))
            return
        with torch.no_grad():
            reps = pl_module.user_repr(torch.as_tensor(users, device=pl_module.device)).float().cpu().numpy()
        # perplexity must stay well below the number of points
        perplexity = min(self.perplexity, (len(users) - 1) / 3)
        coords = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=self.seed).fit_transform(reps)
        activity = np.diff(dm.data.train.indptr)[users]
        path = plots.scatter_2d(coords, np.log1p(activity), self.output_dir / "user_tsne.png",
                                f"t-SNE of {len(users)} users' representations",
                                "log(1 + training interactions)")
        log_images(trainer.loggers, {"plots/user_tsne": path})
