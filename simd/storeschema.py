"""The schema of simd's SQLite file and its numbered migrations (`simd.store` runs them on open).

`meta.schema_version` says which step a file is at. A writer brings an older file up to
`SCHEMA_VERSION` in one `BEGIN IMMEDIATE` transaction; a file newer than this simd is refused, and a
read-only reader also refuses one that is not there yet (it never writes).
"""

from __future__ import annotations

import logging
from pathlib import Path

from sqlite_utils import Database

from simd.errors import NotFound, SimdError

log = logging.getLogger(__name__)

SCHEMA_VERSION = 4
# 2: `images.path` holds a name that is not valid UTF-8 as its exact bytes (a BLOB; see
#    `storevalues.path_to_db`). The table is unchanged; the step only keeps an older simd, which
#    would take such a row for a deleted file, from opening the file.
# 3: duplicates (`simd.dupindex`): `dup_pairs`, the pairs of contents (hashes) of one model scoring
#    at least its lowest threshold, and `dup_dismissed`, the user's "not duplicates" by pair of
#    hashes. An index from before has no pairs: `meta.dup_built:<model>` is absent, so the daemon's
#    next start builds them in the background (`dupbuild`). `images.width`, `height` (upright) and
#    `format`, from the file's header, for the keep rules: recorded when an image is indexed; rows
#    from before get them when the build reads their headers (only images with copies), else the
#    listing reads them.
# 4: verification of pairs by their pixels (`simd.dupverify`, `simd.dupverdicts`): `dup_pairs.inliers`,
#    the local features of the two images that agree with one transform (NULL: not verified yet), and
#    `dup_pairs.verify_note`, why a pair could not be verified (a file that does not decode). On the
#    pair's row, so a verdict is kept, like the pair, through renames, moves, rescans and rebuilds.

_SCHEMA_V1 = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)",
    """CREATE TABLE images (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        path TEXT NOT NULL UNIQUE,          -- relative to the library root, '/' separators (BLOB: not UTF-8)
        size INTEGER NOT NULL,
        mtime_ns INTEGER NOT NULL,
        hash TEXT,                          -- BLAKE2b hex of the bytes; NULL if never read
        state TEXT NOT NULL CHECK (state IN ('ok', 'failed')),
        error TEXT,
        model TEXT,
        dim INTEGER,
        vector BLOB,                        -- little-endian float32 * dim; NULL when failed
        created_at REAL,
        updated_at REAL
    )""",
    "CREATE INDEX images_hash ON images (hash)",
    "CREATE INDEX images_model_state ON images (model, state)",
)
_COLUMNS_V3 = (("width", "INTEGER"), ("height", "INTEGER"), ("format", "TEXT"))
_COLUMNS_V4 = (("inliers", "INTEGER"), ("verify_note", "TEXT"))
_SCHEMA_V3 = (
    # hash_a < hash_b; keyed by contents, not ids, so renames, moves and copies keep them
    """CREATE TABLE IF NOT EXISTS dup_pairs (
        model TEXT NOT NULL, hash_a TEXT NOT NULL, hash_b TEXT NOT NULL, score REAL NOT NULL,
        PRIMARY KEY (model, hash_a, hash_b)
    ) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS dup_pairs_b ON dup_pairs (model, hash_b)",
    # hash_a <= hash_b (model-independent); hash_a = hash_b: copies of the same bytes, `copies` of
    # them when dismissed (one more copy shows the group again)
    """CREATE TABLE IF NOT EXISTS dup_dismissed (
        hash_a TEXT NOT NULL, hash_b TEXT NOT NULL, copies INTEGER, created_at REAL,
        PRIMARY KEY (hash_a, hash_b)
    ) WITHOUT ROWID""",
)


def read_version(db: Database) -> int:
    """The file's schema version; 0 for a file simd has not initialised."""
    if not db.table("meta").exists():
        return 0
    row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    return int(row[0]) if row else 0


def check_version(version: int, path: Path, *, readonly: bool) -> None:
    if version > SCHEMA_VERSION:
        raise SimdError(
            f"the index {path} has schema version {version}, newer than this simd "
            f"understands ({SCHEMA_VERSION}); upgrade simd or use another --state-dir"
        )
    if readonly and version < SCHEMA_VERSION:
        raise NotFound(
            f"the index {path} is not initialised or needs an upgrade "
            f"(schema version {version}); run `simd index` first"
        )


def migrate(db: Database, path: Path) -> None:
    """Numbered migrations, all in one BEGIN IMMEDIATE transaction (as rclip's `if version < N`)."""
    db.execute("BEGIN IMMEDIATE")
    try:
        version = read_version(db)
        check_version(version, path, readonly=False)
        if version < 1:
            # Plain DDL: a migration must produce the same schema whatever library writes it.
            # AUTOINCREMENT: an id is never reused, so a stale id never names another image.
            for sql in _SCHEMA_V1:
                db.execute(sql)
        # Version 2 changes no table (see SCHEMA_VERSION).
        if version < 3:  # (each part only if missing: a file whose version was set back still opens)
            have = {row[1] for row in db.execute("PRAGMA table_info(images)").fetchall()}
            for name, kind in _COLUMNS_V3:
                if name not in have:
                    db.execute(f"ALTER TABLE images ADD COLUMN {name} {kind}")
            for sql in _SCHEMA_V3:
                db.execute(sql)
        if version < 4:  # only the columns missing (as in step 3)
            have = {row[1] for row in db.execute("PRAGMA table_info(dup_pairs)").fetchall()}
            for name, kind in _COLUMNS_V4:
                if name not in have:
                    db.execute(f"ALTER TABLE dup_pairs ADD COLUMN {name} {kind}")
        # Future steps go here: `if version < 5: ...`, each bringing the schema one step on.
        if version < SCHEMA_VERSION:
            db.execute(
                "INSERT INTO meta (key, value) VALUES ('schema_version', ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                [str(SCHEMA_VERSION)],
            )
        db.execute("COMMIT")
    except BaseException:
        db.rollback()
        raise
    if version < 1:
        log.info("created a new, empty index in %s: every image of the library is embedded anew", path)
