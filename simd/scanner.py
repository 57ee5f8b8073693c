"""Reconcile planning: compare what is on disk with what the store holds, cheaply.

The walk only stats files; nothing is read or hashed here. The plan says which paths are new, which
changed by `(size, mtime_ns)`, which rows are gone, and which are indexed with another model
(stale). The indexer applies the plan; hashing decides there whether a change is real.

Nothing on disk makes a walk fail (docs/RELIABILITY.md): a name that is not UTF-8 is a name like any
other (kept exact, as a `str` with surrogates); a file that cannot be stat'ed, or whose path is past
PATH_MAX (listed through a descriptor, one folder at a time), is a `DiskFile` with its `error`; a
folder that cannot be listed is one too, `unlisted`, and the rows under it are kept, not deleted.
Only the library root itself failing is LibraryOffline. Symlinks: see `walk` and `canonical`.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import heapq
import logging
import os
import stat as stat_mod
from dataclasses import dataclass, field
from pathlib import Path

from simd.budget import Budget
from simd.errors import LibraryOffline
from simd.ignore import IgnoreRules
from simd.paths import display_path
from simd.storevalues import FileRecord

log = logging.getLogger(__name__)

HASH_CHUNK = 1 << 20
PATH_MAX = 4096  # Linux: the longest path (with its NUL) a system call accepts


@dataclass(frozen=True)
class DiskFile:
    path: str  # relative, '/' separators; exact (undecodable bytes as surrogates)
    size: int
    mtime_ns: int
    error: str | None = None  # why it cannot be indexed (found by the walk): recorded as its failure
    unlisted: bool = False  # a folder that could not be listed (or a path not even stat'ed): rows under it are kept


@dataclass
class Plan:
    new: list[DiskFile] = field(default_factory=list)
    changed: list[DiskFile] = field(default_factory=list)  # stat differs from the store's row
    stale: list[DiskFile] = field(default_factory=list)  # unchanged, but indexed with another model
    gone: list[FileRecord] = field(default_factory=list)
    unchanged: int = 0
    scanned: int = 0


def check_root(root: Path) -> None:
    """Refuse to reconcile a library root that is missing or not a directory (e.g. unmounted)."""
    if not root.exists():
        raise LibraryOffline(f"library root {root} does not exist (unmounted?); the index is kept as it is")
    if not root.is_dir():
        raise LibraryOffline(f"library root {root} is not a directory")
    if not os.access(root, os.R_OK | os.X_OK):
        raise LibraryOffline(f"library root {root} is not readable")


def has_entries(directory: Path) -> bool:
    """True when the directory lists anything (an unmounted mount point lists nothing)."""
    try:
        with os.scandir(directory) as it:
            return next(it, None) is not None
    except OSError:
        return False


def walk(root: Path, ignore: IgnoreRules, *, follow_symlinks: bool = False, under: str = "") -> dict[str, DiskFile]:
    """Regular files under `root/under` that the ignore rules let through, by relative path.

    Uses os.scandir (its DirEntry knows the type without a stat; `stat()` caches lstat) so 100k
    unchanged files cost one stat each. What cannot be read is reported, never fatal: a file that
    cannot be stat'ed or whose path is too long comes back with its `error`; a folder that cannot be
    listed comes back as an `unlisted` entry with its `error` (the rows under it are kept).
    A directory is listed once, by (st_dev, st_ino), so a bind mount of a folder above it ends.

    Symlinks (only with follow_symlinks) are followed after every real folder has been listed, in
    path order, so what they reach is named as without links whenever it can be: a link to a file
    or folder inside the library (a link to the root or a folder above it: a loop) adds nothing; a
    folder or file outside it is listed once, under the first link to it in path order (hard links,
    two real names of one file, stay two entries). Past PATH_MAX no link is followed.
    """
    found: dict[str, DiskFile] = {}
    real_root = os.path.realpath(root)
    seen_dirs: set[tuple[int, int]] = set()
    seen_files: set[tuple[int, int]] = set()  # reached through links: a second link is not a second image
    links: list[tuple[str, str, str]] = []  # heap of (rel, path, name) of the symlinks met
    start = os.path.join(root, under) if under else os.fspath(root)
    with contextlib.suppress(OSError):
        st = os.stat(start)
        seen_dirs.add((st.st_dev, st.st_ino))
    dirs = [(start, under)]  # folders still to list
    while dirs or links:
        if not dirs:
            rel, path, name = heapq.heappop(links)
            _follow(path, rel, name, real_root, ignore, found, dirs, seen_dirs, seen_files)
            continue
        abs_dir, rel_dir = dirs.pop()
        try:
            _list(abs_dir, rel_dir, ignore, follow_symlinks, found, dirs, seen_dirs, links)
        except (FileNotFoundError, NotADirectoryError):
            continue  # gone since it was seen
        except OSError as e:
            if not rel_dir:
                raise LibraryOffline(f"cannot list the library root {root}: {e.strerror or e}") from None
            # Not a warning at every walk: the indexer logs the folder's failure row once, when written.
            log.debug("cannot list %s: %s; the files in it are left as they are", display_path(abs_dir), e)
            found[rel_dir] = DiskFile(rel_dir, 0, 0, f"cannot list this folder: {e.strerror or e}", unlisted=True)
    return found


def _list(abs_dir, rel_dir, ignore, follow_symlinks, found, dirs, seen_dirs, links) -> None:
    """One folder's entries into `found` (files), `dirs` (folders) and `links` (symlinks to follow)."""
    try:
        it, fd = os.scandir(abs_dir), None
    except OSError as e:
        if e.errno != errno.ENAMETOOLONG:
            raise
        fd = _open_long(abs_dir)  # past PATH_MAX: list it through a file descriptor
        it = os.scandir(fd)
    try:
        with it:
            for entry in it:
                rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
                path = os.path.join(abs_dir, entry.name)
                try:
                    if entry.is_symlink():
                        if follow_symlinks and fd is None:
                            heapq.heappush(links, (rel, path, entry.name))
                    elif entry.is_dir(follow_symlinks=False):
                        if not ignore.ignored_entry(entry.name, rel, True) and (key := _key(entry)) not in seen_dirs:
                            if key is not None:
                                seen_dirs.add(key)
                            dirs.append((path, rel))
                    elif entry.is_file(follow_symlinks=False) and not ignore.ignored_entry(entry.name, rel, False):
                        st = entry.stat(follow_symlinks=False)
                        error = _too_long(path) if fd is not None else None
                        found[rel] = DiskFile(rel, st.st_size, st.st_mtime_ns, error)
                except FileNotFoundError:
                    continue
                except OSError as e:  # this entry only
                    found[rel] = DiskFile(rel, 0, 0, _reason(e, path))
    finally:
        if fd is not None:
            os.close(fd)


def _key(entry: os.DirEntry) -> tuple[int, int] | None:
    """A directory's (st_dev, st_ino); None past PATH_MAX (its listing, by descriptor, comes next)."""
    try:
        st = entry.stat(follow_symlinks=False)
    except OSError as e:
        if e.errno != errno.ENAMETOOLONG:
            raise
        return None
    return st.st_dev, st.st_ino


def _follow(path, rel, name, real_root, ignore, found, dirs, seen_dirs, seen_files) -> None:
    """A symlink met by `walk` with follow_symlinks: what it reaches, unless it is reached otherwise."""
    try:
        st = os.stat(path)
    except OSError:
        return  # dangling, or a loop of links (ELOOP): not a file
    is_dir = stat_mod.S_ISDIR(st.st_mode)
    if not is_dir and not stat_mod.S_ISREG(st.st_mode):
        return
    if ignore.ignored_entry(name, rel, is_dir) or _reached_without_links(real_root, path, ignore, is_dir):
        return
    key = (st.st_dev, st.st_ino)
    seen = seen_dirs if is_dir else seen_files
    if key in seen:
        return
    seen.add(key)
    if is_dir:
        dirs.append((path, rel))
    else:
        found[rel] = DiskFile(rel, st.st_size, st.st_mtime_ns)


def _reached_without_links(real_root: str, path: str, ignore: IgnoreRules, is_dir: bool) -> bool:
    """Whether the target of `path` lies inside the library (or is the root) where a walk that
    follows no link lists it: then that is its name, and this link adds nothing."""
    real = os.path.realpath(path)
    if real == real_root:
        return True
    if not real.startswith(real_root.rstrip("/") + "/"):
        return False
    return not ignore.ignored(os.path.relpath(real, real_root), is_dir)


def _open_long(path: str) -> int:
    """A file descriptor of the directory `path`, opened one component at a time (for a path longer
    than PATH_MAX, which no call taking a path accepts)."""
    fd = os.open("/" if path.startswith("/") else ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in path.split("/"):
            if part:
                nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=fd)
                os.close(fd)
                fd = nxt
    except BaseException:
        os.close(fd)
        raise
    return fd


def _too_long(path: str) -> str:
    return (
        f"path too long: {len(os.fsencode(path))} bytes, more than the {PATH_MAX - 1} this system opens; "
        "shorten the names of the folders above it"
    )


def _reason(e: OSError, path: str) -> str:
    """What a file's OSError means, as `simd errors` shows it."""
    return _too_long(path) if e.errno == errno.ENAMETOOLONG else f"cannot read: {e.strerror or e}"


def stat_one(root: Path, rel: str, ignore: IgnoreRules, follow_symlinks: bool = False) -> DiskFile | None:
    """The DiskFile for one relative path, or None when it is missing, ignored or not a regular file
    (or a symlink, without follow_symlinks); a file that is there but cannot be stat'ed comes back
    with its `error`."""
    if ignore.ignored(rel, False):
        return None
    path = os.path.join(root, rel)
    try:
        st = os.stat(path, follow_symlinks=follow_symlinks)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as e:
        if e.errno == errno.ELOOP:
            return None
        if e.errno != errno.ENAMETOOLONG:  # a file or a folder? unknown: what is under it is kept
            return DiskFile(rel, 0, 0, _reason(e, path), unlisted=True)
        try:
            fd = _open_long(os.path.dirname(path))
        except OSError:
            return None
        try:
            st = os.stat(os.path.basename(path), dir_fd=fd, follow_symlinks=follow_symlinks)
        except OSError:
            return None
        finally:
            os.close(fd)
        return DiskFile(rel, st.st_size, st.st_mtime_ns, _too_long(path)) if stat_mod.S_ISREG(st.st_mode) else None
    if not stat_mod.S_ISREG(st.st_mode):
        return None
    return DiskFile(rel, st.st_size, st.st_mtime_ns)


def scan_path(
    root: Path, rel: str, ignore: IgnoreRules, *, follow_symlinks: bool = False
) -> tuple[str | None, dict[str, DiskFile]]:
    """What a walk of the whole library would list at or under `rel` (a path a watcher reported),
    and the name it lists it under: `rel` itself, or, when `rel` is reached through a symlink, the
    name without links (with follow_symlinks; without, nothing: a walk does not enter links). The
    name is None when a walk never lists `rel`."""
    name = canonical(root, rel, ignore, follow_symlinks)
    if name is None:
        return None, {}
    path = os.path.join(root, name)
    try:
        st = os.stat(path, follow_symlinks=follow_symlinks)
    except OSError:
        st = None  # missing, a loop, or too long: stat_one says which
    if st is not None and stat_mod.S_ISDIR(st.st_mode):
        if ignore.ignored(name, True):
            return name, {}
        return name, walk(root, ignore, follow_symlinks=follow_symlinks, under=name)
    f = stat_one(root, name, ignore, follow_symlinks)
    return name, ({name: f} if f is not None else {})


def canonical(root: Path, rel: str, ignore: IgnoreRules, follow_symlinks: bool) -> str | None:
    """The name under which `walk` lists what `rel` reaches (see `walk`), or None when it never does
    (`rel` passes through a symlink and links are not followed)."""
    real_root = os.path.realpath(root)
    lexical = os.path.join(real_root, rel)
    real = os.path.realpath(lexical)
    if real == lexical:
        return rel
    if not follow_symlinks:
        return None
    if real.startswith(real_root.rstrip("/") + "/"):
        real_rel = os.path.relpath(real, real_root)
        if not ignore.ignored(real_rel, os.path.isdir(real)):
            return real_rel
    return rel


def make_plan(disk: dict[str, DiskFile], records: dict[str, FileRecord], model: str) -> Plan:
    plan = Plan(scanned=len(disk))
    for rel, f in disk.items():
        rec = records.get(rel)
        if rec is None:
            plan.new.append(f)
        elif rec.size != f.size or rec.mtime_ns != f.mtime_ns:
            plan.changed.append(f)
        elif rec.state == "ok" and rec.model != model:
            plan.stale.append(f)
        else:
            plan.unchanged += 1  # failed files are not retried until their size or mtime changes
    unlisted = {f.path for f in disk.values() if f.unlisted}  # what is under them is unknown, not gone
    plan.gone = [rec for rel, rec in records.items() if rel not in disk and not _under_any(rel, unlisted)]
    # Stable order: new files in path order make progress and crash-recovery predictable.
    for items in (plan.new, plan.changed, plan.stale):
        items.sort(key=lambda f: f.path)
    return plan


def _under_any(rel: str, folders: set[str]) -> bool:
    i = rel.rfind("/") if folders else -1
    while i > 0:
        if rel[:i] in folders:
            return True
        i = rel.rfind("/", 0, i)
    return False


def file_hash(path: Path, budget: Budget | None = None) -> str:
    """BLAKE2b-128 of the bytes: content identity for reuse across renames, moves and copies.
    `budget` is checked at every MB read: `budget.OverBudget` past its deadline, `Stopped` when its
    stop event is set (a multi-GB file never holds the indexer, or a stop, for long)."""
    h = hashlib.blake2b(digest_size=16)
    done = 0
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK):
            h.update(chunk)
            done += len(chunk)
            if budget is not None:
                budget.check(done)
    return h.hexdigest()
