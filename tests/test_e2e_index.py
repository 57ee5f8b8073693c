"""`simd index` and `simd query` as real subprocesses with the real EfficientNet-Lite0 weights.

Includes the crash test: `simd index` killed with SIGKILL at random moments, rerun, must end with
the same store as one uninterrupted run.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

skimage_data = pytest.importorskip("skimage.data")

PHOTOS = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "camera",
    "coins",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "clock",
    "horse",
    "moon",
    "brick",
    "grass",
    "gravel",
    "page",
)


def photo(name: str) -> Image.Image:
    arr = getattr(skimage_data, name)()
    if isinstance(arr, tuple):
        arr = arr[0]
    img = Image.fromarray(np.asarray(arr))
    return img.convert("RGB")


def run_simd(*args, timeout=300, check=True):
    env = {**os.environ, "SIMD_WEIGHTS_DOWNLOAD": "0", "TF_CPP_MIN_LOG_LEVEL": "3"}
    r = subprocess.run([sys.executable, "-m", "simd", *args], capture_output=True, text=True, timeout=timeout, env=env)
    if check:
        assert r.returncode == 0, r.stderr[-2000:]
    return r


@pytest.fixture(scope="module")
def photo_library(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("photos")
    for name in PHOTOS:
        photo(name).save(root / f"{name}.jpg", quality=92)
    cat = photo("chelsea")
    w, h = cat.size
    (root / "edits").mkdir()
    crop = cat.crop((w // 10, h // 10, w - w // 8, h - h // 8)).resize((w // 2, h // 2))
    crop.save(root / "edits" / "chelsea-crop.jpg", quality=80)
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    return root


def test_index_then_query_finds_the_edited_copy_first(photo_library, tmp_path):
    state = tmp_path / "state"
    r = run_simd("index", str(photo_library), "--state-dir", str(state), "--model", "efficientnet-lite0", "--json")
    summary = json.loads(r.stdout)
    assert summary["new"] == len(PHOTOS) + 1 and summary["failed"] == 1
    # embedded counts images that reached the network: the broken file did not
    assert summary["embedded"] == len(PHOTOS) + 1 and summary["seconds"] > 0
    r = run_simd("query", str(photo_library / "chelsea.jpg"), "--state-dir", str(state), "-k", "5", "--json")
    result = json.loads(r.stdout)
    paths = [hit["path"] for hit in result["results"]]
    assert len(paths) == 5 and "chelsea.jpg" not in paths, "the query image is left out of its own results"
    assert paths[0] == "edits/chelsea-crop.jpg"
    assert result["results"][0]["match"] == "near-duplicate", result["results"][0]
    assert result["results"][-1]["match"] in ("similar", "weak")
    scores = [hit["score"] for hit in result["results"]]
    assert scores == sorted(scores, reverse=True) and 0.5 < scores[0] <= 1.0
    # An image from outside the library is embedded on the fly.
    outside = tmp_path / "query.png"
    photo("chelsea").transpose(Image.FLIP_LEFT_RIGHT).save(outside)
    r = run_simd("query", str(outside), "--state-dir", str(state), "-k", "3")
    assert "chelsea" in r.stdout.splitlines()[1]
    r = run_simd("errors", "--state-dir", str(state))
    assert "broken.jpg" in r.stdout
    r = run_simd("status", "--state-dir", str(state), "--json")
    status = json.loads(r.stdout)
    assert (status["indexed"], status["failed"], status["model"]) == (len(PHOTOS) + 1, 1, "efficientnet-lite0+r2")
    assert status["dim"] == 2280 and status["daemon"] is False  # the default descriptor: pooled features + logits
    # Nothing was written into the library.
    assert sorted(p.name for p in photo_library.rglob("*")) == sorted(
        [f"{n}.jpg" for n in PHOTOS] + ["edits", "chelsea-crop.jpg", "broken.jpg"]
    )


def make_crash_library(root: Path, n: int) -> None:
    rng = random.Random(7)
    sources = [photo(name).resize((160, 120)) for name in PHOTOS[:6]]
    for i in range(n):
        src = sources[i % len(sources)]
        x, y = rng.randint(0, 40), rng.randint(0, 30)
        img = src.crop((x, y, x + 120, y + 90)).rotate(rng.randint(0, 359))
        sub = root / f"set{i % 4}"
        sub.mkdir(exist_ok=True)
        img.save(sub / f"img{i:04}.jpg", quality=85)
    (root / "set0" / "zero.jpg").write_bytes(b"")


def store_contents(state: Path) -> dict:
    con = sqlite3.connect(f"file:{state / 'index.db'}?mode=ro", uri=True)
    try:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        rows = con.execute("SELECT path, size, mtime_ns, hash, state, model, vector FROM images").fetchall()
    finally:
        con.close()
    paths = [r[0] for r in rows]
    assert len(paths) == len(set(paths)), "duplicate rows"
    return {r[0]: r[1:] for r in rows}


def test_kill_9_at_random_moments_converges_to_the_uninterrupted_result(tmp_path):
    lib = tmp_path / "lib"
    lib.mkdir()
    make_crash_library(lib, 400)
    base = ["--model", "efficientnet-lite0", "--json"]
    run_simd("index", str(lib), "--state-dir", str(tmp_path / "ref"), *base)
    expected = store_contents(tmp_path / "ref")

    crash_state = tmp_path / "crash"
    env = {**os.environ, "SIMD_WEIGHTS_DOWNLOAD": "0", "TF_CPP_MIN_LOG_LEVEL": "3"}
    rng = random.Random(1)
    db = crash_state / "index.db"
    mid_run_kills = []
    for attempt in range(4):
        proc = subprocess.Popen(
            [sys.executable, "-m", "simd", "index", str(lib), "--state-dir", str(crash_state), *base],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        before = _row_count(db)
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline and _row_count(db) <= before:
            time.sleep(0.05)  # wait until this run commits its first batch, then kill it mid-way
        # the first kill lands right after that commit; later ones at random moments after it
        time.sleep(0.0 if attempt == 0 else rng.uniform(0.0, 1.5))
        if proc.poll() is None:
            # Freeze the process, then read what it committed: fewer rows than the library holds
            # proves this kill lands mid-run, whatever the machine's speed.
            proc.send_signal(signal.SIGSTOP)
            committed = _row_count(db)
            proc.send_signal(signal.SIGKILL)
            if committed < len(expected):
                mid_run_kills.append(committed)
        proc.wait(30)
    assert mid_run_kills, "no run could be killed mid-way; make the library larger"
    final = run_simd("index", str(lib), "--state-dir", str(crash_state), *base)
    assert json.loads(final.stdout)["deleted"] == 0
    got = store_contents(crash_state)
    assert set(got) == set(expected)
    for path, (size, mtime, digest, state, model, blob) in expected.items():
        g = got[path]
        assert g[:5] == (size, mtime, digest, state, model), path
        if blob is not None:
            np.testing.assert_allclose(np.frombuffer(g[5], "<f4"), np.frombuffer(blob, "<f4"), atol=2e-5)


def _row_count(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)
        try:
            return con.execute("SELECT count(*) FROM images").fetchone()[0]
        finally:
            con.close()
    except sqlite3.Error:
        return 0
