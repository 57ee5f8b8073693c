"""The HTTP layer: `create_app(config, service)` builds the Flask app (as in Flask's tutorial factory).

Handlers live in two blueprints (`api`: the JSON API and `/healthz`; `pages`: the search page) and
return dicts; the work is done by `simd.search.SearchService`. This module owns what applies to
every request: the one JSON error shape, the bearer token, the loopback Host check, and the
security headers. Served by waitress (`simd.web.server`), never by Flask's development server.
"""

from __future__ import annotations

import hmac
import io
import logging
import socket
from typing import Any

from flask import Flask, Request, current_app, jsonify, request
from werkzeug.exceptions import HTTPException

from simd import __version__
from simd.config import Config, is_loopback
from simd.errors import NotReady, SimdError

log = logging.getLogger(__name__)

# multipart framing around an upload of exactly `max_upload_mb` (boundaries, part headers)
MULTIPART_SLACK = 64 * 1024
# a text field of a form, and the multipart decoder's buffer (see create_app)
FORM_MEMORY_LIMIT = 1024 * 1024
MAX_FORM_PARTS = 16

CONTENT_SECURITY_POLICY = ("default-src 'self'; img-src 'self' blob: data:; script-src 'self'; "
                           "style-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; "
                           "frame-ancestors 'none'; form-action 'self'")
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
}

# machine codes of the HTTP errors werkzeug raises itself (routing, methods, body size)
HTTP_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
              405: "method_not_allowed", 406: "not_acceptable", 408: "request_timeout",
              411: "length_required", 413: "too_large", 414: "uri_too_long", 415: "unsupported_image",
              416: "range_not_satisfiable", 429: "too_many_requests", 431: "headers_too_large",
              500: "internal_error", 501: "not_implemented", 503: "not_ready"}


class UploadRequest(Request):
    """Uploads stay in memory (bounded by MAX_CONTENT_LENGTH): never spooled to a temporary file."""

    def _get_file_stream(self, total_content_length, content_type, filename=None, content_length=None):
        return io.BytesIO()


class WebState:
    """What the blueprints need, kept in `app.extensions["simd"]`."""

    def __init__(self, config: Config, service: Any):
        from simd.web.thumbs import ThumbCache

        self.config = config
        self.service = service
        self.max_upload_bytes = int(config.max_upload_mb * 1024 * 1024)
        self.thumbs = ThumbCache(service.state_dir / "thumbs") if service is not None else None
        self.allowed_hosts = _loopback_names(config.host)


def state() -> WebState:
    return current_app.extensions["simd"]


def service():
    svc = state().service
    if svc is None:
        raise NotReady("no search service is attached to this server")
    return svc


def error_body(code: str, message: str) -> dict:
    return {"error": {"code": code, "message": message}}


def error_response(status: int, code: str, message: str, headers: Any = None):
    rv = jsonify(error_body(code, message))
    rv.status_code = status
    for key, value in headers or ():
        if key.lower() not in ("content-type", "content-length"):
            rv.headers[key] = value
    return rv


def create_app(config: Config | dict | None = None, service: Any = None) -> Flask:
    """The WSGI app. `config`: a `Config` (or a dict of settings); `service`: a `SearchService`.

    Refuses (ConfigError) a non-loopback host without `allow_remote` and a `token`.
    """
    if config is None:
        config = Config()
    elif isinstance(config, dict):
        config = Config(config)
    config.validate()
    app = Flask(__name__)
    app.request_class = UploadRequest
    web = WebState(config, service)
    app.config.update(
        MAX_CONTENT_LENGTH=web.max_upload_bytes + MULTIPART_SLACK,
        # Werkzeug applies this limit twice: to each text field, and to the multipart decoder's
        # working buffer, which holds one read of the body (64 KiB) plus a possible partial
        # boundary. At 64 KiB every upload over ~one read failed with 413. 1 MiB bounds both.
        MAX_FORM_MEMORY_SIZE=FORM_MEMORY_LIMIT,
        MAX_FORM_PARTS=MAX_FORM_PARTS,
        SEND_FILE_MAX_AGE_DEFAULT=None,
    )
    app.json.sort_keys = False  # keep the documented field order (model, query, results)
    app.extensions["simd"] = web

    from simd.web import api, pages

    app.register_blueprint(api.bp)
    app.register_blueprint(pages.bp)
    app.before_request(_check_request)
    app.after_request(_security_headers)
    app.register_error_handler(SimdError, _simd_error)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected_error)
    return app


# -- every request -------------------------------------------------------------------------------

def _check_request():
    web = state()
    cfg = web.config
    if not cfg.allow_remote and not _host_allowed(request.environ.get("HTTP_HOST"), web.allowed_hosts):
        # DNS rebinding: a web page of another site, re-resolved to 127.0.0.1, must not read the library
        return error_response(400, "bad_host", f"Host {request.environ.get('HTTP_HOST')!r} is not a "
                              f"loopback name; open http://127.0.0.1:{cfg.port}/ instead")
    if request.method not in ("GET", "HEAD", "OPTIONS") and _cross_site():
        return error_response(403, "forbidden", "cross-site requests are refused")
    path = request.path
    if cfg.token and (path == "/api" or path.startswith("/api/")):
        given = request.headers.get("Authorization", "")
        scheme, _, value = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), cfg.token.encode()):
            return error_response(401, "unauthorized", "this server needs 'Authorization: Bearer <token>'",
                                  [("WWW-Authenticate", 'Bearer realm="simd"')])
    return None


def _cross_site() -> bool:
    site = request.headers.get("Sec-Fetch-Site")
    if site in ("cross-site", "same-site"):
        return True
    origin = request.headers.get("Origin")
    if origin and origin != "null":
        host = origin.split("://", 1)[-1]
        return host.lower() != (request.environ.get("HTTP_HOST") or "").lower()
    return origin == "null"


def _security_headers(response):
    for key, value in SECURITY_HEADERS.items():
        response.headers.setdefault(key, value)
    if request.path.startswith("/api/") and "Cache-Control" not in response.headers:
        response.headers["Cache-Control"] = "no-store"
    response.headers.setdefault("Server", f"simd/{__version__}")
    return response


def _loopback_names(host: str) -> frozenset[str]:
    names = {"localhost", "localhost.localdomain", "127.0.0.1", "::1", host.strip("[]").lower()}
    try:
        names.add(socket.gethostname().lower())  # Debian maps it to 127.0.1.1
    except OSError:
        pass
    return frozenset(names)


def _host_allowed(header: str | None, allowed: frozenset[str]) -> bool:
    if not header:  # HTTP/1.0 without Host: nothing a browser would send
        return True
    host = header.strip().lower()
    if host.startswith("["):
        host = host[1:].split("]", 1)[0]
    elif host.count(":") == 1:
        host = host.split(":", 1)[0]
    return host in allowed or is_loopback(host)


# -- errors: one JSON shape everywhere -----------------------------------------------------------

def _simd_error(e: SimdError):
    if e.http_status >= 500:
        log.warning("%s %s: %s", request.method, request.path, e.message)
    return error_response(e.http_status, e.code, e.message)


def _http_error(e: HTTPException):
    status = e.code or 500
    code = HTTP_CODES.get(status, "http_error")
    message = e.description or e.name
    if status == 413:
        message = _too_large_message()
    elif status == 404:
        message = f"no such resource: {request.path}"
    elif status == 405:
        message = f"{request.method} is not allowed on {request.path}"
    return error_response(status, code, message, e.get_headers())


def _too_large_message() -> str:
    limit = current_app.config["MAX_CONTENT_LENGTH"]
    if request.content_length is not None and request.content_length <= limit:
        # the body fits: the form parser refused its shape, not its size
        return (f"the form has more than {MAX_FORM_PARTS} parts or a text field over "
                f"{FORM_MEMORY_LIMIT // 1024} KiB; send the image as the one field 'image'")
    return f"the upload is larger than the {state().config.max_upload_mb:g} MB limit"


def _unexpected_error(e: Exception):
    if isinstance(e, HTTPException):  # pragma: no cover - Flask routes these to _http_error
        return _http_error(e)
    log.exception("unexpected error on %s %s", request.method, request.path)
    return error_response(500, "internal_error", "internal error; see the server log")
