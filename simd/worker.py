"""The daemon's single writer: a thread fed by a queue of reconcile requests.

Watcher paths and full-rescan requests are coalesced: whatever piled up while a run was busy
becomes one run. It owns the only writer `Store` connection (created inside the thread, as SQLite
connections belong to the thread that made them). Stopped with a sentinel and `join(timeout)`.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from pathlib import Path

from simd.errors import LibraryOffline
from simd.ignore import IgnoreRules
from simd.indexer import MassDeletion, Reconciler
from simd.runtime import Runtime
from simd.scanner import has_entries
from simd.store import Store
from simd.vectors import VectorIndex

log = logging.getLogger(__name__)

_FULL = object()
_FULL_CONFIRMED = object()  # a full reconcile that may delete most of the library (the user said so)
_STOP = object()
OFFLINE_RETRY_SECONDS = 5.0
MASS_DELETE_RETRY_SECONDS = 60.0  # a refused mass deletion is retried this often (a remount is seen at once)


class IndexWorker:
    def __init__(
        self,
        db_path: Path,
        root: Path,
        embedder,
        vectors: VectorIndex,
        ignore: IgnoreRules,
        runtime: Runtime,
        *,
        follow_symlinks: bool = False,
        chunk_size: int = 128,
        on_deleted=None,
    ):
        self.db_path, self.root = Path(db_path), Path(root)
        self.embedder, self.vectors, self.ignore, self.runtime = embedder, vectors, ignore, runtime
        self.follow_symlinks, self.chunk_size, self.on_deleted = follow_symlinks, chunk_size, on_deleted
        self._queue: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="simd-indexer", daemon=True)
        self.last_beat = time.monotonic()
        self.runs = 0  # completed runs, for tests and status
        self._offline_since: float | None = None
        self._retry_after = OFFLINE_RETRY_SECONDS
        self._last_offline = ""

    # -- control (any thread)
    def start(self) -> None:
        self._thread.start()

    def request_full(self, reason: str = "requested", *, confirm_deletions: bool = False) -> None:
        """Queue a full reconcile; `confirm_deletions`: it may delete most of the library (see
        `indexer.MassDeletion`)."""
        log.info("full reconcile queued (%s%s)", reason, "; deletions confirmed" if confirm_deletions else "")
        self._queue.put(_FULL_CONFIRMED if confirm_deletions else _FULL)

    def submit(self, paths: set[str]) -> None:
        if paths:
            self._queue.put(set(paths))
            self.runtime.add_pending(len(paths))

    def stop(self, timeout: float = 8.0) -> bool:
        """Ask the thread to finish the chunk in flight (or drop it) and exit; True if it did."""
        self._stop.set()
        self._queue.put(_STOP)
        if self._thread.is_alive():
            self._thread.join(timeout)
        return not self._thread.is_alive()

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    # -- the thread
    def _beat(self) -> None:
        self.last_beat = time.monotonic()

    def _progress(self, phase: str, done: int, total: int) -> None:
        self._beat()
        if phase == "scanning":
            self.runtime.update(phase="scanning", progress={"phase": "scanning", "done": 0, "total": 0})
        elif phase == "indexing":
            self.runtime.update(
                phase="indexing" if total else "scanning",
                pending=max(total - done, 0),
                progress={"phase": "indexing", "done": done, "total": total},
            )

    def _run(self) -> None:
        with Store(self.db_path) as store:  # the only writer connection, made in this thread
            reconciler = Reconciler(
                self.root,
                store,
                self.embedder,
                self.vectors,
                self.ignore,
                follow_symlinks=self.follow_symlinks,
                chunk_size=self.chunk_size,
                on_progress=self._progress,
                on_deleted=self.on_deleted,
                stop=self._stop,
            )
            while not self._stop.is_set():
                try:
                    item = self._queue.get(timeout=1.0)
                except queue.Empty:
                    self._beat()
                    self._retry_if_back_online()
                    continue
                full, paths, confirmed = self._drain(item)
                if self._stop.is_set():
                    break
                self._one_run(reconciler, None if full else paths, confirmed)

    def _drain(self, first) -> tuple[bool, set[str], bool]:
        full, paths, confirmed, item = False, set(), False, first
        while True:
            if item is _STOP:
                self._stop.set()
            elif item is _FULL or item is _FULL_CONFIRMED:
                full, confirmed = True, confirmed or item is _FULL_CONFIRMED
            else:
                paths |= item
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return full, paths, confirmed

    def _one_run(self, reconciler: Reconciler, paths: set[str] | None, confirmed: bool = False) -> None:
        self._beat()
        try:
            summary = reconciler.run(paths, allow_mass_delete=confirmed)
        except LibraryOffline as e:
            if str(e) != self._last_offline:  # a retry that finds the same is not news
                log.warning("%s", e)
            self._last_offline = str(e)
            self._offline_since = time.monotonic()
            self._retry_after = MASS_DELETE_RETRY_SECONDS if isinstance(e, MassDeletion) else OFFLINE_RETRY_SECONDS
            self.runtime.update(phase="offline", pending=0, progress=None, last_error=str(e))
            return
        except Exception as e:  # a bug or a resource error must not kill the only writer
            log.exception("reconcile failed")
            self.runtime.update(phase="idle", pending=0, progress=None, last_error=f"reconcile failed: {e}")
            return
        finally:
            self._beat()
        self.runs += 1
        self._offline_since, self._last_offline = None, ""
        if summary.interrupted:
            return
        still_queued = self._queue.qsize()
        self.runtime.update(phase="idle" if not still_queued else "scanning", pending=0, progress=None, last_error=None)
        if paths is None or summary.did_something:  # a full reconcile always says what it found
            log.info(
                "%s: %s (%.1f s)", "reconcile" if paths is None else "indexed", summary.describe(), summary.seconds
            )

    def _retry_if_back_online(self) -> None:
        if self._offline_since is None or time.monotonic() - self._offline_since < self._retry_after:
            return
        self._offline_since = time.monotonic()
        if has_entries(self.root):
            log.info("library root %s is back; reconciling", self.root)
            self._queue.put(_FULL)
