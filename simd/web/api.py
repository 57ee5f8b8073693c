"""The JSON API (`/api/...`) and `/healthz`. Handlers parse parameters and call `SearchService`.

Files are reachable by id only: `service.resolve_file(id)` checks that the real path lies inside the
library's real root; the file is then opened without following a symlink and served with the
Content-Type sniffed from its first bytes (never from its name).
"""

from __future__ import annotations

import json
import os
import re
import stat

from flask import Blueprint, request, send_file, url_for
from werkzeug.exceptions import RequestedRangeNotSatisfiable

from simd.dupservice import DuplicatesService
from simd.duptrash import DISABLED_MESSAGE, TrashDisabled
from simd.errors import BadRequest, ImageError, NotFound, TooLarge
from simd.formats import CONTENT_TYPES, sniff_format
from simd.paths import display_path
from simd.search import ID_MAX, parse_k, parse_min_score, shown
from simd.web.context import context, service

bp = Blueprint("api", __name__)

FILE_MAX_AGE = 60  # seconds a browser may reuse a thumbnail or file before revalidating (ETag)
_ID = re.compile(r"[0-9]{1,19}")


def _image_id(value: str) -> int:
    """Ids are decimal integers; anything else (traversal attempts included) is an unknown image."""
    if not _ID.fullmatch(value) or int(value) > ID_MAX:
        raise NotFound(f"no image with id {shown(value)}")
    return int(value)


def _links(item: dict) -> dict:
    """`thumb` and `url` of an image. A file that could not be indexed has no thumbnail (null), and a
    `url` only if its original can be served (it starts like an image, e.g. a truncated JPEG)."""
    # `v` is ignored by the server; it makes the address change when the file does (see version()).
    v = {"v": item["version"]} if item.get("version") else {}
    file_url = url_for("api.image_file", image_id=item["id"], **v)
    if item.get("state") == "failed":
        item["thumb"] = None
        item["url"] = file_url if service().servable(item["id"]) else None
    else:
        item["thumb"] = url_for("api.image_thumb", image_id=item["id"], **v)
        item["url"] = file_url
    return item


@bp.get("/healthz")
def healthz():
    return {"ok": True}


@bp.get("/api/status")
def status():
    out = service().status()
    out.setdefault("max_upload_mb", context().config.max_upload_mb)
    if out.get("model"):
        out["duplicates"] = duplicates().state()
    else:
        out["duplicates"] = {"state": "off", "done": 0, "total": 0}
    out["allow_trash"] = context().config.allow_trash
    return out


def duplicates() -> DuplicatesService:
    """The search service's duplicates service (the daemon attaches one; made here otherwise)."""
    svc = service()
    if getattr(svc, "duplicates", None) is None:
        config = context().config
        svc.duplicates = DuplicatesService(
            svc.db_path, svc.library_root, svc.runtime, keep_rules=config.keep_rules, allow_trash=config.allow_trash
        )
    return svc.duplicates


JSON_BODY_MAX = 1 << 20  # bytes of a duplicates request: 10,000 ids take ~200 KB


def _json_body():
    """The request's JSON, whatever its Content-Type; a bad body (not JSON, nested past the parser's
    recursion limit) is a 400, a larger one a 413."""
    data = request.stream.read(JSON_BODY_MAX + 1)
    if len(data) > JSON_BODY_MAX:
        raise TooLarge(f"the body is larger than {JSON_BODY_MAX} bytes")
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        raise BadRequest('the body must be JSON: {"images": [id, id, ...]}') from None


@bp.get("/api/duplicates")
def duplicates_list():
    args = request.args
    return duplicates().listing(args.get("threshold"), args.get("tier"), args.get("offset"), args.get("limit"))


@bp.post("/api/duplicates/dismiss")
def duplicates_dismiss():
    return duplicates().dismiss(_json_body())


@bp.post("/api/duplicates/trash")
def duplicates_trash():
    dups = duplicates()
    if not dups.allow_trash:  # said first, whatever the body
        raise TrashDisabled(DISABLED_MESSAGE)
    return dups.trash(_json_body())


@bp.get("/api/similar")
def similar_get():
    args = request.args
    image_id, path = args.get("id"), args.get("path")
    if image_id not in (None, "") and path not in (None, ""):
        raise BadRequest("give either id= or path=, not both")
    out = service().similar(
        image_id=image_id, path=path, k=parse_k(args.get("k")), min_score=parse_min_score(args.get("min_score"))
    )
    return _similar_links(out)


@bp.post("/api/similar")
def similar_post():
    k = parse_k(request.args.get("k"))
    min_score = parse_min_score(request.args.get("min_score"))
    if "id" in request.args or "path" in request.args:  # not silently ignored: which did they mean?
        raise BadRequest(
            "a POST searches by the uploaded image; to search by an indexed one, GET /api/similar?id=N or ?path=REL"
        )
    data, name = _read_upload()
    out = service().similar(data=data, name=name, k=k, min_score=min_score)
    return _similar_links(out)


def _similar_links(out: dict) -> dict:
    for r in out["results"]:
        _links(r)
    if "id" in out.get("query", {}):
        _links(out["query"])
    return out


def _read_upload() -> tuple[bytes, str]:
    """The uploaded bytes, read into memory under the cap (multipart field `image`, or the raw body)."""
    cap = context().max_upload_bytes
    if request.mimetype == "multipart/form-data":
        upload = request.files.get("image")
        if upload is None:
            raise BadRequest("send the image as the multipart field 'image' (or as the raw request body)")
        data = upload.stream.read(cap + 1)
        name = os.path.basename((upload.filename or "").replace("\\", "/")) or "upload"
    else:
        data = request.stream.read(cap + 1)
        name = os.path.basename((request.args.get("name") or "").replace("\\", "/")) or "upload"
    if len(data) > cap:
        raise TooLarge(f"the upload is larger than the {context().config.max_upload_mb:g} MB limit")
    if not data and request.mimetype != "multipart/form-data":
        raise BadRequest("no image in the request: send it as the request body or as the multipart field 'image'")
    if not data:
        raise ImageError(name, "empty file")
    return data, name[:200]


@bp.get("/api/images")
def images():
    args = request.args
    out = service().list_images(
        offset=args.get("offset"), limit=args.get("limit"), q=args.get("q", ""), state=args.get("state")
    )
    for item in out["images"]:
        _links(item)
    return out


@bp.get("/api/images/<image_id>")
def image_info(image_id: str):
    return _links(service().get_image(_image_id(image_id)))


@bp.get("/api/images/<image_id>/file")
def image_file(image_id: str):
    iid = _image_id(image_id)
    real = service().resolve_file(iid)
    fh, st = _open_regular(real, iid)
    try:
        mime = CONTENT_TYPES.get(sniff_format(os.pread(fh.fileno(), 256, 0)) or "")
        if mime is None:
            raise ImageError(display_path(real.name), "not an image simd can serve")
    except BaseException:
        fh.close()
        raise
    return _send(fh, st, mime, _download_name(real.name), etag=f"f{iid}-{st.st_size}-{st.st_mtime_ns}")


@bp.get("/api/images/<image_id>/thumb")
def image_thumb(image_id: str):
    iid = _image_id(image_id)
    real = service().resolve_file(iid)
    thumbs = context().thumbs
    if thumbs is None:
        raise NotFound(f"image {iid} has no thumbnail")
    try:
        thumb = thumbs.get(iid, real)
    except ImageError as e:  # never show the server's absolute paths to a client
        raise ImageError(service().get_image(iid)["path"], e.reason) from None
    fh, st = _open_regular(thumb, iid)
    return _send(fh, st, "image/jpeg", _download_name(f"{real.stem}.thumb.jpg"), etag=f"t{iid}-{thumb.stem}")


def _download_name(name: str) -> str:
    """A file name a browser can be given: an undecodable byte of the real name becomes U+FFFD."""
    return os.fsencode(name).decode("utf-8", "replace")


def _open_regular(path, iid: int):
    """Open without following a symlink at the last component; only regular files."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        raise NotFound(f"image {iid} is not available") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise NotFound(f"image {iid} is not available")
    return os.fdopen(fd, "rb"), st


def _send(fh, st, mimetype: str, name: str, etag: str):
    """send_file with ETag/Last-Modified, conditional GET and ranges, from an open file object."""
    rv = send_file(
        fh,
        mimetype=mimetype,
        download_name=name,
        conditional=False,
        etag=etag,
        last_modified=st.st_mtime,
        max_age=FILE_MAX_AGE,
    )
    rv.content_length = st.st_size
    rv.headers["Cache-Control"] = f"private, max-age={FILE_MAX_AGE}"
    try:
        return rv.make_conditional(request.environ, accept_ranges=True, complete_length=st.st_size)
    except RequestedRangeNotSatisfiable:
        rv.close()
        raise


@bp.get("/api/errors")
def errors():
    items = service().errors()
    for item in items:
        _links(item).pop("thumb")  # none can be made of a file that does not decode
    return {"errors": items, "total": len(items)}


@bp.post("/api/rescan")
def rescan():
    confirm = request.args.get("confirm_deletions", "")
    if confirm not in ("0", "1", ""):  # empty: not given, as for every parameter
        raise BadRequest(f"confirm_deletions must be 1 or 0, got {shown(confirm)}")
    service().rescan(confirm_deletions=confirm == "1")
    return {"ok": True, "message": "a full rescan of the library was requested"}, 202


@bp.get("/api/openapi.json")
def openapi():
    from simd.web.openapi import build_spec

    return build_spec()
