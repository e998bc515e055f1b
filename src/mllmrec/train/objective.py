"""The value ``train.py`` returns to sweepers. Kept free of torch/lightning imports so that a sweep
job that is skipped (its results already exist) returns in well under a second."""

from __future__ import annotations

from mllmrec.errors import ConfigError

__all__ = ["objective"]


def objective(summary: dict, metric: str) -> float:
    """The value ``train.py`` returns to sweepers: a validation metric of the best epoch."""
    key = metric.split("/", 1)[-1]
    if key not in summary.get("valid", {}):
        raise ConfigError(
            f"optimized_metric={metric!r} was not logged; available: "
            f"{sorted('val/' + k for k in summary.get('valid', {}))}"
        )
    return float(summary["valid"][key])
