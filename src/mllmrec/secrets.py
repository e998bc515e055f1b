"""Secrets stay out of run folders and logs.

A value whose key looks like a secret (``*api_key*``, ``*token*``, ``*password*``, ``*secret*``) is
replaced by :data:`REDACTED` wherever a run records it:

* the ``.hydra/`` files Hydra writes into every run folder (``config.yaml``, ``hydra.yaml``,
  ``overrides.yaml``), rewritten by the :class:`RedactSecrets` Hydra callback at job start and end;
* log messages of the process (a ``logging`` record factory, so it survives Hydra re-configuring the
  handlers for every job): Hydra's launchers log each job's overrides, and a key given on the command
  line (``reason.openai.api_key=sk-...``) would land in every ``<task>.log``;
* the hyper-parameters handed to loggers (:func:`redact_container`).

Counting keys such as ``max_tokens`` or ``prompt_margin_tokens`` and a ``tokenizer`` are not secrets:
the token pattern matches ``token`` as a whole word part only (``hf_token``, ``access_token``).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

__all__ = ["REDACTED", "is_secret_key", "secret_values", "redact_text", "redact_container",
           "install_log_redaction", "redact_run_folder", "RedactSecrets"]

REDACTED = "***REDACTED***"

# on the last part of a dotted key: api_key / apikey / api-key, password, passwd, secret, and token as
# a whole word part (not max_tokens, not tokenizer)
_SECRET_KEY = re.compile(r"api[_-]?key|passw(or)?d|secret|(^|[_\-.])(auth_?)?token($|[_\-.])", re.IGNORECASE)
# "key=value" / "key: value" of a secret-looking key, inside any text (override lists, log lines)
_SECRET_ASSIGNMENT = re.compile(
    r"(?P<key>[\w.\-+~]*(?:api[_-]?key|passw(?:or)?d|secret|token)[\w.\-]*)(?P<sep>\s*[=:]\s*)"
    r"(?P<quote>['\"]?)(?P<value>[^\s'\",\]\}]+)",
    re.IGNORECASE,
)
_MIN_SECRET_LENGTH = 4  # shorter values ("", "x", "abc") would redact ordinary words everywhere


def is_secret_key(key: str) -> bool:
    """Whether the last part of a dotted config key names a secret."""
    return bool(_SECRET_KEY.search(str(key).rsplit(".", 1)[-1].lstrip("+~")))


def _walk(node: Any, prefix: str = "") -> Iterable[tuple[str, Any]]:
    """(dotted key, value) of every leaf of a DictConfig/ListConfig, interpolations resolved where they
    can be (an unresolvable one is skipped: it is not a value yet)."""
    if isinstance(node, DictConfig):
        for key in node:
            try:
                child = node[key]
            except Exception:  # noqa: BLE001  (missing values, interpolations needing a Hydra context)
                continue
            yield from _walk(child, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(node, ListConfig):
        for i in range(len(node)):
            try:
                child = node[i]
            except Exception:  # noqa: BLE001
                continue
            yield from _walk(child, f"{prefix}[{i}]")
    else:
        yield prefix, node


def secret_values(cfg: DictConfig | None, overrides: Iterable[str] = ()) -> set[str]:
    """The string values of secret-looking keys in ``cfg`` and in ``key=value`` overrides."""
    values: set[str] = set()
    if cfg is not None:
        for key, value in _walk(cfg):
            if isinstance(value, str) and is_secret_key(key):
                values.add(value)
    for override in overrides:
        key, sep, value = str(override).partition("=")
        if sep and is_secret_key(key):
            values.add(value.strip("'\""))
    return {v for v in values if len(v) >= _MIN_SECRET_LENGTH and v != REDACTED}


def redact_text(text: str, values: Iterable[str] = ()) -> str:
    """``text`` with every known secret value and every ``<secret key>=<value>`` value replaced."""
    for value in sorted(values, key=len, reverse=True):  # longest first: a value may contain another
        text = text.replace(value, REDACTED)

    def keep_key(m: re.Match) -> str:
        if not is_secret_key(m.group("key")) or m.group("value") in (REDACTED, "null", "None", "???"):
            return m.group(0)
        if m.group("value").startswith("${"):  # an interpolation (${oc.env:...}) names, not holds, it
            return m.group(0)
        return f"{m.group('key')}{m.group('sep')}{m.group('quote')}{REDACTED}"

    return _SECRET_ASSIGNMENT.sub(keep_key, text)


def redact_container(obj: Any) -> Any:
    """A copy of a plain dict/list tree with the values of secret-looking keys replaced."""
    if isinstance(obj, Mapping):
        return {k: (REDACTED if is_secret_key(str(k)) and isinstance(v, str) and v else redact_container(v))
                for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(redact_container(v) for v in obj)
    return obj


# --------------------------------------------------------------------------- logs
_KNOWN_SECRETS: set[str] = set()
_installed = False


def install_log_redaction(values: Iterable[str] = ()) -> None:
    """Redact secrets from every log record created from now on in this process (idempotent; new
    ``values`` are added to the known ones)."""
    global _installed
    _KNOWN_SECRETS.update(v for v in values if len(v) >= _MIN_SECRET_LENGTH)
    if _installed:
        return
    previous = logging.getLogRecordFactory()

    def factory(*args, **kwargs) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001  (a bad format string: let the handler report it as usual)
            return record
        redacted = redact_text(message, _KNOWN_SECRETS)
        if redacted != message:
            record.msg, record.args = redacted, None
        return record

    logging.setLogRecordFactory(factory)
    _installed = True


# --------------------------------------------------------------------------- run folders
def redact_run_folder(folder: str | Path, values: Iterable[str] = ()) -> list[Path]:
    """Rewrite the ``*.yaml`` files of ``folder`` (a run's ``.hydra/``) with secrets redacted, atomically.
    Returns the files changed."""
    from mllmrec.cache import atomic_write_text

    changed = []
    values = set(values)
    for path in sorted(Path(folder).glob("*.yaml")):
        text = path.read_text(encoding="utf-8")
        redacted = redact_text(text, values)
        if redacted != text:
            atomic_write_text(path, redacted)
            changed.append(path)
    return changed


try:
    from hydra.experimental.callback import Callback as _HydraCallback
except ImportError:  # pragma: no cover  (Hydra < 1.1)
    _HydraCallback = object


class RedactSecrets(_HydraCallback):
    """Hydra callback (``hydra.callbacks`` in ``conf/hydra/default.yaml``): log redaction from the start
    of a run or sweep, and the job's ``.hydra/*.yaml`` rewritten without secrets."""

    def _values(self, config: DictConfig) -> set[str]:
        overrides: list[str] = []
        try:
            overrides = [*config.hydra.overrides.task, *config.hydra.overrides.hydra]
        except Exception:  # noqa: BLE001
            pass
        return secret_values(config, overrides)

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        install_log_redaction(self._values(config))

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        install_log_redaction(self._values(config))

    def _redact_job(self, config: DictConfig) -> None:
        values = self._values(config)
        install_log_redaction(values)
        subdir = OmegaConf.select(config, "hydra.output_subdir")
        out = OmegaConf.select(config, "hydra.runtime.output_dir")
        if subdir is not None and out:
            redact_run_folder(Path(out) / subdir, values)

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._redact_job(config)

    def on_job_end(self, config: DictConfig, job_return: Any = None, **kwargs: Any) -> None:
        self._redact_job(config)
