"""Fixtures for the web tests: a real SQLite Store, VectorIndex and SearchService over a tmp library.

The vectors are deterministic colour histograms computed from the real image files; uploads are
embedded the same way by `HistogramEmbedder`, so uploading a copy of a library file finds that file
first. The real networks are exercised elsewhere (tests/test_e2e_*.py) and by the browser test
against a real `simd serve` subprocess.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from images import make_photo

from simd.config import Config
from simd.imaging import open_image
from simd.runtime import Runtime
from simd.search import SearchService
from simd.store import Store
from simd.vectors import VectorIndex

MODEL = "histogram-test"


class HistogramEmbedder:
    """A fake embedder: an L2-normalised 4x4x4 RGB histogram plus a coarse 4x4 layout (112-d).

    It decodes with the real `simd.imaging.open_image`, so non-images, empty and truncated uploads
    fail exactly as they would with the real model.
    """

    dim = 112
    model_id = MODEL

    def __init__(self):
        self.images_embedded = 0
        self._lock = threading.Lock()

    def vector(self, img) -> np.ndarray:
        a = np.asarray(img.convert("RGB").resize((32, 32)), dtype=np.int32)
        bins = (a // 64).reshape(-1, 3)
        hist = np.bincount(bins[:, 0] * 16 + bins[:, 1] * 4 + bins[:, 2], minlength=64).astype(np.float32)
        layout = np.asarray(img.convert("RGB").resize((4, 4)), dtype=np.float32).reshape(-1) / 64.0
        v = np.concatenate([hist / 64.0, layout]) + 1e-3
        return (v / np.linalg.norm(v)).astype(np.float32)

    def embed_file(self, path) -> np.ndarray:
        return self.vector(open_image(path))

    def embed_bytes(self, data: bytes, name: str) -> np.ndarray:
        vector = self.vector(open_image(data, name=name))
        with self._lock:  # as the real Embedder: only images that reached the "network" count
            self.images_embedded += 1
        return vector


@dataclass
class WebEnv:
    library: Path
    state_dir: Path
    db: Path
    service: SearchService
    runtime: Runtime
    embedder: HistogramEmbedder
    ids: dict[str, int] = field(default_factory=dict)  # relative path -> id
    rescans: list[str] = field(default_factory=list)

    def path_of(self, rel: str) -> Path:
        return self.library / rel

    def add(
        self, rel: str, *, failed: str | None = None, vector: np.ndarray | None = None, store: Store | None = None
    ) -> int:
        """Record `rel` (already on disk, or not) in the store and the in-RAM index."""
        if store is None:
            with Store(self.db) as own, own.batch():
                return self.add(rel, failed=failed, vector=vector, store=own)
        p = self.library / rel
        st = os.lstat(p) if os.path.lexists(p) else None
        size, mtime = (st.st_size, st.st_mtime_ns) if st else (0, 0)
        if failed is not None:
            iid = store.put_failed(rel, size, mtime, None, failed)
        else:
            vec = vector if vector is not None else self.embedder.embed_file(p)
            iid = store.put_ok(rel, size, mtime, None, MODEL, vec)
            self.service.vectors.upsert([iid], np.asarray([vec], np.float32))
        self.ids[rel] = iid
        return iid


def build_env(tmp_path: Path, count: int = 14, *, size=(320, 240)) -> WebEnv:
    library = tmp_path / "library"
    state = tmp_path / "state"
    library.mkdir(exist_ok=True)
    state.mkdir(exist_ok=True)
    db = state / "simd.db"
    embedder = HistogramEmbedder()
    runtime = Runtime("idle", model=MODEL, dim=embedder.dim)
    env = WebEnv(library, state, db, None, runtime, embedder)  # type: ignore[arg-type]
    env.service = SearchService(db, library, state, runtime)
    env.service.attach(
        VectorIndex(embedder.dim),
        embedder=embedder,
        rescan=lambda confirm_deletions=False: env.rescans.append("rescan" + "+confirm" * confirm_deletions),
    )
    with Store(db) as store, store.batch():
        for i in range(count):
            sub = "holiday" if i % 3 == 0 else "garden"
            rel = f"{sub}/photo{i:02d}.jpg"
            make_photo(library / rel, size, seed=100 + i)
            env.add(rel, store=store)
    return env


def web_config(**overrides) -> Config:
    return Config({"library": "/nonexistent-library", "max_upload_mb": 1.0, **overrides})
