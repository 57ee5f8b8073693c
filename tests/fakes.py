"""Test doubles that are honest about what they are (see conftest.py)."""

from __future__ import annotations

import threading

import numpy as np


class PixelEmbedder:
    """Embeds an image as its 8x8 RGB thumbnail, L2-normalised (192-d). Counts images embedded."""

    dim = 192

    def __init__(self, model_id: str = "pixels"):
        self.model_id = model_id
        self.images_embedded = 0
        self.calls = 0
        self._lock = threading.Lock()

    def _vec(self, img) -> np.ndarray:
        v = np.asarray(img.resize((8, 8)), dtype=np.float32).reshape(-1) + 1.0
        return v / np.linalg.norm(v)

    def embed_files(self, paths, *, stop=None):
        from simd.budget import DECODE_SECONDS, Budget
        from simd.errors import ImageError
        from simd.imaging import open_image

        out = []
        with self._lock:
            self.calls += 1
            self.images_embedded += len(paths)
        for p in paths:
            try:
                out.append(self._vec(open_image(p, budget=Budget(DECODE_SECONDS, stop, "decoding"))))
            except ImageError as e:
                out.append(e)
        return out

    def embed_bytes(self, data: bytes, name: str) -> np.ndarray:
        from simd.imaging import open_image

        with self._lock:
            self.images_embedded += 1
        return self._vec(open_image(data, name=name))
