"""Values as the store keeps them: vectors as little-endian float32 BLOBs, paths exactly as the
filesystem names them, names folded for the name filter, the record a reconcile reads, and the state
dir's private folders. No SQL here (that is `simd.store`'s, and `simd.storeschema`'s for the tables
themselves).

Paths. On Linux a name is bytes; Python hands undecodable bytes over as lone surrogates
(`surrogateescape`), which SQLite cannot store as TEXT. `path_to_db` keeps every valid UTF-8 path as
TEXT, as always, and stores any other path as its exact bytes (a BLOB in the same column; the two
never compare equal, so the UNIQUE index still holds one row per name); `path_from_db` gives the
exact `str` back, which `open()` and `os.stat()` accept as they are.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from pathlib import Path

import numpy as np

VEC_DTYPE = np.dtype("<f4")  # vectors are stored as little-endian float32 bytes


@dataclass(frozen=True)
class FileRecord:
    """What a reconcile needs to know of one stored path."""

    id: int
    path: str
    size: int
    mtime_ns: int
    hash: str | None
    state: str
    model: str | None


def to_blob(vector: np.ndarray) -> tuple[bytes, int]:
    v = np.asarray(vector)
    if v.ndim != 1 or v.size == 0:
        raise ValueError(f"a vector must be 1-D and non-empty, got shape {v.shape}")
    v = v.astype(VEC_DTYPE, copy=False)
    if not np.isfinite(v).all():
        raise ValueError("vector has NaN or infinite values")
    return v.tobytes(), int(v.size)


def from_blob(blob: bytes | None) -> np.ndarray | None:
    if blob is None:
        return None
    return np.frombuffer(blob, dtype=VEC_DTYPE).astype(np.float32)


def path_to_db(path: str) -> str | bytes:
    """The value of `images.path` for a path: itself when it is valid UTF-8, else its exact bytes."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return path.encode("utf-8", "surrogateescape")  # what os.fsencode gives on Linux
    return path


def path_from_db(value: str | bytes) -> str:
    """The path of an `images.path` value (a BLOB decodes with `surrogateescape`, losslessly)."""
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else value


def casefold(text: str | bytes | None) -> str | None:
    """Fold for name search: case, Unicode form (macOS/SMB store NFD names) and accents, so that
    "cafe", "Café" and a decomposed "café" all find each other. A name stored as bytes (not UTF-8)
    is folded as it is shown, undecodable bytes as `\\xNN`."""
    if text is None:
        return None
    if isinstance(text, bytes):
        text = text.decode("utf-8", "backslashreplace")
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()


def make_private_dirs(path: Path) -> None:
    """Create `path` and its missing parents with mode 0700 (state may be private)."""
    missing = []
    p = path
    while not p.exists():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        d.mkdir(mode=0o700, exist_ok=True)
