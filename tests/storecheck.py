"""Read an index as it is on disk and check it against the library (for the end-to-end reliability
tests and benchmarks; pytest puts tests/ on sys.path, so `from storecheck import ...` works, and the
bench scripts import `tests.storecheck`).

`read_rows` opens the SQLite file read-only (safe while a daemon writes it: WAL readers see the last
commit), runs `PRAGMA integrity_check`, and returns every row with its vector decoded. `library_files`
lists the regular files under a library as the index names them. `consistency_problems` compares the
two and returns what is wrong, as readable lines (empty: consistent).
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import numpy as np

UNIT_NORM_TOL = 1e-3  # stored vectors are L2-normalised float32


@dataclass(frozen=True)
class Row:
    id: int
    size: int
    mtime_ns: int
    hash: str | None
    state: str
    error: str | None
    model: str | None
    vector: np.ndarray | None


def _rel(value: str | bytes) -> str:
    """A stored path as the filesystem's str (a name that is not UTF-8 is stored as a BLOB)."""
    return os.fsdecode(value) if isinstance(value, bytes) else value


def read_rows(db: Path, integrity: bool = True) -> dict[str, Row]:
    """Every row of the `images` table by path ({} when the file or its schema does not exist yet)."""
    db = Path(db)
    if not db.exists():
        return {}
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        if integrity:
            result = con.execute("PRAGMA integrity_check").fetchone()[0]
            assert result == "ok", f"integrity_check of {db}: {result}"
        if not con.execute("SELECT 1 FROM sqlite_master WHERE name = 'images'").fetchone():
            return {}
        got = con.execute("SELECT id, path, size, mtime_ns, hash, state, error, model, vector FROM images").fetchall()
    finally:
        con.close()
    return {
        _rel(path): Row(
            iid, size, mtime, digest, state, error, model, np.frombuffer(blob, "<f4") if blob is not None else None
        )
        for iid, path, size, mtime, digest, state, error, model, blob in got
    }


def library_files(root: Path) -> dict[str, os.stat_result]:
    """Regular files under `root` (not following links), by library-relative path with '/'."""
    root = Path(root)
    out = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            full = os.path.join(dirpath, name)
            st = os.lstat(full)
            if os.path.isfile(full) and not os.path.islink(full):
                out[os.path.relpath(full, root).replace(os.sep, "/")] = st
    return out


def consistency_problems(rows: dict[str, Row], files: dict[str, os.stat_result], model: str | None = None) -> list[str]:
    """What differs between an index's rows and the library's files: a file without a row, a row
    without a file, a size or mtime that is not the file's, a failed row, a row without a vector or of
    another model, a vector that is not finite or not of unit norm, vectors of different lengths.
    At most 20 lines per kind, then a count."""
    problems: dict[str, list[str]] = {}

    def add(kind: str, line: str) -> None:
        problems.setdefault(kind, []).append(line)

    for rel in sorted(set(files) - set(rows)):
        add("missing", f"file without a row: {rel}")
    for rel in sorted(set(rows) - set(files)):
        add("stale", f"row without a file: {rel}")
    dims = set()
    for rel in sorted(set(rows) & set(files)):
        row, st = rows[rel], files[rel]
        if (row.size, row.mtime_ns) != (st.st_size, st.st_mtime_ns):
            add("changed", f"{rel}: row size {row.size} mtime_ns {row.mtime_ns}, file {st.st_size} {st.st_mtime_ns}")
        if row.state != "ok":
            add("failed", f"{rel}: state {row.state}: {row.error}")
            continue
        if model is not None and row.model != model:
            add("model", f"{rel}: model {row.model}, expected {model}")
        if row.vector is None or row.vector.size == 0:
            add("vector", f"{rel}: no vector")
            continue
        dims.add(row.vector.size)
        if not np.all(np.isfinite(row.vector)):
            add("vector", f"{rel}: vector not finite")
            continue
        norm = float(np.linalg.norm(row.vector.astype(np.float64)))
        if abs(norm - 1.0) > UNIT_NORM_TOL:
            add("vector", f"{rel}: vector norm {norm:.6f}")
    if len(dims) > 1:
        add("dims", f"vectors of several lengths: {sorted(dims)}")
    out = []
    for lines in problems.values():
        out.extend(lines[:20])
        if len(lines) > 20:
            out.append(f"... and {len(lines) - 20} more like the above")
    return out


def cosine_mismatches(a: dict[str, Row], b: dict[str, Row], floor: float = 0.9999) -> tuple[float, list[str]]:
    """The lowest cosine similarity between the vectors of the same path in `a` and `b`, and the
    paths (present in both, with vectors) where it is below `floor`."""
    worst, bad = 1.0, []
    for rel in sorted(set(a) & set(b)):
        va, vb = a[rel].vector, b[rel].vector
        if va is None or vb is None or va.size != vb.size:
            bad.append(f"{rel}: vectors missing or of different lengths")
            worst = min(worst, -1.0)
            continue
        va64, vb64 = va.astype(np.float64), vb.astype(np.float64)
        cos = float(va64 @ vb64 / max(np.linalg.norm(va64) * np.linalg.norm(vb64), 1e-30))
        worst = min(worst, cos)
        if cos < floor:
            bad.append(f"{rel}: cosine {cos:.6f}")
    return worst, bad
