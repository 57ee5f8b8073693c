"""The SQL of simd: reads and writes of the `images` and `meta` tables of one SQLite file, through
sqlite-utils. The tables themselves (schema, numbered migrations) are `simd.storeschema`'s; a writer
migrates when it opens the file, a reader only checks the version.

Threading: a `Store` owns one connection, guarded by the Store's lock, so a Store may be shared
between threads (every call is serialised; a `batch()` holds the lock until it ends). The daemon
still gives each thread its own Store: one writer `Store` owned by the indexer thread, and readers
open `Store(path, readonly=True)` (a `mode=ro` connection: never writes, never migrates). With WAL a
reader sees the last committed batch while the writer works on the next.

Writes happen only inside `with store.batch():`, one `BEGIN IMMEDIATE` transaction, rolled back
entirely if the block raises; a write outside a batch raises RuntimeError. `set_meta` is the one
exception: outside a batch it is committed on its own.

Paths are exact: a name that is not valid UTF-8 is stored as its bytes (`storevalues.path_to_db`) and
read back as the `str` the filesystem gave (undecodable bytes as surrogates); showing it is the
caller's business (`paths.display_path`). Such rows sort after all others.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from urllib.parse import quote

import numpy as np
from sqlite_utils import Database

from simd import storeschema
from simd.errors import NotFound, SimdError
from simd.storehealth import DamagedIndex, is_damage, valid_rows
from simd.storevalues import (
    VEC_DTYPE,
    FileRecord,
    casefold,
    from_blob,
    make_private_dirs,
    path_from_db,
    path_to_db,
    to_blob,
)

log = logging.getLogger(__name__)

BUSY_TIMEOUT_MS = 10_000
CLOSE_CHECKPOINT_MS = 2_000  # how long a closing writer waits for readers to let the WAL be emptied
_INFO_COLUMNS = "id, path, size, mtime_ns, hash, state, error, model, dim, created_at, updated_at"
_CHUNK = 500  # ids / paths per IN (...) statement, well under SQLite's variable limit


def _subtree(prefix: str) -> tuple[str, list]:
    """WHERE clause for `prefix` itself and everything under `prefix/` (a non-empty path without
    leading or trailing '/').

    A range on the (binary-collated, unique-indexed) path column rather than LIKE: it is
    case-sensitive, needs no escaping of `%`/`_`, and uses the index. Every path that starts with
    "a/b/" sorts in ["a/b/", "a/b0") because "0" is the character after "/". Paths stored as bytes
    (not UTF-8, see `storevalues.path_to_db`) sort after all text: a second range over BLOBs finds
    those under the prefix (the only ones under a prefix that is itself not UTF-8).
    """
    key, raw = path_to_db(prefix), prefix.encode("utf-8", "surrogateescape")
    blobs = "(path >= ? AND path < ?)", [raw + b"/", raw + b"0"]
    if isinstance(key, bytes):
        return f"(path = ? OR {blobs[0]})", [key, *blobs[1]]
    return f"(path = ? OR (path >= ? AND path < ?) OR {blobs[0]})", [key, key + "/", key + "0", *blobs[1]]


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


class Store:
    def __init__(self, db_path: str | Path, *, readonly: bool = False):
        self.path = Path(db_path).expanduser().absolute()
        self.readonly = readonly
        self._lock = threading.RLock()
        self._batch_depth = 0
        try:
            if readonly:
                if not self.path.is_file():
                    raise NotFound(f"no simd index at {self.path} (run `simd index` or `simd serve` first)")
                uri = f"file:{quote(str(self.path))}?mode=ro"
                conn = sqlite3.connect(
                    uri, uri=True, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_MS / 1000
                )
            else:
                make_private_dirs(self.path.parent)
                conn = sqlite3.connect(
                    str(self.path), isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_MS / 1000
                )
        except sqlite3.Error as e:
            raise (
                DamagedIndex(self.path, str(e))
                if is_damage(e)
                else SimdError(f"cannot open the index {self.path}: {e}")
            ) from None
        self.db = Database(conn, execute_plugins=False)
        self.db.register_function(casefold, deterministic=True, name="simd_casefold")
        try:
            self.db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            self.db.execute("PRAGMA foreign_keys = ON")
            if readonly:
                storeschema.check_version(storeschema.read_version(self.db), self.path, readonly=True)
            else:
                self.db.enable_wal()
                self.db.execute("PRAGMA synchronous = NORMAL")
                self.db.execute("PRAGMA journal_size_limit = 67108864")  # trim the WAL after big batches
                storeschema.migrate(self.db, self.path)
        except sqlite3.DatabaseError as e:
            conn.close()
            raise (
                DamagedIndex(self.path, str(e)) if is_damage(e) else SimdError(f"cannot use the index {self.path}: {e}")
            ) from None
        except BaseException:
            conn.close()
            raise

    def close(self) -> None:
        """A writer first checkpoints and empties the WAL: after a clean stop, the file alone is the index."""
        with self._lock:
            if not self.readonly:
                try:
                    self.db.execute(f"PRAGMA busy_timeout = {CLOSE_CHECKPOINT_MS}")
                    self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
                except sqlite3.Error as e:  # busy readers, a full disk: the WAL stays, nothing is lost
                    log.debug("%s: no checkpoint on close (%s)", self.path, e)
            self.db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- meta ---------------------------------------------------------------------------------

    def get_meta(self, key: str, default: str | None = None) -> str | None:
        with self._lock:
            row = self.db.execute("SELECT value FROM meta WHERE key = ?", [key]).fetchone()
        return row[0] if row else default

    def set_meta(self, key: str, value: str) -> None:
        """Inside a batch: part of it. Outside: its own batch (the one write allowed there)."""
        with self.batch():
            self._put_meta(key, str(value))

    def _put_meta(self, key: str, value: str) -> None:
        self.db.table("meta").upsert({"key": key, "value": value}, pk="key")

    # -- reads --------------------------------------------------------------------------------

    def records(self, prefix: str | None = None) -> dict[str, FileRecord]:
        """Every row's record by path; with `prefix` ("a/b"), only the path "a/b" and those under
        "a/b/" (never "a/bc"); an empty prefix is the whole library."""
        sql = "SELECT id, path, size, mtime_ns, hash, state, model FROM images"
        params: list = []
        if prefix := (prefix or "").strip("/"):
            where, params = _subtree(prefix)
            sql += " WHERE " + where
        with self._lock:
            rows = self.db.execute(sql, params).fetchall()
        records = (FileRecord(r[0], path_from_db(r[1]), *r[2:]) for r in rows)
        return {rec.path: rec for rec in records}

    def get(self, image_id: int) -> dict | None:
        return self._one(f"SELECT {_INFO_COLUMNS} FROM images WHERE id = ?", [int(image_id)])

    def get_by_path(self, path: str) -> dict | None:
        return self._one(f"SELECT {_INFO_COLUMNS} FROM images WHERE path = ?", [path_to_db(path)])

    def _one(self, sql: str, params: list) -> dict | None:
        rows = self._dicts(sql, params)
        return rows[0] if rows else None

    def _dicts(self, sql: str, params: list) -> list[dict]:
        with self._lock:
            cursor = self.db.execute(sql, params)
            keys = [d[0] for d in cursor.description]
            rows = [dict(zip(keys, row, strict=True)) for row in cursor.fetchall()]
        for row in rows:  # the exact name, whatever the column holds
            if isinstance(row.get("path"), bytes):
                row["path"] = path_from_db(row["path"])
        return rows

    def vector_for_hash(self, hash: str, model: str) -> np.ndarray | None:
        with self._lock:
            row = self.db.execute(
                "SELECT vector FROM images WHERE hash = ? AND +model = ? AND +state = 'ok' "
                "AND vector IS NOT NULL LIMIT 1",
                [hash, model],
            ).fetchone()
        return from_blob(row[0]) if row else None

    def vector_of(self, image_id: int, model: str) -> np.ndarray | None:
        with self._lock:
            row = self.db.execute(
                "SELECT vector FROM images WHERE id = ? AND model = ? AND state = 'ok'", [int(image_id), model]
            ).fetchone()
        return from_blob(row[0]) if row else None

    def load_vectors(self, model: str) -> tuple[np.ndarray, np.ndarray]:
        """(ids int64 (n,), vectors float32 (n, dim)) of the ok rows of `model`, by id.

        Filled chunk by chunk into one preallocated array, in one read transaction. With no rows:
        shapes (0,), (0, 0). Invalid vectors (`storehealth.valid_rows`) are left out, with a warning.
        """
        where = "model = ? AND state = 'ok' AND vector IS NOT NULL"
        with self._lock:
            own_txn = not self.db.conn.in_transaction
            if own_txn:
                self.db.execute("BEGIN")
            try:
                dims = self.db.execute(
                    f"SELECT dim, count(*) FROM images WHERE {where} GROUP BY dim ORDER BY count(*) DESC, dim",
                    [model],
                ).fetchall()
                if not dims:
                    return np.empty(0, np.int64), np.empty((0, 0), np.float32)
                dim, n = int(dims[0][0] or 0), int(dims[0][1])  # the model's size: most of its rows'
                ids = np.empty(n, np.int64)
                matrix = np.empty((n, dim), np.float32)
                cursor = self.db.execute(
                    f"SELECT id, vector FROM images WHERE {where} AND dim IS ? ORDER BY id", [model, dims[0][0]]
                )
                i = 0
                while rows := cursor.fetchmany(4096):
                    good = [row for row, k in zip(rows, valid_rows([b for _, b in rows], dim), strict=True) if k]
                    ids[i : i + len(good)] = [image_id for image_id, _ in good]
                    matrix[i : i + len(good)] = np.frombuffer(b"".join(b for _, b in good), VEC_DTYPE).reshape(
                        len(good), dim
                    )
                    i += len(good)
            finally:
                if own_txn:
                    self.db.execute("COMMIT")
        if skipped := sum(c for _, c in dims) - i:
            log.warning("%s: %d stored vectors of %s are invalid and left out of the search", self.path, skipped, model)
        return ids[:i], matrix[:i]

    def list_images(self, offset: int, limit: int, q: str = "", state: str | None = None) -> tuple[list[dict], int]:
        """A page of rows ordered by path, and the number matching; `q`: case-insensitive substring;
        `state`: only rows in that state ('ok' or 'failed'), None for all."""
        where = "WHERE state = ?" if state else ""
        params: list[object] = [state] if state else []
        if q:
            where += " AND " if where else "WHERE "
            if q.isascii() and self._all_ascii():  # LIKE folds ASCII case only, C-fast, no Python per row
                where, params = where + "path LIKE ? ESCAPE '\\'", [*params, f"%{_like_escape(q)}%"]
            else:
                where, params = where + "instr(simd_casefold(path), ?) > 0", [*params, casefold(q)]
        with self._lock:
            total = self.db.execute(f"SELECT count(*) FROM images {where}", params).fetchone()[0]
            rows = self._dicts(
                f"SELECT {_INFO_COLUMNS} FROM images {where} ORDER BY path LIMIT ? OFFSET ?",
                [*params, max(0, int(limit)), max(0, int(offset))],
            )
        return rows, int(total)

    def _all_ascii(self) -> bool:
        """No stored path has a non-ASCII character (then LIKE finds exactly what folding would); a
        path stored as bytes is not ASCII (LIKE never matches a BLOB)."""
        with self._lock:
            return (
                self.db.execute(
                    "SELECT NOT EXISTS (SELECT 1 FROM images WHERE typeof(path) = 'blob' OR path GLOB ?)",
                    ["*[^\x01-\x7f]*"],
                ).fetchone()[0]
                == 1
            )

    def errors(self) -> list[dict]:
        return self._dicts(
            "SELECT id, path, error, size, mtime_ns, updated_at FROM images WHERE state = 'failed' ORDER BY path", []
        )

    def counts(self, model: str | None) -> dict:
        """indexed: ok rows of `model`; stale: ok rows of another model; model None: every ok row is
        indexed and none is stale. revision: changes whenever a row is added, removed or rewritten
        (ids are never reused, so the newest id and the count tell additions from removals)."""
        with self._lock:
            total, ok, failed, indexed, last_id, last_write = self.db.execute(
                "SELECT count(*), coalesce(sum(state = 'ok'), 0), coalesce(sum(state = 'failed'), 0), "
                "coalesce(sum(state = 'ok' AND model IS ?), 0), max(id), max(updated_at) FROM images",
                [model],
            ).fetchone()
        if model is None:
            indexed = ok
        return {
            "indexed": indexed,
            "failed": failed,
            "total": total,
            "stale": ok - indexed,
            "revision": f"{total}-{last_id or 0}-{last_write or 0}",
        }

    def model_dim(self, model: str | None) -> int:
        """The size of `model`'s stored vectors; 0 when it has none."""
        with self._lock:
            row = self.db.execute("SELECT dim FROM images WHERE state = 'ok' AND model = ? LIMIT 1", [model]).fetchone()
        return int(row[0]) if row and row[0] else 0

    def execute(self, sql: str, params: Iterable = ()) -> list[tuple]:
        """One statement's rows under the Store's lock (the SQL of `simd.dupindex`); a write only in a batch."""
        with self._lock:
            run = self.db.execute if sql.lstrip().upper().startswith("SELECT") else self._write
            return run(sql, list(params)).fetchall()

    # -- writes -------------------------------------------------------------------------------

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """One BEGIN IMMEDIATE ... COMMIT; ROLLBACK if the block raises. A nested batch joins the
        outer one. Holds the Store's lock throughout."""
        if self.readonly:
            raise RuntimeError("this Store is read-only")
        with self._lock:
            if self._batch_depth:
                self._batch_depth += 1
                try:
                    yield
                finally:
                    self._batch_depth -= 1
                return
            self.db.execute("BEGIN IMMEDIATE")
            self._batch_depth = 1
            try:
                yield
                self.db.execute("COMMIT")
            except BaseException:
                self.db.rollback()
                raise
            finally:
                self._batch_depth = 0

    def _write(self, sql: str, params: list) -> sqlite3.Cursor:
        # The caller holds the lock, and a batch holds it throughout: depth > 0 means our batch.
        if not self._batch_depth:
            raise RuntimeError("Store writes must happen inside `with store.batch():`")
        return self.db.execute(sql, params)

    def _put(
        self,
        path: str,
        size: int,
        mtime_ns: int,
        hash: str | None,
        state: str,
        error: str | None,
        model: str | None,
        dim: int | None,
        blob: bytes | None,
    ) -> int:
        now = time.time()
        with self._lock:
            cur = self._write(
                "INSERT INTO images (path, size, mtime_ns, hash, state, error, model, dim, vector, "
                "created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT(path) DO UPDATE SET size = excluded.size, mtime_ns = excluded.mtime_ns, "
                "hash = excluded.hash, state = excluded.state, error = excluded.error, "
                "model = excluded.model, dim = excluded.dim, vector = excluded.vector, "
                "updated_at = excluded.updated_at RETURNING id",
                [path_to_db(path), int(size), int(mtime_ns), hash, state, error, model, dim, blob, now, now],
            )
            return int(cur.fetchone()[0])

    def put_ok(self, path: str, size: int, mtime_ns: int, hash: str | None, model: str, vector: np.ndarray) -> int:
        """Upsert by path (an existing path keeps its id); returns the id."""
        blob, dim = to_blob(vector)
        return self._put(path, size, mtime_ns, hash, "ok", None, model, dim, blob)

    def put_failed(self, path: str, size: int, mtime_ns: int, hash: str | None, error: str) -> int:
        return self._put(path, size, mtime_ns, hash, "failed", str(error), None, None, None)

    def update_stat(self, path: str, size: int, mtime_ns: int) -> None:
        with self._lock:
            self._write(
                "UPDATE images SET size = ?, mtime_ns = ?, updated_at = ? WHERE path = ?",
                [int(size), int(mtime_ns), time.time(), path_to_db(path)],
            )

    def delete_paths(self, paths: Iterable[str]) -> list[int]:
        """Delete these paths (unknown ones are ignored); returns the deleted ids."""
        keys = [path_to_db(p) for p in paths]
        deleted: list[int] = []
        with self._lock:
            if not keys:
                self._write("SELECT 1", [])  # still refuse outside a batch
            for i in range(0, len(keys), _CHUNK):
                chunk = keys[i : i + _CHUNK]
                marks = ", ".join("?" * len(chunk))
                deleted += [
                    r[0]
                    for r in self._write(f"DELETE FROM images WHERE path IN ({marks}) RETURNING id", chunk).fetchall()
                ]
        return deleted
