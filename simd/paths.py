"""Whether a path lies inside a root, judged on real paths (symlinks resolved): the one check that
keeps the state dir out of the library and every file served or queried inside it. And how a name
that is not valid UTF-8 is shown and read back (`display_path`, `from_display`)."""

from __future__ import annotations

import os
import re
import unicodedata


def is_inside(root: str | os.PathLike, path: str | os.PathLike) -> bool:
    """Whether `path` is `root` or lies under it."""
    real_root, real = os.path.realpath(root), os.path.realpath(path)
    return os.path.commonpath([real_root, real]) == real_root


def real_path_inside(root: str | os.PathLike, path: str | os.PathLike) -> str | None:
    """The real path of `path` when it lies strictly under `root` (not `root` itself), else None.
    A relative `path` is taken relative to `root`."""
    real_root = os.path.realpath(root)
    real = os.path.realpath(os.path.join(real_root, path))
    if real == real_root or os.path.commonpath([real_root, real]) != real_root:
        return None
    return real


# -- names as people see them ----------------------------------------------------------------------
# A name that is not valid UTF-8 reaches Python with each undecodable byte as a lone surrogate
# (U+DC80..U+DCFF, `surrogateescape`): exact, but neither JSON, a terminal nor a URL can carry it.
# Shown, each such byte is written `\xNN` (as Python's `backslashreplace` does); `from_display` reads
# that form back, so a name copied from the page or `simd errors` finds its file again.
_ESCAPED_BYTE = re.compile(r"\\x([89a-fA-F][0-9a-fA-F])")
_CONTROL_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def display_path(path: str, *, controls: bool = False) -> str:
    """`path` readable: each undecodable byte as `\\xNN` (any other lone surrogate as U+FFFD); with
    `controls`, control characters escaped too (a newline in a name must not break a line of text)."""
    try:
        path.encode("utf-8")
        shown = path
    except UnicodeEncodeError:
        shown = "".join(
            f"\\x{ord(c) - 0xDC00:02x}" if "\udc80" <= c <= "\udcff" else "\ufffd" if "\ud800" <= c <= "\udfff" else c
            for c in path
        )
    if controls and not shown.isprintable():
        shown = "".join(
            _CONTROL_ESCAPES.get(c, f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}")
            if unicodedata.category(c) == "Cc"
            else c
            for c in shown
        )
    return shown


def from_display(text: str) -> str:
    """The exact name `display_path` showed as `text` (`\\xNN` of bytes 0x80-0xFF back to those bytes)."""
    return _ESCAPED_BYTE.sub(lambda m: chr(0xDC00 + int(m[1], 16)), text)
