"""Helpers of the reliability tests (imported by name)."""

from __future__ import annotations

import builtins
import errno
import os
from pathlib import Path

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def make_read_only(monkeypatch, *folders: Path) -> list[str]:
    """Make ``folders`` behave as a read-only filesystem in this process (tests run as root, which
    ignores permission bits): opening a file for writing, creating a file or folder, renaming or
    deleting under them raises ``EROFS``. Returns the list the refused attempts are appended to."""
    roots = [str(Path(f).resolve()) for f in folders]
    refused: list[str] = []

    def under(path) -> bool:
        if isinstance(path, int):
            return False
        p = os.path.abspath(os.fsdecode(path))
        return any(p == r or p.startswith(r + os.sep) for r in roots)

    def refuse(path):
        refused.append(os.fsdecode(path))
        raise OSError(errno.EROFS, "Read-only file system", os.fsdecode(path))

    real_open, real_os_open, real_mkdir = builtins.open, os.open, os.mkdir
    real_replace, real_rename, real_unlink = os.replace, os.rename, os.unlink

    def fake_open(file, mode="r", *args, **kwargs):
        if any(c in mode for c in "wax+") and under(file):
            refuse(file)
        return real_open(file, mode, *args, **kwargs)

    def fake_os_open(path, flags, *args, **kwargs):
        if flags & _WRITE_FLAGS and under(path):
            refuse(path)
        return real_os_open(path, flags, *args, **kwargs)

    def guard(real, n_paths=1):
        def call(*args, **kwargs):
            if any(under(a) for a in args[:n_paths]):
                refuse(next(a for a in args[:n_paths] if under(a)))
            return real(*args, **kwargs)
        return call

    monkeypatch.setattr(builtins, "open", fake_open)
    monkeypatch.setattr(os, "open", fake_os_open)
    monkeypatch.setattr(os, "mkdir", guard(real_mkdir))
    monkeypatch.setattr(os, "replace", guard(real_replace, 2))
    monkeypatch.setattr(os, "rename", guard(real_rename, 2))
    monkeypatch.setattr(os, "unlink", guard(real_unlink))
    return refused


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``folder`` with its size and mtime (to prove nothing was written)."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))}
