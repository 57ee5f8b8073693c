"""Moving copies to the desktop trash (POST /api/duplicates/trash): opt-in, checked, logged.

simd never deletes. With `allow_trash = true` it moves files to the freedesktop trash (send2trash:
`$XDG_DATA_HOME/Trash`, or the volume's `.Trash-UID`), where the user can restore them; the index
follows through the watcher like any other removal. Every path is logged at INFO before and after.
Refused before any file moves when trash is disabled (`TrashDisabled`, 403) or when this process
cannot write where the files are (`LibraryReadOnly`, 409): the hardened systemd unit makes the
library read-only on purpose (`ProtectHome=read-only`, `ProtectSystem=strict`, `ReadOnlyPaths=`).
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from simd.errors import SimdError

log = logging.getLogger(__name__)


class TrashDisabled(SimdError):
    code = "trash_disabled"
    http_status = 403


class LibraryReadOnly(SimdError):
    code = "library_read_only"
    http_status = 409


class WouldTrashAll(SimdError):
    code = "would_trash_all"
    http_status = 409


class NotADuplicate(SimdError):
    code = "not_a_duplicate"
    http_status = 409


DISABLED_MESSAGE = (
    "moving files to the trash is disabled; simd never deletes, and trashes only when allowed: set "
    "allow_trash = true in the config file (or SIMD_ALLOW_TRASH=1) and restart simd; or act on the "
    "list yourself: `simd duplicates --print0 | xargs -0 gio trash`"
)


def check_writable(paths: list[str], library_root: Path) -> None:
    """LibraryReadOnly unless this process may move every one of `paths` (write access to its folder)."""
    for path in paths:
        folder = os.path.dirname(path)
        if not os.access(folder, os.W_OK):
            read_only_fs = _read_only_fs(folder)
            why = (
                "the library is read-only for this process"
                + (" (a read-only mount)" if read_only_fs else " (no write permission on its folder)")
                + ": simd's systemd unit makes it so on purpose (ProtectHome=read-only, ProtectSystem=strict, "
                "ReadOnlyPaths=); to let simd trash, add ReadWritePaths="
                f"{library_root} to the unit (systemctl edit), or trash the files yourself: "
                "`simd duplicates --print0 | xargs -0 gio trash`"
            )
            raise LibraryReadOnly(f"cannot move {path} to the trash: {why}")


def _read_only_fs(folder: str) -> bool:
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def on_disk_as_indexed(path: str, row: Mapping) -> bool:
    """The file is on disk as the index knows it: same size and modification time. A copy the index
    has not caught up with (trashed a moment ago, replaced, gone) is neither trashed nor counted on."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    return st.st_size == row["size"] and st.st_mtime_ns == row["mtime_ns"]


def check_groups(
    groups: Iterable[Mapping], wanted: set[int], gone: set[int], still_there: Callable[[int], bool], threshold: float
) -> None:
    """Refuse, before any file moves, unless every wanted image is in a group at `threshold` and each
    such group keeps a copy that is not wanted, not trashed before (`gone`: the index may not know
    yet) and still on disk as indexed (`still_there`): a stale listing must never empty a group."""
    grouped: set[int] = set()
    for g in groups:
        ids = {m["id"] for m in g["images"]}
        if not ids & wanted:
            continue
        grouped |= ids & wanted
        if not any(still_there(i) for i in sorted(ids - wanted - gone)):
            raise WouldTrashAll(
                f"refused: this would leave no copy in group {g['id']} "
                f"({', '.join(m['path'] for m in g['images'])}) on disk; leave at least one (its keeper: "
                f"{g['images'][0]['path']})"
            )
    if lost := sorted(wanted - grouped):
        raise NotADuplicate(
            f"refused: image(s) {', '.join(map(str, lost))} are in no group of copies at threshold {threshold}; "
            "only duplicates are trashed here"
        )


def move_to_trash(files: list[tuple[str, str]]) -> tuple[list[str], list[dict]]:
    """Each (shown path, real path) to the desktop trash: (shown paths moved, [{"path", "error"}] for
    those that were not)."""
    from send2trash import send2trash  # only when trash is allowed and asked for

    trashed: list[str] = []
    failed: list[dict] = []
    for shown, path in files:
        log.info("moving to the trash (asked through the duplicates API): %s", path)
        try:
            send2trash(path)
        except OSError as e:
            reason = e.strerror or str(e)
            if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
                reason += " (the library is read-only for simd)"
            log.warning("could not move %s to the trash: %s", path, reason)
            failed.append({"path": shown, "error": reason})
            continue
        except Exception as e:  # send2trash raises its own errors too (e.g. no trash found)
            log.warning("could not move %s to the trash: %s", path, e)
            failed.append({"path": shown, "error": str(e)})
            continue
        log.info("moved to the trash: %s", path)
        trashed.append(shown)
    return trashed, failed
