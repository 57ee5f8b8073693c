"""`simd serve`: one process with the HTTP server, the model, the indexer thread and the watcher.

Start order: bind the HTTP socket (status says "starting"), load the model, load the active model's
vectors into RAM, start the indexer with a full reconcile, start the watcher, then READY=1. Signal
handlers only set an Event; the main loop pings systemd's watchdog while every thread is alive
and making progress, queues periodic reconciles, and shuts everything down in order.
"""

from __future__ import annotations

import logging
import signal
import threading
import time

from simd import config as cfg
from simd import notify
from simd.commands import ignore_rules, make_embedder, prepare_state
from simd.search import Runtime, SearchService
from simd.store import Store

log = logging.getLogger(__name__)

STALL_SECONDS = 300.0  # an indexer that has not beaten for this long is hung: stop the WATCHDOG pings
STATUS_EVERY = 5.0


class Daemon:
    def __init__(self, config: cfg.Config):
        self.config = config
        self.stop_event = threading.Event()
        self.runtime = Runtime(state="starting")
        self.server = self.worker = self.watcher = None
        self.service: SearchService | None = None

    def _on_signal(self, signum, frame) -> None:
        self.stop_event.set()

    def run(self) -> int:
        if threading.current_thread() is threading.main_thread():  # signals only reach the main thread
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, self._on_signal)
        root, state, db, self.lock = prepare_state(self.config, "serve")
        try:
            self._start(root, state, db)
            if not self.stop_event.is_set():
                notify.notify("READY=1\nSTATUS=indexing")
                log.info("simd ready: %s/ serving %s", self._local_url(), root)
                self._loop()
        finally:
            notify.notify("STOPPING=1")
            self._shutdown()
        return 0

    def _start(self, root, state, db) -> None:
        from simd.vectors import VectorIndex
        from simd.watcher import Watcher
        from simd.web import create_app
        from simd.web.server import Server
        from simd.web.thumbs import ThumbCache
        from simd.worker import IndexWorker

        self.service = SearchService(db, root, state, None, self.runtime)
        self.server = Server(create_app(self.config, self.service), self.config.host, self.config.port)
        self.server.start()
        self.lock.update(role="serve", library=str(root), url=self._local_url())
        embedder = make_embedder(self.config)
        if self.stop_event.is_set():
            return
        store = Store(db)
        try:
            with store.batch():
                store.set_meta("model", embedder.model_id)
            ids, matrix = store.load_vectors(embedder.model_id)
        finally:
            store.close()
        vectors = VectorIndex(embedder.dim)
        if len(ids):
            vectors.replace_all(ids, matrix)
        self.service.vectors = vectors
        ignore = ignore_rules(self.config)
        self.worker = IndexWorker(db, root, embedder, vectors, ignore, self.runtime,
                                  follow_symlinks=self.config.follow_symlinks,
                                  on_deleted=ThumbCache(state / "thumbs").forget)
        self.runtime.update(model=embedder.model_id, dim=embedder.dim, embedder=embedder,
                            request_rescan=lambda: self.worker.request_full("rescan requested"))
        self.worker.start()
        # Watch first, then walk: a change made during the startup walk is then seen by one or the other.
        self.watcher = Watcher(root, self.worker.submit, settle_seconds=self.config.settle_seconds,
                               ignore=ignore, observer=self.config.observer, on_trouble=self._on_trouble,
                               follow_symlinks=self.config.follow_symlinks)
        self.watcher.start()
        self.worker.request_full("startup")

    def _local_url(self) -> str:
        """Where a process on this machine reaches the server (a wildcard bind is reached via loopback)."""
        host = self.server.host
        host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
        return f"http://[{host}]:{self.server.port}" if ":" in host else f"http://{host}:{self.server.port}"

    def _on_trouble(self, reason: str) -> None:
        log.info("watcher: %s; reconciling by scanning", reason)  # the watcher already warned
        self.runtime.update(last_error=f"watcher: {reason}")
        self.worker.request_full(reason)

    def healthy(self) -> bool:
        """All threads alive and the indexer making progress: the condition for WATCHDOG=1."""
        worker_ok = self.worker is not None and self.worker.is_alive() and \
            time.monotonic() - self.worker.last_beat < STALL_SECONDS
        return bool(worker_ok and self.watcher.is_alive() and self.server.is_alive())

    def _loop(self) -> None:
        interval = notify.watchdog_interval()
        ping_every = interval / 2 if interval else None
        last_ping = last_status = 0.0
        next_reconcile = time.monotonic() + self.config.reconcile_interval
        while not self.stop_event.wait(0.25):
            now = time.monotonic()
            if ping_every and now - last_ping >= ping_every:
                last_ping = now
                if self.healthy():
                    notify.notify("WATCHDOG=1")
                else:
                    log.error("a simd thread died or hangs; not pinging the systemd watchdog")
            if now - last_status >= STATUS_EVERY:
                last_status = now
                self._send_status()
            if self.config.reconcile_interval and now >= next_reconcile:
                next_reconcile = now + self.config.reconcile_interval
                self.worker.request_full("periodic")

    def _send_status(self) -> None:
        try:
            st = self.service.status()
        except Exception as e:  # status is informative only; never let it stop the loop
            log.debug("status failed: %s", e)
            return
        notify.notify(f"STATUS={st['state']}: {st['indexed']} indexed, {st['pending']} pending, "
                      f"{st['failed']} failed")

    def _shutdown(self) -> None:
        if self.server is not None:  # a start that failed (e.g. port taken) just says why, not "stopping"
            log.info("stopping")
        if self.watcher is not None:
            self.watcher.stop()
        if self.worker is not None and not self.worker.stop(timeout=8.0):
            log.warning("indexer did not finish its batch in time; it is dropped and redone next start")
        if self.server is not None:
            self.server.close()
        self.lock.release()
