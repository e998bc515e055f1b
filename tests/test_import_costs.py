"""What the code relies on for speed: the sweep machinery, the job bookkeeping that decides whether a
sweep job is already finished, and the entry points' own modules import without torch (a skipped
job of a rerun sweep returns in well under a second; the launcher process never needs torch)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from train_helpers import ROOT

TORCH_FREE = [
    "mllmrec.errors",
    "mllmrec.sweep",
    "mllmrec.sweep.failures",
    "mllmrec.sweep.lease",
    "mllmrec.sweep.resume",
    "mllmrec.sweep.worker",
    "mllmrec.sweep.optuna_search",
    "mllmrec.train",
    "mllmrec.train.fingerprint",
    "mllmrec.train.objective",
    "mllmrec.train.job",
    "mllmrec.train.loggers",
    "mllmrec.train.run_folder",
    "mllmrec.train.cli",
    "mllmrec.train.extras",
    "mllmrec.train.restore",
    "mllmrec.train.evaluate",
    "mllmrec.sweep.announce",
    "mllmrec",  # mllmrec.recommend is imported on first use
    "hydra_plugins.mllmrec_sweep.gpu_launcher",
    "hydra_plugins.mllmrec_sweep.optuna_sweeper",
]


@pytest.mark.parametrize("module", TORCH_FREE)
def test_module_imports_without_torch(module):
    code = f"import sys, {module}; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "False", f"{module} imports torch"


@pytest.mark.parametrize("script", ["train.py", "reason.py", "prepare.py", "evaluate.py", "recommend.py"])
def test_entry_point_module_imports_without_torch(script):
    """Loading the entry point (not running it) stays light: heavy imports happen inside ``main``."""
    code = (f"import runpy, sys; runpy.run_path({str(ROOT / script)!r}, run_name='not_main'); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "False", f"{script} imports torch at module level"
