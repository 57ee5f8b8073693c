"""Whether a path lies inside a root, judged on real paths (symlinks resolved): the one check that
keeps the state dir out of the library and every file served or queried inside it."""

from __future__ import annotations

import os


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
