"""The WSGI app: `create_app(config, service)` (as in Flask's tutorial factory), and what applies to
every request: the bearer token, the loopback Host check, cross-site refusal, the security headers,
and every error in the one JSON shape. The handlers live in the `api` and `pages` blueprints.
"""

from __future__ import annotations

import hmac
import io
import logging
from typing import Any

from flask import Flask, Request, current_app, request
from flask.json.provider import DefaultJSONProvider
from werkzeug.exceptions import HTTPException

from simd import __version__
from simd.config import Config, is_loopback
from simd.errors import Busy, SimdError
from simd.storehealth import is_damage
from simd.web import api, pages
from simd.web.context import HTTP_CODES, SECURITY_HEADERS, WebContext, context, error_response

log = logging.getLogger(__name__)

# multipart framing around an upload of exactly `max_upload_mb` (boundaries, part headers)
MULTIPART_SLACK = 64 * 1024
# a text field of a form, and the multipart decoder's buffer (see create_app)
FORM_MEMORY_LIMIT = 1024 * 1024
MAX_FORM_PARTS = 16


class _OrderedJSON(DefaultJSONProvider):
    sort_keys = False  # keep the documented field order (model, query, results)


class UploadRequest(Request):
    """Uploads stay in memory (bounded by MAX_CONTENT_LENGTH): never spooled to a temporary file."""

    def _get_file_stream(self, total_content_length, content_type, filename=None, content_length=None):
        return io.BytesIO()


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
    web = WebContext(config, service)
    app.config.update(
        MAX_CONTENT_LENGTH=web.max_upload_bytes + MULTIPART_SLACK,
        # Werkzeug applies this limit twice: to each text field, and to the multipart decoder's
        # working buffer, which holds one read of the body (64 KiB) plus a possible partial
        # boundary. At 64 KiB every upload over ~one read failed with 413. 1 MiB bounds both.
        MAX_FORM_MEMORY_SIZE=FORM_MEMORY_LIMIT,
        MAX_FORM_PARTS=MAX_FORM_PARTS,
        SEND_FILE_MAX_AGE_DEFAULT=None,
    )
    app.json = _OrderedJSON(app)
    app.extensions["simd"] = web
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
    web = context()
    cfg = web.config
    if not cfg.allow_remote and not _host_allowed(request.environ.get("HTTP_HOST"), web.allowed_hosts):
        # DNS rebinding: a web page of another site, re-resolved to 127.0.0.1, must not read the library
        return error_response(
            400,
            "bad_host",
            f"Host {request.environ.get('HTTP_HOST')!r} is not a "
            f"loopback name; open http://127.0.0.1:{cfg.port}/ instead",
        )
    if request.method not in ("GET", "HEAD", "OPTIONS") and _cross_site():
        return error_response(403, "forbidden", "cross-site requests are refused")
    path = request.path
    if cfg.token and (path == "/api" or path.startswith("/api/")):
        given = request.headers.get("Authorization", "")
        scheme, _, value = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), cfg.token.encode()):
            return error_response(
                401,
                "unauthorized",
                "this server needs 'Authorization: Bearer <token>'",
                [("WWW-Authenticate", 'Bearer realm="simd"')],
            )
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
        # Busy is load, not trouble: a flood of uploads must not flood the log too
        log.log(
            logging.DEBUG if isinstance(e, Busy) else logging.WARNING,
            "%s %s: %s",
            request.method,
            request.path,
            e.message,
        )
    retry = getattr(e, "retry_after", None)
    return error_response(e.http_status, e.code, e.message, [("Retry-After", str(retry))] if retry else None)


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
        return (
            f"the form has more than {MAX_FORM_PARTS} parts or a text field over "
            f"{FORM_MEMORY_LIMIT // 1024} KiB; send the image as the one field 'image'"
        )
    return f"the upload is larger than the {context().config.max_upload_mb:g} MB limit"


def _unexpected_error(e: Exception):
    if isinstance(e, HTTPException):  # pragma: no cover - Flask routes these to _http_error
        return _http_error(e)
    report_damage = getattr(context().service, "report_damage", None)
    if report_damage is not None and is_damage(e):  # a page SQLite cannot read: 503; the daemon rebuilds
        return _simd_error(report_damage(str(e)))
    log.exception("unexpected error on %s %s", request.method, request.path)
    return error_response(500, "internal_error", "internal error; see the server log")
