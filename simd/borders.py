"""Letterbox trimming: the photo inside a padded copy (chat apps and Instagram pad to 1:1 or 9:16).

A copy on a white or black canvas embeds as "a small photo on a big plain field"; trimming the
padding before embedding gives the network the photo itself. Only padding is trimmed, never content:

- a side is padding only when its strip is one colour (every row, or column, has >= 99 % of its
  pixels within ``tolerance`` of the outermost line's colour, and that colour does not drift);
- padding comes in pairs: top and bottom (or left and right) are trimmed together, and only when
  both are padding of the same colour and each is at least ``min_fraction`` of that side. A
  photo whose sky is uniform at the top has no matching band at the bottom, so it is left whole;
- letterboxing pads one axis only: when both axes have bands, the image is an object on a plain
  field (clip art, a product shot), whose field is part of how it looks, and it stays whole;
- at most ``max_fraction`` of a side is trimmed in total, so a nearly plain image stays whole.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

TOLERANCE = 12  # per channel, 0..255: JPEG ringing beside a hard edge stays inside it
MIN_FRACTION = 0.02  # a band thinner than this is a frame line, not letterboxing
MAX_FRACTION = 0.45  # each side; the photo left is never smaller than 10 % of the canvas side
_COVER = 0.99  # share of a line's pixels that must match the colour


def _band(lines: np.ndarray, tolerance: int) -> tuple[int, np.ndarray]:
    """How many leading lines of ``lines`` (n, width, 3) are one colour, and that colour."""
    colour = np.median(lines[0], axis=0)
    close = np.all(np.abs(lines - colour) <= tolerance, axis=2).mean(axis=1) >= _COVER
    depth = int(np.argmin(close)) if not close.all() else len(close)
    return depth, colour


def letterbox(
    image: Image.Image,
    *,
    tolerance: int = TOLERANCE,
    min_fraction: float = MIN_FRACTION,
    max_fraction: float = MAX_FRACTION,
) -> tuple[int, int, int, int] | None:
    """The box (left, top, right, bottom) of the content inside paired uniform bands, or None."""
    a = np.asarray(image.convert("RGB"), dtype=np.int16)
    h, w = a.shape[:2]
    if h < 8 or w < 8:
        return None
    box = [0, 0, w, h]
    padded = 0
    for axis in (0, 1):  # 0: top/bottom bands (rows), 1: left/right bands (columns)
        lines = a if axis == 0 else a.transpose(1, 0, 2)
        n = lines.shape[0]
        limit = int(n * max_fraction)
        first, c1 = _band(lines[:limit], tolerance)
        last, c2 = _band(lines[::-1][:limit], tolerance)
        if min(first, last) < max(1, round(n * min_fraction)) or np.abs(c1 - c2).max() > tolerance:
            continue
        if first >= limit or last >= limit:  # the whole strip is plain: nothing to tell content by
            continue
        padded += 1
        if axis == 0:
            box[1], box[3] = first, h - last
        else:
            box[0], box[2] = first, w - last
    if padded != 1:
        return None
    return (box[0], box[1], box[2], box[3])


def trim(image: Image.Image, **kw) -> Image.Image:
    """``image`` without its paired uniform bands (itself when it has none)."""
    box = letterbox(image, **kw)
    return image if box is None else image.crop(box)
