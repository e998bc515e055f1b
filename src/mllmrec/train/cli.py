"""The command line of ``evaluate.py`` and ``recommend.py``: their own options, and ``key=value``
overrides of the run's saved config.

These two scripts load a trained run rather than compose a new config, so they do not go through
``@hydra.main``: their options (``run=``, ``ckpt_path=``, ``k=``, ...) are read here and everything
else is an override applied to the run's ``.hydra/config.yaml``
(:func:`mllmrec.train.restore.apply_overrides`). A value is taken as written after the first ``=``, so
``run=multirun/grid/graph.alpha=0.5,graph.kc=5`` needs no quoting. Torch-free.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from mllmrec.errors import ConfigError

__all__ = ["parse_cli", "parse_bool", "setup_console_logging"]

_TRUE, _FALSE = {"true", "1", "yes", "on"}, {"false", "0", "no", "off"}


def parse_bool(key: str, value: str | bool) -> bool:
    """``true``/``false`` (and 1/0, yes/no, on/off) of ``key=value``; anything else is an error."""
    if isinstance(value, bool):
        return value
    if value.lower() in _TRUE:
        return True
    if value.lower() in _FALSE:
        return False
    raise ConfigError(f"{key}={value}: expected true or false")


def parse_cli(argv: Sequence[str], options: Mapping[str, Any], usage: str) -> tuple[dict[str, Any], list[str]]:
    """Split ``argv`` (without the program name) into ``options`` (their defaults replaced by the values
    given, as strings; booleans parsed) and the remaining overrides.

    An argument without ``=`` is an error (printed with ``usage``); ``-h``/``--help`` prints ``usage``
    and exits 0.
    """
    if any(a in ("-h", "--help") for a in argv):
        print(usage)
        sys.exit(0)
    values, overrides = dict(options), []
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep:
            raise ConfigError(f"unexpected argument {arg!r}: every argument is key=value.\n{usage}")
        if key in options:
            values[key] = parse_bool(key, value) if isinstance(options[key], bool) else value
        else:
            overrides.append(arg)
    return values, overrides


def setup_console_logging() -> None:
    """INFO lines as ``train.py`` prints them (Hydra's format), once."""
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
