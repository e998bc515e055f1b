"""The package's rooms import only downward, in pipeline order (docs/architecture.md): a stage never
imports a later one. Function-level imports count too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from train_helpers import ROOT

PACKAGE = ROOT / "src" / "mllmrec"
# rank of each room: a module may import rooms of its own rank or lower
RANKS = {
    "errors": 0, "cache": 0, "plots": 0, "secrets": 0, "data": 0,
    "prepare": 1,
    "reasoning": 2,
    "encoding": 3, "graph": 3, "metrics": 3,
    "models": 4,
    "train": 5,
    "sweep": 6,
    "report": 7,
}


def room_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "mllmrec" else None


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            if node.module == "mllmrec":
                names.update(f"mllmrec.{alias.name}" for alias in node.names)
    return names


def test_every_room_has_a_rank():
    rooms = {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir()
             if (p.suffix == ".py" and p.stem != "__init__") or (p.is_dir() and (p / "__init__.py").exists())}
    assert rooms == set(RANKS), "add the new room to RANKS (and to docs/architecture.md)"


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_upward_import(path):
    own = room_of("mllmrec." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts))
    if own is None or own == "__init__":
        return
    upward = sorted(m for m in imported_modules(path)
                    if (r := room_of(m)) in RANKS and RANKS[r] > RANKS[own])
    assert not upward, f"{path.relative_to(PACKAGE)} ({own}) imports later stages: {upward}"
