"""The few exceptions simd raises on purpose; the CLI and the HTTP layer convert them at the edges.

Each carries a short machine code and the HTTP status it maps to, so the API's one error shape
(`{"error": {"code", "message"}}`) and the CLI's one-line messages come from the same place.
"""


class SimdError(Exception):
    code = "error"
    http_status = 500

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class ConfigError(SimdError):
    """A setting, flag or config file is invalid (CLI exit 2)."""

    code = "bad_config"
    http_status = 400


class BadRequest(SimdError):
    code = "bad_request"
    http_status = 400


class NotFound(SimdError):
    code = "not_found"
    http_status = 404


class TooLarge(SimdError):
    code = "too_large"
    http_status = 413


class NotReady(SimdError):
    code = "not_ready"
    http_status = 503


class Busy(SimdError):
    """Too much of a kind of work at once (uploads to embed); the client may try again shortly."""

    code = "busy"
    http_status = 503
    retry_after = 2  # seconds, sent as Retry-After


class ImageError(SimdError):
    """A file or upload that cannot be decoded as an image; the message names it and the cause."""

    code = "unsupported_image"
    http_status = 415

    def __init__(self, name: str, reason: str):
        super().__init__(f"{name}: {reason}")
        self.name = name
        self.reason = reason


class WeightsUnavailable(SimdError):
    """The weights of a requested backbone cannot be had (no file, no cache, no download)."""

    code = "weights_unavailable"
    http_status = 503


class LibraryOffline(SimdError):
    """The library root is missing or looks unmounted; nothing is deleted while it is."""

    code = "library_offline"
    http_status = 503
