"""Duplicates end to end: a real `simd serve` (EfficientNet-Lite0, real weights, offline) on a library of
12 MP phone JPEGs, through HTTP: copies appear in groups as they land, follow renames and deletions,
and the user's "not duplicates" outlives renames and a full rescan."""

from __future__ import annotations

import json
import shutil
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from images import make_phone_photo, make_photo
from PIL import Image
from serving import Served

pytestmark = pytest.mark.slow


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
        assert first["model"] == "efficientnet-lite0" and first["calibrated"] is True
        assert first["threshold"] == pytest.approx(0.70) and first["lowest"] == pytest.approx(0.65)
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
        assert small["keep"] is False and not small["identical_to_keeper"] and 0.7 <= small["score"] < 1.0
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
    finally:
        assert served.stop() == 0
