"""Which paths of the library simd never looks at: hidden files, NAS/OS housekeeping, partial downloads.

Only names are judged here; whether a file is an image is decided by its content (the indexer sniffs
it), never by its suffix. Paths are relative to the library root with `/` separators.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable

# Folders (and files) that operating systems, NAS boxes and recycle bins put into shared folders.
# Any path component with one of these names is skipped, with everything below it. Case-insensitive.
SYSTEM_NAMES = frozenset(name.lower() for name in (
    "@eaDir",                     # Synology thumbnails and metadata
    "#recycle", "#snapshot",      # Synology recycle bin and snapshots
    "@Recycle", "@Recently-Snapshot",  # QNAP
    "lost+found",                 # fsck
    "$RECYCLE.BIN", "System Volume Information",  # Windows
))

# Files being written by someone else: partial downloads, editor swap and lock files, office lock
# files. Matched (case-insensitively) against the file's name; the finished file has another name.
TEMP_PATTERNS = (
    "*.tmp", "*.temp", "*.part", "*.partial", "*.crdownload", "*.download", "*.filepart",
    "*.!qb", "*.!ut", "*.swp", "*.swx", "~*", "*~", ".~lock*",
)


class IgnoreRules:
    """`ignored(rel_path, is_dir)` says whether simd skips a path.

    Skipped: any path with a hidden component (name starting with "."; covers `._*` AppleDouble
    files and `.~lock*`), a component in `SYSTEM_NAMES`, a file whose name matches `TEMP_PATTERNS`,
    and whatever the configured `patterns` match. A pattern is a shell glob (`*`, `?`, `[...]`;
    `*` also crosses `/`) compared case-insensitively with the name and with the relative path of
    the path itself and of each folder above it, so `Private` or `2019/drafts` skip whole subtrees
    and `*.xmp` skips sidecar files anywhere.
    """

    def __init__(self, patterns: Iterable[str] = ()):
        self.patterns: tuple[str, ...] = tuple(p.strip().strip("/") for p in patterns if p and p.strip().strip("/"))
        self._user = tuple(p.lower() for p in self.patterns)

    def __repr__(self) -> str:
        return f"IgnoreRules({list(self.patterns)!r})"

    def ignored(self, rel_path: str, is_dir: bool) -> bool:
        rel = rel_path.strip("/")
        while rel.startswith("./"):
            rel = rel[2:]
        if not rel or rel == ".":
            return False  # the library root itself
        parts = rel.split("/")
        for part in parts:
            if part.startswith(".") or part.lower() in SYSTEM_NAMES:
                return True
        name = parts[-1].lower()
        if not is_dir and any(fnmatch.fnmatchcase(name, p) for p in TEMP_PATTERNS):
            return True
        if self._user:
            lowered = [p.lower() for p in parts]
            for i in range(len(lowered)):
                sub_name, sub_path = lowered[i], "/".join(lowered[: i + 1])
                for pattern in self._user:
                    if fnmatch.fnmatchcase(sub_name, pattern) or fnmatch.fnmatchcase(sub_path, pattern):
                        return True
        return False
