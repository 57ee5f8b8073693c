"""Duplicates end to end: a real `simd serve` (EfficientNet-Lite0, real weights, offline) on a library of
12 MP phone JPEGs, through HTTP: copies appear in groups as they land, follow renames and deletions,
and the user's "not duplicates" outlives renames and a full rescan."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from images import make_phone_photo, make_photo
from PIL import Image
from serving import Served

from simd.duplicates import DUPLICATE_THRESHOLDS
from simd.embedder import resolve_descriptor

pytestmark = pytest.mark.slow

# the default model of a machine without ResNet50 weights, and its calibrated thresholds
_D = resolve_descriptor("default", "efficientnet-lite0")
MODEL = "efficientnet-lite0" if _D.name == "default" else f"efficientnet-lite0+{_D.name}"
T = DUPLICATE_THRESHOLDS[MODEL]


def post(served: Served, path: str, body, *, raw: bytes | None = None) -> tuple[int, dict]:
    data = raw if raw is not None else json.dumps(body).encode()
    req = urllib.request.Request(
        served.url + path, data=data, method="POST", headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


def simd(*args: str, env: dict, text: bool = True, cwd: str | None = None, timeout: float = 120):
    """`python -m simd ARGS` as a user runs it (no daemon needed), its output captured."""
    return subprocess.run(
        [sys.executable, "-m", "simd", *args], capture_output=True, text=text, env=env, timeout=timeout, cwd=cwd
    )


def get_status(served: Served, path: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(served.url + path, timeout=30) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


def groups_of(served: Served, query: str = "") -> list[dict]:
    return served.get("/api/duplicates?limit=500" + query)["groups"]


def group_with(served: Served, rel: str) -> dict | None:
    return next((g for g in groups_of(served) if rel in {m["path"] for m in g["images"]}), None)


def resaved(src: Path, dest: Path, scale: float = 0.5, quality: int = 80) -> Path:
    """A resized, re-encoded copy, as a messenger or an export makes: other bytes, same picture."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with Image.open(src) as img:
        exif = img.getexif()
        img.resize((round(img.width * scale), round(img.height * scale)), Image.Resampling.LANCZOS).save(
            dest, "JPEG", quality=quality, exif=exif.tobytes()
        )
    return dest


@pytest.fixture
def library(tmp_path) -> Path:
    lib = tmp_path / "Photos"
    make_phone_photo(lib / "DCIM" / "beach.jpg", seed=0)
    make_phone_photo(lib / "DCIM" / "city.jpg", seed=1)
    make_photo(lib / "misc" / "small.png", seed=7)
    return lib


def test_copies_are_grouped_and_follow_the_library(library, tmp_path, lite0_converted):
    served = Served(library, tmp_path / "state")
    try:
        served.wait_idle(indexed=3)
        first = served.wait_until(lambda: (d := served.get("/api/duplicates"))["complete"] and d, 60, "pairs")
        assert first["groups"] == [] and first["total"] == 0
        assert first["model"] == MODEL and first["calibrated"] is True
        assert first["threshold"] == pytest.approx(T.threshold) and first["lowest"] == pytest.approx(T.lowest)
        assert first["allow_trash"] is False
        assert served.get("/api/status")["duplicates"]["state"] == "ready"

        # a byte-identical copy dropped into the library: an identical group, found through the watcher
        (library / "Backup").mkdir()
        shutil.copy2(library / "DCIM" / "beach.jpg", library / "Backup" / "beach (1).jpg")
        g = served.wait_until(lambda: group_with(served, "Backup/beach (1).jpg"), 60, "the copy's group")
        assert g["tier"] == "identical"
        assert {m["path"] for m in g["images"]} == {"DCIM/beach.jpg", "Backup/beach (1).jpg"}
        keeper = g["images"][0]
        assert keeper["keep"] is True and g["keep"]["id"] == keeper["id"]
        assert keeper["width"] == 4000 and keeper["height"] == 3000 and keeper["format"] == "jpeg"
        assert all(m["identical_to_keeper"] and m["score"] == 1.0 for m in g["images"])
        assert g["reclaimable_bytes"] == (library / "DCIM" / "beach.jpg").stat().st_size

        # a resized, re-saved copy: near-duplicate, in the same group; the unrelated photo stays alone
        resaved(library / "DCIM" / "beach.jpg", library / "Shared" / "beach-small.jpg")
        g = served.wait_until(
            lambda: (x := group_with(served, "Shared/beach-small.jpg")) and len(x["images"]) == 3 and x, 60, "near copy"
        )
        assert g["tier"] == "near-duplicate"
        small = next(m for m in g["images"] if m["path"] == "Shared/beach-small.jpg")
        assert small["keep"] is False and not small["identical_to_keeper"] and T.threshold <= small["score"] < 1.0
        assert small["width"] == 2000 and small["height"] == 1500
        assert g["images"][0]["width"] == 4000, "most pixels is kept"
        assert group_with(served, "DCIM/city.jpg") is None and group_with(served, "misc/small.png") is None
        assert served.get("/api/duplicates?tier=identical")["total"] == 0  # the identical pair is inside it
        assert served.get("/api/duplicates?threshold=1.0")["groups"][0]["tier"] == "identical"

        # renaming and moving keep the group (pairs are keyed by content)
        group_id = g["id"]
        (library / "Shared" / "beach-small.jpg").rename(library / "misc" / "renamed.jpg")
        g = served.wait_until(lambda: group_with(served, "misc/renamed.jpg"), 60, "the renamed copy's group")
        assert g["id"] == group_id and len(g["images"]) == 3

        # deleting a copy takes it out; deleting both copies removes the group
        (library / "misc" / "renamed.jpg").unlink()
        served.wait_until(lambda: (x := group_with(served, "DCIM/beach.jpg")) and len(x["images"]) == 2, 60, "2 left")
        (library / "Backup" / "beach (1).jpg").unlink()
        served.wait_until(lambda: served.get("/api/duplicates")["total"] == 0, 60, "no group")

        # a 60 % crop (cosine 0.84: in the ambiguous band) links only once the background verifier has
        # matched its pixels with the original's; then they group
        with Image.open(library / "DCIM" / "city.jpg") as img:
            w, h = img.size
            img.crop((int(w * 0.3), int(h * 0.1), int(w * 0.9), int(h * 0.7))).save(
                library / "Shared" / "city-crop.jpg"
            )
        g = served.wait_until(lambda: group_with(served, "Shared/city-crop.jpg"), 120, "the verified crop's group")
        assert {m["path"] for m in g["images"]} == {"DCIM/city.jpg", "Shared/city-crop.jpg"}
        status = served.get("/api/status")["duplicates"]["verification"]
        assert status["band"] == [pytest.approx(T.lowest), pytest.approx(T.sure)]
        assert status["verified"] >= 1 and status["unverifiable"] == 0
        assert served.get("/api/duplicates")["verification"]["min_inliers"] >= 10
    finally:
        assert served.stop() == 0


def assert_error(status: int, body: dict, want_status: int, code: str) -> None:
    assert status == want_status, body
    assert set(body) == {"error"} and body["error"]["code"] == code and body["error"]["message"], body


BAD_LISTINGS = [
    ("threshold=abc", "threshold must be a number"),
    ("threshold=2", f"threshold must be from {T.lowest:g} to 1.0"),
    ("threshold=0.1", f"threshold must be from {T.lowest:g}"),
    ("threshold=nan", "threshold must be from"),
    ("threshold=1e999", "threshold must be from"),
    ("tier=x", "tier must be one of identical, near-duplicate"),
    ("offset=-1", "offset must be from 0"),
    ("offset=99999999999999999999999999999999", "offset must be from 0"),
    ("limit=0", "limit must be from 1 to 500"),
    ("limit=501", "limit must be from 1 to 500"),
    ("limit=abc", "limit must be an integer"),
]


def test_dismissed_group_stays_dismissed_through_renames_and_a_rescan(library, tmp_path, lite0_converted):
    resaved(library / "DCIM" / "beach.jpg", library / "Shared" / "beach-small.jpg")
    (library / "Backup").mkdir()
    shutil.copy2(library / "DCIM" / "beach.jpg", library / "Backup" / "beach (1).jpg")
    state = tmp_path / "state"
    served = Served(library, state)
    try:
        served.wait_idle(indexed=5)
        g = served.wait_until(lambda: (x := group_with(served, "DCIM/beach.jpg")) and len(x["images"]) == 3 and x, 60)
        ids = [m["id"] for m in g["images"]]

        for query, message in BAD_LISTINGS:
            status, body = get_status(served, "/api/duplicates?" + query)
            assert_error(status, body, 400, "bad_request")
            assert message in body["error"]["message"], (query, body)
        for raw, want, code in [
            (b"not json", 400, "bad_request"),
            (b"[1, 2]", 400, "bad_request"),
            (b'{"images": "1,2"}', 400, "bad_request"),
            (b'{"images": [true, false]}', 400, "bad_request"),
            (json.dumps({"images": [ids[0]]}).encode(), 400, "bad_request"),
            (json.dumps({"images": [ids[0], ids[0]]}).encode(), 400, "bad_request"),
            (json.dumps({"images": [ids[0], 987654]}).encode(), 404, "not_found"),
            (json.dumps({"images": [ids[0], 10**30]}).encode(), 404, "not_found"),
        ]:
            status, body = post(served, "/api/duplicates/dismiss", None, raw=raw)
            assert_error(status, body, want, code)
        status, body = post(served, "/api/duplicates/trash", {"images": [ids[1]]})
        assert_error(status, body, 403, "trash_disabled")
        assert "allow_trash" in body["error"]["message"]

        # "not duplicates" for the whole group: the near pair and the two identical files
        status, body = post(served, "/api/duplicates/dismiss", {"images": ids})
        assert status == 200 and body == {"dismissed_pairs": 2}
        assert served.get("/api/duplicates")["total"] == 0

        # renamed and moved, then a full rescan: still dismissed (decisions are keyed by content)
        (library / "Shared" / "beach-small.jpg").rename(library / "DCIM" / "beach-renamed.jpg")
        (library / "Backup").rename(library / "Old")
        status, _ = post(served, "/api/rescan", None, raw=b"")
        assert status == 202
        served.wait_until(lambda: "Old/beach (1).jpg" in served.paths() and "DCIM/beach-renamed.jpg" in served.paths())
        served.wait_idle(indexed=5)
        assert served.get("/api/duplicates")["total"] == 0
        assert served.get(f"/api/duplicates?threshold={T.lowest}")["total"] == 0

        # a new copy of the same photo starts a group that shows it
        resaved(library / "DCIM" / "beach.jpg", library / "New" / "beach-again.jpg", scale=0.6, quality=70)
        g = served.wait_until(lambda: group_with(served, "New/beach-again.jpg"), 60, "the new copy's group")
        paths = {m["path"] for m in g["images"]}
        assert paths & {"DCIM/beach.jpg", "DCIM/beach-renamed.jpg", "Old/beach (1).jpg"}, paths
        # the dismissed pair itself is never put back together
        assert not {"DCIM/beach.jpg", "DCIM/beach-renamed.jpg"} <= paths
    finally:
        assert served.stop() == 0

    # the CLI, without a daemon, reading the state dir
    # this checkout's simd from any working directory (the --print0 run is made from /)
    env = {**os.environ, "SIMD_WEIGHTS_DOWNLOAD": "0", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = simd("duplicates", "--state-dir", str(state), "--json", env=env)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["complete"] is True and out["total"] == len(out["groups"]) >= 1
    group = next(x for x in out["groups"] if "New/beach-again.jpg" in {m["path"] for m in x["images"]})
    assert group["images"][0]["keep"] is True
    done = simd("duplicates", "--state-dir", str(state), "--print0", env=env, text=False, cwd="/")
    assert done.returncode == 0, done.stderr
    paths = [Path(os.fsdecode(p)) for p in done.stdout.split(b"\0") if p]
    not_kept = {library / m["path"] for x in out["groups"] for m in x["images"] if not m["keep"]}
    assert set(paths) == not_kept and all(p.is_absolute() and p.is_file() for p in paths)
    assert library / "DCIM" / "beach.jpg" not in paths
    done = simd("duplicates", "--state-dir", str(state), "--threshold", "abc", env=env)
    assert done.returncode == 2 and "threshold must be a number" in done.stderr


def test_trash_moves_copies_to_the_desktop_trash_when_allowed(library, tmp_path, lite0_converted):
    (library / "Backup").mkdir()
    shutil.copy2(library / "DCIM" / "beach.jpg", library / "Backup" / "beach (1).jpg")
    home, data = tmp_path / "home", tmp_path / "data"
    home.mkdir()
    env = {"SIMD_ALLOW_TRASH": "1", "HOME": str(home), "XDG_DATA_HOME": str(data)}
    served = Served(library, tmp_path / "state", extra_env=env)
    try:
        served.wait_idle(indexed=4)
        listed = served.wait_until(lambda: (d := served.get("/api/duplicates"))["total"] == 1 and d, 60, "a group")
        assert listed["allow_trash"] is True and served.get("/api/status")["allow_trash"] is True
        group = listed["groups"][0]
        keeper, copy = group["images"]
        city = next(i for i in served.get("/api/images?limit=500")["images"] if i["path"] == "DCIM/city.jpg")

        status, body = post(served, "/api/duplicates/trash", {"images": [keeper["id"], copy["id"]]})
        assert_error(status, body, 409, "would_trash_all")
        status, body = post(served, "/api/duplicates/trash", {"images": [city["id"]]})
        assert_error(status, body, 409, "not_a_duplicate")
        status, body = post(served, "/api/duplicates/trash", {"images": [987654]})
        assert_error(status, body, 404, "not_found")
        assert (library / "Backup" / "beach (1).jpg").is_file() and (library / "DCIM" / "city.jpg").is_file()

        status, body = post(served, "/api/duplicates/trash", {"images": [copy["id"]]})
        assert status == 200 and body == {"trashed": [copy["path"]], "failed": []}, body
        assert not (library / copy["path"]).exists()
        trashed = list((data / "Trash" / "files").iterdir())
        assert [p.name for p in trashed] == [Path(copy["path"]).name]
        assert trashed[0].stat().st_size == copy["bytes"]
        assert (data / "Trash" / "info" / f"{trashed[0].name}.trashinfo").is_file()  # restorable
        served.wait_until(lambda: copy["path"] not in served.paths(), 60, "the index to drop it")
        served.wait_until(lambda: served.get("/api/duplicates")["total"] == 0, 60, "no group")
        assert f"moved to the trash: {library / copy['path']}" in served.output()
    finally:
        assert served.stop() == 0


def test_pairs_of_an_index_from_before_are_built_at_the_first_start(library, tmp_path, lite0_converted):
    """An index made before duplicates existed (schema 2, no pairs tables): the first start migrates
    it and builds the pairs in the background, with progress in /api/status, then lists the copies."""
    resaved(library / "DCIM" / "beach.jpg", library / "Shared" / "beach-small.jpg")
    (library / "Backup").mkdir()
    shutil.copy2(library / "DCIM" / "beach.jpg", library / "Backup" / "beach (1).jpg")
    state = tmp_path / "state"
    env = {**os.environ, "SIMD_WEIGHTS_DOWNLOAD": "0", "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = simd("index", str(library), "--state-dir", str(state), "--model", "efficientnet-lite0", env=env, timeout=600)
    assert done.returncode == 0, done.stderr
    # without a daemon the CLI lists what is stored: the identical copies, and says pairs are missing
    done = simd("duplicates", "--state-dir", str(state), "--json", env=env)
    assert done.returncode == 0, done.stderr
    before = json.loads(done.stdout)
    assert before["complete"] is False and [g["tier"] for g in before["groups"]] == ["identical"]
    assert "not built yet" in done.stderr
    with sqlite3.connect(state / "index.db") as db:  # back to the schema of the simd before duplicates
        db.execute("DROP TABLE dup_pairs")
        db.execute("DROP TABLE dup_dismissed")
        db.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")

    served = Served(library, state)
    try:
        seen = []

        def built():
            st = served.get("/api/status")["duplicates"]
            seen.append(st)
            return st["state"] == "ready" and st

        final = served.wait_until(built, 120, "the pairs built")
        assert final["done"] == final["total"] >= 1, (seen, served.output())
        states = [s["state"] for s in seen]  # "off" only while the daemon starts (no model yet)
        assert states[states.index("ready") if "building" not in states else states.index("building") :] == [
            x for x in states if x != "off"
        ], seen
        listed = served.get("/api/duplicates")
        assert listed["complete"] is True and listed["progress"] is None
        assert [len(g["images"]) for g in listed["groups"]] == [3]
        with sqlite3.connect(state / "index.db") as db:
            assert db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == "4"
        assert f"duplicates: 2 pairs of images that may be copies among 5 ({MODEL}" in served.output()
    finally:
        assert served.stop() == 0
