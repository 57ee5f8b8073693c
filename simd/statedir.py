"""The state dir: where a library's index lives, whose library it is, and which simd holds it.

`StateDir.claim(config, role)` is how `simd serve` and `simd index` start: it checks the library,
creates the state dir (0700) outside it, checks that it can write there, takes its lock, checks the
index and records the library it belongs to. An index SQLite cannot read, or whose `PRAGMA
quick_check` fails, is moved aside (`index.db.damaged-<time>`, never deleted) and a new one is built
from the library; rows holding invalid vectors are reset and re-embedded (docs/RELIABILITY.md).
`find_state_dir` is how the read-only commands find an index to read.

The lock: one simd process per state dir. `simd serve` and `simd index` hold an exclusive `flock`
on `<state dir>/simd.lock` for their lifetime (the kernel drops it when the process dies, even by
kill -9), so two daemons never index the same library twice over. The file holds JSON about the
holder (pid, role, the daemon's URL), which `simd status` reads to ask the running daemon,
whatever port it chose.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import sqlite3
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from simd import config as cfg
from simd.errors import ConfigError, SimdError
from simd.paths import is_inside
from simd.store import Store
from simd.storehealth import (
    DamagedIndex,
    damage_noted,
    integrity_problem,
    invalid_vectors,
    is_damage,
    move_aside,
    reset_vectors,
)

log = logging.getLogger(__name__)

DB_NAME = "index.db"
LOCK_NAME = "simd.lock"


def db_path(state_dir: Path) -> Path:
    return Path(state_dir) / DB_NAME


@dataclass
class StateDir:
    """A claimed state dir: the library root, the dir, its database, and the lock held on it."""

    root: Path
    path: Path
    db: Path
    lock: StateLock

    @classmethod
    def claim(cls, config: cfg.Config, role: str) -> StateDir:
        """Check the library, create the state dir, take its lock (SimdError if another simd holds
        it) and record whose index it is (ConfigError if it holds another library's)."""
        root = config.library_path
        if root.exists() and not root.is_dir():
            raise ConfigError(f"library {root} is not a directory")
        state = config.state_path
        if is_inside(root, state):
            raise ConfigError(f"state dir {state} is inside the library; simd never writes into the library")
        db = db_path(state)
        if not root.exists() and not db.exists():
            # A typo, not an unmounted disk: there is no index of it to keep.
            raise SimdError(f"library {root} does not exist")
        _make_writable_dir(state)
        lock = StateLock(state).acquire(role=role, library=str(root))
        try:
            _open_index(db, root, state)
        except BaseException:
            lock.release()
            raise
        return cls(root, state, db, lock)

    def release(self) -> None:
        self.lock.release()

    def __enter__(self) -> StateDir:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _make_writable_dir(state: Path) -> None:
    """Create the state dir (0700) and check that simd can write in it: SimdError, one line, if not."""
    if state.exists() and not state.is_dir():
        raise SimdError(f"state dir {state} is a file, not a directory; remove it or pass another --state-dir")
    try:
        state.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as e:
        raise SimdError(f"cannot create state dir {state}: {e.strerror or e}") from None
    try:
        with tempfile.TemporaryFile(dir=state, prefix=".simd-write-test-"):
            pass
    except OSError as e:
        raise SimdError(f"cannot write in state dir {state}: {e.strerror or e}") from None


def _open_index(db: Path, root: Path, state: Path) -> None:
    """Check the index (a new one if none) and record whose it is; a damaged one is moved aside."""
    try:
        _check_index(db, root, state)
    except DamagedIndex as e:
        try:
            moved = move_aside(db)
        except OSError as moving:
            raise SimdError(f"{e.message}; it cannot be moved aside: {moving.strerror or moving}") from None
        log.error(
            "the index %s is damaged (%s); moved it aside to %s (kept, not deleted) and rebuilding it from the library",
            db,
            e.reason,
            moved.name,
        )
        _check_index(db, root, state)


def _check_index(db: Path, root: Path, state: Path) -> None:
    started = time.monotonic()
    if (noted := damage_noted(db)) is not None:
        raise DamagedIndex(db, noted)
    try:
        with Store(db) as store:
            if problem := integrity_problem(store.db, quick=True):
                raise DamagedIndex(db, f"PRAGMA quick_check: {problem}")
            known = store.get_meta("library_root")
            if known and known != str(root):
                raise ConfigError(f"state dir {state} holds the index of {known}, not {root}; pass another --state-dir")
            if not known:
                with store.batch():
                    store.set_meta("library_root", str(root))
            if bad := invalid_vectors(store.db):
                reset_vectors(store.db, [image_id for image_id, _ in bad])
                first = ", ".join(f"id {i}: {what}" for i, what in bad[:3])
                log.error("the index %s held %d invalid vectors (%s); they are re-embedded", db, len(bad), first)
    except sqlite3.DatabaseError as e:
        if is_damage(e):
            raise DamagedIndex(db, str(e)) from None
        raise SimdError(f"cannot use the index {db}: {e}") from None
    log.debug("index %s checked in %.2f s", db, time.monotonic() - started)


def read_meta(state_dir: Path, key: str) -> str | None:
    """One value of an index's meta table, or None when there is no readable index."""
    try:
        store = Store(db_path(state_dir), readonly=True)
    except SimdError:
        return None
    with store:
        return store.get_meta(key)


def find_state_dir(config: cfg.Config, library: str | None = None, image: Path | None = None) -> Path:
    """The state dir to read: --state-dir, else the library's (flag or config), else the index
    whose library holds `image`, else the only index there is."""
    if config.state_dir:
        return config.state_path
    library = library or config.library
    if library:
        return cfg.default_state_dir(Path(library))
    base = cfg.state_base()
    candidates = sorted(p.parent for p in base.glob(f"*/{DB_NAME}"))
    if image is not None:
        for cand in candidates:
            root = read_meta(cand, "library_root")
            if root and is_inside(root, image):
                return cand
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise ConfigError(f"no index found under {base}; run `simd index LIBRARY` first or pass --state-dir")
    raise ConfigError(
        "several indexes exist; pass --library or --state-dir: "
        + ", ".join(str(read_meta(c, "library_root") or c) for c in candidates)
    )


# -- the lock ------------------------------------------------------------------------------------


class StateLock:
    def __init__(self, state_dir: Path):
        self.path = Path(state_dir) / LOCK_NAME
        self._fd: int | None = None

    def acquire(self, **info) -> StateLock:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as e:
            raise SimdError(f"cannot open the lock file {self.path}: {e.strerror or e}") from None
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
        try:
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, data, 0)
        except OSError as e:  # a full disk: the lock holds all the same; `simd status` finds less
            log.warning("cannot write %s: %s", self.path, e.strerror or e)

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
