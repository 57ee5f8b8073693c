"""Serve the app with waitress, bound explicitly (waitress binds every interface by default).

    server = Server(app, "127.0.0.1", 0)   # binds now; port 0 picks a free port
    server.start()                         # serves from a background thread (or run(): blocks)
    ... server.port, server.url ...
    server.stop()                          # from any thread: stops accepting, ends run()

The same lifecycle as the daemon's other threads: start(), stop(timeout) -> bool, is_alive().

waitress answers some requests itself (a body over its limit, a malformed request, a crash in the
app); those answers use the API's JSON error shape too.

Slow and idle clients (docs/RELIABILITY.md): a connection costs a file descriptor and its buffered
request, never a thread (waitress hands a request to a thread only once it has arrived whole). So
each connection gets deadlines -- its headers within HEADER_TIMEOUT, its body at BODY_MIN_RATE on
average, IDLE_TIMEOUT without a byte either way -- and at CONNECTION_LIMIT a new client is not kept
waiting: the connection that has been idle or incomplete the longest is closed to make room.
"""

from __future__ import annotations

import errno
import json
import logging
import socket
import threading
import time

import waitress
from waitress.channel import HTTPChannel
from waitress.server import BaseWSGIServer, TcpWSGIServer
from waitress.task import ErrorTask

from simd.config import http_url, is_loopback
from simd.errors import ConfigError
from simd.web.context import HTTP_CODES, SECURITY_HEADERS

log = logging.getLogger(__name__)

DEFAULT_THREADS = 12  # request threads; uploads may hold 8 of them (simd.embedder.UPLOAD_WAITING + 1)
CONNECTION_LIMIT = 250  # open connections; each holds up to 3 file descriptors (socket, body, response)
FD_RESERVE = 256  # file descriptors kept for the rest of the daemon (SQLite, thumbnails, TensorFlow)
IDLE_TIMEOUT = 15  # s a connection may pass without a byte in or out while no request runs
HEADER_TIMEOUT = 10.0  # s from a request's first byte to the end of its headers
BODY_GRACE = 10.0  # s a request body may take before it must average BODY_MIN_RATE
BODY_MIN_RATE = 4096  # bytes/s: a 25 MB upload may take up to ~100 minutes
LOG_EVERY = 60.0  # s: waitress's queue warnings and simd's own about the limit, at most once per interval


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


class _Throttle(logging.Filter):
    """Lets one record through per `interval` seconds; that one says how many were held back."""

    def __init__(self, interval: float):
        super().__init__()
        self.interval = interval
        self._next = 0.0
        self._held = 0
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        now = time.monotonic()
        with self._lock:
            if now < self._next:
                self._held += 1
                return False
            self._next = now + self.interval
            held, self._held = self._held, 0
        if held:
            record.msg = f"{record.msg} (and {held} more like it in the last {self.interval:.0f} s)"
        return True


# waitress warns "Task queue depth is N" whenever a request waits for a thread: under load, many
# thousand lines a minute. One a minute says the same. So does the warning about the limit.
_QUEUE_THROTTLE = _Throttle(LOG_EVERY)
_limit_log = logging.getLogger(__name__ + ".limit")
_limit_log.addFilter(_Throttle(LOG_EVERY))


class _JsonErrorChannel(HTTPChannel):
    """A connection: waitress's own error answers in JSON, and the times its deadlines count from."""

    error_task_class = _JsonErrorTask
    request_started = 0.0  # the first byte of the request being received (0: none came yet)
    body_started: float | None = None  # the end of its headers

    def received(self, data):
        now = time.time()
        if self.request is None:
            self.request_started, self.body_started = now, None
        done = super().received(data)
        if self.request is not None and self.request.headers_finished and self.body_started is None:
            self.body_started = now
        return done

    def overdue(self, now: float) -> str | None:
        """Why this connection is closed now, or None: it may stay."""
        if self.requests:  # a request runs in a thread: its own time (the app bounds it)
            return None
        if now - self.last_activity > IDLE_TIMEOUT:
            return "idle"
        r = self.request
        if r is None or r.completed:
            return None
        if not r.headers_finished:
            return "headers too slow" if now - self.request_started > HEADER_TIMEOUT else None
        took = now - (self.body_started or now)
        return "body too slow" if took > BODY_GRACE and r.body_bytes_received < BODY_MIN_RATE * took else None

    def eviction_order(self) -> tuple[int, float] | None:
        """Which connection goes first when a new one needs room (None: not this one, a request runs)."""
        if self.requests:
            return None
        r = self.request
        if r is None and not self.total_outbufs_len:
            if not self.request_started:  # accepted, its first request not read yet: the newest go last
                return (1, self.creation_time)
            return (0, self.last_activity)  # idle between requests: the least loss
        if r is not None and not r.headers_finished:
            return (1, self.request_started)  # still sending its headers
        return (2, self.last_activity)  # a body on its way in, or an answer on its way out


class _GuardedServer(TcpWSGIServer):
    """waitress's TCP server with the deadlines and the room-making above."""

    next_channel_cleanup: float = 0.0

    def maintenance(self, now):
        for channel in list(self.active_channels.values()):
            why = channel.overdue(now)
            if why:
                log.debug("closing a connection from %s: %s", channel.addr, why)
                channel.handle_close()

    def readable(self):
        now = time.time()
        if now >= self.next_channel_cleanup:
            self.next_channel_cleanup = now + self.adj.cleanup_interval
            self.maintenance(now)
        if not self.accepting:
            return False
        if len(self._map) < self.adj.connection_limit:
            return True
        ranked = [(c.eviction_order(), c) for c in self._map.values() if isinstance(c, _JsonErrorChannel)]
        candidates = [(order, c) for order, c in ranked if order is not None]
        if candidates:
            _limit_log.warning(
                "%d connections open, the limit: closing the one idle or incomplete the longest for a new one",
                len(ranked),
            )
            min(candidates, key=lambda oc: oc[0])[1].handle_close()
        return False


def _connection_limit(wanted: int) -> int:
    """`wanted`, or as many as the file descriptor limit allows (its soft value raised towards the
    hard one when that is needed)."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        need = FD_RESERVE + 3 * wanted
        if soft != resource.RLIM_INFINITY and soft < need and (hard == resource.RLIM_INFINITY or hard > soft):
            soft = need if hard == resource.RLIM_INFINITY else min(need, hard)
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        if soft == resource.RLIM_INFINITY:
            return wanted
    except (ImportError, ValueError, OSError):
        return wanted
    return max(16, min(wanted, (soft - FD_RESERVE) // 3))


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

    def __init__(
        self,
        app,
        host: str = "127.0.0.1",
        port: int = 8765,
        *,
        threads: int = DEFAULT_THREADS,
        connection_limit: int = CONNECTION_LIMIT,
    ):
        _check_host(app, host)
        max_body = app.config.get("MAX_CONTENT_LENGTH") if hasattr(app, "config") else None
        adjustments = {
            "threads": threads,
            "ident": "simd",
            "asyncore_use_poll": True,
            "expose_tracebacks": False,
            "connection_limit": _connection_limit(connection_limit),
            "channel_timeout": IDLE_TIMEOUT,
            "cleanup_interval": 1,  # the deadlines are checked every second
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
            assert type(s) is TcpWSGIServer, type(s)  # our sockets are TCP: waitress made its TCP server
            s.__class__ = _GuardedServer  # the same object, with the deadlines and the room-making
            s.channel_class = _JsonErrorChannel
        queue_log = logging.getLogger("waitress.queue")
        if _QUEUE_THROTTLE not in queue_log.filters:
            queue_log.addFilter(_QUEUE_THROTTLE)
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
            if running and not self._pull_trigger():
                # the loop's trigger is gone: the listening socket hit an error it could not handle
                # (waitress then closes the server and its trigger). The rest is closed from here; a
                # loop that still polls sees its sockets closed and its map empty, and leaves.
                log.debug("the HTTP server's trigger is closed; closing its connections from this thread")
                self._close_all()
            elif not running:
                self._close_all()
                self._dispatcher.shutdown(cancel_pending=True, timeout=5)
        if running and threading.current_thread() is not self._thread:
            if not self._stopped.wait(timeout):
                log.warning("the HTTP server did not stop within %.0f s", timeout)
        if self._thread is not None and threading.current_thread() is not self._thread:
            self._thread.join(timeout)
        return self._thread is None or not self._thread.is_alive()

    def _pull_trigger(self) -> bool:
        """Ask the loop's thread to close everything; False when its trigger is already closed."""
        trigger = self._trigger
        if getattr(trigger, "_closed", False):  # its descriptor numbers may belong to other files now
            return False
        try:
            trigger.pull_trigger(self._close_all)
        except OSError:
            return False
        return True

    def _close_all(self) -> None:
        for obj in list(self._map.values()):
            try:
                obj.close()
            except OSError:
                pass
        self._map.clear()
