"""The OpenAPI description of the duplicates endpoints (`/api/duplicates...`), part of `simd.web.openapi`."""

from __future__ import annotations

from simd.web.specparts import err as _err
from simd.web.specparts import json_body as _json
from simd.web.specparts import op as _op
from simd.web.specparts import query as _q
from simd.web.specparts import ref as _ref

OFFSET_MAX = 1_000_000_000  # as simd.search (tests/test_openapi.py checks it)


def _ids_body(least: int, threshold: bool) -> dict:
    """`{"images": [id, ...]}`: distinct ids of indexed images (an unknown one is 404)."""
    props: dict = {
        "images": {
            "type": "array",
            "items": {"type": "integer", "minimum": 0},
            "minItems": least,
            "maxItems": 500,  # simd.dupservice.IDS_MAX
            "uniqueItems": True,
        }
    }
    if threshold:
        props["threshold"] = {
            "type": "number",
            "maximum": 1,
            "description": "The groups' threshold (default the model's).",
        }
    schema = {"type": "object", "required": ["images"], "properties": props}
    return {"required": True, "content": {"application/json": {"schema": schema}}}


DUP_SCHEMAS = {
    "DuplicateImage": {
        "type": "object",
        "required": ["id", "path", "keep", "score", "identical_to_keeper", "bytes", "width", "height", "mtime"],
        "properties": {
            "id": {"type": "integer"},
            "path": {"type": "string"},
            "keep": {"type": "boolean", "description": "The suggested keeper (listed first)."},
            "score": {"type": "number", "description": "Cosine to the keeper (1.0 for it and identical copies)."},
            "identical_to_keeper": {"type": "boolean"},
            "bytes": {"type": "integer"},
            "width": {
                "type": ["integer", "null"],
                "description": "Upright, from the file's header; null if unreadable.",
            },
            "height": {"type": ["integer", "null"]},
            "mtime": {"type": "number"},
            "format": {"type": "string"},
            "version": {"type": "string"},
            "thumb": {"type": "string", "format": "uri-reference"},
            "url": {"type": "string", "format": "uri-reference"},
        },
    },
    "DuplicateGroup": {
        "type": "object",
        "required": ["id", "tier", "min_score", "max_score", "reclaimable_bytes", "keep", "images"],
        "properties": {
            "id": {"type": "string", "description": "Hex digest of the group's sorted content hashes."},
            "tier": {"enum": ["identical", "near-duplicate"]},
            "min_score": {"type": "number"},
            "max_score": {"type": "number"},
            "reclaimable_bytes": {"type": "integer", "description": "Bytes of the copies not kept."},
            "keep": {
                "type": "object",
                "required": ["id", "decided_by", "steps"],
                "properties": {
                    "id": {"type": "integer"},
                    "decided_by": {"type": "string"},
                    "steps": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "properties": {
                                "rule": {"type": "string"},
                                "reason": {"type": "string"},
                                "kept": {"type": "array", "items": {"type": "integer"}},
                            },
                        },
                    },
                },
            },
            "images": {"type": "array", "items": _ref("DuplicateImage"), "description": "The keeper first."},
        },
    },
    "Verification": {
        "type": ["object", "null"],
        "description": "The pixels' verdicts on the pairs of the model's ambiguous band (cosine from `band[0]` "
        "up to `band[1]`): such a pair links two images only once its local features agree on one transform "
        "(`min_inliers`); until then, and when it cannot be verified (`unverifiable`: a file that does not "
        "decode; the reason is logged), it links nothing, so groups of heavy crops and thumbnails appear as "
        "verification proceeds. Pairs from `band[1]` up link by cosine alone. `state`: `verifying`, `idle` "
        "(all verified), `off` (no verifier runs, e.g. an index `simd index` made until a daemon serves it) "
        "or `none` (this model links by cosine alone).",
        "properties": {
            "state": {"enum": ["verifying", "idle", "off", "none"]},
            "band": {"type": ["array", "null"], "items": {"type": "number"}},
            "min_inliers": {"type": "integer"},
            "verified": {"type": "integer"},
            "pending": {"type": "integer"},
            "unverifiable": {"type": "integer"},
            "ms_per_pair": {"type": ["number", "null"]},
            "error": {"type": "string"},
        },
    },
    "Duplicates": {
        "type": "object",
        "required": ["complete", "model", "threshold", "total", "offset", "limit", "groups"],
        "properties": {
            "complete": {"type": "boolean", "description": "False while the pairs of an existing index are built."},
            "model": {"type": "string"},
            "threshold": {"type": "number"},
            "floor": {"type": "number"},
            "lowest": {"type": "number"},
            "calibrated": {
                "type": "boolean",
                "description": "False: the model has no measured threshold; near-duplicates only at a "
                "threshold the request gives (the default, 1.0, lists identical files).",
            },
            "progress": {"type": ["object", "null"]},
            "verification": _ref("Verification"),
            "total": {"type": "integer"},
            "total_images": {"type": "integer"},
            "reclaimable_bytes": {"type": "integer"},
            "offset": {"type": "integer"},
            "limit": {"type": "integer"},
            "allow_trash": {"type": "boolean"},
            "groups": {"type": "array", "items": _ref("DuplicateGroup")},
        },
    },
}

DUP_PATHS = {
    "/api/duplicates": {
        "get": _op(
            "Groups of identical and near-duplicate images, by bytes to reclaim; the keeper first in each.",
            {
                "200": _json(_ref("Duplicates"), "A page of groups."),
                "400": _err("Bad threshold, tier, offset or limit."),
                "503": _err("The model is still loading."),
            },
            [
                _q(
                    "threshold",
                    {"type": "number", "maximum": 1},
                    "Cosine from which two images are near-duplicates: from the model's `lowest` to 1 "
                    "(default: the model's calibrated threshold).",
                ),
                _q("tier", {"enum": ["identical", "near-duplicate"]}, "Only groups of this tier (absent: both)."),
                _q("offset", {"type": "integer", "minimum": 0, "maximum": OFFSET_MAX, "default": 0}, "First group."),
                _q("limit", {"type": "integer", "minimum": 1, "maximum": 500, "default": 50}, "Groups per page."),
            ],
        )
    },
    "/api/duplicates/dismiss": {
        "post": _op(
            '"Not duplicates" for every pair of these images\' contents (kept through renames and rescans).',
            {
                "200": _json({"type": "object", "properties": {"dismissed_pairs": {"type": "integer"}}}, "Stored."),
                "400": _err("The body is not a JSON object with 2 or more image ids."),
                "404": _err("An id is no indexed image."),
            },
            requestBody=_ids_body(2, threshold=False),
        )
    },
    "/api/duplicates/trash": {
        "post": _op(
            "Move these copies to the desktop trash (only with allow_trash; simd never deletes).",
            {
                "200": _json(
                    {
                        "type": "object",
                        "properties": {
                            "trashed": {"type": "array", "items": {"type": "string"}},
                            "failed": {"type": "array", "items": {"type": "object"}},
                        },
                    },
                    "Moved (the index follows through the watcher).",
                ),
                "400": _err("The body is not a JSON object with image ids."),
                "403": _err("`trash_disabled`: allow_trash is off."),
                "404": _err("An id is no indexed image."),
                "409": _err(
                    "`library_read_only` (simd may not write the library), `would_trash_all` (every copy "
                    "of a group), `not_a_duplicate` (an image in no group)."
                ),
            },
            requestBody=_ids_body(1, threshold=True),
        )
    },
}
