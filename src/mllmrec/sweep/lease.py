"""Exclusive leases on devices (GPUs) shared by the parallel jobs of a sweep.

A job may only run on a GPU while it holds that GPU's lease: one lock file per device id under a
folder (by default the sweep dir). An OS file lock (``flock``) is used rather than an in-process
queue so that several launchers — two sweeps, or several Optuna workers sharing one study — can
share one machine's GPUs without ever putting two jobs on one device; the OS drops the lock of a
process that dies, so a crashed launcher cannot leave a device leased forever.

Why not ``job.num % n_gpus``: jobs take uneven time, so job 4 would start on GPU 0 while job 0 is
still running there. A lease is handed to whichever job asks next once its holder is done.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from filelock import FileLock, Timeout

log = logging.getLogger(__name__)

__all__ = ["DeviceLease", "visible_gpus", "resolve_gpus"]

_SAFE_NAME = re.compile(r"[^A-Za-z0-9_.-]")


class DeviceLease:
    """Hands out the ids of ``devices`` so that no id is held by two holders at once.

    Holders may be threads of one process or different processes (same ``lock_dir``).

    Example::

        lease = DeviceLease(["0", "1"], "multirun/x/.gpu_leases")
        with lease.acquire() as device:
            env["CUDA_VISIBLE_DEVICES"] = device
            ...  # run the job
    """

    def __init__(self, devices: Sequence[str], lock_dir: str | os.PathLike, poll_s: float = 0.2) -> None:
        if not devices:
            raise ValueError("DeviceLease needs at least one device id")
        if len(set(map(str, devices))) != len(devices):
            raise ValueError(f"device ids must be unique, got {list(devices)}")
        self.devices = [str(d) for d in devices]
        self.lock_dir = Path(lock_dir)
        self.poll_s = poll_s
        # Rotates the device tried first, so that consecutive jobs spread over the devices instead of
        # all preferring device 0 (which only matters for warm caches and fairness, not safety).
        self._next = 0
        self._next_guard = threading.Lock()

    def _lock_for(self, device: str) -> FileLock:
        self.lock_dir.mkdir(parents=True, exist_ok=True)
        return FileLock(str(self.lock_dir / f"device-{_SAFE_NAME.sub('_', device)}.lock"))

    def try_acquire(self) -> tuple[str, FileLock] | None:
        """One pass over the devices: ``(device, held lock)`` for the first free one, else None."""
        with self._next_guard:
            start = self._next
            self._next = (self._next + 1) % len(self.devices)
        for offset in range(len(self.devices)):
            device = self.devices[(start + offset) % len(self.devices)]
            lock = self._lock_for(device)
            try:
                lock.acquire(timeout=0)
            except Timeout:
                continue
            return device, lock
        return None

    @contextlib.contextmanager
    def acquire(self, timeout: float | None = None) -> Iterator[str]:
        """Block until a device is free, hold it for the ``with`` body, then release it.

        Raises ``TimeoutError`` when ``timeout`` seconds pass without a free device.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            got = self.try_acquire()
            if got is not None:
                break
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"no free device among {self.devices} after {timeout}s ({self.lock_dir})")
            time.sleep(self.poll_s)
        device, lock = got
        try:
            yield device
        finally:
            lock.release()


def visible_gpus() -> list[str]:
    """Ids of the GPUs this process may use, without initialising CUDA here.

    ``CUDA_VISIBLE_DEVICES`` when it is set (its entries, which may be indices or GPU UUIDs; empty or
    ``-1`` means none), else ``0 .. torch.cuda.device_count() - 1``.
    """
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        ids = [d.strip() for d in env.split(",") if d.strip()]
        # CUDA stops at the first invalid entry, and -1 is the usual "hide all GPUs"
        return ids[: ids.index("-1")] if "-1" in ids else ids
    import torch  # only here: the launcher process never needs torch otherwise

    return [str(i) for i in range(torch.cuda.device_count())]


def resolve_gpus(gpus: int | str | Sequence[int | str] | None) -> list[str]:
    """The device ids a launcher should lease, from its ``gpus`` setting.

    ``None`` / ``"auto"``: all visible GPUs; an int ``n``: the first ``n`` visible ones (0 = CPU only);
    a list: exactly those ids (as ``CUDA_VISIBLE_DEVICES`` entries).
    """
    if gpus is None or gpus == "auto":
        return visible_gpus()
    if isinstance(gpus, bool):
        raise ValueError(f"gpus must be null, 'auto', a count or a list of ids, got {gpus!r}")
    if isinstance(gpus, int):
        if gpus < 0:
            raise ValueError(f"gpus must be >= 0, got {gpus}")
        available = visible_gpus()
        if gpus > len(available):
            raise ValueError(f"gpus={gpus} but only {len(available)} GPU(s) are visible: {available}")
        return available[:gpus]
    if isinstance(gpus, str):
        return [d.strip() for d in gpus.split(",") if d.strip()]
    return [str(d) for d in gpus]
