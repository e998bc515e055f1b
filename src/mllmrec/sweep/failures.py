"""What a failed sweep job left behind, in a form that survives pickling and is easy to report.

A job's own exception may not pickle (it can hold tensors, locks, C++ objects), so the worker turns it
into a :class:`JobFailure` carrying the type name, message and traceback text. The task wrapper also
writes ``error.json`` into the job's output dir, so any launcher (joblib, SLURM, ...) leaves a
record that ``report.py`` can list.
"""

from __future__ import annotations

import json
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mllmrec.train.job import ERROR_FILE

__all__ = ["JobFailure", "failure_from_exception", "format_failures", "dumps_failures"]



class JobFailure(RuntimeError):
    """A sweep job that raised or died. ``str()`` is a one-line summary; ``details`` the traceback."""

    def __init__(
        self, job: int | None, overrides: Sequence[str], error_type: str, message: str, details: str = ""
    ) -> None:
        self.job = job
        self.overrides = list(overrides)
        self.error_type = error_type
        self.message = message
        self.details = details
        super().__init__(self.summary())

    def __reduce__(self):  # keep every field across pickling (the default keeps only args)
        return (JobFailure, (self.job, self.overrides, self.error_type, self.message, self.details))

    def summary(self) -> str:
        what = " ".join(self.overrides) or "(no overrides)"
        first_line = self.message.strip().splitlines()[0] if self.message.strip() else ""
        return f"job {self.job} [{what}]: {self.error_type}: {first_line}"

    def to_dict(self) -> dict[str, Any]:
        return {"job": self.job, "overrides": self.overrides, "error_type": self.error_type,
                "message": self.message, "traceback": self.details}


def failure_from_exception(job: int | None, overrides: Sequence[str], error: BaseException) -> JobFailure:
    """A :class:`JobFailure` describing ``error`` (kept as it is when it already is one)."""
    if isinstance(error, JobFailure):
        return error
    details = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    return JobFailure(job, overrides, type(error).__name__, str(error), details)


def format_failures(failures: Sequence[JobFailure], total: int, sweep_dir: str | Path) -> str:
    """The end-of-sweep report: which jobs failed, with their overrides and error."""
    lines = [f"{len(failures)} of {total} sweep job(s) failed (the others ran to the end):"]
    lines += [f"  - {f.summary()}" for f in failures]
    lines.append(f"Details: {Path(sweep_dir) / 'failures.json'} and each job's {ERROR_FILE} / log.")
    return "\n".join(lines)


def dumps_failures(failures: Sequence[JobFailure]) -> str:
    return json.dumps([f.to_dict() for f in failures], indent=2) + "\n"
