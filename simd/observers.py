"""The file observers the watcher runs, and how it chooses one: inotify on local filesystems (with
reports of lost events and of the kernel's watch limits), polling on network filesystems, where
inotify sees nothing that other machines change.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

from watchdog import events as ev
from watchdog.observers.api import BaseObserver

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


if sys.platform.startswith("linux"):
    from watchdog.observers.inotify import InotifyEmitter
    from watchdog.observers.inotify_c import InotifyFD

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
            super().__init__(InotifyEmitter, inotify_fd=self.fd)

        def on_thread_stop(self) -> None:
            super().on_thread_stop()
            self.fd.stop()
            self.fd.join()


def make_observer(kind: str, report: Callable[[str], None], poll_interval: float) -> BaseObserver:
    """A new, unstarted observer: polling, or the platform's native one (on Linux, inotify that
    reports overflows and limits through `report`)."""
    if kind == "polling":
        from watchdog.observers.polling import PollingObserver

        return PollingObserver(timeout=poll_interval)
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
