"""watchdog events → settled paths. Events are hints; the reconcile scan is the truth.

Handlers only record `(path, time)` under a lock. A settle thread emits a path (relative to the
library root, `/` separators, '' for the root) once no event touched it for `settle_seconds` and its
`(size, mtime_ns)` did not change over `settle_seconds`; all paths settled at one tick go out in one
`on_paths` call. `on_paths` and `on_trouble` are only ever called from that thread. Every
`on_trouble(reason)` means "events were or may be lost: reconcile".

What watchdog 7.1 tells us (read from its inotify source) and what we add:
- IN_Q_OVERFLOW: watchdog logs a warning and re-adds its watches but sends no event to handlers.
  We give the observer our own `InotifyFD` whose `handle_event` reports the overflow.
- Watch limit (ENOSPC, `fs.inotify.max_user_watches`): on the root, `schedule()`/`start()` raise
  OSError; below the root watchdog swallows it (those folders are silently unwatched). Our
  `InotifyFD.add_callback` reports both. EMFILE (`max_user_instances`) is raised creating the FD.
- Root deleted: the inotify emitter (IN_DELETE_SELF) and the polling emitter stop themselves; an
  unmount leaves the emitter idle. The settle thread stats the root each tick and restarts the
  observer when the root is back or was replaced.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path

from watchdog import events as ev
from watchdog.observers.api import BaseObserver

from simd.ignore import IgnoreRules
from simd.observers import (
    EVENTS,
    HINTS,
    LIMITS,
    choose_observer,
    make_observer,
    observer_healthy,
    stop_observer,
)

log = logging.getLogger(__name__)

ROOT_MISSING = "library root missing"
TROUBLE_INTERVAL = 10.0  # the same reason is reported at most this often (later reports are delayed)
RESTART_BACKOFF = (30.0, 3600.0)  # retry a failed or dead observer after 30 s, doubling up to an hour


class _Handler(ev.FileSystemEventHandler):
    def __init__(self, record: Callable[[ev.FileSystemEvent], None]):
        self._record = record

    def dispatch(self, event: ev.FileSystemEvent) -> None:
        try:  # an exception here would kill watchdog's dispatcher thread
            self._record(event)
        except Exception:
            log.exception("dropping file event %r", event)


class _Pending:
    __slots__ = ("last_event", "sig", "sig_time")

    def __init__(self, last_event: float):
        self.last_event = last_event
        self.sig: object = None  # (size, mtime_ns) at the first look since the last event
        self.sig_time = 0.0


class Watcher:
    """Watch `root` recursively; call `on_paths(set_of_relative_paths)` with settled paths and
    `on_trouble(reason)` when events were or may have been lost (the consumer then reconciles).
    `poll_interval` is the polling observer's period (a full stat walk of the tree each time)."""

    def __init__(
        self,
        root: Path,
        on_paths: Callable[[set[str]], None],
        *,
        settle_seconds: float = 2.0,
        ignore: IgnoreRules,
        observer: str = "auto",
        on_trouble: Callable[[str], None] = lambda reason: None,
        follow_symlinks: bool = False,
        poll_interval: float = 30.0,
    ):
        if observer not in ("auto", "native", "polling"):
            raise ValueError(f"observer must be auto, native or polling, not {observer!r}")
        self.root, self.on_paths, self.on_trouble = Path(root), on_paths, on_trouble
        self.settle, self.ignore, self.mode = max(0.0, settle_seconds), ignore, observer
        self.follow_symlinks, self.poll_interval = follow_symlinks, poll_interval
        self._tick = min(0.25, max(0.02, self.settle / 4))
        self._lock = threading.Lock()
        self._events: dict[str, float] = {}  # rel path -> last event (monotonic); handlers fill it
        self._troubles: dict[str, float] = {}  # reason -> first report, not yet delivered
        self._pending: dict[str, _Pending] = {}  # owned by the settle thread
        self._delivered: dict[str, float] = {}  # reason -> last delivery
        self._watch_path = ""  # the real path the observer watches
        self._observer: BaseObserver | None = None
        self._kind = "none"
        self._root_id: tuple[int, int] | None = None
        self._next_start, self._backoff = 0.0, RESTART_BACKOFF[0]
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._handler = _Handler(self._record)

    @property
    def kind(self) -> str:
        """ "inotify", "polling", ... of the running observer; "none" when none runs."""
        return self._kind

    def start(self) -> None:
        """Watch the tree (blocks while watches are added); failures are reported through on_trouble."""
        if self._thread is not None:
            raise RuntimeError("Watcher.start() called twice")
        self._root_id = self._root_identity()
        if self._root_id is None:
            self._report(ROOT_MISSING)
        else:
            self._start_observer()
        self._thread = threading.Thread(target=self._run, name="simd-watcher-settle", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> bool:
        """Stop and join every thread; True when all ended. Paths not yet settled are dropped (the
        next reconcile has them)."""
        self._stopping.set()
        settled = True
        if self._thread is not None:  # first, so that it cannot start another observer
            self._thread.join(timeout)
            settled = not self._thread.is_alive()
        return self._stop_observer(timeout) and settled

    def is_alive(self) -> bool:
        """The settle thread runs and so does the observer, if one should (the systemd watchdog asks)."""
        if self._thread is None or not self._thread.is_alive() or self._stopping.is_set():
            return False
        return self._observer is None or observer_healthy(self._observer)

    # -- handler side: record only
    def _record(self, event: ev.FileSystemEvent) -> None:
        if event.is_synthetic:  # sub-events of a directory move or creation: the directory's event covers them
            return
        now = time.monotonic()
        paths = [event.src_path]
        if isinstance(event, ev.FileSystemMovedEvent) and event.dest_path:
            paths.append(event.dest_path)
        rels = [
            rel
            for p in paths
            if (rel := self._relative(os.fsdecode(p))) is not None and not self.ignore.ignored(rel, event.is_directory)
        ]
        if rels:
            with self._lock:
                for rel in rels:
                    self._events[rel] = now

    def _relative(self, path: str) -> str | None:
        base = self._watch_path
        if path == base:
            return ""
        prefix = base.rstrip("/") + "/"
        return path[len(prefix) :] if base and path.startswith(prefix) else None

    def _report(self, reason: str) -> None:
        with self._lock:
            self._troubles.setdefault(reason, time.monotonic())

    # -- observer lifecycle
    def _start_observer(self) -> None:
        if self._stopping.is_set():
            return
        self._next_start = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, RESTART_BACKOFF[1])
        kind = choose_observer(self.root, self.mode)
        obs: BaseObserver | None = None
        try:
            self._watch_path = os.path.realpath(self.root)
            obs = make_observer(kind, self._report, self.poll_interval)
            obs.schedule(
                self._handler,
                self._watch_path,
                recursive=True,
                event_filter=EVENTS,
                follow_symlink=self.follow_symlinks,
            )
            obs.start()
        except Exception as e:  # never let a watch failure take the daemon down: reconcile covers it
            if obs is not None:
                stop_observer(obs, 5.0)
            if not isinstance(e, OSError):
                log.exception("cannot start the file observer")
            if getattr(e, "errno", None) not in LIMITS:  # limits were reported by the FD already
                self._report(f"cannot watch the library: {e}")
            return
        self._observer, self._backoff = obs, RESTART_BACKOFF[0]
        self._kind = "polling" if kind == "polling" else type(obs).__name__.lstrip("_").removesuffix("Observer").lower()
        log.info("watching %s (%s)", self._watch_path, self._kind)

    def _stop_observer(self, timeout: float = 5.0) -> bool:
        obs, self._observer, self._kind = self._observer, None, "none"
        return stop_observer(obs, timeout) if obs is not None else True

    def _root_identity(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.root)
        except OSError:
            return None
        return (st.st_dev, st.st_ino) if stat.S_ISDIR(st.st_mode) else None

    def _check_root(self, now: float) -> None:
        ident = self._root_identity()
        if ident != self._root_id:
            # Unmounted, deleted or replaced: what is pending says nothing reliable (an unmounted disk
            # looks like mass deletion), so drop it; the reconcile that the trouble triggers decides.
            with self._lock:
                self._events.clear()
            self._pending.clear()
            self._stop_observer()
            if ident is None:
                self._report(ROOT_MISSING)
            else:
                self._report(
                    "library root is back"
                    if self._root_id is None
                    else "library root changed (unmounted, remounted or replaced)"
                )
                self._backoff = RESTART_BACKOFF[0]
                self._start_observer()
            self._root_id = ident
        elif ident is None:
            return
        elif self._observer is not None and not observer_healthy(self._observer):
            if now >= self._next_start:
                self._report("file watcher stopped unexpectedly; restarted")
                self._stop_observer()
                self._start_observer()
        elif self._observer is None and now >= self._next_start:
            self._start_observer()

    # -- settle thread
    def _run(self) -> None:
        while not self._stopping.wait(self._tick):
            try:
                self._step(time.monotonic())
            except Exception:
                log.exception("watcher step failed; carrying on")

    def _step(self, now: float) -> None:
        self._check_root(now)
        with self._lock:
            events, self._events = self._events, {}
        for rel, t in events.items():
            p = self._pending.get(rel)
            if p is None:
                self._pending[rel] = _Pending(t)
            else:
                p.last_event, p.sig = max(p.last_event, t), None
        ready: set[str] = set()
        for rel, p in self._pending.items():
            if p.sig is None:  # first look since the last event
                p.sig, p.sig_time = self._signature(rel), now
            elif now - p.last_event >= self.settle and now - p.sig_time >= self.settle:
                sig = self._signature(rel)
                if sig == p.sig:
                    ready.add(rel)
                else:
                    p.sig, p.sig_time = sig, now
        for rel in ready:
            del self._pending[rel]
        if ready and not self._stopping.is_set():
            try:
                self.on_paths(ready)
            except Exception:
                log.exception("on_paths failed; %d settled path(s) dropped until the next reconcile", len(ready))
        self._deliver_troubles(now)

    def _signature(self, rel: str) -> object:
        try:
            st = os.lstat(os.path.join(self._watch_path, rel) if rel else self._watch_path)
        except (FileNotFoundError, NotADirectoryError):
            return "missing"
        except OSError as e:
            return ("error", e.errno)
        return (st.st_size, st.st_mtime_ns)

    def _deliver_troubles(self, now: float) -> None:
        with self._lock:
            due = [r for r in self._troubles if now - self._delivered.get(r, -TROUBLE_INTERVAL) >= TROUBLE_INTERVAL]
            for reason in due:
                del self._troubles[reason]
        for reason in due:
            self._delivered[reason] = now
            hint = HINTS.get(reason)
            log.warning("file watcher: %s (%s)%s", reason, self.root, f"; {hint}" if hint else "")
            try:
                self.on_trouble(reason)
            except Exception:
                log.exception("on_trouble(%r) failed", reason)
