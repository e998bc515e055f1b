"""The one exception type for bad dataset input (files, columns, ids, features)."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

from mllmrec.errors import MllmrecError


class DatasetError(MllmrecError, ValueError):
    """Bad dataset input. The message names the file/field and says how to fix it."""


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """' (did you mean 'x'?)' when a close match exists, else ''."""
    match = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else ""
