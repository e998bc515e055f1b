"""The MLLM reasoning stage (paper Section 4.1): image descriptions, multimodal item descriptions
and user preference profiles, written to ``<dataset>/reasoning/<mllm>/``. See docs/reasoning.md."""

from mllmrec.reasoning.pipeline import ReasonResult, ShardsPending, generation_key, run_reasoning
from mllmrec.reasoning.prompts import (
    PROMPT1,
    PROMPT2,
    TEMPLATE_VERSION,
    fit_history,
    image_prompt,
    multimodal_description,
    profile_prompt,
)
from mllmrec.reasoning.settings import ReasonConfigError, ReasonSettings

__all__ = [
    "PROMPT1",
    "PROMPT2",
    "TEMPLATE_VERSION",
    "ReasonConfigError",
    "ReasonResult",
    "ReasonSettings",
    "ShardsPending",
    "fit_history",
    "generation_key",
    "image_prompt",
    "multimodal_description",
    "profile_prompt",
    "run_reasoning",
]
