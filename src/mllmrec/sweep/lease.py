"""Exclusive leases on devices (GPUs) shared by the parallel jobs of a sweep.

A job may only run on a GPU while it holds that GPU's lease: one lock file per device id under a
folder (by default the sweep dir). An OS file lock (``flock``) is used rather than an in-process
queue so that several launchers — two sweeps, or several Optuna workers sharing one study — can
share one machine's GPUs without ever putting two jobs on one device; the OS drops the lock of a
process that dies, so a crashed launcher cannot leave a device leased forever.

Why not ``job.num % n_gpus``: jobs take uneven time, so job 4 would start on GPU 0 while job 0 is
still running there. A lease is handed to whichever job asks next once its holder is done.

A job may lease several devices together (a model split over GPUs); :class:`DeviceLease` explains
why that neither deadlocks nor starves a big job behind a stream of small ones.
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

    Holders may be threads of one process or different processes (same ``lock_dir``). A holder may
    ask for several devices at once (a model split over GPUs with tensor parallelism): it gets them
    together, as one lease.

    No deadlock, no starvation. Devices are gathered only by the holder of a **gate** (one more lock
    file, ``gate.lock``): a job that needs 2 devices keeps the gate, grabbing devices as they free up,
    until it has both, and nobody else can take a freed device meanwhile. So a 2-GPU job on a busy
    machine is not overtaken forever by a stream of 1-GPU jobs (which would each take the one device
    it is waiting for), and two multi-device jobs never each hold half of what the other needs.
    Waiters of one process pass the gate in the order they asked (a ticket queue); across processes
    the OS lock decides. Holders never wait for the gate while holding devices, so the gate is always
    released.

    Example::

        lease = DeviceLease(["0", "1", "2", "3"], "multirun/x/.gpu_leases")
        with lease.acquire_many(2) as devices:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(devices)
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
        # first come, first served among this process's waiters (threading.Lock is not fair)
        self._queue = threading.Condition()
        self._tickets_issued = 0
        self._now_serving = 0
        self._given_up: set[int] = set()  # tickets of waiters that timed out or were interrupted

    def _lock_for(self, device: str) -> FileLock:
        self.lock_dir.mkdir(parents=True, exist_ok=True)
        return FileLock(str(self.lock_dir / f"device-{_SAFE_NAME.sub('_', device)}.lock"))

    def _gate(self) -> FileLock:
        self.lock_dir.mkdir(parents=True, exist_ok=True)
        # a fresh object per use: filelock objects are re-entrant, which would let two threads in
        return FileLock(str(self.lock_dir / "gate.lock"))

    def _rotation(self) -> list[str]:
        with self._next_guard:
            start = self._next
            self._next = (self._next + 1) % len(self.devices)
        return [self.devices[(start + i) % len(self.devices)] for i in range(len(self.devices))]

    def try_acquire(self) -> tuple[str, FileLock] | None:
        """One pass over the devices: ``(device, held lock)`` for the first free one, else None.

        Bypasses the gate: for a holder that already passed it, or a one-off check."""
        for device in self._rotation():
            lock = self._lock_for(device)
            try:
                lock.acquire(timeout=0)
            except Timeout:
                continue
            return device, lock
        return None

    @contextlib.contextmanager
    def _turn(self, deadline: float | None) -> Iterator[None]:
        """This process's waiters one at a time, in the order they asked."""
        with self._queue:
            ticket = self._tickets_issued
            self._tickets_issued += 1
            try:
                while self._now_serving != ticket:
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        raise TimeoutError
                    self._queue.wait(left)
            except BaseException:
                # give the turn away as if served, so the queue does not stall behind a quitter
                self._given_up.add(ticket)
                self._advance()
                raise
        try:
            yield
        finally:
            with self._queue:
                self._now_serving += 1
                self._advance()

    def _advance(self) -> None:
        """Skip tickets whose holders gave up (called with ``self._queue`` held)."""
        while self._now_serving in self._given_up:
            self._given_up.discard(self._now_serving)
            self._now_serving += 1
        self._queue.notify_all()

    def _gather(self, count: int, deadline: float | None) -> dict[str, FileLock]:
        """Pass the gate, then collect ``count`` free devices while holding it."""
        gate = self._gate()
        while True:
            try:
                gate.acquire(timeout=0)
                break
            except Timeout:
                if deadline is not None and time.monotonic() >= deadline:
                    raise TimeoutError from None
                time.sleep(self.poll_s)
        held: dict[str, FileLock] = {}
        try:
            while True:
                for device in self._rotation():
                    if device in held:
                        continue
                    lock = self._lock_for(device)
                    try:
                        lock.acquire(timeout=0)
                    except Timeout:
                        continue
                    held[device] = lock
                    if len(held) == count:
                        return {d: held[d] for d in self.devices if d in held}
                if deadline is not None and time.monotonic() >= deadline:
                    raise TimeoutError
                time.sleep(self.poll_s)
        except BaseException:
            for lock in held.values():
                lock.release()
            raise
        finally:
            gate.release()

    @contextlib.contextmanager
    def acquire_many(self, count: int, timeout: float | None = None) -> Iterator[list[str]]:
        """Block until ``count`` devices are free together, hold them for the ``with`` body, then
        release them. Yields their ids in the order of :attr:`devices`.

        Raises ``ValueError`` when ``count`` exceeds the devices (it could never be served) and
        ``TimeoutError`` when ``timeout`` seconds pass first.
        """
        if not 1 <= count <= len(self.devices):
            raise ValueError(f"a job asks for {count} device(s) but the lease has {len(self.devices)}: "
                             f"{self.devices}")
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            with self._turn(deadline):
                held = self._gather(count, deadline)
        except TimeoutError:
            raise TimeoutError(f"no free device: {count} of {self.devices} were not free together "
                               f"within {timeout}s ({self.lock_dir})") from None
        try:
            yield list(held)
        finally:
            for lock in held.values():
                lock.release()

    @contextlib.contextmanager
    def acquire(self, timeout: float | None = None) -> Iterator[str]:
        """One device: :meth:`acquire_many` with ``count=1``, yielding the id itself."""
        with self.acquire_many(1, timeout) as devices:
            yield devices[0]


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
