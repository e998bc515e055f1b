"""One error base class for everything a user can fix, and one exit policy for the entry points.

A :class:`MllmrecError` is bad input, a bad config value or a missing prerequisite (a dataset not
prepared, reasoning outputs not produced, a backend not installed). Its message names the file, key
or option and says how to fix it. ``prepare.py``, ``reason.py`` and ``train.py`` print such an error
once, as one clean block without a traceback, and exit with status 2 (:func:`exit_on_user_error`).
Anything else is a crash and keeps its traceback; so does a user error when ``HYDRA_FULL_ERROR=1``.

Torch-free: the entry points import this before anything heavy.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator

__all__ = ["EXIT_USER_ERROR", "MllmrecError", "ConfigError", "exit_on_user_error", "mark_reported"]

#: the exit status of a run stopped by a user error (argparse's convention)
EXIT_USER_ERROR = 2

_REPORTED = "_mllmrec_reported"


class MllmrecError(Exception):
    """An error the user can fix; the message names what is wrong and how to fix it."""


class ConfigError(MllmrecError, ValueError):
    """A config value is out of range or points at nothing; the message names the key and the fix."""


def mark_reported(error: BaseException) -> None:
    """Note that ``error`` was already logged (by the job wrapper), so the entry point does not
    print it a second time."""
    with contextlib.suppress(AttributeError):  # some built-in exceptions take no attributes
        setattr(error, _REPORTED, True)


def _in_multirun() -> bool:
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode
    except ImportError:  # pragma: no cover - hydra is a dependency
        return False
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


@contextlib.contextmanager
def exit_on_user_error(log: logging.Logger) -> Iterator[None]:
    """Run an entry point's body; a :class:`MllmrecError` is printed once and exits with status 2.

    In a multirun the error is re-raised instead (after being printed), so that the launcher records
    the job as failed and the sweep goes on with its other jobs; ``SystemExit`` would end the sweep.
    With ``HYDRA_FULL_ERROR=1`` the error propagates with its full traceback.
    """
    try:
        yield
    except MllmrecError as err:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        if not getattr(err, _REPORTED, False):
            log.error("%s", err)
            mark_reported(err)
        if _in_multirun():
            raise
        sys.exit(EXIT_USER_ERROR)
