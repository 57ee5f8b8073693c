"""The read side shared by the HTTP API and `simd query`: status, similar images, browsing, files.

It never writes: it reads the store through its own read-only connection (one per thread) and the
in-RAM `VectorIndex` the indexer keeps in step. The indexer and daemon publish their progress in a
`Runtime`, which this service reports.
"""

from __future__ import annotations

import logging
import os
import re
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from simd.errors import BadRequest, NotFound, NotReady
from simd.formats import CONTENT_TYPES, sniff_format
from simd.paths import display_path, from_display, real_path_inside
from simd.runtime import Runtime
from simd.statedir import db_path
from simd.store import Store
from simd.storehealth import DamagedIndex, note_damage
from simd.vectors import VectorIndex

log = logging.getLogger(__name__)

K_MAX = 100
LIMIT_MAX = 500  # rows of a page of /api/images
OFFSET_MAX = 1_000_000_000  # more rows than a library holds (SQLite's OFFSET overflows at 2**63)
ID_MAX = 2**63 - 1  # SQLite's largest rowid: a larger id is not an image, and SQLite cannot bind it
Q_MAX = 1024  # characters of the `q` filter (SQLite refuses LIKE patterns over 50,000 bytes)
PATH_MAX = 4096  # characters of a `path=` query (Linux's PATH_MAX: no indexed path is longer)
LIST_STATES = ("ok", "failed", "all")  # the `state` filter of list_images

# What a cosine score means, per model id, measured on the public evaluation kit (docs/QUALITY.md):
# (near-duplicate, similar). For efficientnet-lite0+r2 (the Lite0 default): 95% of the edited copies
# of a photo (crops down to 55 %, 160 px thumbnails, JPEG, brightness, mirror, rotation, gray)
# score >= 0.73 and 0.2% of unrelated pairs do; 96% of unrelated pairs stay below 0.40. The
# previous Lite0 default ("efficientnet-lite0", logits only) had (0.80, 0.40); its indexes are
# re-embedded. Models not measured get no label; their scores are still cosine similarities.
MATCH_BANDS: dict[str, tuple[float, float]] = {"efficientnet-lite0+r2": (0.73, 0.40)}


def match_label(model: str, score: float) -> str | None:
    bands = MATCH_BANDS.get(model)
    if bands is None:
        return None
    return "near-duplicate" if score >= bands[0] else "similar" if score >= bands[1] else "weak"


_INTEGER = re.compile(r"[+-]?[0-9]+")


def shown(value: Any, limit: int = 40) -> str:
    """A parameter's value as an error message quotes it: at most `limit` characters of it."""
    text = str(value)
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _int_param(name: str, value: Any, default: int, lo: int, hi: int) -> int:
    """An integer query parameter: absent or empty is `default`; anything but ASCII digits (with a
    sign, surrounding blanks ignored) or a value outside lo..hi is a BadRequest."""
    if value is None or value == "":
        return default
    text = str(value).strip()
    if not _INTEGER.fullmatch(text):
        raise BadRequest(f"{name} must be an integer, got {shown(value)}")
    n = int(text) if len(text) <= 30 else (lo - 1 if text.startswith("-") else hi + 1)
    if not lo <= n <= hi:
        raise BadRequest(f"{name} must be from {lo} to {hi}, got {shown(text)}")
    return n


def parse_k(value: Any, default: int = 10) -> int:
    return _int_param("k", value, default, 1, K_MAX)


def parse_min_score(value: Any) -> float | None:
    if value is None or value == "":
        return None
    try:
        score = float(str(value).strip())
    except ValueError:
        raise BadRequest(f"min_score must be a number from -1 to 1, got {shown(value)}") from None
    if not -1.0 <= score <= 1.0:
        raise BadRequest(f"min_score must be from -1 to 1, got {score}")
    return score


def normalise_rel(path: str) -> str:
    """A library-relative path as the store keeps it: '/' separators, no leading './' or '/'."""
    rel = path.replace("\\", "/").strip()
    while rel.startswith("./"):
        rel = rel[2:]
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    if not parts or ".." in parts or path.startswith("/"):
        raise NotFound(f"no indexed image at {shown(path, 200)}")
    return "/".join(parts)


def load_index(store: Store, model: str, dim: int) -> VectorIndex:
    """A new in-RAM index holding `model`'s stored vectors (`dim` when there are none yet)."""
    ids, matrix = store.load_vectors(model)
    vectors = VectorIndex(matrix.shape[1] if matrix.ndim == 2 and matrix.shape[0] else dim)
    if len(ids):
        vectors.replace_all(ids, matrix)
    return vectors


class SearchService:
    """Serves searches once `attach()` gave it the in-RAM index (and, for uploads, the embedder);
    before that, status works and searches answer NotReady."""

    def __init__(self, db_path: Path, library_root: Path, state_dir: Path, runtime: Runtime):
        self.db_path = Path(db_path)
        self.library_root = Path(library_root)
        self.state_dir = Path(state_dir)
        self.vectors: VectorIndex | None = None
        self.runtime = runtime
        self._embedder: Any = None
        self._rescan: Callable[..., None] = lambda confirm_deletions=False: None
        self._local = threading.local()
        self._uploads_embedded = 0  # query uploads sent through the network (not indexing work)
        self._uploads_lock = threading.Lock()
        self.damaged: str | None = None  # what a read found damaged in the index: the daemon restarts
        self.duplicates: Any = None  # `dupservice.DuplicatesService`, attached by the daemon or the web layer

    @classmethod
    def open(cls, state_dir: Path) -> SearchService:
        """A service over the index in `state_dir` as it is on disk (for `simd query`): the active
        model's vectors attached, no embedder (attach one to search by uploads)."""
        with Store(db_path(state_dir), readonly=True) as store:
            model, root = store.get_meta("model"), store.get_meta("library_root")
            if not model:
                raise NotFound(f"the index in {state_dir} is empty; run `simd index` first")
            vectors = load_index(store, model, 1)
        service = cls(db_path(state_dir), Path(root or "."), state_dir, Runtime("idle", model=model, dim=vectors.dim))
        service.attach(vectors)
        return service

    def indexed_rel(self, image: Path) -> str | None:
        """The library-relative path of `image` when it is indexed with the active model and
        unchanged since; else None."""
        real = real_path_inside(self.library_root, os.path.abspath(image))
        if real is None:
            return None
        rel = os.path.relpath(real, os.path.realpath(self.library_root)).replace(os.sep, "/")
        row = self._store().get_by_path(rel)
        if row is None or row["state"] != "ok" or row["model"] != self.runtime.model:
            return None
        st = os.stat(real)
        return rel if (st.st_size, st.st_mtime_ns) == (row["size"], row["mtime_ns"]) else None

    def attach(self, vectors: VectorIndex, *, embedder: Any = None, rescan: Callable[..., None] | None = None) -> None:
        """Start serving: the index the indexer keeps in step, the embedder for uploads (None: uploads
        answer NotReady) and what a rescan request calls, as `rescan(confirm_deletions=bool)` (None:
        nothing)."""
        self.vectors = vectors
        self.set_embedder(embedder)
        self._rescan = rescan or (lambda confirm_deletions=False: None)

    def set_embedder(self, embedder: Any) -> None:
        """The model that embeds uploads (None: uploads answer NotReady, as while it loads)."""
        self._embedder = embedder

    def report_damage(self, reason: str) -> DamagedIndex:
        """A read met a damaged index (SQLite: malformed, not a database). Noted beside the file as
        the writer does, so that the daemon stops and its next start moves the index aside and
        rebuilds it; the request gets the returned error (503), not a 500."""
        if self.damaged is None:
            log.error(
                "a read found the index %s damaged (%s); simd stops, and its next start moves it aside and rebuilds it",
                self.db_path,
                reason,
            )
            note_damage(self.db_path, reason)
            self.damaged = reason
            self.runtime.update(last_error=f"the index is damaged: {reason}")
        return DamagedIndex(self.db_path, f"{reason}; simd restarts and rebuilds it")

    # -- store access: one read-only connection per thread (sqlite connections are not shared)
    def _store(self) -> Store:
        store = getattr(self._local, "store", None)
        if store is None:
            store = self._local.store = Store(self.db_path, readonly=True)
        return store

    def status(self) -> dict:
        snap = self.runtime.snapshot()
        with self._uploads_lock:
            uploads = self._uploads_embedded
        counts = self._store().counts(snap["model"])
        return {
            # the contract's states; a run the storage refused is work waiting: "indexing", retrying
            "state": "indexing" if snap["phase"] == "retrying" else snap["phase"],
            "retrying": snap["phase"] == "retrying",
            "indexed": counts["indexed"],
            "pending": snap["pending"] + (0 if snap["progress"] else counts.get("stale", 0)),  # a run counts its own
            "failed": counts["failed"],
            "model": snap["model"] or "",
            "dim": snap["dim"] or 0,
            "library": str(self.library_root),
            "total": counts["total"],
            "revision": counts["revision"],  # the page reloads its library grid when this changes
            "progress": snap["progress"],
            "last_error": snap["last_error"],
            "library_online": snap["phase"] != "offline",
            # library images sent through the network since start (renames and moves must not
            # raise it), and uploads embedded to answer queries, apart
            "embedded": max(0, getattr(self._embedder, "images_embedded", 0) - uploads),
            "uploads_embedded": uploads,
        }

    def similar(
        self,
        *,
        image_id: Any = None,
        path: str | None = None,
        data: bytes | None = None,
        name: str = "upload",
        k: int = 10,
        min_score: float | None = None,
    ) -> dict:
        model = self.runtime.model
        if model is None:
            raise NotReady("the model is still loading; try again in a moment")
        started = time.perf_counter()
        if data is not None:
            embedder = self._embedder
            if embedder is None:
                raise NotReady("the model is still loading; try again in a moment")
            query_vec = embedder.embed_bytes(data, name)  # one that does not decode is not counted
            with self._uploads_lock:
                self._uploads_embedded += 1
            query = {"upload": name}
            exclude: tuple[int, ...] = ()
        else:
            row = self._query_row(image_id, path)
            # The stored (raw) descriptor: the index applies its own transform to queries.
            query_vec = self._store().vector_of(row["id"], model)
            if query_vec is None:
                shown = display_path(row["path"])
                if row["state"] == "failed":
                    raise NotFound(f"{shown} could not be indexed: {row['error']}")
                raise NotReady(f"{shown} is not indexed with {model} yet; try again shortly")
            query = {"id": row["id"], "path": display_path(row["path"]), "version": version(row)}
            exclude = (row["id"],)
        if self.vectors is None:
            raise NotReady("the index is still loading; try again in a moment")
        hits = self.vectors.search(np.asarray(query_vec, dtype=np.float32), k, exclude_ids=exclude)
        results = []
        store = self._store()
        for hit_id, score in hits:
            if min_score is not None and score < min_score:
                break
            hit = store.get(hit_id)
            if hit is None:  # deleted between the search and now
                continue
            results.append(
                {
                    "id": hit_id,
                    "path": display_path(hit["path"]),
                    "score": round(float(score), 4),
                    "match": match_label(model, float(score)),
                    "version": version(hit),
                }
            )
        return {
            "model": model,
            "query": query,
            "k": k,
            "results": results,
            "took_ms": round((time.perf_counter() - started) * 1000, 1),
        }

    def _query_row(self, image_id: Any, path: str | None) -> dict:
        if image_id is not None and image_id != "":
            # A query parameter that is not an integer is a bad request, not an unknown image.
            return self._row_by_id(_int_param("id", image_id, 0, 0, ID_MAX), BadRequest("id must be an integer"))
        if path:
            if len(path) > PATH_MAX:
                raise BadRequest(f"path must be at most {PATH_MAX} characters, got {len(path)}")
            row = self._store().get_by_path(normalise_rel(path))
            if row is None and (exact := from_display(path)) != path:  # as shown: `\xNN` for a byte
                row = self._store().get_by_path(normalise_rel(exact))
            if row is None:
                raise NotFound(f"no indexed image at {shown(path, 200)}")
            return row
        raise BadRequest("give id=, path= or an image upload")

    def list_images(self, offset: Any = 0, limit: Any = 50, q: str | None = "", state: str | None = "ok") -> dict:
        """A page of the library by path. `state`: "ok" (the default: indexed images, the ones with a
        thumbnail, which is what a grid shows), "failed" (files that could not be indexed) or "all"."""
        offset_i = _int_param("offset", offset, 0, 0, OFFSET_MAX)
        limit_i = _int_param("limit", limit, 50, 1, LIMIT_MAX)
        if q and len(q) > Q_MAX:
            raise BadRequest(f"q must be at most {Q_MAX} characters, got {len(q)}")
        q = "".join(c for c in (q or "") if c.isprintable()).strip()  # a NUL or newline filters nothing
        state = (state or "ok").strip()
        if state not in LIST_STATES:
            raise BadRequest(f"state must be one of {', '.join(LIST_STATES)}, got {shown(state)}")
        rows, total = self._store().list_images(offset_i, limit_i, q, None if state == "all" else state)
        return {"images": [_public(r) for r in rows], "total": total, "offset": offset_i, "limit": limit_i}

    def _row_by_id(self, image_id: Any, not_an_int: Exception) -> dict:
        try:
            iid = int(str(image_id))
        except ValueError:
            raise not_an_int from None
        row = self._store().get(iid) if 0 <= iid <= ID_MAX else None  # SQLite cannot bind a larger one
        if row is None:
            raise NotFound(f"no image with id {iid}")
        return row

    def get_image(self, image_id: Any) -> dict:
        return _public(self._row_by_id(image_id, NotFound(f"no image with id {shown(image_id)}")))

    def resolve_file(self, image_id: Any) -> Path:
        """The real path of an indexed image, only if it lies inside the library's real root."""
        row = self._row_by_id(image_id, NotFound(f"no image with id {image_id!r}"))  # the exact name
        real = real_path_inside(self.library_root, os.path.join(*row["path"].split("/")))
        if real is None or not os.path.isfile(real):
            raise NotFound(f"image {row['id']} is not available")
        return Path(real)

    def errors(self) -> list[dict]:
        return [
            {
                "id": r["id"],
                "path": display_path(r["path"]),
                "state": "failed",
                "error": r["error"],
                "size": r["size"],
                "mtime": r["mtime_ns"] / 1e9,
                "version": version(r),
            }
            for r in self._store().errors()
        ]

    def servable(self, image_id: int) -> bool:
        """Whether GET /api/images/<id>/file can serve the file of this image: a regular file inside
        the library whose first bytes are those of an image format (a truncated JPEG is; a text file
        named .jpg is not). Asked only of files that could not be indexed."""
        row = self._store().get(image_id)
        if row is None:
            return False
        real = real_path_inside(self.library_root, os.path.join(*row["path"].split("/")))
        if real is None:
            return False
        try:
            # O_NONBLOCK: a FIFO in the library must not hang the request (a regular file ignores it)
            fd = os.open(real, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
        except OSError:
            return False
        try:
            return stat.S_ISREG(os.fstat(fd).st_mode) and sniff_format(os.pread(fd, 256, 0)) in CONTENT_TYPES
        except OSError:
            return False
        finally:
            os.close(fd)

    def rescan(self, confirm_deletions: bool = False) -> None:
        """Ask for a full reconcile; `confirm_deletions`: one that may delete most of the library."""
        self._rescan(confirm_deletions=confirm_deletions)


def _public(row: dict) -> dict:
    return {
        "id": row["id"],
        "path": display_path(row["path"]),  # readable; the file itself is reached by id
        "size": row["size"],
        "mtime": row["mtime_ns"] / 1e9,
        "state": row["state"],
        "error": row.get("error"),
        "model": row.get("model"),
        "version": version(row),
    }


def version(row: dict) -> str:
    """Changes when the file does (its size, mtime or stored row): a browser caches a thumbnail or
    original by an address holding it, so an overwritten file is never shown from a stale cache."""
    return f"{row['size']:x}-{row['mtime_ns']:x}-{int((row.get('updated_at') or 0) * 1000):x}"
