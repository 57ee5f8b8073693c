"""Talking to the `simd serve` that holds a state dir, from another process (`simd status`, `simd query`).

The daemon notes its URL in the state dir's lock (`simd.statedir.holder`); requests carry the
configured token. Every function answers None when no daemon serves the index, or it does not answer
in a way simd understands, so the caller can fall back to reading the index itself.
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlencode

from simd.config import Config
from simd.errors import SimdError
from simd.statedir import holder, read_meta

log = logging.getLogger(__name__)


def daemon_request(config: Config, state_dir: Path, path: str, data: bytes | None = None):
    """A request to the daemon serving this index, with the token when one is configured; None when
    no daemon serves it. With `data`: a raw-body POST."""
    info = holder(state_dir) or {}
    if info.get("role") != "serve" or not info.get("url"):
        return None
    req = urllib.request.Request(info["url"] + path, data=data, method="POST" if data is not None else "GET")
    if data is not None:
        req.add_header("Content-Type", "application/octet-stream")
    if config.token:
        req.add_header("Authorization", f"Bearer {config.token}")
    return req


def live_status(config: Config, state_dir: Path) -> dict | None:
    """The status of the daemon serving this index, if one runs (with `"daemon": True`); for one that
    refuses us for want of its token: `{"daemon": True, "needs_token": True, "url": ...}`."""
    req = daemon_request(config, state_dir, "/api/status")
    if req is None:
        return None
    try:
        with urllib.request.urlopen(req, timeout=1.0) as resp:
            status = json.load(resp)
    except urllib.error.HTTPError as e:
        with e:
            if e.code == 401 and _simd_error_message(e) is not None:  # it runs, and wants the token
                return {"daemon": True, "needs_token": True, "url": req.full_url.removesuffix("/api/status")}
        return None
    except (OSError, ValueError):
        return None
    if not isinstance(status, dict) or status.get("library") != read_meta(state_dir, "library_root"):
        return None
    status["daemon"] = True
    return status


def ask_similar(config: Config, state_dir: Path, data: bytes, name: str, k: int) -> dict | None:
    """The daemon's answer to an upload of the image (its model is loaded already: ~0.1 s instead of
    seconds to load one here); None when none answers, or it is not ready. SimdError carries the
    daemon's own refusal (e.g. not an image)."""
    req = daemon_request(config, state_dir, f"/api/similar?{urlencode({'k': k, 'name': name})}", data)
    if req is None:
        return None
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            result = json.load(resp)
    except urllib.error.HTTPError as e:
        with e:
            message = _simd_error_message(e)
        if e.code == 503 or message is None:  # starting, or not simd's answer: embed here instead
            log.debug("the daemon at %s did not answer (%s); embedding here", req.full_url, e.code)
            return None
        raise SimdError(f"{name}: {message}") from None
    except (OSError, ValueError) as e:
        log.debug("the daemon at %s did not answer (%s); embedding here", req.full_url, e)
        return None
    log.debug("asked the daemon at %s", req.full_url)
    return result if isinstance(result, dict) and "results" in result else None


def _simd_error_message(e: urllib.error.HTTPError) -> str | None:
    """The message of simd's JSON error shape, or None when the answer is not one."""
    try:
        message = json.load(e)["error"]["message"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return message if isinstance(message, str) else None
