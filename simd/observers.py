"""The file observers the watcher runs, and how it chooses one: inotify on local filesystems (with
reports of lost events and of the kernel's watch limits), polling on network filesystems, where
inotify sees nothing that other machines change.

Both walk the tree as `scanner.walk` does: each directory once, by (st_dev, st_ino). watchdog's own
walks (`os.walk(followlinks=True)` for inotify, a recursion on `os.stat` for polling) never stop at a
symlink loop: one loop goes 40 links deep, two make that 2^40 paths, and `start()` never returns.
The polling walk also follows links only when asked, and skips a folder it cannot list instead of
failing every poll.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import stat as stat_mod
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

from watchdog import events as ev
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingEmitter
from watchdog.utils.dirsnapshot import DirectorySnapshot

log = logging.getLogger(__name__)

# inotify sees only changes made through this kernel: on these, changes made elsewhere are invisible.
NETWORK_FILESYSTEMS = frozenset(
    {
        "nfs",
        "nfs4",
        "cifs",
        "smb3",
        "smbfs",
        "9p",
        "afs",
        "ceph",
        "glusterfs",
        "lustre",
        "gpfs",
        "ocfs2",
        "beegfs",
        "vboxsf",
        "vmhgfs",
        "prl_fs",
        "drvfs",
        "davfs",
        "fuse.sshfs",
        "fuse.glusterfs",
        "fuse.cephfs",
        "fuse.rclone",
        "fuse.s3fs",
        "fuse.gcsfuse",
        "fuse.davfs",
        "fuse.vmhgfs-fuse",
        "fuse.smbnetfs",
    }
)
# Opens, reads and directory mtime changes are left out: reading a file (as the indexer does) must
# not look like a change, and a directory's own events already name the paths that changed in it.
EVENTS = [
    ev.FileCreatedEvent,
    ev.FileDeletedEvent,
    ev.FileModifiedEvent,
    ev.FileAttribEvent,
    ev.FileMovedEvent,
    ev.FileClosedEvent,
    ev.DirCreatedEvent,
    ev.DirDeletedEvent,
    ev.DirMovedEvent,
]
OVERFLOW = "event queue overflowed"
LIMITS = {  # errno -> (trouble reason, the fix to log)
    errno.ENOSPC: (
        "inotify watch limit reached; some folders are not watched",
        "raise it: `sysctl fs.inotify.max_user_watches=524288`, and persist it with "
        "`echo fs.inotify.max_user_watches=524288 > /etc/sysctl.d/90-simd.conf`",
    ),
    errno.EMFILE: (
        "inotify instance limit reached; the library is not watched",
        "raise it: `sysctl fs.inotify.max_user_instances=1024`, and persist it in /etc/sysctl.d/",
    ),
}
HINTS = {
    OVERFLOW: "changes were lost and are being reconciled; if this repeats, raise "
    "fs.inotify.max_queued_events (`sysctl fs.inotify.max_queued_events=65536`, persist in "
    "/etc/sysctl.d/)",
    **dict(LIMITS.values()),
}
# `mkdir -p a/b/c` makes watchdog add a watch group's callback twice to the same watch (once while
# walking the new tree, once for the queued IN_CREATE); it warns, with a huge repr, and overwrites
# the callback with itself, which is harmless. Under `-W error` that warning kills the inotify thread.
warnings.filterwarnings("ignore", message=r"Callback with id '\d+' already exists", category=RuntimeWarning)


def filesystem_type(path: str | Path, *, mountinfo: str = "/proc/self/mountinfo") -> str:
    """The type of the filesystem holding `path` ("ext4", "nfs4", "fuse.sshfs", ...), or "unknown"."""
    real = os.path.realpath(path)
    best, best_len = "unknown", -1
    try:
        with open(mountinfo, encoding="utf-8", errors="surrogateescape") as f:
            for line in f:
                fields = line.split()
                if "-" not in fields[6:]:
                    continue
                sep = fields.index("-", 6)
                point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), fields[4])  # \040 is a space
                under = point == "/" or real == point or real.startswith(point.rstrip("/") + "/")
                if under and len(point) >= best_len:  # longest prefix; on a tie the later (upper) mount
                    best, best_len = fields[sep + 1], len(point)
    except (OSError, IndexError, ValueError) as e:
        log.debug("cannot read %s: %s", mountinfo, e)
    return best


def choose_observer(root: str | Path, mode: str = "auto") -> str:
    """ "polling" or "native" for `mode` auto|native|polling (auto: polling on network filesystems)."""
    if mode in ("native", "polling"):
        return mode
    fs = filesystem_type(root)
    return "polling" if fs in NETWORK_FILESYSTEMS else "native"


def walk_once(top, followlinks: bool, inside=None):
    """`os.walk(top, followlinks=...)` that enters each directory once (by device and inode): the
    names in `dirnames` are only those still to visit (a second way to a directory is left out).
    With `inside` (a real path, of top's type), a link to a directory in that tree is not entered
    either: the directory is reached by its own name (as `scanner.walk` names it)."""
    seen: set[tuple[int, int]] = set()
    with contextlib.suppress(OSError):
        st = os.stat(top)
        seen.add((st.st_dev, st.st_ino))
    for root, dirnames, filenames in os.walk(top, followlinks=followlinks):
        keep = []
        for name in dirnames:
            path = os.path.join(root, name)
            try:
                st = os.stat(path, follow_symlinks=followlinks)
            except OSError:
                continue
            if stat_mod.S_ISDIR(st.st_mode):
                if (st.st_dev, st.st_ino) in seen:
                    continue
                if followlinks and inside is not None and os.path.islink(path) and _within(inside, path):
                    continue
            seen.add((st.st_dev, st.st_ino))
            keep.append(name)
        dirnames[:] = keep
        yield root, dirnames, filenames


def _within(real_top, path) -> bool:
    real = os.path.realpath(path)
    return real == real_top or real.startswith(os.path.join(real_top, real_top[:0]))


class _OnceSnapshot(DirectorySnapshot):
    """watchdog's polling snapshot, listing each directory once and skipping (not failing on) a
    folder below the root that it cannot list; `stat` is os.stat or os.lstat (links not followed).
    Following links, a link to a directory inside the tree is not entered (as `walk_once`)."""

    def __init__(self, path: str, *, recursive: bool, stat: Callable[[str], os.stat_result]):
        self._simd_seen: set[tuple[int, int]] = set()
        self._simd_inside = os.path.realpath(path) if stat is os.stat else None
        super().__init__(path, recursive=recursive, stat=stat)

    def walk(self, root):
        seen, inside = self._simd_seen, self._simd_inside
        first = not seen
        try:
            st = os.stat(root)
            key = (st.st_dev, st.st_ino)
            if key in seen:
                return
            seen.add(key)
            names = [entry.name for entry in self.listdir(root)]
        except OSError:
            if first:
                raise  # the watched root: the emitter reports it (gone, or retried next poll)
            return
        entries = []
        for name in names:
            path = os.path.join(root, name)
            with contextlib.suppress(OSError):
                entry = (path, self.stat(path))
                entries.append(entry)
                yield entry
        if self.recursive:
            for path, st in entries:
                if stat_mod.S_ISDIR(st.st_mode):
                    if inside is None or not (os.path.islink(path) and _within(inside, path)):
                        yield from self.walk(path)


class _PollingEmitter(PollingEmitter):
    def __init__(self, event_queue, watch, *, timeout=1.0, event_filter=None):
        super().__init__(event_queue, watch, timeout=timeout, event_filter=event_filter)
        follow = bool(getattr(watch, "follow_symlink", False))
        self._take_snapshot = lambda: _OnceSnapshot(
            self.watch.path, recursive=self.watch.is_recursive, stat=os.stat if follow else os.lstat
        )


class _PollingObserver(BaseObserver):
    def __init__(self, timeout: float):
        super().__init__(_PollingEmitter, timeout=timeout)


if sys.platform.startswith("linux"):
    from watchdog.observers.inotify import InotifyEmitter, InotifyWatchGroup
    from watchdog.observers.inotify_c import InotifyConstants, InotifyEvent, InotifyFD, Mask

    class _OnceWatchGroup(InotifyWatchGroup):
        """watchdog's recursive watches, added by `walk_once` (see the module's docstring)."""

        def _add_all_callbacks(self, path: bytes) -> None:
            is_dir = os.path.isdir(path)
            self._add_callback(path)
            if is_dir and self.is_recursive:
                for root, dirnames, _ in walk_once(path, self.follow_symlink, os.path.realpath(self.path)):
                    for dirname in dirnames:
                        full_path = os.path.join(root, dirname)
                        if not self.follow_symlink and os.path.islink(full_path):
                            continue
                        self._add_callback(full_path)

        def _recursive_simulate(self, src_path: bytes) -> list:
            events = []
            for root, dirnames, filenames in walk_once(src_path, self.follow_symlink, os.path.realpath(self.path)):
                wd_root = self._active_callbacks_by_path.get(root)
                if wd_root is None:
                    continue
                for name in dirnames:
                    events.append(
                        InotifyEvent(wd_root, Mask(InotifyConstants.IN_CREATE | InotifyConstants.IN_ISDIR), 0, name)
                    )
                for name in filenames:
                    events.append(InotifyEvent(wd_root, InotifyConstants.IN_CREATE, 0, name))
            return events

    class _OnceInotifyEmitter(InotifyEmitter):
        def on_thread_start(self) -> None:
            self._inotify = _OnceWatchGroup(
                self._inotify_fd,
                os.fsencode(self.watch.path),
                is_recursive=self.watch.is_recursive,
                event_mask=self.get_event_mask_from_filter(),
                follow_symlink=self.watch.follow_symlink,
            )

    class _ReportingInotifyFD(InotifyFD):
        """watchdog's inotify reader, plus a report of overflows and of watch/instance limits."""

        def __init__(self, report: Callable[[str], None]):
            self._report = report
            try:
                super().__init__()
            except OSError as e:
                self._report_limit(e)
                raise

        def _report_limit(self, e: OSError) -> None:
            if e.errno in LIMITS:
                self._report(LIMITS[e.errno][0])

        def handle_event(self, event) -> None:
            if event.is_queue_overflow:
                self._report(OVERFLOW)
            super().handle_event(event)

        def add_callback(self, path, mask, callback, id_):
            try:
                return super().add_callback(path, mask, callback, id_)
            except OSError as e:  # below the root, watchdog swallows this error: report it here
                self._report_limit(e)
                raise

    class _InotifyObserver(BaseObserver):
        """watchdog's InotifyObserver with our reporting FD (emitters take it as `inotify_fd`)."""

        def __init__(self, report: Callable[[str], None]):
            self.fd = _ReportingInotifyFD(report)
            self.fd.start()
            super().__init__(_OnceInotifyEmitter, inotify_fd=self.fd)

        def on_thread_stop(self) -> None:
            super().on_thread_stop()
            self.fd.stop()
            self.fd.join()


def make_observer(kind: str, report: Callable[[str], None], poll_interval: float) -> BaseObserver:
    """A new, unstarted observer: polling, or the platform's native one (on Linux, inotify that
    reports overflows and limits through `report`)."""
    if kind == "polling":
        return _PollingObserver(timeout=poll_interval)
    if sys.platform.startswith("linux"):
        return _InotifyObserver(report)
    from watchdog.observers import Observer

    return Observer()


def observer_healthy(obs: BaseObserver) -> bool:
    fd = getattr(obs, "fd", None)
    return obs.is_alive() and all(e.is_alive() for e in tuple(obs.emitters)) and (fd is None or fd.is_alive())


def stop_observer(obs: BaseObserver, timeout: float) -> bool:
    """Stop an observer; True when its thread ended (or never started)."""
    try:
        obs.stop()
        if obs.ident is not None:  # started
            obs.join(timeout)
    except Exception:
        log.exception("stopping the file observer failed")
    return not obs.is_alive()
