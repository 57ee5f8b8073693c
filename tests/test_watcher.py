"""The watcher with real observers on real folders: settling, moves, atomic saves, ignore rules, trouble.

Every wait is a poll with a deadline; "nothing else arrives" is checked by sending a control file
afterwards and waiting for it, since the watcher emits in event order at the latest.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
from pathlib import Path

import pytest

from simd import observers
from simd import watcher as watcher_mod
from simd.ignore import IgnoreRules
from simd.observers import OVERFLOW, choose_observer, filesystem_type
from simd.watcher import ROOT_MISSING, Watcher

SETTLE = 0.3
# watchdog warns when `mkdir -p` makes it add the same callback twice (harmless, see simd/watcher.py);
# pytest's filterwarnings=error would turn that into an exception that kills the inotify thread.
pytestmark = pytest.mark.filterwarnings(r"ignore:Callback with id '\d+' already exists:RuntimeWarning")


class Collector:
    """on_paths and on_trouble: records each call with its time."""

    def __init__(self):
        self.calls: list[tuple[float, set[str]]] = []
        self.troubles: list[str] = []
        self._lock = threading.Lock()

    def __call__(self, paths: set[str]) -> None:
        with self._lock:
            self.calls.append((time.monotonic(), set(paths)))

    def trouble(self, reason: str) -> None:
        with self._lock:
            self.troubles.append(reason)

    def emitted(self) -> set[str]:
        with self._lock:
            return set().union(*(paths for _, paths in self.calls))

    def times(self, rel: str) -> list[float]:
        with self._lock:
            return [t for t, paths in self.calls if rel in paths]

    def wait_for(self, *rels: str, timeout: float = 5.0) -> None:
        wait_until(lambda: set(rels) <= self.emitted(), timeout, f"{rels} not emitted; got {self.emitted()}")

    def wait_trouble(self, text: str, timeout: float = 5.0) -> None:
        wait_until(lambda: any(text in t for t in self.troubles), timeout, f"no trouble {text!r}; got {self.troubles}")


def wait_until(predicate, timeout: float, message: str = "condition not met") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(message)
        time.sleep(0.02)


@pytest.fixture
def watch(library):
    """Start a watcher on `library`; stopped at teardown."""
    started = []

    def start(root: Path = library, **kw) -> tuple[Watcher, Collector]:
        c = Collector()
        kw.setdefault("settle_seconds", SETTLE)
        kw.setdefault("ignore", IgnoreRules())
        w = Watcher(root, kw.pop("on_paths", c), on_trouble=c.trouble, **kw)
        w.start()
        started.append(w)
        return w, c

    yield start
    for w in started:
        w.stop()


def test_new_file_is_emitted_once_after_settling(watch, library):
    w, c = watch()
    assert w.kind == "inotify" and w.is_alive()
    t0 = time.monotonic()
    (library / "a.jpg").write_bytes(b"x" * 1000)
    c.wait_for("a.jpg")
    assert c.times("a.jpg")[0] - t0 >= SETTLE
    (library / "control.jpg").write_bytes(b"y")
    c.wait_for("control.jpg")
    assert len(c.times("a.jpg")) == 1
    assert c.emitted() == {"a.jpg", "control.jpg"}


def test_slowly_written_file_is_emitted_once_after_the_writing_stops(watch, library):
    settle = 0.5
    w, c = watch(settle_seconds=settle)
    with open(library / "slow.jpg", "wb") as f:
        for _ in range(8):  # 8 chunks, 0.2 s apart: ~1.5 s of writing, pauses shorter than settle
            f.write(b"z" * 4096)
            f.flush()
            time.sleep(0.2)
        done = time.monotonic()
    c.wait_for("slow.jpg")
    assert c.times("slow.jpg")[0] >= done + settle * 0.9
    (library / "control.jpg").write_bytes(b"y")
    c.wait_for("control.jpg")
    assert len(c.times("slow.jpg")) == 1


def test_rename_emits_source_and_destination_together(watch, library):
    w, c = watch()
    (library / "a.jpg").write_bytes(b"x")
    c.wait_for("a.jpg")
    os.rename(library / "a.jpg", library / "b.jpg")
    c.wait_for("b.jpg")
    calls_with_b = [paths for _, paths in c.calls if "b.jpg" in paths]
    assert calls_with_b == [{"a.jpg", "b.jpg"}]


def test_directory_moved_in_renamed_and_out(watch, library, tmp_path):
    outside = tmp_path / "outside"
    (outside / "album").mkdir(parents=True)
    (outside / "album" / "1.jpg").write_bytes(b"1")
    w, c = watch()
    os.rename(outside / "album", library / "album")  # in: the directory, whose subtree gets reconciled
    c.wait_for("album")
    os.rename(library / "album", library / "album2")  # rename: both names
    c.wait_for("album", "album2")
    assert any({"album", "album2"} <= paths for _, paths in c.calls)
    n = len(c.times("album2"))
    os.rename(library / "album2", outside / "gone")  # out: the old name
    wait_until(lambda: len(c.times("album2")) > n, 5, "move out not emitted")
    assert "album/1.jpg" not in c.emitted()  # sub-events of directory moves are covered by the directory


@pytest.mark.parametrize("temp_name", [".photo.jpg.XXXXXX", "photo.jpg.tmp", "photo.jpg~"])
def test_atomic_save_through_a_temp_file_emits_the_target(watch, library, temp_name):
    (library / "photo.jpg").write_bytes(b"old")
    w, c = watch()
    (library / temp_name).write_bytes(b"new contents")
    os.replace(library / temp_name, library / "photo.jpg")
    c.wait_for("photo.jpg")
    (library / "control.jpg").write_bytes(b"y")
    c.wait_for("control.jpg")
    assert c.emitted() == {"photo.jpg", "control.jpg"}


def test_nested_directories_created_and_filled_at_once(watch, library):
    w, c = watch()
    deep = library / "2024" / "05" / "trip"
    deep.mkdir(parents=True)
    files = [deep / f"{i}.jpg" for i in range(5)] + [library / "2024" / "top.jpg"]
    for f in files:
        f.write_bytes(b"x")
    rels = [f.relative_to(library).as_posix() for f in files]

    def covered(rel: str) -> bool:
        parts = rel.split("/")
        return any("/".join(parts[:i]) in c.emitted() for i in range(1, len(parts) + 1))

    wait_until(lambda: all(covered(r) for r in rels), 5, f"not covered: {rels} by {c.emitted()}")
    assert w.is_alive()


def test_hidden_and_temporary_files_alone_emit_nothing(watch, library):
    w, c = watch()
    (library / ".hidden.jpg").write_bytes(b"x")
    (library / "download.jpg.part").write_bytes(b"x")
    (library / "@eaDir" / "a.jpg").mkdir(parents=True)
    (library / "@eaDir" / "a.jpg" / "SYNOFILE_THUMB.jpg").write_bytes(b"x")
    (library / ".git" / "objects").mkdir(parents=True)
    (library / ".git" / "objects" / "ab").write_bytes(b"x")
    time.sleep(SETTLE)
    (library / "control.jpg").write_bytes(b"y")
    c.wait_for("control.jpg")
    assert c.emitted() == {"control.jpg"}


def test_reading_a_file_is_not_a_change(watch, library):
    (library / "a.jpg").write_bytes(b"x" * 100)
    w, c = watch()
    for _ in range(3):
        assert (library / "a.jpg").read_bytes()
    time.sleep(SETTLE)
    (library / "control.jpg").write_bytes(b"y")
    c.wait_for("control.jpg")
    assert c.emitted() == {"control.jpg"}


def test_on_paths_exception_is_logged_and_the_watcher_carries_on(watch, library, caplog):
    c = Collector()
    failed = []

    def on_paths(paths):
        if not failed:
            failed.append(paths)
            raise RuntimeError("consumer broke")
        c(paths)

    w, _ = watch(on_paths=on_paths)
    (library / "first.jpg").write_bytes(b"x")
    wait_until(lambda: failed, 5, "on_paths not called")
    (library / "second.jpg").write_bytes(b"x")
    c.wait_for("second.jpg")
    assert w.is_alive()
    assert "consumer broke" in caplog.text and "on_paths failed" in caplog.text


def test_handler_exception_does_not_kill_the_observer(watch, library, caplog):
    class Exploding(IgnoreRules):
        def ignored(self, rel_path, is_dir):
            if "boom" in rel_path:
                raise ValueError("boom")
            return super().ignored(rel_path, is_dir)

    w, c = watch(ignore=Exploding())
    (library / "boom.jpg").write_bytes(b"x")
    wait_until(lambda: "dropping file event" in caplog.text, 5, "handler exception not logged")
    (library / "after.jpg").write_bytes(b"x")
    c.wait_for("after.jpg")
    assert w.is_alive()


def test_polling_observer(watch, library):
    w, c = watch(observer="polling", poll_interval=0.1)
    assert w.kind == "polling" and w.is_alive()
    (library / "a.jpg").write_bytes(b"x")
    (library / "sub").mkdir()
    (library / "sub" / "b.jpg").write_bytes(b"x")
    c.wait_for("a.jpg")
    wait_until(lambda: {"sub", "sub/b.jpg"} & c.emitted(), 5, "sub not emitted")
    os.rename(library / "a.jpg", library / "c.jpg")
    c.wait_for("c.jpg")


def test_root_removed_and_back(watch, library):
    w, c = watch()
    (library / "a.jpg").write_bytes(b"x")
    c.wait_for("a.jpg")
    (library / "a.jpg").unlink()
    library.rmdir()
    c.wait_trouble(ROOT_MISSING)
    assert w.is_alive() and w.kind == "none"
    library.mkdir()
    c.wait_trouble("library root is back")
    wait_until(lambda: w.kind == "inotify", 5, "observer not restarted")
    (library / "b.jpg").write_bytes(b"x")
    c.wait_for("b.jpg")


def test_dead_observer_is_restarted(watch, library, monkeypatch):
    monkeypatch.setattr(watcher_mod, "RESTART_BACKOFF", (0.2, 1.0))
    w, c = watch()
    old = w._observer
    old.fd.stop()  # the inotify reader thread ends, as if an exception had killed it
    c.wait_trouble("stopped unexpectedly")
    wait_until(lambda: w._observer is not None and w._observer is not old and w.is_alive(), 5, "not restarted")
    (library / "a.jpg").write_bytes(b"x")
    c.wait_for("a.jpg")


def test_missing_root_at_start(watch, tmp_path):
    w, c = watch(tmp_path / "not-yet")
    c.wait_trouble(ROOT_MISSING)
    assert w.is_alive() and w.kind == "none"


def test_queue_overflow_is_reported(watch, library):
    from watchdog.observers.inotify_c import InotifyConstants, InotifyEvent

    w, c = watch()
    # watchdog 7.1 handles IN_Q_OVERFLOW inside InotifyFD.handle_event and tells no handler; the
    # kernel sends it with wd -1. A real overflow needs a full kernel queue (16384 events unread).
    w._observer.fd.handle_event(InotifyEvent(-1, InotifyConstants.IN_Q_OVERFLOW, 0, b""))
    c.wait_trouble(OVERFLOW)
    (library / "a.jpg").write_bytes(b"x")  # the watches were rebuilt and still work
    c.wait_for("a.jpg")


def _fail_watches(monkeypatch, when):
    from watchdog.observers.inotify_c import InotifyFD

    real = InotifyFD._get_or_create_watch

    def fake(self, path, mask):
        if when(path):
            raise OSError(errno.ENOSPC, "inotify watch limit reached")
        return real(self, path, mask)

    monkeypatch.setattr(InotifyFD, "_get_or_create_watch", fake)


def test_watch_limit_below_the_root_is_reported(watch, library, monkeypatch, caplog):
    (library / "deep").mkdir()
    _fail_watches(monkeypatch, lambda path: path.endswith(b"/deep"))
    with caplog.at_level(logging.WARNING, logger="simd.watcher"):
        w, c = watch()
        c.wait_trouble("watch limit")
    assert "sysctl fs.inotify.max_user_watches=524288" in caplog.text and "/etc/sysctl.d/" in caplog.text
    assert w.is_alive() and w.kind == "inotify"
    (library / "a.jpg").write_bytes(b"x")  # the rest still works
    c.wait_for("a.jpg")


def test_watch_limit_on_the_root_does_not_raise(watch, library, monkeypatch):
    _fail_watches(monkeypatch, lambda path: True)
    w, c = watch()  # no exception
    c.wait_trouble("watch limit")
    assert w.is_alive() and w.kind == "none"


def test_inotify_instance_limit_does_not_raise(watch, monkeypatch, caplog):
    from watchdog.observers.inotify_c import InotifyFD

    def fail(cls):
        raise OSError(errno.EMFILE, "inotify instance limit reached")

    monkeypatch.setattr(InotifyFD, "_create_inotify_fd", classmethod(fail))
    with caplog.at_level(logging.WARNING, logger="simd.watcher"):
        w, c = watch()
        c.wait_trouble("instance limit")
    assert "fs.inotify.max_user_instances" in caplog.text
    assert w.is_alive() and w.kind == "none"


def test_stop_leaves_no_threads(library):
    before = set(threading.enumerate())
    for mode in ("native", "polling"):
        w = Watcher(
            library, lambda paths: None, settle_seconds=SETTLE, ignore=IgnoreRules(), observer=mode, poll_interval=0.1
        )
        w.start()
        assert len(set(threading.enumerate()) - before) >= 2
        w.stop()
        assert not w.is_alive()
        assert set(threading.enumerate()) - before == set()


def test_filesystem_type_of_real_paths(tmp_path):
    assert filesystem_type("/proc") == "proc"
    assert filesystem_type("/proc/self") == "proc"
    fs = filesystem_type(tmp_path)
    assert fs and fs != "unknown" and " " not in fs


def test_filesystem_type_from_mountinfo(tmp_path):
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(
        "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"
        "30 22 0:40 / /mnt/nas rw,relatime shared:5 - nfs4 nas:/photos rw,vers=4.2\n"
        "31 30 0:41 / /mnt/nas/local rw - tmpfs tmpfs rw\n"
        "32 22 0:42 / /mnt/my\\040photos rw - fuse.sshfs host:/p rw\n"
        "33 22 0:43 / /mnt/over rw - ext4 /dev/sdb1 rw\n"
        "34 22 0:44 / /mnt/over rw - cifs //srv/share rw\n"  # mounted on top of the previous one
    )
    cases = {
        "/": "ext4",
        "/home/a": "ext4",
        "/mnt/nas": "nfs4",
        "/mnt/nas/2024/a.jpg": "nfs4",
        "/mnt/nas/local/x": "tmpfs",
        "/mnt/nasty": "ext4",
        "/mnt/my photos/a": "fuse.sshfs",
        "/mnt/over/x": "cifs",
    }
    for path, expected in cases.items():
        assert filesystem_type(path, mountinfo=str(mountinfo)) == expected, path
    assert filesystem_type("/", mountinfo=str(tmp_path / "missing")) == "unknown"


@pytest.mark.parametrize(
    "fs, expected",
    [
        ("nfs4", "polling"),
        ("cifs", "polling"),
        ("fuse.sshfs", "polling"),
        ("ext4", "native"),
        ("btrfs", "native"),
        ("unknown", "native"),
    ],
)
def test_auto_chooses_polling_on_network_filesystems(monkeypatch, tmp_path, fs, expected):
    monkeypatch.setattr(observers, "filesystem_type", lambda path: fs)
    assert choose_observer(tmp_path, "auto") == expected
    assert choose_observer(tmp_path, "native") == "native"
    assert choose_observer(tmp_path, "polling") == "polling"


def test_bad_observer_mode_is_refused(library):
    with pytest.raises(ValueError):
        Watcher(library, lambda paths: None, ignore=IgnoreRules(), observer="magic")
