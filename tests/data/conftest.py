"""Fixtures shared by the dataset tests: tiny MMRec-format folders written into tmp_path."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

HEADER = ("userID", "itemID", "rating", "timestamp", "x_label")


def write_inter(
    root: Path,
    rows: Sequence[Sequence[object]],
    name: str = "toy",
    header: Sequence[str] = HEADER,
    sep: str = "\t",
) -> Path:
    """Write ``<root>/<name>.inter`` (header + rows) and return its path."""
    root.mkdir(parents=True, exist_ok=True)
    path = root / f"{name}.inter"
    lines = [sep.join(header)] + [sep.join(str(v) for v in row) for row in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# user, item, rating, timestamp, x_label: 3 users, 5 items; item 4 only appears in test
TOY_ROWS = [
    (0, 0, 5, 30, 0),
    (0, 1, 4, 10, 0),
    (0, 2, 3, 20, 0),
    (0, 3, 5, 40, 1),
    (0, 4, 5, 50, 2),
    (1, 2, 1, 15, 0),
    (1, 0, 2, 15, 0),  # same timestamp as the row above: file order decides (2 before 0)
    (1, 1, 3, 5, 0),
    (1, 3, 3, 60, 2),
    (2, 3, 4, 7, 0),
    (2, 1, 4, 8, 0),
    (2, 0, 4, 9, 1),
]


@pytest.fixture
def toy_folder(tmp_path: Path) -> Path:
    root = tmp_path / "toy"
    write_inter(root, TOY_ROWS)
    return root


@pytest.fixture
def inter_writer(tmp_path: Path) -> Callable[..., Path]:
    """``inter_writer(rows, **kw)`` writes ``<tmp>/ds/<name>.inter`` and returns the folder."""

    def _write(rows, **kwargs) -> Path:
        root = tmp_path / "ds"
        write_inter(root, rows, **kwargs)
        return root

    return _write
