"""Weights & Biases per sweep job: online only when it can work, one run per job, grouped by sweep.

* Mode: ``WANDB_MODE`` when set; otherwise online only with an API key (``WANDB_API_KEY`` or a
  ``wandb login`` entry in ``~/.netrc``) *and* a reachable server. With a key and no network,
  ``wandb.init`` blocks ~100 s and then fails, so the server is probed first (3 s) and the run falls
  back to offline with a message instead. Offline runs live under the job's output dir; the message
  says how to upload them (``wandb sync``).
* Group: ``<sweep folder name>/<dataset>/<mllm>`` in a multirun, so the runs of one Table 4 cell
  (one MLLM on one dataset: its alpha x K_c x seed grid) sit together and a sweep over several MLLMs
  and datasets is split along them; name: the job's override string. Tags ``dataset:<name>`` and
  ``mllm:<name>`` are added to every run, to filter across sweeps.
* :func:`finish_wandb` closes the job's run (a second job in the same process would otherwise be
  logged into the first job's run: ``WandbLogger`` reuses an active ``wandb.run``).
"""

from __future__ import annotations

import logging
import netrc
import os
import socket
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlparse

from omegaconf import DictConfig, open_dict

log = logging.getLogger(__name__)

__all__ = ["wandb_mode", "run_group", "prepare_wandb_logger", "finish_wandb"]

DEFAULT_BASE_URL = "https://api.wandb.ai"


def _has_api_key(env: Mapping[str, str], host: str) -> bool:
    if env.get("WANDB_API_KEY"):
        return True
    try:  # `wandb login` stores the key in ~/.netrc
        return netrc.netrc().authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def _reachable(host: str, port: int, timeout: float) -> bool:
    """Whether a TCP connection to ``host:port`` opens within ``timeout`` seconds (DNS included).

    The probe runs in a daemon thread because name resolution has no timeout of its own.
    """
    result: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])


def wandb_mode(env: Mapping[str, str] | None = None, timeout: float = 3.0) -> tuple[str, str]:
    """``(mode, reason)`` with mode ``online`` / ``offline`` / whatever ``WANDB_MODE`` says."""
    env = os.environ if env is None else env
    if env.get("WANDB_MODE"):
        return env["WANDB_MODE"], "WANDB_MODE is set"
    url = urlparse(env.get("WANDB_BASE_URL") or DEFAULT_BASE_URL)
    host = url.hostname or "api.wandb.ai"
    if not _has_api_key(env, host):
        return "offline", "no WANDB_API_KEY (see .env.example) and no `wandb login`"
    port = url.port or (443 if url.scheme == "https" else 80)
    if not _reachable(host, port, timeout):
        return "offline", f"an API key is set but {host}:{port} cannot be reached"
    return "online", "API key set and server reachable"


def run_group(sweep: str, cfg: DictConfig) -> str:
    """The W&B group of a multirun job: ``<sweep>/<dataset>/<mllm>`` (one group per Table 4 cell)."""
    dataset = (cfg.get("dataset") or {}).get("name", "?")
    mllm = (cfg.get("mllm") or {}).get("name", "none")
    return f"{sweep}/{dataset}/{mllm}"


def _hydra_job() -> tuple[str | None, str | None]:
    """``(sweep, name)`` for a multirun job: the sweep folder's name and the job's overrides."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return None, None
    hc = HydraConfig.get()
    if hc.mode != RunMode.MULTIRUN:
        return None, Path(hc.runtime.output_dir).name
    return Path(hc.sweep.dir).name, hc.job.override_dirname or f"job{hc.job.num}"


def prepare_wandb_logger(cfg: DictConfig) -> str | None:
    """Fill in ``cfg.logger.wandb``'s mode, group and name before it is instantiated.

    Returns the mode (None when the wandb logger is not configured). Explicit ``group`` / ``name``
    values in the config win.
    """
    node = (cfg.get("logger") or {}).get("wandb")
    if not node:
        return None
    mode, reason = wandb_mode()
    sweep, name = _hydra_job()
    group = run_group(sweep, cfg) if sweep is not None else None
    with open_dict(node):
        node.offline = node.get("offline", False) or mode in ("offline", "dryrun")
        if node.get("group") is None:
            node.group = group
        if node.get("name") is None:
            node.name = name
        tags = list(node.get("tags") or [])
        for tag in (f"dataset:{cfg.dataset.name}", f"mllm:{cfg.mllm.name}"):
            if tag not in tags:
                tags.append(tag)
        node.tags = tags
        if node.offline and node.get("log_model"):
            log.warning("W&B offline: checkpoints cannot be uploaded, logger.wandb.log_model ignored")
            node.log_model = False
    if mode in ("offline", "dryrun") or node.offline:
        log.info("W&B offline (%s): the run is written under %s/wandb; upload it later with "
                 "`wandb sync %s/wandb/offline-run-*`", reason, node.save_dir, node.save_dir)
    else:
        log.info("W&B %s (%s), project %s, group %s", mode, reason, node.get("project"), node.group)
    return "offline" if node.offline else mode


def finish_wandb(failed: bool = False) -> None:
    """Finish this process's active W&B run, if any (marked failed when the job raised)."""
    wandb = sys.modules.get("wandb")  # never import wandb just to find there is nothing to finish
    if wandb is None or getattr(wandb, "run", None) is None:
        return
    run = wandb.run
    offline = getattr(run.settings, "mode", None) in ("offline", "dryrun")
    run_dir = Path(run.dir).parent if getattr(run, "dir", None) else None
    wandb.finish(exit_code=1 if failed else 0)
    if offline and run_dir is not None:
        log.info("W&B offline run saved in %s; upload it with `wandb sync %s`", run_dir, run_dir)
