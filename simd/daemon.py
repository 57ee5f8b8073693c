"""`simd serve`: one process with the HTTP server, the model, the indexer thread and the watcher.

Start order: claim the state dir, bind the HTTP socket and serve (status says "starting"), load the
model, load the active model's vectors into RAM and attach them and the model to the search service,
start the indexer and queue a full reconcile, start the watcher, then READY=1. Signal handlers only
set an Event; the main loop pings systemd's watchdog while every thread is alive and making
progress, queues periodic reconciles, and shuts the threads down in order (watcher, indexer, HTTP),
each through the same `stop(timeout) -> bool`.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from typing import Protocol

from simd import config as cfg
from simd import dupindex, notify
from simd.dupbuild import PairsBuilder
from simd.dupservice import DuplicatesService
from simd.dupverifier import PairsVerifier
from simd.embedder import Embedder
from simd.ignore import IgnoreRules
from simd.runtime import Runtime
from simd.search import SearchService, load_index
from simd.statedir import StateDir
from simd.store import Store
from simd.watcher import Watcher
from simd.web import create_app
from simd.web.server import Server
from simd.web.thumbs import ThumbCache
from simd.worker import IndexWorker

log = logging.getLogger(__name__)

STALL_SECONDS = 300.0  # an indexer that has not beaten for this long is hung: stop the WATCHDOG pings
STATUS_EVERY = 5.0
STOP_TIMEOUT = 8.0  # seconds each thread gets to stop


class Lifecycle(Protocol):
    """What the daemon asks of each of its threads."""

    def start(self) -> object: ...

    def stop(self, timeout: float) -> bool: ...

    def is_alive(self) -> bool: ...


class Daemon:
    def __init__(self, config: cfg.Config):
        self.config = config
        self.stop_event = threading.Event()
        self.runtime = Runtime()
        self.server: Server | None = None
        self.worker: IndexWorker | None = None
        self.watcher: Watcher | None = None
        self.service: SearchService | None = None
        self.builder: PairsBuilder | None = None  # the pairs of copies of an index that has none yet
        self.verifier: PairsVerifier | None = None  # the pixels' verdicts on the pairs of the ambiguous band
        self.state_dir: StateDir | None = None
        self.exit_code = 0

    def _on_signal(self, signum, frame) -> None:
        self.stop_event.set()

    def run(self) -> int:
        if threading.current_thread() is threading.main_thread():  # signals only reach the main thread
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, self._on_signal)
        self.state_dir = StateDir.claim(self.config, "serve")
        try:
            self._start(self.state_dir)
            if not self.stop_event.is_set():
                notify.notify("READY=1\nSTATUS=indexing")
                log.info("simd ready: %s/ serving %s", self._local_url(), self.state_dir.root)
                self._loop()
        finally:
            notify.notify("STOPPING=1")
            self._shutdown()
        return self.exit_code

    def _start(self, state_dir: StateDir) -> None:
        root, db = state_dir.root, state_dir.db
        service = self.service = SearchService(db, root, state_dir.path, self.runtime)
        server = self.server = Server(create_app(self.config, service), self.config.host, self.config.port)
        server.start()
        state_dir.lock.update(role="serve", library=str(root), url=self._local_url())
        embedder = Embedder.from_config(self.config)
        if self.stop_event.is_set():
            return
        with Store(db, readonly=True) as store:  # the indexer records the model with its first run
            vectors = load_index(store, embedder.model_id, embedder.dim)
            pairs_built = dupindex.is_built(store, embedder.model_id)
        ignore = IgnoreRules(self.config.ignore)
        worker = self.worker = IndexWorker(
            db,
            root,
            embedder,
            vectors,
            ignore,
            self.runtime,
            follow_symlinks=self.config.follow_symlinks,
            on_deleted=ThumbCache(state_dir.path / "thumbs").forget,
        )
        service.attach(
            vectors,
            embedder=embedder,
            rescan=lambda confirm_deletions=False: worker.request_full(
                "rescan requested", confirm_deletions=confirm_deletions
            ),
        )
        service.duplicates = DuplicatesService(
            db, root, self.runtime, keep_rules=self.config.keep_rules, allow_trash=self.config.allow_trash
        )
        self.runtime.update(model=embedder.model_id, dim=embedder.dim)
        worker.start()
        if not pairs_built:  # an index from before duplicates, or a new model: built once, in the background
            self.builder = PairsBuilder(db, embedder.model_id, vectors, self.runtime, worker.submit_task, root=root)
            self.builder.start()
        # Verdicts in the background, handed to the writer: the indexer's own work per image stays small.
        self.verifier = PairsVerifier(
            db, embedder.model_id, self.runtime, worker.submit_task, root=root, max_pixels=self.config.max_image_pixels
        )
        self.verifier.start()
        # Watch first, then walk: a change made during the startup walk is then seen by one or the other.
        self.watcher = Watcher(
            root,
            worker.submit,
            settle_seconds=self.config.settle_seconds,
            ignore=ignore,
            observer=self.config.observer,
            on_trouble=self._on_trouble,
            follow_symlinks=self.config.follow_symlinks,
        )
        self.watcher.start()
        worker.request_full("startup")

    def _local_url(self) -> str:
        """Where a process on this machine reaches the server (a wildcard bind is reached via loopback)."""
        assert self.server is not None
        host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(self.server.host, self.server.host)
        return cfg.http_url(host, self.server.port)

    def _on_trouble(self, reason: str) -> None:
        log.info("watcher: %s; reconciling by scanning", reason)  # the watcher already warned
        self.runtime.update(last_error=f"watcher: {reason}")
        if self.worker is not None:
            self.worker.request_full(reason)

    def _threads(self) -> list[tuple[str, Lifecycle | None]]:
        """The daemon's threads, in the order they stop: no new events, then no new writes, then HTTP."""
        return [("watcher", self.watcher), ("indexer", self.worker), ("HTTP server", self.server)]

    def healthy(self) -> bool:
        """All threads alive and the indexer making progress: the condition for WATCHDOG=1."""
        if self.worker is None or time.monotonic() - self.worker.last_beat >= STALL_SECONDS:
            return False
        return all(thread is not None and thread.is_alive() for _, thread in self._threads())

    def _loop(self) -> None:
        interval = notify.watchdog_interval()
        ping_every = interval / 2 if interval else None
        last_ping = last_status = 0.0
        next_reconcile = time.monotonic() + self.config.reconcile_interval
        while not self.stop_event.wait(0.25):
            now = time.monotonic()
            if (self.worker is not None and self.worker.damaged) or (self.service is not None and self.service.damaged):
                log.error("stopping: the index is damaged; the next start moves it aside and rebuilds it")
                self.exit_code = 1  # systemd's Restart=on-failure starts simd again
                return
            if ping_every and now - last_ping >= ping_every:
                last_ping = now
                if self.healthy():
                    notify.notify("WATCHDOG=1")
                else:
                    log.error("a simd thread died or hangs; not pinging the systemd watchdog")
            if now - last_status >= STATUS_EVERY:
                last_status = now
                self._send_status()
            if self.config.reconcile_interval and now >= next_reconcile and self.worker is not None:
                next_reconcile = now + self.config.reconcile_interval
                self.worker.request_full("periodic")

    def _send_status(self) -> None:
        if self.service is None:
            return
        try:
            st = self.service.status()
        except Exception as e:  # status is informative only; never let it stop the loop
            log.debug("status failed: %s", e)
            return
        notify.notify(f"STATUS={st['state']}: {st['indexed']} indexed, {st['pending']} pending, {st['failed']} failed")

    def _shutdown(self) -> None:
        if self.server is not None:  # a start that failed (e.g. port taken) just says why, not "stopping"
            log.info("stopping")
        if self.builder is not None and not self.builder.stop(STOP_TIMEOUT):  # not in _threads: it may end
            log.warning("the build of the duplicates' pairs did not stop within %.0f s", STOP_TIMEOUT)
        if self.verifier is not None and not self.verifier.stop(STOP_TIMEOUT):
            log.warning("the verification of duplicate pairs did not stop within %.0f s", STOP_TIMEOUT)
        for name, thread in self._threads():
            started = time.monotonic()
            stopped = thread is None or thread.stop(STOP_TIMEOUT)
            log.debug("%s stopped in %.2f s", name, time.monotonic() - started)
            if not stopped:
                if thread is self.worker:
                    log.warning(
                        "the indexer did not finish its batch in %.0f s; it is dropped and redone at the next start",
                        STOP_TIMEOUT,
                    )
                else:
                    log.warning("the %s did not stop within %.0f s", name, STOP_TIMEOUT)
        if self.state_dir is not None:
            self.state_dir.release()
