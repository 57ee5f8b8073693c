"""Which paths of the library simd never looks at: hidden files, NAS/OS housekeeping, partial downloads.

Only names are judged here; whether a file is an image is decided by its content (the indexer sniffs
it), never by its suffix. Paths are relative to the library root with `/` separators.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable

# Folders (and files) that operating systems, NAS boxes and recycle bins put into shared folders.
# Any path component with one of these names is skipped, with everything below it. Case-insensitive.
SYSTEM_NAMES = frozenset(
    name.lower()
    for name in (
        "@eaDir",  # Synology thumbnails and metadata
        "#recycle",
        "#snapshot",  # Synology recycle bin and snapshots
        "@Recycle",
        "@Recently-Snapshot",  # QNAP
        "lost+found",  # fsck
        "$RECYCLE.BIN",
        "System Volume Information",  # Windows
    )
)

# Files being written by someone else: partial downloads, editor swap and lock files, office lock
# files. Matched (case-insensitively) against the file's name; the finished file has another name.
TEMP_PATTERNS = (
    "*.tmp",
    "*.temp",
    "*.part",
    "*.partial",
    "*.crdownload",
    "*.download",
    "*.filepart",
    "*.!qb",
    "*.!ut",
    "*.swp",
    "*.swx",
    "~*",
    "*~",
    ".~lock*",
)


def _globs(patterns: Iterable[str]) -> re.Pattern | None:
    """One regex for a set of shell globs (fnmatch's own translation), matched with `.match`."""
    patterns = list(patterns)
    return re.compile("|".join(fnmatch.translate(p) for p in patterns)) if patterns else None


_TEMP = re.compile("|".join(fnmatch.translate(p) for p in TEMP_PATTERNS))


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
        self._user = _globs(p.lower() for p in self.patterns)

    def __repr__(self) -> str:
        return f"IgnoreRules({list(self.patterns)!r})"

    def ignored(self, rel_path: str, is_dir: bool) -> bool:
        rel = rel_path.strip("/")
        while rel.startswith("./"):
            rel = rel[2:]
        if not rel or rel == ".":
            return False  # the library root itself
        parts = rel.split("/")
        last = len(parts) - 1
        return any(
            self.ignored_entry(part, "/".join(parts[: i + 1]), is_dir if i == last else True)
            for i, part in enumerate(parts)
        )

    def ignored_entry(self, name: str, rel_path: str, is_dir: bool) -> bool:
        """`ignored` for a path whose folders above have passed already (as in a walk, which never
        enters an ignored folder): only its own name and relative path are judged, ~7x faster."""
        if name.startswith("."):
            return True
        low = name.lower()
        if low in SYSTEM_NAMES or (not is_dir and _TEMP.match(low)):
            return True
        user = self._user
        return user is not None and bool(user.match(low) or user.match(rel_path.lower()))
