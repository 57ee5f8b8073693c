"""One simd process per state dir, and a way to find it.

`simd serve` and `simd index` hold an exclusive `flock` on `<state dir>/simd.lock` for their
lifetime (the kernel drops it when the process dies, even by kill -9), so two daemons never index
the same library twice over. The file holds JSON about the holder (pid, role, the daemon's URL),
which `simd status` reads to ask the running daemon, whatever port it chose.
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

from simd.errors import SimdError

LOCK_NAME = "simd.lock"


class StateLock:
    def __init__(self, state_dir: Path):
        self.path = Path(state_dir) / LOCK_NAME
        self._fd: int | None = None

    def acquire(self, **info) -> StateLock:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _parse(os.pread(fd, 4096, 0))
            os.close(fd)
            who = f"pid {holder.get('pid', '?')}, simd {holder.get('role', '?')}"
            if holder.get("url"):
                who += f" at {holder['url']}"
            raise SimdError(f"another simd ({who}) is using {self.path.parent}; stop it first") from None
        self._fd = fd
        self.update(**info)
        return self

    def update(self, **info) -> None:
        if self._fd is None:
            return
        data = json.dumps({"pid": os.getpid(), **info}).encode()
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, data, 0)

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None


def holder(state_dir: Path) -> dict | None:
    """What the process holding the state dir's lock wrote, or None when nobody holds it."""
    path = Path(state_dir) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _parse(os.pread(fd, 4096, 0))
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _parse(raw: bytes) -> dict:
    try:
        info = json.loads(raw.decode() or "{}")
    except (UnicodeDecodeError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}
