"""Serve the app with waitress, bound explicitly (waitress binds every interface by default).

    server = Server(app, "127.0.0.1", 0)   # binds now; port 0 picks a free port
    server.start()                         # serves from a background thread (or run(): blocks)
    ... server.port, server.url ...
    server.stop()                          # from any thread: stops accepting, ends run()

The same lifecycle as the daemon's other threads: start(), stop(timeout) -> bool, is_alive().

waitress answers some requests itself (a body over its limit, a malformed request, a crash in the
app); those answers use the API's JSON error shape too.
"""

from __future__ import annotations

import errno
import json
import logging
import socket
import threading

import waitress
from waitress.channel import HTTPChannel
from waitress.server import BaseWSGIServer
from waitress.task import ErrorTask

from simd.config import http_url, is_loopback
from simd.errors import ConfigError
from simd.web.context import HTTP_CODES, SECURITY_HEADERS

log = logging.getLogger(__name__)

DEFAULT_THREADS = 8


class _JsonErrorTask(ErrorTask):
    """waitress's own error answers (400, 413, 431, 500...) in the API's JSON shape."""

    def execute(self):
        e = self.request.error
        message = e.reason if not e.body else f"{e.reason}: {e.body}"
        if e.code == 413:
            message = "the request body is larger than this server accepts"
        body = json.dumps({"error": {"code": HTTP_CODES.get(e.code, "http_error"), "message": message}}).encode()
        self.status = f"{e.code} {e.reason}"
        self.response_headers.append(("Content-Type", "application/json"))
        self.response_headers.extend(SECURITY_HEADERS.items())
        self.set_close_on_finish()
        self.content_length = len(body)
        self.write(body)


class _JsonErrorChannel(HTTPChannel):
    error_task_class = _JsonErrorTask


def _bind(host: str, port: int) -> list[socket.socket]:
    """Listening-ready sockets for every address `host` resolves to (port 0: one ephemeral port)."""
    try:
        infos = socket.getaddrinfo(host, port, socket.AF_UNSPEC, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise ConfigError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    sockets: list[socket.socket] = []
    first_error: OSError | None = None
    seen = set()
    for family, type_, proto, _, addr in infos:
        if (family, addr[0]) in seen:
            continue
        seen.add((family, addr[0]))
        if sockets and port == 0:  # the other families listen on the port the first one got
            addr = (addr[0], sockets[0].getsockname()[1], *addr[2:])
        sock = socket.socket(family, type_, proto)
        try:
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(addr)
        except OSError as e:
            sock.close()
            first_error = first_error or e
            if sockets:
                log.warning("not listening on %s: %s", addr[0], e.strerror or e)
            continue
        sockets.append(sock)
    if not sockets:
        msg = first_error.strerror if first_error and first_error.strerror else first_error
        hint = ""
        if first_error is not None and first_error.errno == errno.EADDRINUSE:
            hint = f" (another program uses port {port}: pass --port N, or set port in the config file)"
        raise ConfigError(f"cannot listen on {host}:{port}: {msg}{hint}")
    return sockets


def _check_host(app, host: str) -> None:
    web = app.extensions.get("simd") if hasattr(app, "extensions") else None
    cfg = getattr(web, "config", None)
    if is_loopback(host):
        return
    if cfg is None or not cfg.allow_remote or not cfg.token:
        raise ConfigError(f"refusing to serve on non-loopback address {host!r} without allow_remote and a token")


class Server:
    """A waitress server on one address; bound in __init__, served by `run()` or `start()`."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 8765, *, threads: int = DEFAULT_THREADS):
        _check_host(app, host)
        max_body = app.config.get("MAX_CONTENT_LENGTH") if hasattr(app, "config") else None
        adjustments = {
            "threads": threads,
            "ident": "simd",
            "asyncore_use_poll": True,
            "expose_tracebacks": False,
            "channel_timeout": 60,
        }
        if max_body:
            # Up to twice the app's limit, waitress reads the body and the app answers 413 (a client
            # still sending gets its answer, not a reset); a body declared larger than that is
            # refused by waitress before it reads a byte (in the JSON shape too, _JsonErrorTask).
            adjustments["max_request_body_size"] = 2 * int(max_body) + 1024 * 1024
        # Bind here, explicitly, before waitress starts any thread: a port in use is a clean error.
        sockets = _bind(host, port)
        self._map: dict = {}
        try:
            self._server = waitress.create_server(app, map=self._map, sockets=sockets, **adjustments)
        except BaseException:
            for sock in sockets:
                sock.close()
            raise
        self._servers = [s for s in self._map.values() if isinstance(s, BaseWSGIServer)]
        for s in self._servers:
            s.channel_class = _JsonErrorChannel
        first = self._servers[0]
        self.host = first.effective_host
        self.port = int(first.effective_port)
        self._trigger = first.trigger
        self._dispatcher = self._server.task_dispatcher
        self._thread: threading.Thread | None = None
        self._closing = False
        self._running = threading.Event()
        self._stopped = threading.Event()
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return http_url(self.host, self.port)

    def run(self) -> None:
        """Serve until `stop()` (blocks)."""
        with self._lock:
            if self._closing:
                self._stopped.set()
                return
            self._running.set()
        try:
            self._server.run()
        finally:
            self._dispatcher.shutdown(cancel_pending=True, timeout=5)
            self._stopped.set()

    def start(self) -> Server:
        """Serve from a daemon thread named simd-http."""
        self._thread = threading.Thread(target=self.run, name="simd-http", daemon=True)
        self._thread.start()
        return self

    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._closing

    def stop(self, timeout: float = 10.0) -> bool:
        """Stop serving; safe from any thread and more than once. Waits for run() to return; True
        when it did (or never ran)."""
        with self._lock:
            if self._closing:
                already = True
            else:
                already, self._closing = False, True
            running = self._running.is_set()
        if not already:
            if running:
                # close the sockets in the loop's own thread, which then leaves its loop (map empty)
                self._trigger.pull_trigger(self._close_all)
            else:
                self._close_all()
                self._dispatcher.shutdown(cancel_pending=True, timeout=5)
        if running and threading.current_thread() is not self._thread:
            if not self._stopped.wait(timeout):
                log.warning("the HTTP server did not stop within %.0f s", timeout)
        if self._thread is not None and threading.current_thread() is not self._thread:
            self._thread.join(timeout)
        return self._thread is None or not self._thread.is_alive()

    def _close_all(self) -> None:
        for obj in list(self._map.values()):
            try:
                obj.close()
            except OSError:
                pass
        self._map.clear()
