"""MLLMRec: MLLM preference reasoning + refined item-item graph for multimodal recommendation."""

__version__ = "0.1.0"
