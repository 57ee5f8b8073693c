"""Uploads of what people really have, over real HTTP: 12 MP phone JPEGs of ~4 MB and iPhone HEICs,
as multipart (the page, `curl -F image=@photo.jpg`) and as the raw body (`simd query`), at the
default 25 MB limit, one just under it and one just over.

A real waitress server in this process, over a real SearchService and SQLite store; the vectors are
webfixtures' colour histograms (decoded with the real simd.imaging), so an upload of a library
photo must find that photo first. The real network is used by tests/test_e2e_photos.py.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import urllib.error
import urllib.request

import numpy as np
import pytest
from webfixtures import build_env, web_config
from werkzeug.datastructures import FileStorage
from werkzeug.test import encode_multipart

from simd.web import create_app
from simd.web.server import Server

LIMIT_MB = 25  # the default max_upload_mb


@pytest.fixture
def served(tmp_path, phone_jpeg, phone_heic):
    env = build_env(tmp_path, count=6, size=(320, 240))
    for rel, src in (("camera/PXL_20260601_120000.jpg", phone_jpeg), ("camera/IMG_0001.HEIC", phone_heic)):
        dest = env.path_of(rel)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest)
        env.add(rel)
    app = create_app(web_config(max_upload_mb=LIMIT_MB), env.service)
    server = Server(app, "127.0.0.1", 0).start()
    try:
        yield env, server.url
    finally:
        server.stop()


def post(url: str, body: bytes, content_type: str) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        with e:
            return e.code, json.load(e)


def multipart(data: bytes, filename: str, field: str = "image", content_type: str = "image/jpeg"):
    boundary, body = encode_multipart({field: FileStorage(io.BytesIO(data), filename, content_type=content_type)})
    return body, f"multipart/form-data; boundary={boundary}"


def padded(data: bytes, total: int) -> bytes:
    """`data` followed by random bytes up to `total`: JPEG decoders stop at the end-of-image marker,
    and random bytes hold CR/LF and partial boundaries as real photo data does."""
    return data + np.random.default_rng(7).integers(0, 256, total - len(data), dtype=np.uint8).tobytes()


def test_the_photos_are_what_phones_make(phone_jpeg, phone_heic):
    assert 3_000_000 <= phone_jpeg.stat().st_size <= 6_000_000
    assert 1_000_000 <= phone_heic.stat().st_size <= 4_000_000
    assert phone_heic.read_bytes()[4:12] == b"ftypheic"


@pytest.mark.parametrize("how", ["multipart", "raw"])
@pytest.mark.parametrize("rel", ["camera/PXL_20260601_120000.jpg", "camera/IMG_0001.HEIC"])
def test_a_phone_photo_upload_finds_its_library_copy_first(served, how, rel):
    env, url = served
    data = env.path_of(rel).read_bytes()
    name = os.path.basename(rel)
    if how == "multipart":
        status, body = post(f"{url}/api/similar?k=5", *multipart(data, name))
    else:
        status, body = post(f"{url}/api/similar?k=5&name={name}", data, "application/octet-stream")
    assert status == 200, body
    assert body["query"] == {"upload": name}
    assert body["results"][0]["path"] == rel
    assert body["results"][0]["score"] > 0.999


@pytest.mark.parametrize("how", ["multipart", "raw"])
def test_an_upload_just_under_the_limit_is_searched(served, phone_jpeg, how):
    env, url = served
    data = padded(phone_jpeg.read_bytes(), LIMIT_MB * 1024 * 1024 - 1)
    if how == "multipart":
        status, body = post(f"{url}/api/similar?k=3", *multipart(data, "big.jpg"))
    else:
        status, body = post(f"{url}/api/similar?k=3", data, "image/jpeg")
    assert status == 200, body
    assert body["results"][0]["path"] == "camera/PXL_20260601_120000.jpg"


@pytest.mark.parametrize("how", ["multipart", "raw"])
def test_an_upload_just_over_the_limit_is_413(served, phone_jpeg, how):
    env, url = served
    data = padded(phone_jpeg.read_bytes(), LIMIT_MB * 1024 * 1024 + 1)
    if how == "multipart":
        status, body = post(f"{url}/api/similar", *multipart(data, "big.jpg"))
    else:
        status, body = post(f"{url}/api/similar", data, "image/jpeg")
    assert status == 413, body
    assert body["error"]["code"] == "too_large"
    assert f"{LIMIT_MB} MB" in body["error"]["message"]


def test_a_small_form_of_many_parts_is_refused_for_its_shape_not_its_size(served, phone_jpeg):
    env, url = served
    fields = {f"note{i}": "x" for i in range(20)}
    fields["image"] = FileStorage(io.BytesIO(phone_jpeg.read_bytes()), "p.jpg", content_type="image/jpeg")
    boundary, body = encode_multipart(fields)
    status, out = post(f"{url}/api/similar", body, f"multipart/form-data; boundary={boundary}")
    assert status == 413, out
    assert "parts" in out["error"]["message"] and "MB limit" not in out["error"]["message"]


def test_a_huge_text_field_is_refused(served):
    env, url = served
    boundary, body = encode_multipart({"note": "x" * (2 * 1024 * 1024)})
    status, out = post(f"{url}/api/similar", body, f"multipart/form-data; boundary={boundary}")
    assert status == 413 and out["error"]["code"] == "too_large"
