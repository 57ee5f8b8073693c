"""kill -9 of a real `simd serve`, twenty times, at moments proven to be mid-index: the index that
the last, uninterrupted start leaves is the one an uninterrupted run makes (same rows, same vectors),
and SQLite's integrity check passes after every kill.

Each start is frozen (SIGSTOP) before it is killed and its committed rows are counted: fewer rows than
the library holds proves that this kill landed while it was indexing, whatever the machine's speed.
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
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from images import make_phone_photo, photo
from serving import free_port

pytestmark = pytest.mark.slow  # ~20 daemon starts: run by .ci/run's reliability step, and `make test-all`

KILLS = 20
FILES = 600


def make_library(root: Path, phone_jpeg: Path) -> None:
    rng = random.Random(3)
    for i in range(FILES):
        sub = root / f"roll{i // 100:02d}"
        sub.mkdir(parents=True, exist_ok=True)
        img = photo((rng.randint(120, 200), rng.randint(90, 150)), seed=1000 + i)
        img.save(sub / f"IMG_{i:04d}.jpg", quality=85)
    make_phone_photo(root / "camera" / "PXL_0001.jpg", seed=5)  # one real-size photo among them
    os.link(phone_jpeg, root / "camera" / "PXL_0002.jpg")


def rows(db: Path) -> dict:
    if not db.exists():
        return {}
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        if not con.execute("SELECT 1 FROM sqlite_master WHERE name = 'images'").fetchone():
            return {}  # killed before its schema was committed
        got = con.execute("SELECT path, size, mtime_ns, hash, state, model, vector FROM images").fetchall()
    finally:
        con.close()
    return {r[0]: r[1:] for r in got}


def count(db: Path) -> int:
    """Committed rows, cheaply (for polling; `rows` checks integrity and reads everything)."""
    if not db.exists():
        return 0
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            return con.execute("SELECT count(*) FROM images").fetchone()[0]
        finally:
            con.close()
    except sqlite3.OperationalError:  # no schema yet
        return 0


def serve(lib: Path, state: Path, log: Path, port: int = 0) -> subprocess.Popen:
    env = {**os.environ, "SIMD_WEIGHTS_DOWNLOAD": "0", "TF_CPP_MIN_LOG_LEVEL": "3", "SIMD_SETTLE_SECONDS": "0.5"}
    args = [sys.executable, "-m", "simd", "serve", str(lib), "--state-dir", str(state)]
    with open(log, "ab") as out:
        return subprocess.Popen(
            [*args, "--port", str(port or free_port()), "--model", "efficientnet-lite0"],
            stdout=out,
            stderr=out,
            env=env,
        )


def idle_status(port: int) -> dict | None:
    """The daemon's status once it has finished its startup reconcile, else None."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status", timeout=5) as r:
            st = json.load(r)
    except (OSError, ValueError):
        return None
    return st if st["state"] == "idle" and st["pending"] == 0 and st.get("progress") is None else None


def run_to_idle(lib: Path, state: Path, log: Path, expected: int, timeout: float = 600) -> None:
    """Start simd serve, wait until it has reconciled the library (the index may be complete before
    it starts: its own status says when it is done), and stop it with SIGTERM."""
    port = free_port()
    proc = serve(lib, state, log, port)
    try:
        deadline = time.monotonic() + timeout
        while idle_status(port) is None or count(state / "index.db") < expected:
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "the daemon did not finish indexing"
            time.sleep(0.5)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise AssertionError("simd serve did not stop within 30 s of SIGTERM") from None
    assert code == 0, log.read_text()[-3000:]


@pytest.mark.timeout(1800)  # ~22 daemon starts; minutes on an idle 2-core machine, more on a busy one
def test_twenty_kills_mid_index_converge_to_the_uninterrupted_index(tmp_path, phone_jpeg):
    lib = tmp_path / "library"
    make_library(lib, phone_jpeg)
    expected_count = FILES + 2
    run_to_idle(lib, tmp_path / "ref", tmp_path / "ref.log", expected_count)
    expected = rows(tmp_path / "ref" / "index.db")
    assert len(expected) == expected_count

    state, log, db = tmp_path / "crash", tmp_path / "crash.log", tmp_path / "crash" / "index.db"
    rng = random.Random(11)
    mid_run = 0
    for attempt in range(KILLS):
        if count(db) >= expected_count:  # finished: start over, so every kill can land mid-index
            for p in state.glob("index.db*"):
                p.unlink()
        before = count(db)
        proc = serve(lib, state, log)
        deadline = time.monotonic() + 180
        while proc.poll() is None and time.monotonic() < deadline and count(db) <= before:
            time.sleep(0.05)  # until this start commits its first chunk
        time.sleep(rng.uniform(0.0, 0.5))
        assert proc.poll() is None, f"start {attempt} exited:\n{log.read_text()[-3000:]}"
        proc.send_signal(signal.SIGSTOP)
        committed = count(db)  # frozen: this is what the kill leaves
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        mid_run += committed < expected_count
        rows(db)  # integrity_check after every kill
    assert mid_run >= KILLS // 2, f"only {mid_run} of {KILLS} kills landed mid-index"

    run_to_idle(lib, state, log, expected_count)
    got = rows(db)
    assert set(got) == set(expected)
    for path, (size, mtime, digest, st, model, blob) in expected.items():
        assert got[path][:5] == (size, mtime, digest, st, model), path
        np.testing.assert_allclose(np.frombuffer(got[path][5], "<f4"), np.frombuffer(blob, "<f4"), atol=2e-5)
