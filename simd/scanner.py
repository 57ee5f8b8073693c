"""Reconcile planning: compare what is on disk with what the store holds, cheaply.

The walk only stats files; nothing is read or hashed here. The plan says which paths are new, which
changed by `(size, mtime_ns)`, which rows are gone, and which are indexed with another model
(stale). The indexer applies the plan; hashing decides there whether a change is real.
"""

from __future__ import annotations

import hashlib
import os
import stat as stat_mod
from dataclasses import dataclass, field
from pathlib import Path

from simd.budget import Budget
from simd.errors import LibraryOffline
from simd.ignore import IgnoreRules
from simd.storevalues import FileRecord

HASH_CHUNK = 1 << 20


@dataclass(frozen=True)
class DiskFile:
    path: str  # relative, '/' separators
    size: int
    mtime_ns: int


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

    Uses os.scandir (its DirEntry.stat caches lstat on Linux) so 100k unchanged files cost one
    stat each. Unreadable directories are skipped, not fatal: their files simply are not seen.
    With follow_symlinks, directory cycles are broken by remembering (dev, inode) pairs.
    """
    found: dict[str, DiskFile] = {}
    seen_dirs: set[tuple[int, int]] = set()
    start = root / under if under else root
    stack = [(str(start), under)]
    while stack:
        abs_dir, rel_dir = stack.pop()
        try:
            entries = os.scandir(abs_dir)
        except OSError:
            continue
        with entries:
            for entry in entries:
                rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
                try:
                    is_link = entry.is_symlink()
                    if is_link and not follow_symlinks:
                        continue
                    st = entry.stat(follow_symlinks=follow_symlinks)
                except OSError:
                    continue
                if stat_mod.S_ISDIR(st.st_mode):
                    if ignore.ignored_entry(entry.name, rel, True):
                        continue
                    if follow_symlinks:
                        key = (st.st_dev, st.st_ino)
                        if key in seen_dirs:
                            continue
                        seen_dirs.add(key)
                    stack.append((entry.path, rel))
                elif stat_mod.S_ISREG(st.st_mode) and not ignore.ignored_entry(entry.name, rel, False):
                    found[rel] = DiskFile(rel, st.st_size, st.st_mtime_ns)
    return found


def stat_one(root: Path, rel: str, ignore: IgnoreRules, follow_symlinks: bool = False) -> DiskFile | None:
    """The DiskFile for one relative path, or None when it is missing, ignored or not a regular file."""
    if ignore.ignored(rel, False):
        return None
    try:
        st = os.stat(root / rel, follow_symlinks=follow_symlinks)
    except OSError:
        return None
    if not stat_mod.S_ISREG(st.st_mode):
        return None
    return DiskFile(rel, st.st_size, st.st_mtime_ns)


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
    plan.gone = [rec for rel, rec in records.items() if rel not in disk]
    # Stable order: new files in path order make progress and crash-recovery predictable.
    for items in (plan.new, plan.changed, plan.stale):
        items.sort(key=lambda f: f.path)
    return plan


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
