"""How much one file may cost the indexer: time, bytes read, and the daemon's stop.

Every file in a library is untrusted input, and the indexer is one thread: a file that makes hashing
or decoding run for minutes (a JPEG header followed by gigabytes of zeros, a huge file on a slow
share) would hold every other file behind it, and a stop request behind it too. So per-file work runs
against a `Budget`: a deadline, a limit on the bytes read, and the stop event, checked at every read.

- Over the deadline or the byte limit: `OverBudget(reason)`; the file is recorded as failed with that
  reason and retried when its size or mtime changes, like any other failure.
- The stop event set: `Stopped`; the work is abandoned, nothing is recorded, the next start redoes it.

A thread cannot be killed, so the checks are cooperative: they run where the work reads bytes
(`BudgetReader` wraps the file Pillow decodes from; `simd.scanner.file_hash` reads in chunks).
"""

from __future__ import annotations

import threading
import time
from typing import BinaryIO

HASH_SECONDS = 120.0  # reading and hashing one file (about 10 GB at local-disk speed)
DECODE_SECONDS = 60.0  # decoding one image (a 120 MP PNG takes a few seconds on one core)
HEADER_BYTES = 16 << 20  # what a decoder may read before it knows the pixel size (metadata, ICC, XMP)
WHOLE_FILE_BYTES = 256 << 20  # formats whose decoder reads the whole file first (WebP, HEIF, AVIF)
BYTES_PER_PIXEL = 64  # no single image needs more (float32 RGBA is 16): beyond, it is not a picture
BYTEWISE_MAX = 256 << 10  # one-byte reads in a row: a decoder skipping junk in search of a marker


class OverBudget(Exception):
    """The file took more time or bytes than one image may; `reason` says which, for `simd errors`."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class Stopped(Exception):
    """The daemon is stopping: the work is abandoned and nothing about the file is recorded."""


def bytes_for_pixels(width: int, height: int) -> int:
    """The most bytes an image of that size may take (and a decoder may read for it)."""
    return HEADER_BYTES + BYTES_PER_PIXEL * max(0, width) * max(0, height)


def megabytes(n: int) -> str:
    return f"{n / (1 << 20):,.0f} MB" if n >= 10 << 20 else f"{n / (1 << 20):.1f} MB"


class Budget:
    """A deadline `seconds` from now, the stop event, and (for readers) a byte limit."""

    def __init__(self, seconds: float, stop: threading.Event | None = None, what: str = "reading"):
        self.seconds = seconds
        self.deadline = time.monotonic() + seconds
        self.stop = stop
        self.what = what

    def check(self, done: int = 0) -> None:
        """Raise Stopped or OverBudget when the work must end; `done`: bytes read so far."""
        if self.stop is not None and self.stop.is_set():
            raise Stopped()
        if time.monotonic() > self.deadline:
            read = f" ({megabytes(done)} read)" if done else ""
            raise OverBudget(f"timed out: {self.what} took longer than {self.seconds:.0f} s{read}")


class BudgetReader:
    """A read-only file object over `fp` that checks `budget` at every read and refuses to read past
    `limit` bytes (raised by `allow` once the pixel size is known). Decoders see an ordinary seekable
    file; `fileno()` is passed through, so a decoder that reads the descriptor itself (libtiff, which
    reads only the frame it decodes) is not slowed down."""

    def __init__(self, fp: BinaryIO, budget: Budget, limit: int = HEADER_BYTES):
        self._fp = fp
        self.budget = budget
        self.limit = limit
        self.done = 0  # bytes handed out
        self.reason = f"no picture in the first {megabytes(limit)} (a header followed by other data?)"
        self.over: OverBudget | None = None  # set once a read went past the limit
        self._bytewise = 0  # one-byte reads in a row

    def allow(self, limit: int, reason: str) -> None:
        """Let reads go on up to `limit` bytes; past it, OverBudget(`reason`)."""
        self.limit, self.reason = max(self.limit, limit), reason

    def read(self, size: int | None = -1) -> bytes:
        self.budget.check(self.done)
        # Pillow's JPEG parser skips junk between markers one read(1) at a time, ~5 s per MB: a
        # header followed by zeros would take minutes to refuse by the byte limit alone.
        self._bytewise = self._bytewise + 1 if size == 1 else 0
        if self._bytewise > BYTEWISE_MAX:
            self.over = OverBudget(f"no picture: over {BYTEWISE_MAX >> 10} KB of filler where its data should be")
            raise self.over
        room = self.limit - self.done
        if room <= 0:
            self.over = OverBudget(self.reason)
            raise self.over
        data = self._fp.read(room + 1 if size is None or size < 0 or size > room else size)
        self.done += len(data)
        if self.done > self.limit:
            self.over = OverBudget(self.reason)
            raise self.over
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        self.budget.check(self.done)
        return self._fp.seek(offset, whence)

    def tell(self) -> int:
        return self._fp.tell()

    def fileno(self) -> int:
        return self._fp.fileno()

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def close(self) -> None:  # the owner of `fp` closes it
        pass

    @property
    def closed(self) -> bool:
        return bool(getattr(self._fp, "closed", False))
