"""The OpenAPI 3.1 description of the JSON API, served at `/api/openapi.json`.

`tests/test_openapi.py` checks that the documented paths and methods equal the app's url_map, so a
route added without documentation (or documented but gone) fails the tests.
"""

from __future__ import annotations

from simd import __version__
from simd.web.dupspec import DUP_PATHS, DUP_SCHEMAS
from simd.web.specparts import err as _err
from simd.web.specparts import json_body as _json
from simd.web.specparts import op as _op
from simd.web.specparts import query as _q
from simd.web.specparts import ref as _ref

# The bounds simd.search enforces (this module imports nothing of simd's; tests/test_openapi.py
# checks that the two agree).
ID_MAX = 2**63 - 1  # SQLite's largest rowid
OFFSET_MAX = 1_000_000_000
Q_MAX = 1024
PATH_MAX = 4096

_ID_PARAM = {
    "name": "image_id",
    "in": "path",
    "required": True,
    "schema": {"type": "integer", "minimum": 0, "maximum": ID_MAX},
    "description": "The image id.",
}
_K = _q("k", {"type": "integer", "minimum": 1, "maximum": 100, "default": 10}, "How many results.")
_MIN_SCORE = _q(
    "min_score",
    {"type": "number", "minimum": -1, "maximum": 1},
    "Leave out results whose cosine similarity is below this.",
)
# An upload: the bytes of an image (an empty one is refused: 400 as a raw body, 415 as a form field).
_UPLOAD = {"type": "string", "contentMediaType": "application/octet-stream", "minLength": 1}
_IMAGE_BYTES = {
    "description": "The image bytes.",
    "content": {"image/*": {"schema": {"type": "string", "contentMediaType": "image/*"}}},
    "headers": {"ETag": {"schema": {"type": "string"}}, "Last-Modified": {"schema": {"type": "string"}}},
}

SCHEMAS = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
            }
        },
    },
    "Status": {
        "type": "object",
        "required": ["state", "indexed", "pending", "failed", "model", "dim", "library"],
        "properties": {
            "state": {"enum": ["starting", "scanning", "indexing", "idle", "offline"]},
            "retrying": {
                "type": "boolean",
                "description": "The storage refused the last write (disk full, I/O error, read-only): the "
                "waiting work is retried by itself (state says indexing; last_error says why).",
            },
            "indexed": {"type": "integer"},
            "pending": {"type": "integer"},
            "failed": {"type": "integer"},
            "total": {"type": "integer"},
            "embedded": {"type": "integer", "description": "Library images embedded since start."},
            "uploads_embedded": {"type": "integer", "description": "Uploads embedded to answer queries."},
            "revision": {
                "type": "string",
                "description": "Changes whenever an image is added, "
                "removed or re-embedded (compare it; do not parse it).",
            },
            "model": {"type": "string"},
            "dim": {"type": "integer"},
            "library": {"type": "string"},
            "progress": {"type": ["object", "null"]},
            "last_error": {"type": ["string", "null"]},
            "max_upload_mb": {"type": "number"},
            "duplicates": {
                "type": "object",
                "required": ["state", "done", "total"],
                "description": "The pairs of copies: `building` (an index from before: done/total tiles of "
                "the background build), `ready`, or `off` (not built and no build running).",
                "properties": {
                    "state": {"enum": ["building", "ready", "off"]},
                    "done": {"type": "integer"},
                    "total": {"type": "integer"},
                    "verification": _ref("Verification"),
                },
            },
            "allow_trash": {"type": "boolean", "description": "POST /api/duplicates/trash is allowed."},
        },
    },
    "Result": {
        "type": "object",
        "required": ["id", "path", "score", "thumb", "url"],
        "properties": {
            "id": {"type": "integer"},
            "path": {"type": "string", "description": "Relative to the library root."},
            "score": {
                "type": "number",
                "description": "Cosine similarity, -1 to 1; higher is more similar. "
                "Query-independent: the same score means the same for every query of a model.",
            },
            "match": {
                "type": ["string", "null"],
                "enum": ["near-duplicate", "similar", "weak", None],
                "description": "The band the score falls in for this model (docs/QUALITY.md); "
                "null for models not calibrated.",
            },
            "version": {"type": "string", "description": "Changes when the file changes (part of thumb and url)."},
            "thumb": {"type": "string", "format": "uri-reference"},
            "url": {"type": "string", "format": "uri-reference"},
        },
    },
    "Similar": {
        "type": "object",
        "required": ["model", "query", "results"],
        "properties": {
            "model": {"type": "string"},
            "query": {"type": "object"},
            "k": {"type": "integer"},
            "results": {"type": "array", "items": _ref("Result"), "description": "Best first; the query excluded."},
            "took_ms": {"type": "number"},
        },
    },
    "Image": {
        "type": "object",
        "required": ["id", "path", "thumb", "url"],
        "properties": {
            "id": {"type": "integer"},
            "path": {"type": "string"},
            "size": {"type": "integer"},
            "mtime": {"type": "number"},
            "state": {"enum": ["ok", "failed"]},
            "error": {"type": ["string", "null"]},
            "model": {"type": ["string", "null"]},
            "version": {"type": "string"},
            "thumb": {"type": ["string", "null"], "description": "null for a file that could not be indexed."},
            "url": {
                "type": ["string", "null"],
                "description": "The original file; for a file that could not be "
                "indexed only if its bytes start like an image (e.g. a truncated JPEG), else null.",
            },
        },
    },
    "ImageList": {
        "type": "object",
        "required": ["images", "total", "offset", "limit"],
        "properties": {
            "images": {"type": "array", "items": _ref("Image")},
            "total": {"type": "integer"},
            "offset": {"type": "integer"},
            "limit": {"type": "integer"},
        },
    },
    "Errors": {
        "type": "object",
        "required": ["errors", "total"],
        "properties": {
            "errors": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["id", "path", "error"],
                    "properties": {
                        "id": {"type": "integer"},
                        "path": {"type": "string"},
                        "state": {"const": "failed"},
                        "error": {"type": "string", "description": "Why the file could not be indexed."},
                        "size": {"type": "integer"},
                        "mtime": {"type": "number"},
                        "version": {"type": "string"},
                        "url": {
                            "type": ["string", "null"],
                            "description": "The original file, only when it can be "
                            "served (its bytes start like an image, e.g. a truncated JPEG); else null. There is no "
                            "thumb: no thumbnail can be made of a file that does not decode.",
                        },
                    },
                },
            },
            "total": {"type": "integer"},
        },
    },
}


PATHS = {
    "/healthz": {
        "get": {
            "summary": "Liveness: 200 while the process runs (no token needed).",
            "security": [],
            "responses": {"200": _json({"type": "object"}, '`{"ok": true}`')},
        }
    },
    "/api/status": {"get": _op("Indexing state and counts.", {"200": _json(_ref("Status"), "The status.")})},
    "/api/similar": {
        "get": _op(
            "The k images most similar to an indexed image, given by id or by path (one of the two).",
            {
                "200": _json(_ref("Similar"), "Results, best first."),
                "400": _err("Bad parameter (k, min_score, id, path), or neither or both of id and path."),
                "404": _err("Unknown image."),
                "503": _err("The model is loading or the image is not indexed yet."),
            },
            [
                _q("id", {"type": "integer", "minimum": 0, "maximum": ID_MAX}, "Image id (or give path)."),
                _q(
                    "path",
                    {"type": "string", "maxLength": PATH_MAX},
                    "Path relative to the library root, '/' separators (or give id).",
                ),
                _K,
                _MIN_SCORE,
            ],
        ),
        "post": _op(
            "The k indexed images most similar to an uploaded image (never stored).",
            {
                "200": _json(_ref("Similar"), "Results, best first."),
                "400": _err("Bad parameter, no image in the request, or an id/path (those are GET searches)."),
                "413": _err("The upload is larger than max_upload_mb."),
                "415": _err("The upload is not a decodable image, or has more pixels than max_upload_pixels."),
                "503": _err("The model is still loading, or too many uploads are in line (`busy`, with Retry-After)."),
            },
            [_K, _MIN_SCORE, _q("name", {"type": "string"}, "A name for a raw-body upload (messages only).")],
            requestBody={
                "required": True,
                "content": {
                    "multipart/form-data": {
                        "schema": {
                            "type": "object",
                            "required": ["image"],
                            "properties": {"image": _UPLOAD},
                        }
                    },
                    "application/octet-stream": {"schema": _UPLOAD},
                },
            },
        ),
    },
    "/api/images": {
        "get": _op(
            "Browse the library by path, with a filename filter.",
            {"200": _json(_ref("ImageList"), "A page of images."), "400": _err("Bad offset, limit or state.")},
            [
                _q("offset", {"type": "integer", "minimum": 0, "maximum": OFFSET_MAX, "default": 0}, "First row."),
                _q("limit", {"type": "integer", "minimum": 1, "maximum": 500, "default": 50}, "Rows per page."),
                _q("q", {"type": "string", "maxLength": Q_MAX}, "Case-insensitive substring of the path."),
                _q(
                    "state",
                    {"enum": ["ok", "failed", "all"], "default": "ok"},
                    "`ok` (default): indexed images, each with a thumbnail, and `total` counts only those; "
                    "`failed`: files that could not be indexed (as `/api/errors`, paged); `all`: both.",
                ),
            ],
        )
    },
    "/api/images/{image_id}": {
        "get": _op(
            "One image's record.",
            {"200": _json(_ref("Image"), "The image."), "404": _err("Unknown image.")},
            [_ID_PARAM],
        )
    },
    "/api/images/{image_id}/thumb": {
        "get": _op(
            "A JPEG thumbnail, long side <= 256 px.",
            {
                "200": {**_IMAGE_BYTES, "content": {"image/jpeg": {"schema": {"type": "string"}}}},
                "304": {"description": "Not modified."},
                "404": _err("Unknown image."),
                "415": _err("The file cannot be decoded."),
            },
            [_ID_PARAM],
        )
    },
    "/api/images/{image_id}/file": {
        "get": _op(
            "The original file (Content-Type sniffed from its bytes).",
            {
                "200": _IMAGE_BYTES,
                "206": {"description": "A byte range."},
                "304": {"description": "Not modified."},
                "404": _err("Unknown image, or its file is gone or outside the library."),
                "415": _err("The file is not an image."),
            },
            [_ID_PARAM],
        )
    },
    "/api/errors": {
        "get": _op(
            "Files that could not be indexed, with the reason.", {"200": _json(_ref("Errors"), "The failed files.")}
        )
    },
    "/api/rescan": {
        "post": _op(
            "Ask for a full reconcile of the library.",
            {
                "202": _json({"type": "object"}, "Requested."),
                "400": _err("Bad confirm_deletions."),
                "503": _err("Not ready."),
            },
            [
                _q(
                    "confirm_deletions",
                    {"enum": ["0", "1", ""], "default": "0"},
                    "1: the reconcile may delete most of the library at once (files really deleted; "
                    "otherwise that is refused as an unmounted disk, and status says so).",
                )
            ],
        )
    },
    "/api/openapi.json": {"get": _op("This document.", {"200": _json({"type": "object"}, "OpenAPI 3.1.")})},
}


def build_spec() -> dict:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "simd",
            "version": __version__,
            "description": "The similar-image daemon's JSON API. Errors are always "
            '`{"error": {"code", "message"}}`. An empty query parameter (`k=`) counts as not given.',
        },
        "paths": {**PATHS, **DUP_PATHS},
        "components": {
            "schemas": {**SCHEMAS, **DUP_SCHEMAS},
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "Required on /api/* only when the server has a token.",
                }
            },
        },
        "security": [{}, {"bearer": []}],
    }
