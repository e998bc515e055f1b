"""Pickles are refused (issue 18, point 11: this works today; these tests keep it so): a pickled feature
.npy and a checkpoint carrying a pickled object never run code."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mllmrec.data.errors import DatasetError


class _Payload:
    """Unpickling this would create a marker file (what a malicious file would do instead)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_pickled_feature_file_is_refused(tmp_path):
    from mllmrec.data.validation import load_feature_matrix

    marker = tmp_path / "pwned"
    path = tmp_path / "image_feat.npy"
    np.save(path, np.array([_Payload(marker)] * 4, dtype=object), allow_pickle=True)
    with pytest.raises(DatasetError, match=rf"{path}.*not a plain .npy array"):
        load_feature_matrix(path, 4, "item")
    assert not marker.exists()


def test_a_malicious_checkpoint_is_refused(train_cfg, tmp_path):
    from mllmrec.train.task import train

    marker = tmp_path / "pwned"
    ckpt = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "epoch": 0, "global_step": 0, "payload": _Payload(marker)}, ckpt)
    with pytest.raises(Exception, match="(?i)weights_only|unpickl"):
        train(train_cfg("trainer.max_epochs=1", f"ckpt_path={ckpt}", "callbacks.user_tsne=null"))
    assert not marker.exists()
