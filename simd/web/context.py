"""What every part of the web layer shares: the app's context (config, search service, thumbnail
cache; `context()` inside a request), the one JSON error shape, and the headers every answer carries.

A leaf of `simd.web`: the factory (`simd.web.app`), the blueprints and the server import it; it
imports none of them.
"""

from __future__ import annotations

import socket
from typing import Any

from flask import current_app, jsonify

from simd.config import Config
from simd.errors import NotReady
from simd.web.thumbs import ThumbCache

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' blob: data:; script-src 'self'; "
    "style-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; "
    "frame-ancestors 'none'; form-action 'self'"
)
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
HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    408: "request_timeout",
    411: "length_required",
    413: "too_large",
    414: "uri_too_long",
    415: "unsupported_image",
    416: "range_not_satisfiable",
    429: "too_many_requests",
    431: "headers_too_large",
    500: "internal_error",
    501: "not_implemented",
    503: "not_ready",
}


class WebContext:
    """What the blueprints need, kept in `app.extensions["simd"]`."""

    def __init__(self, config: Config, service: Any):
        self.config = config
        self.service = service
        self.max_upload_bytes = int(config.max_upload_mb * 1024 * 1024)
        self.thumbs = ThumbCache(service.state_dir / "thumbs") if service is not None else None
        self.allowed_hosts = _loopback_names(config.host)


def context() -> WebContext:
    return current_app.extensions["simd"]


def service():
    svc = context().service
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


def _loopback_names(host: str) -> frozenset[str]:
    names = {"localhost", "localhost.localdomain", "127.0.0.1", "::1", host.strip("[]").lower()}
    try:
        names.add(socket.gethostname().lower())  # Debian maps it to 127.0.1.1
    except OSError:
        pass
    return frozenset(names)
