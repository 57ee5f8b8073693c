"""Are two images the same photo? Geometric verification of a candidate pair with local features.

The CNN cosine proposes pairs of copies; it cannot tell a heavy crop or a thumbnail of one photo
from another photo of the same subject (two shots of the Eiffel Tower score as high as a 160 px
thumbnail and its original). Pixels can: a copy (resized, cropped, rotated, re-saved, mirrored) maps
onto its original by one similarity transform, so many of their local features agree with it; two
different photos of one subject share features only by chance, on no common transform.

`features(path)` decodes one image through `imaging.open_image` (its safe decode and budgets, the
EXIF orientation applied), as grayscale with its long side scaled to `SIDE` (up or down: a 160 px
thumbnail and its 12 MP original then show the picture at the same scale), and finds ORB keypoints.
`inliers(a, b)` matches the two sets (Lowe's ratio test), fits a partial affine transform (rotation,
uniform scale, translation) with RANSAC and counts the matches that agree with it; the mirrored
image is tried too, for horizontally flipped copies. `same_photo` says whether that count reaches
`MIN_INLIERS` (measured on the evaluation kit and a holdout: tests/bench/verify_pairs.py,
docs/QUALITY.md "Duplicates").

OpenCV is imported on first use only (`import simd` stays light).
"""

from __future__ import annotations

import functools
import os
import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from simd import imaging
from simd.budget import DECODE_SECONDS, Budget

SIDE = 512  # the working image's long side (px)
FEATURES = 1000  # ORB keypoints per image at most
RATIO = 0.8  # Lowe's ratio test: best match clearly better than the second
REPROJ = 0.012  # RANSAC's reprojection threshold, as a fraction of SIDE (~6 px)
SCALE_MIN, SCALE_MAX = 0.25, 4.0  # the transform's scale between the working images: a 25 % crop either way
MIN_INLIERS = 20  # matches agreeing with one transform: the same photo (docs/QUALITY.md, "Duplicates")
VERSION = "orb512-v1"  # stored per model in the index's meta: a change of the recipe above verifies anew


@functools.cache
def _cv2() -> Any:
    import cv2

    cv2.setNumThreads(1)  # one background thread; OpenCV's pool would take both cores
    return cv2


@dataclass
class Features:
    """One image's keypoints (`points`, (n, 2) float32) and ORB descriptors (`desc`, (n, 32) uint8)
    in the working image (`gray`, long side SIDE); those of its mirror image on first use."""

    gray: np.ndarray
    points: np.ndarray
    desc: np.ndarray | None
    _mirrored: tuple[np.ndarray, np.ndarray | None] | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def mirrored(self) -> tuple[np.ndarray, np.ndarray | None]:
        with self._lock:
            if self._mirrored is None:
                self._mirrored = _detect(np.ascontiguousarray(self.gray[:, ::-1]))
            return self._mirrored


MIN_SIDE = 32  # ORB's pyramid and border need this much: a thinner strip has no features to match


def _detect(gray: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    if min(gray.shape[:2]) < MIN_SIDE:  # a panorama of 16000x2 is 512x1 here: OpenCV would raise
        return np.empty((0, 2), np.float32), None
    cv2 = _cv2()
    orb = cv2.ORB_create(nfeatures=FEATURES)
    kps, desc = orb.detectAndCompute(gray, None)
    pts = np.array([k.pt for k in kps], np.float32).reshape(-1, 2)
    return pts, desc


def working_image(img) -> np.ndarray:
    """A decoded PIL image as the grayscale uint8 array the features are found on."""
    from PIL import Image

    g = img.convert("L")
    w, h = g.size
    scale = SIDE / max(w, h)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    if size != g.size:
        g = g.resize(size, Image.Resampling.BILINEAR if scale > 1 else Image.Resampling.BOX)
    return np.asarray(g, np.uint8)


def features(
    path: str | os.PathLike,
    *,
    max_pixels: int = imaging.DEFAULT_MAX_PIXELS,
    budget: Budget | None = None,
) -> Features:
    """One file's features; `ImageError` when it cannot be decoded (within `budget`)."""
    img = imaging.open_image(
        path,
        max_pixels=max_pixels,
        draft_size=(SIDE, SIDE),
        budget=budget or Budget(DECODE_SECONDS, what="decoding"),
    )
    gray = working_image(img)
    del img
    pts, desc = _detect(gray)
    return Features(gray, pts, desc)


def _one_way(pa: np.ndarray, da: np.ndarray | None, pb: np.ndarray, db: np.ndarray | None) -> int:
    if da is None or db is None or len(da) < 3 or len(db) < 3:
        return 0
    cv2 = _cv2()
    matcher = cv2.BFMatcher(cv2.NORM_HAMMING)
    good = [m[0] for m in matcher.knnMatch(da, db, k=2) if len(m) == 2 and m[0].distance < RATIO * m[1].distance]
    if len(good) < 3:
        return 0
    src = pa[[m.queryIdx for m in good]]
    dst = pb[[m.trainIdx for m in good]]
    m, mask = cv2.estimateAffinePartial2D(
        src, dst, method=cv2.RANSAC, ransacReprojThreshold=REPROJ * SIDE, maxIters=2000, confidence=0.99
    )
    if m is None or mask is None:
        return 0
    # A copy's transform keeps the picture's scale within a crop's or a letterbox's change; a
    # degenerate one (everything onto a few pixels) makes chance matches of two photos agree.
    scale = float(np.hypot(m[0, 0], m[1, 0]))
    return int(mask.sum()) if SCALE_MIN <= scale <= SCALE_MAX else 0


def inliers(a: Features, b: Features) -> int:
    """The matches of `a` and `b` (or of a's mirror image and b) that agree with one transform."""
    best = _one_way(a.points, a.desc, b.points, b.desc)
    if best < MIN_INLIERS:
        pm, dm = a.mirrored()
        best = max(best, _one_way(pm, dm, b.points, b.desc))
    return best


def same_photo(a: Features, b: Features, min_inliers: int = MIN_INLIERS) -> bool:
    return inliers(a, b) >= min_inliers
