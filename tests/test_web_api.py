"""The JSON API through Flask's test client, against a real SearchService, Store and VectorIndex.

Uploads are embedded by `webfixtures.HistogramEmbedder` (a colour histogram decoded with the real
`simd.imaging`); the real network is tested in the end-to-end tests and in tests/test_browser.py.
"""

from __future__ import annotations

import io
import os
import shutil
import time

import pytest
from images import make_photo
from PIL import Image
from webfixtures import build_env, web_config
from werkzeug.datastructures import FileStorage
from werkzeug.test import encode_multipart

from simd.web import create_app


@pytest.fixture
def env(tmp_path):
    return build_env(tmp_path)


@pytest.fixture
def app(env):
    app = create_app(web_config(), env.service)
    app.testing = True
    return app


@pytest.fixture
def client(app):
    return app.test_client()


def get(client, url, **kw):
    """GET and read the whole response, closing it (file responses hold an open file)."""
    with client.get(url, **kw) as r:
        r.get_data()
        return r


def post_image(client, url, data: bytes, filename: str = "upload.jpg", field: str = "image"):
    """POST `data` as a multipart field, encoded in memory (the test client would spool a big body
    to a temporary file that it never closes)."""
    boundary, body = encode_multipart({field: FileStorage(io.BytesIO(data), filename, content_type="image/jpeg")})
    return client.post(url, data=body, content_type=f"multipart/form-data; boundary={boundary}")


def assert_error(r, status: int, code: str | None = None):
    assert r.status_code == status, r.get_data(as_text=True)
    assert r.mimetype == "application/json"
    body = r.get_json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    if code:
        assert body["error"]["code"] == code
    return body["error"]


# -- status, health ------------------------------------------------------------------------------


def test_healthz(client):
    r = client.get("/healthz")
    assert r.status_code == 200 and r.get_json() == {"ok": True}


def test_status(client, env):
    st = client.get("/api/status").get_json()
    assert st["state"] == "idle"
    assert st["indexed"] == 14 and st["failed"] == 0 and st["pending"] == 0
    assert st["model"] == "histogram-test" and st["dim"] == env.embedder.dim
    assert st["library"] == str(env.library)
    assert st["max_upload_mb"] == 1.0
    assert (st["embedded"], st["uploads_embedded"]) == (0, 0)
    post_image(client, "/api/similar", env.path_of("garden/photo01.jpg").read_bytes())
    post_image(client, "/api/similar", b"not an image at all")  # refused before the network
    st = client.get("/api/status").get_json()
    assert (st["embedded"], st["uploads_embedded"]) == (0, 1), "queries are not indexing work"


# -- similar by id / path ------------------------------------------------------------------------


def test_similar_by_id_best_first_query_excluded(client, env):
    qid = env.ids["garden/photo01.jpg"]
    d = client.get(f"/api/similar?id={qid}&k=5").get_json()
    assert d["model"] == "histogram-test"
    assert d["query"]["id"] == qid and d["query"]["path"] == "garden/photo01.jpg"
    res = d["results"]
    assert len(res) == 5
    assert qid not in [r["id"] for r in res]
    scores = [r["score"] for r in res]
    assert scores == sorted(scores, reverse=True)
    for r in res:
        assert r["thumb"] == f"/api/images/{r['id']}/thumb?v={r['version']}"
        assert r["url"] == f"/api/images/{r['id']}/file?v={r['version']}"
        assert env.ids[r["path"]] == r["id"]
        assert -1.0 <= r["score"] <= 1.0


def test_similar_by_path_equals_by_id(client, env):
    by_path = client.get("/api/similar?path=holiday/photo03.jpg&k=7").get_json()
    by_id = client.get(f"/api/similar?id={env.ids['holiday/photo03.jpg']}&k=7").get_json()
    assert by_path["results"] == by_id["results"]
    assert by_path["query"]["path"] == "holiday/photo03.jpg"
    assert "holiday/photo03.jpg" not in [r["path"] for r in by_path["results"]]


def test_duplicate_bytes_are_each_others_best_result(client, env):
    src = env.path_of("garden/photo02.jpg")
    (env.library / "copies").mkdir()
    (env.library / "copies" / "same.jpg").write_bytes(src.read_bytes())
    env.add("copies/same.jpg")
    res = client.get("/api/similar?path=copies/same.jpg&k=3").get_json()["results"]
    assert res[0]["path"] == "garden/photo02.jpg" and res[0]["score"] == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize("k", ["0", "101", "x", "-1", "1.5", "1e2"])
def test_bad_k_is_400(client, env, k):
    assert_error(client.get(f"/api/similar?id={env.ids['garden/photo01.jpg']}&k={k}"), 400, "bad_request")
    with client.post(f"/api/similar?k={k}", data=b"whatever") as r:
        assert_error(r, 400, "bad_request")


@pytest.mark.parametrize("k, expected", [("", 10), (None, 10), ("1", 1), ("100", 13), (" 3 ", 3)])
def test_k_default_and_bounds(client, env, k, expected):
    url = f"/api/similar?id={env.ids['garden/photo01.jpg']}" + ("" if k is None else f"&k={k}")
    d = client.get(url).get_json()
    assert len(d["results"]) == expected


def test_min_score(client, env):
    qid = env.ids["garden/photo01.jpg"]
    all_res = client.get(f"/api/similar?id={qid}&k=13").get_json()["results"]
    cut = all_res[4]["score"]
    res = client.get(f"/api/similar?id={qid}&k=13&min_score={cut}").get_json()["results"]
    assert res == [r for r in all_res if r["score"] >= cut] and len(res) >= 5
    assert client.get(f"/api/similar?id={qid}&min_score=1").get_json()["results"] == []
    for bad in ("abc", "2", "-1.5", "nan"):
        assert_error(client.get(f"/api/similar?id={qid}&min_score={bad}"), 400, "bad_request")


@pytest.mark.parametrize(
    "query, status",
    [
        ("id=999999", 404),
        ("path=nope.jpg", 404),
        ("path=../library/garden/photo01.jpg", 404),
        ("path=/etc/passwd", 404),
        ("path=garden/../../etc/passwd", 404),
        ("", 400),
        ("id=abc", 400),
        ("id=1&path=garden/photo01.jpg", 400),
        ("k=5", 400),
    ],
)
def test_similar_bad_query(client, query, status):
    assert_error(client.get(f"/api/similar?{query}"), status)


def test_similar_of_failed_image_is_404(client, env):
    (env.library / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    env.add("broken.jpg", failed="truncated JPEG")
    err = assert_error(client.get("/api/similar?path=broken.jpg"), 404, "not_found")
    assert "truncated JPEG" in err["message"]


# -- uploads -------------------------------------------------------------------------------------


def test_upload_multipart_finds_the_same_picture(client, env):
    data = env.path_of("holiday/photo06.jpg").read_bytes()
    r = post_image(client, "/api/similar?k=4", data, "mine.jpg")
    assert r.status_code == 200, r.get_data(as_text=True)
    d = r.get_json()
    assert d["query"] == {"upload": "mine.jpg"}
    assert len(d["results"]) == 4
    assert d["results"][0]["path"] == "holiday/photo06.jpg"
    assert d["results"][0]["score"] == pytest.approx(1.0, abs=1e-4)
    assert d["results"][0]["thumb"].startswith(f"/api/images/{env.ids['holiday/photo06.jpg']}/thumb?v=")


def test_upload_raw_body(client, env):
    buf = io.BytesIO()
    Image.open(env.path_of("garden/photo04.jpg")).save(buf, "PNG")  # same pixels, another format
    r = client.post("/api/similar?k=3&name=clip.png", data=buf.getvalue(), content_type="image/png")
    assert r.status_code == 200, r.get_data(as_text=True)
    d = r.get_json()
    assert d["query"] == {"upload": "clip.png"}
    assert d["results"][0]["path"] == "garden/photo04.jpg"


def test_upload_is_not_stored(client, env, tmp_path):
    before = sorted(p for p in env.library.rglob("*"))
    state_before = sorted(p for p in env.state_dir.rglob("*"))
    data = env.path_of("holiday/photo06.jpg").read_bytes()
    post_image(client, "/api/similar", data, "new.jpg")
    assert sorted(env.library.rglob("*")) == before

    def state_files(paths):  # SQLite's -wal/-shm appear as soon as a reader connects
        return [p for p in paths if "thumbs" not in p.parts and not p.name.endswith(("-wal", "-shm"))]

    assert state_files(sorted(env.state_dir.rglob("*"))) == state_files(state_before)
    assert client.get("/api/status").get_json()["indexed"] == 14


def test_upload_min_score_and_k(client, env):
    data = env.path_of("holiday/photo06.jpg").read_bytes()
    r = client.post("/api/similar?k=20&min_score=0.999", data=data, content_type="application/octet-stream")
    assert [x["path"] for x in r.get_json()["results"]] == ["holiday/photo06.jpg"]


def test_multipart_without_image_field_is_400(client):
    r = post_image(client, "/api/similar", b"abc", "a.jpg", field="file")
    assert_error(r, 400, "bad_request")


@pytest.mark.parametrize("raw", [True, False])
def test_oversized_upload_is_413(client, raw):
    big = os.urandom(1024 * 1024 + 10)  # the cap is 1 MB; whatever the body holds
    if raw:
        r = client.post("/api/similar", data=big, content_type="application/octet-stream")
    else:
        r = post_image(client, "/api/similar", big, "big.jpg")
    err = assert_error(r, 413, "too_large")
    assert "1 MB" in err["message"]


def test_oversized_by_content_length_is_413_before_reading(client):
    r = client.post(
        "/api/similar",
        data=b"x" * 10,
        content_type="application/octet-stream",
        environ_overrides={"CONTENT_LENGTH": str(50 * 1024 * 1024)},
    )
    assert_error(r, 413, "too_large")


def test_upload_just_under_the_cap_is_accepted(client, env, tmp_path):
    # a real image padded (JPEG ignores bytes after EOI) to just under 1 MB
    data = env.path_of("garden/photo04.jpg").read_bytes()
    data += b"\0" * (1024 * 1024 - len(data) - 1)
    r = post_image(client, "/api/similar", data, "padded.jpg")
    assert r.status_code == 200, r.get_data(as_text=True)


@pytest.mark.parametrize(
    "name, data",
    [
        ("text", b"hello, this is not an image at all\n" * 10),
        ("html", b"<!doctype html><html><script>alert(1)</script></html>"),
        ("empty", b""),
        ("truncated", "TRUNCATED"),
        ("pdf", b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n" + b"0" * 200),
    ],
)
def test_non_image_upload_is_415(client, env, name, data):
    if data == "TRUNCATED":
        data = env.path_of("garden/photo04.jpg").read_bytes()[:2000]
    for multipart in (True, False):
        if multipart:
            r = post_image(client, "/api/similar", data, f"{name}.jpg")
        else:
            r = client.post(f"/api/similar?name={name}.jpg", data=data, content_type="application/octet-stream")
        if not data and not multipart:  # no body at all: a request missing its image, not a bad image
            assert "no image in the request" in assert_error(r, 400, "bad_request")["message"]
            continue
        err = assert_error(r, 415, "unsupported_image")
        assert f"{name}.jpg" in err["message"]


def test_an_upload_with_id_or_path_is_refused_not_half_understood(client, env):
    data = env.path_of("garden/photo04.jpg").read_bytes()
    for q in (f"id={env.ids['garden/photo04.jpg']}", "path=garden/photo04.jpg"):
        r = client.post(f"/api/similar?{q}", data=data, content_type="application/octet-stream")
        assert "GET /api/similar" in assert_error(r, 400, "bad_request")["message"]


def test_503_before_the_model_is_ready(client, env):
    env.runtime.update(model=None, phase="starting")
    env.service.set_embedder(None)  # the model is still loading
    data = env.path_of("garden/photo04.jpg").read_bytes()
    assert_error(client.post("/api/similar", data=data, content_type="image/jpeg"), 503, "not_ready")
    assert_error(client.get(f"/api/similar?id={env.ids['garden/photo04.jpg']}"), 503, "not_ready")
    st = client.get("/api/status").get_json()
    assert st["state"] == "starting" and st["model"] == ""
    # browsing and files work while the model loads
    assert client.get("/api/images").status_code == 200
    assert get(client, f"/api/images/{env.ids['garden/photo04.jpg']}/thumb").status_code == 200


# -- browse --------------------------------------------------------------------------------------


def test_images_paging_and_filter(client, env):
    d = client.get("/api/images?limit=5").get_json()
    assert d["total"] == 14 and d["offset"] == 0 and d["limit"] == 5 and len(d["images"]) == 5
    assert [i["path"] for i in d["images"]] == sorted(env.ids)[:5]
    img = d["images"][0]
    assert img["thumb"] == f"/api/images/{img['id']}/thumb?v={img['version']}"
    assert img["url"] == f"/api/images/{img['id']}/file?v={img['version']}"
    d2 = client.get("/api/images?limit=5&offset=10").get_json()
    assert [i["path"] for i in d2["images"]] == sorted(env.ids)[10:]
    d3 = client.get("/api/images?q=HOLIDAY&limit=500").get_json()
    assert d3["total"] == 5 and all(i["path"].startswith("holiday/") for i in d3["images"])
    assert client.get("/api/images?q=nothing-like-this").get_json() == {
        "images": [],
        "total": 0,
        "offset": 0,
        "limit": 50,
    }


@pytest.mark.parametrize("query", ["limit=501", "limit=0", "limit=x", "offset=-1", "offset=a"])
def test_images_bad_params(client, query):
    assert_error(client.get(f"/api/images?{query}"), 400, "bad_request")


def test_image_info(client, env):
    iid = env.ids["garden/photo01.jpg"]
    d = client.get(f"/api/images/{iid}").get_json()
    assert d["id"] == iid and d["path"] == "garden/photo01.jpg" and d["state"] == "ok"
    assert d["thumb"] == f"/api/images/{iid}/thumb?v={d['version']}"
    assert_error(client.get("/api/images/999999"), 404, "not_found")
    assert_error(client.get("/api/images/abc"), 404, "not_found")


def test_errors_and_rescan(client, env):
    (env.library / "bad.png").write_bytes(b"not a png")
    env.add("bad.png", failed="not an image (looks like a text file)")
    d = client.get("/api/errors").get_json()
    assert d["total"] == 1 and d["errors"][0]["path"] == "bad.png"
    assert "text file" in d["errors"][0]["error"]
    assert client.get("/api/status").get_json()["failed"] == 1
    r = client.post("/api/rescan")
    assert r.status_code == 202 and r.get_json()["ok"] is True
    assert env.rescans == ["rescan"]
    assert_error(client.get("/api/rescan"), 405, "method_not_allowed")


def _add_failed_files(env) -> dict[str, int]:
    """A truncated JPEG (its bytes start like a JPEG: the original can be served, a thumbnail cannot)
    and a text file named .jpg (neither), named to sort before every indexed image."""
    (env.library / "aaa-truncated.jpg").write_bytes(env.path_of("garden/photo01.jpg").read_bytes()[:300])
    (env.library / "aab-notes.jpg").write_text("this is a text file, not a picture\n")
    return {
        rel: env.add(rel, failed=reason)
        for rel, reason in [
            ("aaa-truncated.jpg", "truncated JPEG"),
            ("aab-notes.jpg", "not an image (looks like a text file)"),
        ]
    }


def test_images_lists_indexed_images_unless_asked_for_failed_ones(client, env):
    """A grid shows indexed images: by default the listing and its total leave out the files that
    could not be indexed (no thumbnail can be made of them); state=failed|all asks for them."""
    failed = _add_failed_files(env)
    d = client.get("/api/images?limit=5").get_json()
    assert d["total"] == 14 and [i["path"] for i in d["images"]] == sorted(env.ids.keys() - failed.keys())[:5]
    assert all(i["state"] == "ok" and i["thumb"] and i["url"] for i in d["images"])
    assert client.get("/api/images?state=ok&q=aa").get_json()["total"] == 0
    f = client.get("/api/images?state=failed").get_json()
    assert f["total"] == 2 and [i["path"] for i in f["images"]] == ["aaa-truncated.jpg", "aab-notes.jpg"]
    assert [i["thumb"] for i in f["images"]] == [None, None]  # no link that can only fail
    truncated, notes = f["images"]
    assert truncated["url"] == f"/api/images/{failed['aaa-truncated.jpg']}/file?v={truncated['version']}"
    assert notes["url"] is None
    assert client.get("/api/images?state=failed&q=NOTES").get_json()["total"] == 1
    a = client.get("/api/images?state=all&limit=3").get_json()
    assert a["total"] == 16 and [i["state"] for i in a["images"]] == ["failed", "failed", "ok"]
    assert client.get(f"/api/images/{failed['aab-notes.jpg']}").get_json()["thumb"] is None
    for bad in ("bogus", "OK", "failed,ok"):
        assert "state" in assert_error(client.get(f"/api/images?state={bad}"), 400, "bad_request")["message"]


def test_errors_carry_no_thumb_and_a_url_only_when_it_serves(client, env):
    failed = _add_failed_files(env)
    d = client.get("/api/errors").get_json()
    assert d["total"] == 2
    by_path = {e["path"]: e for e in d["errors"]}
    assert not [e for e in d["errors"] if "thumb" in e]
    assert by_path["aab-notes.jpg"]["url"] is None  # the file route would answer 415
    url = by_path["aaa-truncated.jpg"]["url"]
    assert url.startswith(f"/api/images/{failed['aaa-truncated.jpg']}/file")
    r = get(client, url)
    assert r.status_code == 200 and r.mimetype == "image/jpeg" and len(r.data) == 300
    assert_error(get(client, f"/api/images/{failed['aab-notes.jpg']}/file"), 415)
    # a failed file that went away, or was replaced by a directory: no link either
    env.path_of("aaa-truncated.jpg").unlink()
    assert client.get("/api/errors").get_json()["errors"][0]["url"] is None
    env.path_of("aaa-truncated.jpg").mkdir()
    assert client.get("/api/errors").get_json()["errors"][0]["url"] is None


# -- thumbnails ----------------------------------------------------------------------------------


def _thumb_files(env):
    return sorted((env.state_dir / "thumbs").rglob("*.jpg"))


def test_thumbnail_is_small_jpeg_and_cached(client, env, app):
    make_photo(env.library / "big.png", (1200, 500), seed=7)
    iid = env.add("big.png")
    r = get(client, f"/api/images/{iid}/thumb")
    assert r.status_code == 200 and r.mimetype == "image/jpeg"
    img = Image.open(io.BytesIO(r.data))
    assert img.format == "JPEG" and max(img.size) == 256 and img.size == (256, 107)
    assert r.headers["ETag"] and r.headers["Last-Modified"]
    assert "max-age" in r.headers["Cache-Control"]
    cache = app.extensions["simd"].thumbs
    files = _thumb_files(env)
    assert len(files) == 1 and cache.built == 1
    mtime = files[0].stat().st_mtime_ns
    r2 = get(client, f"/api/images/{iid}/thumb")
    assert r2.data == r.data and cache.built == 1 and files[0].stat().st_mtime_ns == mtime
    r3 = get(client, f"/api/images/{iid}/thumb", headers={"If-None-Match": r.headers["ETag"]})
    assert r3.status_code == 304


def test_small_image_is_not_upscaled(client, env):
    make_photo(env.library / "tiny.jpg", (100, 60), seed=3)
    iid = env.add("tiny.jpg")
    img = Image.open(io.BytesIO(get(client, f"/api/images/{iid}/thumb").data))
    assert img.size == (100, 60)


def test_thumbnail_applies_exif_orientation(client, env):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    make_photo(env.library / "rotated.jpg", (400, 200), seed=5, exif=exif.tobytes())
    iid = env.add("rotated.jpg")
    img = Image.open(io.BytesIO(get(client, f"/api/images/{iid}/thumb").data))
    assert img.size == (128, 256)


def test_thumbnail_rebuilt_when_the_file_changes(client, env, app):
    rel = "garden/photo01.jpg"
    iid = env.ids[rel]
    first = get(client, f"/api/images/{iid}/thumb")
    old_files = _thumb_files(env)
    make_photo(env.library / rel, (200, 300), seed=999)  # different picture, different shape
    st = os.stat(env.library / rel)
    os.utime(env.library / rel, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    second = get(client, f"/api/images/{iid}/thumb")
    assert second.status_code == 200 and second.data != first.data
    assert second.headers["ETag"] != first.headers["ETag"]
    assert Image.open(io.BytesIO(second.data)).size == (171, 256)
    new_files = _thumb_files(env)
    assert len(new_files) == 1 and new_files != old_files  # the old one was pruned
    assert app.extensions["simd"].thumbs.built == 2


def test_concurrent_thumbnail_requests(app, env):
    import threading

    iid = env.ids["holiday/photo00.jpg"]
    results, errors = [], []

    def fetch():
        try:
            c = app.test_client()
            with c.get(f"/api/images/{iid}/thumb") as r:
                results.append((r.status_code, r.get_data()))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=fetch) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert {s for s, _ in results} == {200} and len({d for _, d in results}) == 1
    Image.open(io.BytesIO(results[0][1])).verify()
    assert len(_thumb_files(env)) == 1
    assert not [p for p in (env.state_dir / "thumbs").rglob("*") if p.name.endswith(".tmp")]


def test_undecodable_file_thumb_is_415(client, env):
    rel = "garden/photo05.jpg"
    env.path_of(rel).write_bytes(env.path_of(rel).read_bytes()[:300])  # truncated after indexing
    assert_error(get(client, f"/api/images/{env.ids[rel]}/thumb"), 415, "unsupported_image")
    (env.library / "fake.jpg").write_text("<html><body>hi</body></html>")
    iid = env.add("fake.jpg", failed="not an image")
    assert_error(get(client, f"/api/images/{iid}/thumb"), 415, "unsupported_image")


def test_thumb_and_file_of_deleted_file_are_404(client, env):
    rel = "garden/photo05.jpg"
    env.path_of(rel).unlink()
    assert_error(get(client, f"/api/images/{env.ids[rel]}/thumb"), 404, "not_found")
    assert_error(get(client, f"/api/images/{env.ids[rel]}/file"), 404, "not_found")


# -- original files ------------------------------------------------------------------------------


def test_file_serves_the_original_bytes(client, env):
    rel = "holiday/photo03.jpg"
    r = get(client, f"/api/images/{env.ids[rel]}/file")
    assert r.status_code == 200
    assert r.data == env.path_of(rel).read_bytes()
    assert r.mimetype == "image/jpeg"
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    assert r.headers["ETag"] and r.headers["Last-Modified"]
    assert r.headers["Content-Length"] == str(len(r.data))
    assert (
        get(client, f"/api/images/{env.ids[rel]}/file", headers={"If-None-Match": r.headers["ETag"]}).status_code == 304
    )
    part = get(client, f"/api/images/{env.ids[rel]}/file", headers={"Range": "bytes=0-99"})
    assert part.status_code == 206 and part.data == r.data[:100]


def test_file_content_type_comes_from_the_bytes(client, env):
    make_photo(env.library / "really-a-png.jpg", (50, 40), seed=1, fmt="PNG")
    iid = env.add("really-a-png.jpg")
    r = get(client, f"/api/images/{iid}/file")
    assert r.status_code == 200 and r.mimetype == "image/png"


def test_html_in_the_library_is_never_served(client, env):
    (env.library / "evil.jpg").write_bytes(b"<html><script>alert(document.cookie)</script></html>")
    iid = env.add("evil.jpg", failed="not an image")
    r = get(client, f"/api/images/{iid}/file")
    assert_error(r, 415, "unsupported_image")
    assert "html" not in r.mimetype


@pytest.mark.parametrize(
    "url",
    [
        "/api/images/..%2f..%2fetc%2fpasswd/file",
        "/api/images/%2e%2e/file",
        "/api/images/%2e%2e%2f%2e%2e%2fetc%2fpasswd/thumb",
        "/api/images/-1/file",
        "/api/images/1.0/file",
        "/api/images/0x1/file",
        "/api/images/%201/file",
        "/api/images/1%2f..%2f2/file",
        "/api/images//etc/passwd/file",
        "/api/images/../../../etc/passwd",
        "/api/images/..%5c..%5cwindows/file",
        "/api/images/%EF%BC%91/file",  # a full-width digit one
        "/api/images/999999999999999999999999/file",
        "/api/images/999999/file",
        "/api/images/999999/thumb",
    ],
)
def test_traversal_attempts_are_404(client, url):
    r = get(client, url)
    assert r.status_code == 404, (url, r.status_code, r.data[:200])
    assert_error(r, 404)


def test_symlink_out_of_the_library_is_404(client, env, tmp_path):
    outside = tmp_path / "secret.jpg"
    make_photo(outside, (64, 64), seed=9)
    (env.library / "link.jpg").symlink_to(outside)
    iid = env.add("link.jpg", vector=env.embedder.embed_file(outside))
    (env.library / "linkdir").symlink_to(tmp_path, target_is_directory=True)
    iid2 = env.add("linkdir/secret.jpg", vector=env.embedder.embed_file(outside))
    for i in (iid, iid2):
        assert_error(get(client, f"/api/images/{i}/file"), 404, "not_found")
        assert_error(get(client, f"/api/images/{i}/thumb"), 404, "not_found")


def test_symlink_inside_the_library_is_served(client, env):
    (env.library / "alias.jpg").symlink_to(env.path_of("garden/photo01.jpg"))
    iid = env.add("alias.jpg")
    r = get(client, f"/api/images/{iid}/file")
    assert r.status_code == 200 and r.data == env.path_of("garden/photo01.jpg").read_bytes()


# -- one error shape everywhere -------------------------------------------------------------------


def test_every_route_errors_in_the_json_shape(app, client):
    rules = [r for r in app.url_map.iter_rules()]
    assert len(rules) >= 12
    for rule in rules:
        url = rule.rule.replace("<image_id>", "999999").replace("<filename>", "no-such-file.css")
        errored = 0
        for method in ("GET", "POST", "PUT", "DELETE", "PATCH"):
            with client.open(url, method=method, data=b"x" * 3) as r:
                r.get_data()
                if r.status_code >= 400:
                    errored += 1
                    assert_error(r, r.status_code)
                    if r.status_code == 405:
                        assert "Allow" in r.headers
        assert errored, f"{rule.rule}: no error produced"
    assert_error(client.get("/api/no/such/route"), 404, "not_found")
    assert_error(client.get("/no-such-page"), 404, "not_found")
    assert_error(client.delete("/api/status"), 405, "method_not_allowed")


def test_unexpected_exception_is_500_json(app, client, env, monkeypatch):
    def boom():
        raise RuntimeError("secret internals")

    monkeypatch.setattr(env.service, "status", boom)
    err = assert_error(client.get("/api/status"), 500, "internal_error")
    assert "secret" not in err["message"]


def test_search_page_and_static(client):
    r = client.get("/")
    assert r.status_code == 200 and r.mimetype == "text/html"
    html = r.get_data(as_text=True)
    assert 'data-testid="file-input"' in html and "http" not in html.split("<body")[0].replace(
        'name="viewport"', ""
    )  # no external resources in <head>
    for name in ("net.js", "cards.js", "app.js", "style.css"):
        with client.get(f"/static/{name}") as s:
            assert s.status_code == 200
            assert b"http://" not in s.get_data() and b"https://" not in s.get_data()


def test_api_responses_are_not_cached(client):
    assert client.get("/api/status").headers["Cache-Control"] == "no-store"


def test_status_reports_progress(client, env):
    env.runtime.update(
        phase="indexing", pending=3, progress={"phase": "indexing", "done": 2, "total": 5, "started_at": time.time()}
    )
    st = client.get("/api/status").get_json()
    assert st["state"] == "indexing" and st["pending"] == 3 and st["progress"]["total"] == 5


def test_thumb_and_file_addresses_change_when_the_file_does(client, env):
    """A browser caches thumbnails by address: an image overwritten in place (same path, same id)
    must get new addresses, or the page would show the old picture from its cache."""
    iid = env.ids["garden/photo01.jpg"]
    before = client.get(f"/api/images/{iid}").get_json()
    listed = {i["id"]: i for i in client.get("/api/images?limit=100").get_json()["images"]}
    assert listed[iid]["thumb"] == before["thumb"] and "v=" in before["thumb"]
    similar = client.get(f"/api/similar?id={env.ids['garden/photo04.jpg']}&k=20").get_json()
    assert {r["id"]: r["thumb"] for r in similar["results"]}[iid] == before["thumb"]
    time.sleep(0.01)
    shutil.copy(env.path_of("holiday/photo00.jpg"), env.path_of("garden/photo01.jpg"))
    assert env.add("garden/photo01.jpg") == iid
    after = client.get(f"/api/images/{iid}").get_json()
    assert after["thumb"] != before["thumb"] and after["url"] != before["url"]
    r = client.get(after["thumb"])
    assert r.status_code == 200  # the token is only for caches
    r.close()
