"""notebooks/results.ipynb runs top to bottom on a fixture sweep (nbclient), so it cannot rot."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

sys.path.insert(0, str(Path(__file__).resolve().parent))

from sweep_helpers import ROOT, write_fake_sweep  # noqa: E402


def _outputs(nb, mime: str) -> list[str]:
    found = []
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            if mime == "stream" and output.get("output_type") == "stream":
                found.append(output["text"])
            elif mime in output.get("data", {}):
                found.append(output["data"][mime])
    return found


@pytest.mark.slow
def test_results_notebook_runs_on_a_fixture_sweep(tmp_path, monkeypatch):
    sweep = write_fake_sweep(tmp_path / "multirun" / "fake")
    monkeypatch.setenv("MLLMREC_SWEEP_DIR", str(sweep))
    nb = nbformat.read(ROOT / "notebooks" / "results.ipynb", as_version=4)
    assert all(not cell.get("outputs") for cell in nb.cells if cell.cell_type == "code")  # stored clean
    NotebookClient(nb, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()  # raises on any cell error
    text = "\n".join(_outputs(nb, "stream") + _outputs(nb, "text/plain") + _outputs(nb, "text/markdown"))
    assert "48 finished job(s), 1 without results" in text
    assert "**MLLMRec vs w/o RS** (paired over seeds)" in text
    # Tables 3 and 4 (pandas pads the Markdown cells)
    assert re.search(r"\|\s*w/o RS\s*\|", text) and re.search(r"\|\s*qwen25vl\s*\|", text)
    assert len(_outputs(nb, "image/png")) == 6  # 4 heatmaps + 2 d curves
    assert (sweep / "report" / "heatmap_baby_recall@20.png").is_file()
