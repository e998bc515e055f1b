"""Entry points print a user error once, in one block without a traceback, and exit with status 2;
HYDRA_FULL_ERROR=1 keeps the traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from train_helpers import ROOT

pytestmark = pytest.mark.slow


def run(script: str, *overrides: str, tmp_path: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    environment = {**os.environ, "WANDB_MODE": "disabled", "HYDRA_FULL_ERROR": "0", **(env or {})}
    return subprocess.run(
        [sys.executable, str(ROOT / script), f"paths.data_dir={tmp_path / 'data'}",
         f"hydra.run.dir={tmp_path / 'run'}", *overrides],
        capture_output=True, text=True, env=environment, timeout=300,
    )


@pytest.mark.parametrize(
    "script, overrides, message",
    [
        ("train.py", ["data.batch_size=0"], "data.batch_size=0: must be an integer >= 1"),
        ("train.py", ["dataset=baby"], "python prepare.py dataset=baby"),
        ("train.py", ["mllm=qwen25vl", "dataset.n_users=40", "dataset.n_items=30"],
         "python reason.py dataset=demo mllm=qwen25vl"),
        ("reason.py", ["dataset=baby"], "python prepare.py dataset=baby"),
        ("prepare.py", ["dataset=mmrec", "dataset.root=/nonexistent", "dataset.name=x"], "/nonexistent"),
        # Hydra's lists reach the spec: a 2-value mean is refused under its key
        ("features.py", ["dataset=demo", "image_encoder.model=resnet18", "image_encoder.library=timm",
                         "image_encoder.pretrained=true", "image_encoder.image_size=32", "image_encoder.mean=[0.5,0.5]",
                         "image_encoder.std=[1,1,1]"], "image_encoder.mean=[0.5, 0.5]: three values"),
    ],
)
def test_user_error_is_one_message_and_exit_2(tmp_path, script, overrides, message):
    result = run(script, *overrides, tmp_path=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert output.count(message) == 1, output
    assert "Traceback" not in output and "HYDRA_FULL_ERROR" not in output, output


def test_full_error_keeps_the_traceback(tmp_path):
    result = run("train.py", "data.batch_size=0", tmp_path=tmp_path, env={"HYDRA_FULL_ERROR": "1"})
    assert result.returncode != 0 and "Traceback" in result.stderr
    assert "ConfigError: data.batch_size=0" in result.stderr
