"""The search page (`GET /`): one template, one script, one stylesheet; no CDN, no build step."""

from __future__ import annotations

from flask import Blueprint, render_template

from simd import __version__
from simd.web.context import context

bp = Blueprint("pages", __name__)


@bp.get("/")
def index():
    web = context()
    return render_template(
        "index.html", version=__version__, max_upload_bytes=web.max_upload_bytes, max_upload_mb=web.config.max_upload_mb
    )
