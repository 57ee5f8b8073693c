"""`simd serve` end to end: a real process, real watchdog observer, real HTTP, real model.

The newcomer's story: start the daemon on a folder, copy photos in, rename a directory, delete
some; the search always reflects the folder. kill -9 and a restart converge. systemd's notify
protocol is checked with a real datagram socket standing in for systemd.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from simd import config as cfg
from tests.serving import Served, free_port
from tests.test_e2e_index import photo

NAMES = ("astronaut", "chelsea", "coffee", "rocket", "camera", "coins", "clock", "horse", "moon")


def disk_paths(root):
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


@pytest.fixture
def photo_dir(tmp_path):
    src = tmp_path / "incoming"
    src.mkdir()
    for name in NAMES:
        photo(name).resize((200, 150)).save(src / f"{name}.jpg", quality=90)
    return src


def test_newcomer_story_copy_rename_delete_kill_restart(tmp_path, photo_dir, library):
    (library / "trip").mkdir()
    for name in NAMES[:4]:
        shutil.copy(photo_dir / f"{name}.jpg", library / "trip" / f"{name}.jpg")
    state = tmp_path / "state"
    served = Served(library, state)
    try:
        served.wait_idle(indexed=4)
        # Copy photos in, one with a slow writer.
        for name in NAMES[4:7]:
            shutil.copy(photo_dir / f"{name}.jpg", library / f"{name}.jpg")
        served.wait_until(lambda: served.paths() == disk_paths(library), 30, "copied photos indexed")
        hits = served.get("/api/similar?path=trip/chelsea.jpg&k=3")["results"]
        assert len(hits) == 3 and all(h["path"] != "trip/chelsea.jpg" for h in hits)
        embedded = served.get("/api/status")["embedded"]
        # Rename a directory: vectors reused, no model call.
        os.rename(library / "trip", library / "Trip 2024")
        served.wait_until(lambda: served.paths() == disk_paths(library), 30, "renamed directory")
        assert served.get("/api/status")["embedded"] == embedded, "a directory rename must not call the model"
        # Delete some.
        (library / "Trip 2024" / "coffee.jpg").unlink()
        (library / "camera.jpg").unlink()
        served.wait_until(lambda: served.paths() == disk_paths(library), 30, "deletions")
        # kill -9, change the folder while down, restart: converges.
        served.stop(signal.SIGKILL)
        shutil.copy(photo_dir / "moon.jpg", library / "moon.jpg")
        (library / "coins.jpg").unlink()
        served = Served(library, state)
        served.wait_idle(indexed=len(disk_paths(library)))
        assert served.paths() == disk_paths(library)
        assert served.stop() == 0
    finally:
        served.stop(signal.SIGKILL)


def test_offline_library_keeps_the_index_and_resumes(tmp_path, photo_dir, library):
    for name in NAMES[:3]:
        shutil.copy(photo_dir / f"{name}.jpg", library / f"{name}.jpg")
    aside = tmp_path / "unmounted"
    served = Served(library, tmp_path / "state")
    try:
        served.wait_idle(indexed=3)
        os.rename(library, aside)
        served.wait_until(lambda: served.get("/api/status")["state"] == "offline", 30, "offline")
        assert served.get("/api/status")["indexed"] == 3
        os.rename(aside, library)
        served.wait_idle(indexed=3, timeout=60)
        assert served.paths() == disk_paths(library)
    finally:
        served.stop(signal.SIGKILL)


class NotifySocket:
    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, name="notify-reader")
        self._thread.start()

    def _read(self):
        while not self._stop.is_set():
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except OSError:
                continue

    def count(self, prefix):
        return sum(1 for m in list(self.messages) for line in m.splitlines() if line.startswith(prefix))

    def wait_for(self, prefix, n=1, timeout=120):
        deadline = time.monotonic() + timeout
        while self.count(prefix) < n:
            assert time.monotonic() < deadline, f"no {prefix!r} x{n}; got {self.messages[-5:]}"
            time.sleep(0.05)

    def close(self):
        self._stop.set()
        self._thread.join()
        self.sock.close()


def test_serve_speaks_sd_notify_and_stops_cleanly_on_sigterm(tmp_path, library, photo_dir):
    shutil.copy(photo_dir / "chelsea.jpg", library / "chelsea.jpg")
    sock = NotifySocket(tmp_path / "notify.sock")
    served = Served(
        library,
        tmp_path / "state",
        extra_env={"NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "WATCHDOG_USEC": "1000000"},
    )
    try:
        sock.wait_for("READY=1")
        # READY means the socket is bound: the API answers at once.
        assert served.get("/api/status")["model"] == "efficientnet-lite0+r2"
        sock.wait_for("WATCHDOG=1", n=3, timeout=10)
        sock.wait_for("STATUS=", timeout=10)
        # `simd status` finds the daemon on its (non-default) port through the state dir's lock,
        # and a second simd on the same state dir is refused instead of indexing everything twice.
        env = {**os.environ, "SIMD_WEIGHTS_DOWNLOAD": "0"}
        st = subprocess.run(
            [sys.executable, "-m", "simd", "status", "--state-dir", str(tmp_path / "state"), "--json"],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        assert json.loads(st.stdout)["daemon"] is True, st.stderr
        second = subprocess.run(
            [
                sys.executable,
                "-m",
                "simd",
                "index",
                str(library),
                "--state-dir",
                str(tmp_path / "state"),
                "--model",
                "efficientnet-lite0",
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
        assert second.returncode == 1 and "another simd" in second.stderr and served.url in second.stderr
        started = time.monotonic()
        assert served.stop(signal.SIGTERM, timeout=10) == 0
        assert time.monotonic() - started < 10
        sock.wait_for("STOPPING=1", timeout=2)
    finally:
        served.stop(signal.SIGKILL)
        sock.close()


def test_watchdog_pings_stop_when_the_indexer_thread_dies(tmp_path, library, photo_dir, monkeypatch):
    """In-process, so the test can end the indexer thread; everything else is the real daemon."""
    from simd.daemon import Daemon

    shutil.copy(photo_dir / "coffee.jpg", library / "coffee.jpg")
    sock = NotifySocket(tmp_path / "notify.sock")
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify.sock"))
    monkeypatch.setenv("WATCHDOG_USEC", "400000")
    config = cfg.load(
        flags={
            "library": str(library),
            "state_dir": str(tmp_path / "state"),
            "port": free_port(),
            "model": "efficientnet-lite0",
            "settle_seconds": 0.3,
        },
        environ={},
    )
    daemon = Daemon(config)
    result = {}
    thread = threading.Thread(target=lambda: result.setdefault("rc", daemon.run()), name="daemon-under-test")
    thread.start()
    try:
        sock.wait_for("READY=1")
        sock.wait_for("WATCHDOG=1", n=2, timeout=10)
        assert daemon.healthy()
        daemon.worker.stop()
        time.sleep(0.5)  # a ping already in flight may still arrive
        before = sock.count("WATCHDOG=1")
        time.sleep(1.5)
        assert sock.count("WATCHDOG=1") == before, "pings must stop once the indexer is dead"
        assert not daemon.healthy()
    finally:
        daemon.stop_event.set()
        thread.join(20)
        sock.close()
    assert result.get("rc") == 0


def test_query_of_an_outside_image_is_answered_by_the_running_daemon(tmp_path, library, photo_dir):
    """`simd query` of a file outside the library uploads it to the daemon serving the index (its
    model is loaded already) instead of loading one; a bad file is refused before any model loads."""
    for name in ("chelsea.jpg", "coffee.jpg"):
        shutil.copy(photo_dir / name, library / name)
    state = tmp_path / "state"
    served = Served(library, state)
    try:
        served.wait_idle(indexed=2)
        outside = tmp_path / "outside.jpg"
        shutil.copy(photo_dir / "chelsea.jpg", outside)
        env = {**os.environ, "SIMD_WEIGHTS_DOWNLOAD": "0"}
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "simd",
                "query",
                str(outside),
                "--state-dir",
                str(state),
                "-k",
                "2",
                "--json",
                "--log-level",
                "DEBUG",
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
        assert r.returncode == 0, r.stderr
        assert f"asked the daemon at {served.url}" in r.stderr
        result = json.loads(r.stdout)
        assert [hit["path"] for hit in result["results"]] == ["chelsea.jpg", "coffee.jpg"]
        assert result["results"][0]["score"] > 0.99
        (tmp_path / "empty.jpg").write_bytes(b"")
        code = "import sys; from simd.cli import main; rc = main(sys.argv[1:]); print('tensorflow' in sys.modules, rc)"
        r = subprocess.run(
            [sys.executable, "-c", code, "query", str(tmp_path / "empty.jpg"), "--state-dir", str(state)],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
        assert r.stdout.split() == ["False", "1"], r.stderr
        assert "empty.jpg" in r.stderr and "empty" in r.stderr.split("empty.jpg", 1)[1]
    finally:
        served.stop(signal.SIGKILL)
