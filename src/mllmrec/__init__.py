"""MLLMRec: MLLM preference reasoning + refined item graph for multimodal recommendation.

``mllmrec.recommend(run_dir, users=None, k=20, ...)`` gives a trained run's top-K items
(:func:`mllmrec.train.recommend.recommend`; ``new_items=<table>`` scores items that were not in the
dataset); it is imported on first use, so ``import mllmrec`` stays light (no torch).
"""

from typing import Any

__version__ = "0.1.0"

__all__ = ["recommend", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "recommend":
        from mllmrec.train.recommend import recommend

        return recommend
    raise AttributeError(f"module 'mllmrec' has no attribute {name!r}")
