"""Values as the store keeps them: vectors as little-endian float32 BLOBs, names folded for the name
filter, the record a reconcile reads, and the state dir's private folders. No SQL here (that is
`simd.store`'s, and `simd.storeschema`'s for the tables themselves)."""

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


def casefold(text: str | None) -> str | None:
    """Fold for name search: case, Unicode form (macOS/SMB store NFD names) and accents, so that
    "cafe", "Café" and a decomposed "café" all find each other."""
    if text is None:
        return None
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
