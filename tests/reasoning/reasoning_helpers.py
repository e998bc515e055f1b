"""Helpers shared by the reasoning tests (a named module: `from conftest import` is ambiguous when
several test folders have a conftest.py)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

from mllmrec.data import write_processed_dataset
from mllmrec.data.text import mmrec_item_text

REPO = Path(__file__).resolve().parents[2]
CONF = REPO / "conf"


def compose_reason(overrides: list[str]) -> DictConfig:
    """The real conf/reason.yaml composed with ``overrides`` (no Hydra run dir involved)."""
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            return compose(config_name="reason", overrides=overrides)
    finally:
        GlobalHydra.instance().clear()


def _png(path: Path, rgb: tuple[int, int, int]) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), rgb).save(path, format="PNG")


def build_tiny_dataset(root: Path, images: bool = True) -> Path:
    """3 users, 5 items, with rows out of time order and valid/test rows that must not leak.

    Items: 0-2 have PNG images, 3 has a corrupt image file, 4 has no image. Each user's training
    history in time order: user 0 -> [2, 0, 1], user 1 -> [3, 4], user 2 -> [1, 4, 0].
    Valid/test items: user 0 -> 3 (valid), 4 (test); user 1 -> 0, 1; user 2 -> 2, 3.
    """
    rows = [  # user, item, timestamp, x_label (deliberately not sorted by time)
        (0, 1, 300, 0), (0, 2, 100, 0), (0, 0, 200, 0), (0, 3, 150, 1), (0, 4, 50, 2),
        (1, 4, 20, 0), (1, 3, 10, 0), (1, 0, 5, 1), (1, 1, 30, 2),
        (2, 0, 9, 0), (2, 1, 7, 0), (2, 4, 8, 0), (2, 2, 1, 1), (2, 3, 2, 2),
    ]
    inter = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "x_label"])
    inter["rating"] = 5.0
    item_rows = []
    for i in range(5):
        title, brand, cats, desc = f"Item{i} title", f"Brand{i}", ["Baby", f"Cat{i}"], f"Description of item {i}."
        item_rows.append({
            "item_id": i, "source_id": f"A{i}", "title": title, "brand": brand, "categories": cats,
            "description": desc, "image_url": None,
            "image_path": None if (i == 4 or not images) else f"images/{i}.png",
            "text": mmrec_item_text(title, brand, cats, desc),
        })
    items = pd.DataFrame(item_rows)
    users = pd.DataFrame({"user_id": [0, 1, 2], "source_id": ["U0", "U1", "U2"]})
    write_processed_dataset(root, inter, items, users, {"name": "tiny"})
    if images:
        for i, rgb in enumerate([(255, 0, 0), (0, 255, 0), (0, 0, 255)]):
            _png(root / "images" / f"{i}.png", rgb)
        (root / "images" / "3.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    return root


def tiny_overrides(root: Path, *extra: str) -> list[str]:
    """Overrides that point the mmrec dataset group at a tiny processed folder (Baby category)."""
    return ["dataset=baby", f"dataset.root={root}", "dataset.name=tiny", *extra]


# a tiny random Gemma 3: the real architecture and generate(), 5k parameters
TINY_WORDS = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>", "user", "model",
              *(f"w{i}" for i in range(40))]


def tiny_gemma(seed: int = 0):
    """(tokenizer, Gemma3ForCausalLM) with Gemma's special tokens and whitespace-split words.

    The tokenizer adds ``<bos>`` like Gemma's; ``<end_of_turn>`` is id 5, ``<eos>`` id 1.
    """
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import (
        Gemma3ForCausalLM,
        Gemma3TextConfig,
        PreTrainedTokenizerFast,
    )

    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(TINY_WORDS)}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 2)])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>",
        additional_special_tokens=["<start_of_turn>", "<end_of_turn>"],
    )
    config = Gemma3TextConfig(
        vocab_size=len(TINY_WORDS), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, head_dim=8, max_position_embeddings=128,
        pad_token_id=0, eos_token_id=1, bos_token_id=2,
    )
    torch.manual_seed(seed)
    return tokenizer, Gemma3ForCausalLM(config).eval()
