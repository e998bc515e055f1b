"""Top-level functions for the multi-process cache tests (spawned children import this module)."""

from __future__ import annotations

import json
import time
from pathlib import Path


def race_build_once(target: str, counter: str, result: str, barrier) -> None:
    from mllmrec.cache import build_once

    def build() -> str:
        with open(counter, "a", encoding="utf-8") as f:  # one line per build
            f.write("built\n")
        time.sleep(0.5)  # keep the window open: the other process must wait, not build
        return "payload"

    barrier.wait(timeout=60)
    value, built = build_once(
        target, build,
        save=lambda v, p: Path(p).write_text(v, encoding="utf-8"),
        load=lambda p: Path(p).read_text(encoding="utf-8"),
        meta={"params": {"k": 5}, "input": "abc"},
    )
    Path(result).write_text(json.dumps({"value": value, "built": built}), encoding="utf-8")
