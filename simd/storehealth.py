"""How the index file fails, told apart: damage, or a write the disk refused; and the checks that
find damage (their SQL lives here, as the schema's lives in `simd.storeschema`).

- Damage: SQLite says the file is corrupt or not a database, `PRAGMA quick_check` finds a problem,
  or the running indexer met one. `DamagedIndex`; the state dir's claim moves such a file aside
  (`move_aside`: renamed, never deleted) and a new index is built from the library.
- Invalid vectors: a BLOB of the wrong length for its `dim`, NaN or infinite values, or all zeros
  (`valid_rows`). Only those rows are re-embedded; the rest of the index is kept.
- A write failure: the disk is full, an I/O error, a read-only file or file system
  (`write_failure`). Not damage: the transaction was rolled back and the writer retries later.
"""

from __future__ import annotations

import errno
import os
import sqlite3
import time
from pathlib import Path

import numpy as np
from sqlite_utils import Database

from simd.errors import SimdError
from simd.storevalues import VEC_DTYPE

# SQLite's primary result codes (the low byte of an extended code)
_READONLY, _IOERR, _CORRUPT, _FULL, _CANTOPEN, _NOTADB = 8, 10, 11, 13, 14, 26
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS}
_WRITE_WORDS = ("disk is full", "disk i/o error", "readonly database", "unable to open database file")
SUSPECT_SUFFIX = ".suspect"  # next to the index: the running daemon found it damaged


class DamagedIndex(SimdError):
    """The index file cannot be read as an index; `reason` says what SQLite found."""

    code = "index_damaged"
    http_status = 503

    def __init__(self, path: Path, reason: str):
        super().__init__(f"the index {path} is damaged: {reason}")
        self.path = Path(path)
        self.reason = reason


def integrity_problem(db: Database, *, quick: bool = True) -> str | None:
    """The first problems `PRAGMA quick_check` (or the slower `integrity_check`, which also checks
    the indexes against the rows) finds, or None when the file is sound."""
    try:
        found = [r[0] for r in db.execute(f"PRAGMA {'quick_check' if quick else 'integrity_check'}").fetchall()]
    except sqlite3.DatabaseError as e:
        return str(e)
    return None if found == ["ok"] else "; ".join(found[:3])


def invalid_vectors(db: Database) -> list[tuple[int, str]]:
    """(id, what is wrong) of every ok row whose vector is not valid (`invalid_rows`)."""
    where = "FROM images WHERE state = 'ok' AND vector IS NOT NULL"
    # each model's most common size comes last, and wins
    size = {m: d for m, d, _ in db.execute(f"SELECT model, dim, count(*) AS n {where} GROUP BY 1, 2 ORDER BY n")}
    cursor = db.execute(f"SELECT id, model, dim, vector {where} ORDER BY id")
    bad: list[tuple[int, str]] = []
    while rows := cursor.fetchmany(4096):
        bad += invalid_rows(rows, size)
    return bad


def reset_vectors(db: Database, ids: list[int]) -> None:
    """Forget these rows' vectors (model and size too), in one transaction: the next reconcile sees
    them as indexed with another model and re-embeds them, keeping their ids."""
    db.execute("BEGIN IMMEDIATE")
    try:
        sql = "UPDATE images SET model = NULL, dim = NULL, vector = NULL WHERE id = ?"
        db.conn.executemany(sql, [(int(i),) for i in ids])
        db.execute("COMMIT")
    except BaseException:
        db.rollback()
        raise


def is_damage(e: BaseException) -> bool:
    """An SQLite error that means the file itself is broken (not busy, not full, not unreachable)."""
    if isinstance(e, DamagedIndex):
        return True
    code = getattr(e, "sqlite_errorcode", None)
    if isinstance(e, sqlite3.DatabaseError) and code is not None:
        return code & 0xFF in (_CORRUPT, _NOTADB)
    text = str(e).lower()
    return isinstance(e, sqlite3.DatabaseError) and ("malformed" in text or "not a database" in text)


def write_failure(e: BaseException) -> str | None:
    """What a failed write ran into, for `last_error` ("database or disk is full", "disk I/O
    error", ...), or None when `e` is not a write the storage refused."""
    code = getattr(e, "sqlite_errorcode", None)
    if isinstance(e, sqlite3.OperationalError) and code is not None:
        return str(e) if code & 0xFF in (_FULL, _IOERR, _READONLY, _CANTOPEN) else None
    if isinstance(e, sqlite3.OperationalError):  # one without its code: SQLite's own words
        return str(e) if any(w in str(e).lower() for w in _WRITE_WORDS) else None
    if isinstance(e, OSError) and e.errno in _WRITE_ERRNOS:
        return e.strerror or str(e)
    return None


def valid_rows(blobs: list[bytes], dim: int) -> np.ndarray:
    """Which BLOBs are `dim` little-endian float32 values, finite, not all zero and not so large
    that their squared norm overflows float32 (bool mask)."""
    ok = np.array([dim > 0 and b is not None and len(b) == 4 * dim for b in blobs], dtype=bool)
    if dim > 0 and ok.any():
        good = [b for b, k in zip(blobs, ok, strict=True) if k]
        matrix = np.frombuffer(b"".join(good), dtype=VEC_DTYPE).reshape(len(good), dim)
        with np.errstate(over="ignore", invalid="ignore"):  # in float32, as `VectorIndex` checks them
            sq = np.einsum("ij,ij->i", matrix, matrix)
        ok[ok] = np.isfinite(sq) & (sq > 0)
    return ok


def vector_problems(blobs: list[bytes], dim: int) -> list[str | None]:
    """What is wrong with each BLOB as a vector of `dim` values (None: nothing)."""
    problems: list[str | None] = []
    for blob, ok in zip(blobs, valid_rows(blobs, dim), strict=True):
        if ok:
            problems.append(None)
        elif blob is None or len(blob) != 4 * dim:
            problems.append(f"{0 if blob is None else len(blob)} bytes where {dim} float32 values take {4 * dim}")
        else:
            v = np.frombuffer(blob, dtype=VEC_DTYPE)
            problems.append(
                "NaN or infinite values"
                if not np.isfinite(v).all()
                else "all zeros"
                if not v.any()
                else "values too large"
            )
    return problems


def invalid_rows(rows: list[tuple[int, str | None, int | None, bytes]], size: dict) -> list[tuple[int, str]]:
    """(id, what is wrong) of the rows (id, model, dim, vector) whose vector is not valid, or not
    of `size[model]` values (the size of most of that model's vectors)."""
    bad: list[tuple[int, str]] = []
    for dim in {r[2] for r in rows}:
        group = [r for r in rows if r[2] == dim]
        for (image_id, model, _, _), problem in zip(
            group, vector_problems([r[3] for r in group], int(dim or 0)), strict=True
        ):
            if dim != size.get(model):
                problem = f"{dim} values where the other vectors of {model} have {size.get(model)}"
            if problem:
                bad.append((image_id, problem))
    return sorted(bad)


def move_aside(db: Path) -> Path:
    """Rename the index and its -wal, -shm and suspect note to `<name>.damaged-<time>` (the WAL
    keeps its name beside it, so `sqlite3` still reads what the file held). Returns the new path."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    dest = db.with_name(f"{db.name}.damaged-{stamp}")
    n = 1
    while dest.exists():
        n += 1
        dest = db.with_name(f"{db.name}.damaged-{stamp}-{n}")
    for suffix in ("", "-wal", "-shm", SUSPECT_SUFFIX):
        src = Path(f"{db}{suffix}")
        if src.exists():
            os.replace(src, f"{dest}{suffix}")
    return dest


def note_damage(db: Path, reason: str) -> None:
    """Leave a note that the running daemon found the index damaged: the next start moves it aside
    even if `PRAGMA quick_check` passes then."""
    try:
        Path(f"{db}{SUSPECT_SUFFIX}").write_text(reason + "\n")
    except OSError:
        pass  # the start's own check is the fallback


def damage_noted(db: Path) -> str | None:
    try:
        return Path(f"{db}{SUSPECT_SUFFIX}").read_text().strip() or "found damaged while running"
    except OSError:
        return None
