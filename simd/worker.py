"""The daemon's single writer: a thread fed by a queue of reconcile requests.

Watcher paths and full-rescan requests are coalesced: whatever piled up while a run was busy
becomes one run. It owns the only writer `Store` connection (created inside the thread, as SQLite
connections belong to the thread that made them). Stopped with a sentinel and `join(timeout)`.

A run whose writes the storage refused (disk full, I/O error, read-only: `storehealth.write_failure`)
was rolled back chunk by chunk; its work is held and run again after 5 s, then 10, 20, ... up to
5 minutes, and whatever arrives meanwhile joins it. Status says "retrying" with the reason. A run
that finds the index damaged notes it beside the file and sets `damaged`: the daemon then exits
with status 1, and the next start moves the file aside and rebuilds (`simd.statedir`).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from simd.dupindex import DupIndex
from simd.errors import LibraryOffline
from simd.ignore import IgnoreRules
from simd.indexer import MassDeletion, Reconciler
from simd.runtime import Runtime
from simd.scanner import has_entries
from simd.store import Store
from simd.storehealth import is_damage, note_damage, write_failure
from simd.vectors import VectorIndex

log = logging.getLogger(__name__)

_FULL = object()
_FULL_CONFIRMED = object()  # a full reconcile that may delete most of the library (the user said so)
_STOP = object()
OFFLINE_RETRY_SECONDS = 5.0
MASS_DELETE_RETRY_SECONDS = 60.0  # a refused mass deletion is retried this often (a remount is seen at once)
RETRY_FIRST_SECONDS = 5.0  # after a failed write; doubled at each failure in a row
RETRY_MAX_SECONDS = 300.0


@dataclass(slots=True)
class _Work:
    """What one run does: a full reconcile (`full`; `confirmed`: it may delete most of the library)
    or these `paths`; `taken`: how many queued paths it took off the pending count."""

    full: bool = False
    paths: set[str] = field(default_factory=set)
    taken: int = 0
    confirmed: bool = False
    tasks: list = field(default_factory=list)  # callables of the writer Store (`submit_task`)

    def merged(self, other: _Work) -> _Work:
        return _Work(
            self.full or other.full,
            self.paths | other.paths,
            self.taken + other.taken,
            self.confirmed or other.confirmed,
            self.tasks + other.tasks,
        )


@dataclass(slots=True)
class _Task:
    run: Callable[[Store], object]


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
        self.damaged: str | None = None  # what a run found damaged in the index: the daemon restarts
        self._offline_since: float | None = None
        self._retry_after = OFFLINE_RETRY_SECONDS
        self._last_offline = ""
        self._retry_at: float | None = None  # a failed write's work waits until then
        self._retry_delay = 0.0
        self._held = _Work()  # the work of a run the storage refused, held until the retry
        # Paths queued and not yet taken by a run, counted once in `pending` however often the
        # watcher hands them in (a file written in bursts settles, changes and settles again).
        self._queued_paths: set[str] = set()
        # The current run's paths, and the queued ones among them: a file the watcher hands in again
        # while the run has it in its plan is counted once (a burst showed 8,335 pending for 5,050
        # files), and counted as waiting again only when the run is over.
        self._in_run: set[str] = set()
        self._uncounted: set[str] = set()
        self._queued_lock = threading.Lock()
        self.duplicates: DupIndex | None = None  # the reconciler's hook, once the thread runs

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
            with self._queued_lock:
                new = set(paths) - self._queued_paths
                self._queued_paths |= new
                planned = new & self._in_run
                self._uncounted |= planned
                self.runtime.add_pending(len(new) - len(planned))  # counted as pending until a run takes them
            self._queue.put(set(paths))

    def submit_task(self, run: Callable[[Store], object]) -> None:
        """Run `run(store)` in the writer thread with its Store (e.g. store the duplicates build's
        result): the one writer stays the one writer."""
        self._queue.put(_Task(run))

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
                duplicates=DupIndex(self.embedder.model_id, self.vectors, self.root),
            )
            self.duplicates = reconciler.duplicates
            while not self._stop.is_set():
                try:
                    item = self._queue.get(timeout=1.0)
                except queue.Empty:
                    self._beat()
                    self._retry_if_back_online()
                    if self._retry_at is None or time.monotonic() < self._retry_at or self._stop.is_set():
                        continue
                    item = set()  # the held work is due
                work = self._drain(item).merged(self._held)
                if self._stop.is_set():
                    break
                if self._retry_at is not None and time.monotonic() < self._retry_at:
                    self._held = work  # the storage refused the last run: wait with it
                    continue
                self._held = _Work()
                self._run_tasks(store, work)
                if self.damaged:
                    break
                if not (work.full or work.paths or work.taken):
                    if self._queue.empty() and self.runtime.snapshot()["phase"] == "scanning":
                        self.runtime.update(phase="idle")  # the last run saw this task queued as work
                    continue
                self.runtime.add_pending(-work.taken)  # from now on the run's plan counts them
                with self._queued_lock:
                    self._in_run = set(work.paths)
                try:
                    self._one_run(reconciler, work)
                finally:
                    with self._queued_lock:  # handed in again during the run: waiting for the next one
                        self._in_run = set()
                        self.runtime.add_pending(len(self._uncounted))
                        self._uncounted.clear()
                if self.damaged:
                    break

    def _drain(self, first) -> _Work:
        work, item = _Work(), first
        while True:
            if item is _STOP:
                self._stop.set()
            elif isinstance(item, _Task):
                work.tasks.append(item.run)
            elif item is _FULL or item is _FULL_CONFIRMED:
                work.full, work.confirmed = True, work.confirmed or item is _FULL_CONFIRMED
            else:
                work.paths |= item
                with self._queued_lock:
                    work.taken += len((item & self._queued_paths) - self._uncounted)
                    self._queued_paths -= item
                    self._uncounted -= item
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return work

    def _run_tasks(self, store: Store, work: _Work) -> None:
        for run in work.tasks:
            try:
                run(store)
            except Exception as e:
                if is_damage(e):
                    self._on_damage(str(e))
                elif (reason := write_failure(e)) is not None:
                    self._on_write_failure(reason, _Work(tasks=[run]))
                else:
                    log.exception("a task of the writer failed")
        work.tasks = []

    def _one_run(self, reconciler: Reconciler, work: _Work) -> None:
        paths = None if work.full else work.paths
        self._beat()
        try:
            if reconciler.store.get_meta("model") != reconciler.model:
                reconciler.store.set_meta("model", reconciler.model)
            summary = reconciler.run(paths, allow_mass_delete=work.confirmed)
        except LibraryOffline as e:
            if str(e) != self._last_offline:  # a retry that finds the same is not news
                log.warning("%s", e)
            self._last_offline = str(e)
            self._offline_since = time.monotonic()
            self._retry_after = MASS_DELETE_RETRY_SECONDS if isinstance(e, MassDeletion) else OFFLINE_RETRY_SECONDS
            self.runtime.update(phase="offline", pending=0, progress=None, last_error=str(e))
            return
        except Exception as e:  # a bug or a resource error must not kill the only writer
            if is_damage(e):
                self._on_damage(str(e))
            elif (reason := write_failure(e)) is not None:
                self._on_write_failure(reason, work)
            else:
                log.exception("reconcile failed")
                self.runtime.update(phase="idle", pending=0, progress=None, last_error=f"reconcile failed: {e}")
            return
        finally:
            self._beat()
        self.runs += 1
        self._offline_since, self._last_offline = None, ""
        if self._retry_at is not None:
            log.info("the index is written again; indexing resumed")
            self._retry_at, self._retry_delay = None, 0.0
        if summary.interrupted:
            return
        still_queued = self._queue.qsize()
        self.runtime.update(phase="idle" if not still_queued else "scanning", pending=0, progress=None, last_error=None)
        if paths is None or summary.did_something:  # a full reconcile always says what it found
            log.info(
                "%s: %s (%.1f s)", "reconcile" if paths is None else "indexed", summary.describe(), summary.seconds
            )

    def _on_write_failure(self, reason: str, work: _Work) -> None:
        """The storage refused a write (rolled back): hold the run's work and retry it later."""
        first = self._retry_at is None
        self._retry_delay = RETRY_FIRST_SECONDS if first else min(self._retry_delay * 2, RETRY_MAX_SECONDS)
        self._retry_at = time.monotonic() + self._retry_delay
        self._held = self._held.merged(_Work(work.full, set(work.paths), 0, work.confirmed, list(work.tasks)))
        waiting = self.runtime.snapshot()["pending"]
        (log.error if first else log.warning)(
            "cannot write the index: %s; files waiting: %d; retrying in %.0f s", reason, waiting, self._retry_delay
        )
        self.runtime.update(  # progress stays: what the run had done
            phase="retrying",
            last_error=f"cannot write the index: {reason}; retried by itself, next in {self._retry_delay:.0f} s",
        )

    def _on_damage(self, reason: str) -> None:
        log.error(
            "the index %s is damaged (%s); simd stops, and its next start moves it aside and rebuilds it",
            self.db_path,
            reason,
        )
        note_damage(self.db_path, reason)
        self.damaged = reason
        self.runtime.update(progress=None, last_error=f"the index is damaged: {reason}")

    def _retry_if_back_online(self) -> None:
        if self._offline_since is None or time.monotonic() - self._offline_since < self._retry_after:
            return
        self._offline_since = time.monotonic()
        if has_entries(self.root):
            log.info("library root %s is back; reconciling", self.root)
            self._queue.put(_FULL)
