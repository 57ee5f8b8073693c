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


def _close(lines: np.ndarray, colour: np.ndarray, tolerance: int) -> np.ndarray:
    """Per line of ``lines`` (n, width, 3): are >= 99 % of its pixels within tolerance of ``colour``?"""
    return np.all(np.abs(lines.astype(np.int16) - colour) <= tolerance, axis=2).mean(axis=1) >= _COVER


def _band(lines: np.ndarray, tolerance: int) -> tuple[int, np.ndarray]:
    """How many leading lines of ``lines`` (n, width, 3) are one colour, and that colour. Read in
    chunks that double, so a photo (no band: its first line already fails) costs one line."""
    colour = np.median(lines[0], axis=0)
    depth, chunk = 0, 1
    while depth < len(lines):
        close = _close(lines[depth : depth + chunk], colour, tolerance)
        if not close.all():
            return depth + int(np.argmin(close)), colour
        depth += len(close)
        chunk *= 2
    return depth, colour


def _plain_pair(image: Image.Image, axis: int, tolerance: int) -> bool:
    """Are the two outermost lines of ``axis`` (0: top and bottom rows) each one colour, the same?"""
    w, h = image.size
    boxes = [(0, 0, w, 1), (0, h - 1, w, h)] if axis == 0 else [(0, 0, 1, h), (w - 1, 0, w, h)]
    lines = [np.asarray(image.crop(b)).reshape(-1, 3) for b in boxes]
    colours = [np.median(line, axis=0) for line in lines]
    return bool(
        np.abs(colours[0] - colours[1]).max() <= tolerance
        and all(_close(line[None], c, tolerance)[0] for line, c in zip(lines, colours, strict=True))
    )


def letterbox(
    image: Image.Image,
    *,
    tolerance: int = TOLERANCE,
    min_fraction: float = MIN_FRACTION,
    max_fraction: float = MAX_FRACTION,
) -> tuple[int, int, int, int] | None:
    """The box (left, top, right, bottom) of the content inside paired uniform bands, or None."""
    w, h = image.size
    if h < 8 or w < 8:
        return None
    image = image if image.mode == "RGB" else image.convert("RGB")
    if not any(_plain_pair(image, axis, tolerance) for axis in (0, 1)):
        return None  # a photo: its outermost lines alone say so, without reading the rest
    a = np.asarray(image)  # uint8; lines are widened as they are read
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
