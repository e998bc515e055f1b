"""Item text as MMRec assembles it, and the user history text of the no-LLM baseline."""

from __future__ import annotations

import html
import re
from collections.abc import Sequence

import pandas as pd

_WS = re.compile(r"\s+")

__all__ = ["clean_text", "mmrec_item_text", "history_text"]


def _missing(value: object) -> bool:
    """None, NaN, pd.NA, NaT: the markers pandas uses for an absent field."""
    return value is None or (pd.api.types.is_scalar(value) and bool(pd.isna(value)))


def clean_text(value: object) -> str:
    """HTML entities unescaped, newlines/tabs/runs of spaces collapsed; None/NaN/pd.NA -> ''."""
    if _missing(value):
        return ""
    return _WS.sub(" ", html.unescape(str(value))).strip()


def mmrec_item_text(title: object, brand: object, categories: Sequence[str] | None, description: object) -> str:
    """``title brand <each entry of the first category path> description`` (MMRec's field order).

    MMRec concatenates with single spaces and turns missing fields into ' '; after whitespace
    normalisation that is the same as joining the non-empty cleaned fields with one space.
    """
    parts = [clean_text(title), clean_text(brand)]
    # not `categories or []`: parquet gives list columns back as numpy arrays (ambiguous truth value)
    parts += [clean_text(c) for c in (() if _missing(categories) else categories)]
    parts.append(clean_text(description))
    return " ".join(p for p in parts if p)


def history_text(descriptions: Sequence[str], separator: str = "\n") -> str:
    """A user's chronological item descriptions as one text (the ``mllm=none`` profile)."""
    return separator.join(d for d in descriptions if d)
