"""A real `simd serve` (EfficientNet-Lite0, the offline model's real weights) over a library of what
phones make: a 12 MP JPEG of ~4 MB, an iPhone-like HEIC stored sideways, a camera RAW file beside
them, and a few other real photos; the daemon is token-protected, as a remote setup would be.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request

import numpy as np
import pytest
from PIL import Image
from serving import Served
from werkzeug.datastructures import FileStorage
from werkzeug.test import encode_multipart

skimage_data = pytest.importorskip("skimage.data")

TOKEN = "s3cret-t0ken"
JPEG, HEIC, RAW = "camera/PXL_20260601_120000.jpg", "camera/IMG_0001.HEIC", "camera/DSC_0007.NEF"


@pytest.fixture(scope="module")
def daemon(tmp_path_factory, phone_jpeg, phone_heic):
    tmp = tmp_path_factory.mktemp("phones")
    lib = tmp / "library"
    (lib / "camera").mkdir(parents=True)
    shutil.copyfile(phone_jpeg, lib / JPEG)
    shutil.copyfile(phone_heic, lib / HEIC)
    (lib / RAW).write_bytes(b"MM\x00*\x00\x00\x00\x08" + os.urandom(200_000))  # a NEF is a TIFF container
    for name in ("coffee", "rocket", "astronaut", "camera", "coins", "horse"):
        arr = np.asarray(getattr(skimage_data, name)())
        Image.fromarray(arr).convert("RGB").save(lib / f"{name}.jpg", quality=90)
    (tmp / "state").mkdir()
    served = Served(lib, tmp / "state", extra_env={"SIMD_TOKEN": TOKEN})
    try:
        served.wait_until(
            lambda: _status(served)["state"] == "idle" and _status(served)["indexed"] == 8,
            timeout=300,
            what="8 images indexed",
        )
        yield served
    finally:
        assert served.stop() == 0


def _request(served, path, data=None, content_type=None, token=TOKEN):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if content_type:
        headers["Content-Type"] = content_type
    req = urllib.request.Request(
        served.url + path, data=data, headers=headers, method="POST" if data is not None else "GET"
    )
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, r.read(), r.headers.get("Content-Type")
    except urllib.error.HTTPError as e:
        with e:
            return e.code, e.read(), e.headers.get("Content-Type")


def _status(served) -> dict:
    status, body, _ = _request(served, "/api/status")
    assert status == 200, body
    return json.loads(body)


def test_heic_is_indexed_and_raw_is_reported_as_such(daemon):
    st = _status(daemon)
    assert (st["indexed"], st["failed"]) == (8, 1)
    status, body, _ = _request(daemon, "/api/errors")
    errors = json.loads(body)["errors"]
    assert [e["path"] for e in errors] == [RAW]
    assert errors[0]["error"].startswith("camera RAW (NEF): not supported;")
    env = {**os.environ, "SIMD_WEIGHTS_DOWNLOAD": "0", "SIMD_TOKEN": TOKEN}
    r = subprocess.run(
        [sys.executable, "-m", "simd", "errors", "--state-dir", str(daemon.state_dir)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert r.returncode == 0 and f"{RAW}: camera RAW (NEF): not supported" in r.stdout
    r = subprocess.run(
        [sys.executable, "-m", "simd", "errors", "--json", "--state-dir", str(daemon.state_dir)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    as_json = json.loads(r.stdout)
    assert as_json["total"] == 1 and as_json["errors"][0]["path"] == RAW
    assert as_json["errors"][0]["error"] == errors[0]["error"] and as_json["errors"][0]["size"] > 0


@pytest.mark.parametrize("rel", [JPEG, HEIC])
@pytest.mark.parametrize("how", ["multipart", "raw"])
def test_upload_of_a_phone_photo_finds_its_library_copy_first(daemon, rel, how):
    data = (daemon.library / rel).read_bytes()
    if how == "multipart":
        boundary, body = encode_multipart({"image": FileStorage(io.BytesIO(data), os.path.basename(rel))})
        status, out, _ = _request(daemon, "/api/similar?k=5", body, f"multipart/form-data; boundary={boundary}")
    else:
        status, out, _ = _request(daemon, "/api/similar?k=5", data, "application/octet-stream")
    assert status == 200, out
    results = json.loads(out)["results"]
    assert results[0]["path"] == rel and results[0]["score"] > 0.99, results[:2]


def test_heic_thumbnail_is_upright(daemon):
    images = json.loads(_request(daemon, f"/api/images?q={os.path.basename(HEIC)}")[1])["images"]
    assert [i["path"] for i in images] == [HEIC]
    status, body, ctype = _request(daemon, images[0]["thumb"])
    assert status == 200 and ctype == "image/jpeg"
    with Image.open(io.BytesIO(body)) as thumb:
        assert thumb.height > thumb.width  # stored landscape, EXIF Orientation 6: shown portrait


def test_status_without_the_token_says_the_daemon_runs_and_needs_it(daemon):
    env = {k: v for k, v in os.environ.items() if k != "SIMD_TOKEN"}
    cmd = [sys.executable, "-m", "simd", "status", "--state-dir", str(daemon.state_dir)]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "no simd daemon is running" not in r.stdout
    assert f"a simd daemon runs at {daemon.url}" in r.stdout and "SIMD_TOKEN" in r.stdout
    as_json = json.loads(subprocess.run(cmd + ["--json"], capture_output=True, text=True, env=env, timeout=60).stdout)
    assert as_json["daemon"] is True and as_json["needs_token"] is True and as_json["indexed"] == 8
    with_token = subprocess.run(
        cmd + ["--json"], capture_output=True, text=True, timeout=60, env={**env, "SIMD_TOKEN": TOKEN}
    )
    live = json.loads(with_token.stdout)
    assert live["daemon"] is True and "needs_token" not in live and live["state"] == "idle"
