"""Duplicates in the index: the stored pairs of contents, the user's dismissals, and the hook that keeps
the pairs fresh as images are indexed (all their SQL, through `Store.execute`).

**Pairs are keyed by content**: (model, hash_a, hash_b) with hash_a < hash_b and the cosine of the two
vectors, kept down to the model's lowest threshold (`lowest`). A rename, a move or a copy keeps
them (the bytes, hence the vector, are the same); they go when no indexed image of the model has
one of the two hashes any more. Copies of the same bytes need no pair: the listing groups them by
hash.

**Fresh, never O(n^2) per change**: the writer (`indexer.Reconciler`) calls `DupIndex.added` inside
each chunk's transaction with the images whose content is new to the model (a move or copy of
known bytes costs nothing), which scores them against the in-RAM matrix (`duplicates.pairs_for`:
about one search's cost per image), and `DupIndex.removed` with the hashes that may have lost
their last image. An index from before duplicates existed gets its pairs from one background build
(`simd.dupbuild`), whose result the writer stores with `store_build`; `meta.dup_built:<model>` then
says the pairs are complete.

**Dismissals** ("not duplicates") are keyed by a pair of hashes, whatever the model, so they survive
renames, moves, rescans and a rebuilt index; a new copy (a new hash) is not dismissed and shows
again. Copies of the same bytes are dismissed as (hash, hash) with how many there were: one more
copy shows the group again.

Models with no calibrated thresholds (`duplicates.DUPLICATE_THRESHOLDS`) keep pairs down to
`UNCALIBRATED_LOWEST` and offer near-duplicates only at a threshold the request gives.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from simd import imaging
from simd.duplicates import DUPLICATE_THRESHOLDS, Pairs, Thresholds, pairs_for
from simd.formats import sniff_format
from simd.store import Store
from simd.storevalues import path_from_db
from simd.vectors import VectorIndex

log = logging.getLogger(__name__)

# Uncalibrated models (ResNet50, whose weights cannot be had where the thresholds were measured,
# or a non-default descriptor): a cosine this high is a near-copy for any CNN descriptor we know;
# pairs are kept down to it and a request may ask for a threshold from it up.
UNCALIBRATED_LOWEST = 0.90
_CHUNK = 500  # values per IN (...)
VERSION_KEY = "dup_version"  # bumped with every change of pairs or dismissals (the listing's cache key)


def header_size(path: str | os.PathLike) -> tuple[int | None, int | None, str]:
    """(width, height) upright, from the file's header alone, and its format (from its content)."""
    try:
        with open(path, "rb") as f:
            fmt = sniff_format(f.read(256)) or ""
            f.seek(0)
            if fmt in ("heif", "avif"):
                imaging._plugin_available(fmt)
            with imaging._pillow_warnings_silenced(), Image.open(f) as img:
                w, h = img.size
                if imaging._orientation(img, str(path)) in (5, 6, 7, 8):  # turned a quarter
                    w, h = h, w
                return int(w), int(h), fmt
    except Exception:  # any unreadable header: size unknown, never a failed listing
        return None, None, fmt if "fmt" in locals() else ""


def put_sizes(store: Store, sizes: dict[int, tuple[int | None, int | None, str]]) -> None:
    """Record (width, height, format) of these rows; inside a batch."""
    for image_id, (w, h, fmt) in sizes.items():
        store.execute("UPDATE images SET width = ?, height = ?, format = ? WHERE id = ?", [w, h, fmt, int(image_id)])


def without_size(store: Store, ids: Iterable[int]) -> list[tuple[int, str]]:
    """(id, path) of these rows whose size is not recorded (rows of an index from before)."""
    out: list[tuple[int, str]] = []
    for part in _chunks(sorted({int(i) for i in ids})):
        marks = ", ".join("?" * len(part))
        rows = store.execute(f"SELECT id, path FROM images WHERE id IN ({marks}) AND format IS NULL", part)
        out += [(int(i), path_from_db(p)) for i, p in rows]
    return out


def thresholds(model: str) -> tuple[Thresholds, bool]:
    """The model's (threshold, floor, lowest) and whether they were calibrated. Uncalibrated: no
    default threshold (1.0 here: near-duplicates only when asked for), lowest UNCALIBRATED_LOWEST."""
    t = DUPLICATE_THRESHOLDS.get(model)
    if t is not None:
        return t, True
    return Thresholds(1.0, UNCALIBRATED_LOWEST, UNCALIBRATED_LOWEST), False


def built_key(model: str) -> str:
    return f"dup_built:{model}"


def is_built(store: Store, model: str) -> bool:
    return store.get_meta(built_key(model)) is not None


def version(store: Store) -> str:
    return store.get_meta(VERSION_KEY, "0") or "0"


def bump(store: Store) -> None:
    """Invalidate the listings' groupings (a write that changes pairs, verdicts or dismissals)."""
    store.set_meta(VERSION_KEY, str(int(version(store)) + 1))


def _stale_rows(items: Sequence[tuple[int, str, np.ndarray, str]], known: set[str], index_ids, matrix) -> list[int]:
    """Ids of the chunk's rows of known content whose matrix row still holds another vector (their
    bytes changed; a rename or a copy keeps its vector, and its row stays a fair neighbour)."""
    changed = {int(i): np.asarray(v, np.float32) for i, digest, v, _ in items if digest in known}
    ids = np.asarray(index_ids, dtype=np.int64)
    if not changed or not len(ids):
        return []
    at = np.nonzero(np.isin(ids, np.fromiter(changed, np.int64)))[0]
    stale = []
    for k in at.tolist():
        v = changed[int(ids[k])]
        if float(matrix[k] @ v) < 0.9999 * float(np.linalg.norm(v)):  # matrix rows are unit
            stale.append(int(ids[k]))
    return stale


def _chunks(values: Sequence, size: int = _CHUNK) -> Iterable[Sequence]:
    for i in range(0, len(values), size):
        yield values[i : i + size]


def hashes_of(store: Store, ids: Iterable[int]) -> dict[int, str]:
    """id -> content hash of these (ok, hashed) rows."""
    out: dict[int, str] = {}
    for part in _chunks(sorted({int(i) for i in ids})):
        marks = ", ".join("?" * len(part))
        for image_id, h in store.execute(
            f"SELECT id, hash FROM images WHERE id IN ({marks}) AND hash IS NOT NULL AND state = 'ok'", part
        ):
            out[int(image_id)] = h
    return out


def known_hashes(store: Store, model: str, hashes: Iterable[str]) -> set[str]:
    """The hashes an ok row of `model` already has (their pairs are stored or being built)."""
    found: set[str] = set()
    for part in _chunks(sorted(set(hashes))):
        marks = ", ".join("?" * len(part))
        found.update(
            h
            for (h,) in store.execute(
                f"SELECT DISTINCT hash FROM images WHERE +model = ? AND +state = 'ok' AND hash IN ({marks})",
                [model, *part],
            )
        )
    return found


def put_pairs(store: Store, model: str, pairs: Pairs, hash_of: dict[int, str]) -> int:
    """Store pairs of ids as pairs of their hashes (ids without one are skipped); inside a batch."""
    n = 0
    for a, b, s in zip(pairs.a.tolist(), pairs.b.tolist(), pairs.score.tolist(), strict=True):
        ha, hb = hash_of.get(a), hash_of.get(b)
        if ha is None or hb is None or ha == hb:
            continue
        ha, hb = min(ha, hb), max(ha, hb)
        store.execute(
            "INSERT INTO dup_pairs (model, hash_a, hash_b, score) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (model, hash_a, hash_b) DO UPDATE SET score = excluded.score",
            [model, ha, hb, float(s)],
        )
        n += 1
    return n


def prune(store: Store, model: str, hashes: Iterable[str]) -> int:
    """Drop the pairs of those hashes no ok row of `model` has any more; inside a batch."""
    gone = sorted(set(hashes) - known_hashes(store, model, hashes))
    n = 0
    for part in _chunks(gone):
        marks = ", ".join("?" * len(part))
        for side in ("hash_a", "hash_b"):  # one statement per side: each has its index (an OR scans them all)
            n += len(
                store.execute(
                    f"DELETE FROM dup_pairs WHERE model = ? AND {side} IN ({marks}) RETURNING hash_a", [model, *part]
                )
            )
    return n


def store_build(
    store: Store,
    model: str,
    pairs: Pairs,
    hash_of: dict[int, str],
    sizes: dict[int, tuple[int | None, int | None, str]] | None = None,
) -> int:
    """The background build's result (pairs of the ids of a snapshot, `hash_of` as they were then,
    and the sizes it read), stored in one batch: pairs of contents indexed since are the hook's,
    pairs of contents gone since are dropped. Marks the model's pairs complete."""
    with store.batch():
        put_sizes(store, sizes or {})
        n = put_pairs(store, model, pairs, hash_of)
        prune(store, model, set(hash_of.values()))
        store.set_meta(built_key(model), str(time.time()))
        bump(store)
    return n


class DupIndex:
    """The writer's hook (`indexer.Reconciler(duplicates=...)`): keeps `model`'s pairs in step with the
    in-RAM matrix `vectors`, which it reads from the writer thread only (`VectorIndex.view`)."""

    def __init__(self, model: str, vectors: VectorIndex, root: Path | None = None):
        self.model = model
        self.vectors = vectors
        self.root = root  # the library: each new content's size is read from its header
        self.lowest = thresholds(model)[0].lowest
        self.scored = 0  # images scored against the index (for tests and the benchmark)

    def known(self, store: Store, hashes: Iterable[str]) -> set[str]:
        """Inside the chunk's batch, before its writes: the hashes the model already has."""
        return known_hashes(store, self.model, hashes)

    def added(self, store: Store, items: Sequence[tuple[int, str, np.ndarray, str]], known: set[str]) -> int:
        """Inside the chunk's batch, before `vectors` takes the chunk's rows (id, hash, vector, path):
        score the images whose hash is not in `known` (hashes the model had before the chunk)
        against the index and each other, and store their pairs; record every row's size (read from
        the header for new contents, else that of a row of the same bytes). Returns the pairs stored."""
        fresh: dict[str, tuple[int, np.ndarray]] = {}
        sizes: dict[int, tuple[int | None, int | None, str]] = {}
        for image_id, digest, vec, path in items:
            if digest and digest not in known and digest not in fresh:
                fresh[digest] = (int(image_id), vec)
                if self.root is not None:
                    sizes[int(image_id)] = header_size(self.root / path)
        put_sizes(store, sizes)
        _copy_sizes(store, [int(i) for i, *_ in items if int(i) not in sizes])
        if not fresh:
            return 0
        ids = np.array([i for i, _ in fresh.values()], np.int64)
        new = np.stack([np.asarray(v, np.float32) for _, v in fresh.values()])
        index_ids, matrix, coarse = self.vectors.view()
        # A row of this chunk whose bytes changed to a content the index knows keeps its old vector in
        # the matrix until the chunk is applied: scored against it, a new image would be paired
        # with the new hash for the old picture's likeness.
        stale = _stale_rows(items, known, index_ids, matrix)
        pairs = pairs_for(ids, new, matrix, index_ids, self.lowest, coarse=coarse, skip_ids=stale)
        self.scored += len(ids)
        if not len(pairs.a):
            return 0
        hash_of = {i: h for h, (i, _) in fresh.items()}
        hash_of.update(hashes_of(store, set(pairs.a.tolist()) | set(pairs.b.tolist()) - set(hash_of)))
        n = put_pairs(store, self.model, pairs, hash_of)
        if n:
            bump(store)
        return n

    def removed(self, store: Store, hashes: Iterable[str]) -> None:
        """Inside every batch of the writer, after its writes: the pairs of the old hashes of rows that
        went or changed, if orphaned. Bumps `version` (the listing's cache key): paths, sizes and
        copies may have changed even when no pair did, and a meta row is cheaper to read than the
        whole table."""
        if hashes := {h for h in hashes if h}:
            prune(store, self.model, hashes)
        bump(store)


def _copy_sizes(store: Store, ids: list[int]) -> None:
    """Rows of known bytes (a copy, a move) take the size recorded for a row of the same hash."""
    for part in _chunks(ids):
        marks = ", ".join("?" * len(part))
        store.execute(
            "UPDATE images SET (width, height, format) = (SELECT o.width, o.height, o.format FROM images o "
            "WHERE o.hash = images.hash AND o.format IS NOT NULL LIMIT 1) "
            f"WHERE id IN ({marks}) AND format IS NULL",
            part,
        )


# -- the read side and dismissals
def load_pairs(store: Store, model: str) -> list[tuple[str, str, float]]:
    return [
        (a, b, float(s))
        for a, b, s in store.execute("SELECT hash_a, hash_b, score FROM dup_pairs WHERE model = ?", [model])
    ]


def load_dismissed(store: Store) -> dict[tuple[str, str], int | None]:
    return {(a, b): c for a, b, c in store.execute("SELECT hash_a, hash_b, copies FROM dup_dismissed", [])}


def copies_by_hash(store: Store, model: str) -> dict[str, list[int]]:
    """hash -> ids (ascending) of the ok rows of `model` whose bytes have 2 or more files."""
    rows = store.execute(
        "SELECT hash, group_concat(id) FROM images WHERE model = ? AND state = 'ok' AND hash IS NOT NULL "
        "GROUP BY hash HAVING count(*) > 1",
        [model],
    )
    return {h: sorted(int(i) for i in ids.split(",")) for h, ids in rows}


def listed_ids(store: Store, model: str) -> dict[str, list[int]]:
    """hash -> ids (ascending) of the ok rows of `model` whose content has 2+ files or is in a stored
    pair: what a listing groups, in one query (not an IN list per 500 hashes)."""
    rows = store.execute(
        "SELECT hash, id FROM images WHERE +model = ? AND +state = 'ok' AND hash IN ("
        "SELECT hash FROM images WHERE model = ? AND state = 'ok' AND hash IS NOT NULL "
        "GROUP BY hash HAVING count(*) > 1 "
        "UNION SELECT hash_a FROM dup_pairs WHERE model = ? UNION SELECT hash_b FROM dup_pairs WHERE model = ?) "
        "ORDER BY hash, id",
        [model] * 4,
    )
    out: dict[str, list[int]] = {}
    for h, image_id in rows:
        out.setdefault(h, []).append(int(image_id))
    return out


def ids_by_hash(store: Store, model: str, hashes: Iterable[str]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for part in _chunks(sorted(set(hashes))):
        marks = ", ".join("?" * len(part))
        for image_id, h in store.execute(
            f"SELECT id, hash FROM images WHERE +model = ? AND +state = 'ok' AND hash IN ({marks})", [model, *part]
        ):
            out.setdefault(h, []).append(int(image_id))
    for ids in out.values():
        ids.sort()
    return out


def dismiss(store: Store, hashes: Sequence[str]) -> int:
    """Store "not duplicates" for every pair of these contents, and for the copies of one content
    among them (`hashes` may repeat: one entry per image); returns the pairs stored. A batch of its own."""
    counts: dict[str, int] = {}
    for h in hashes:
        counts[h] = counts.get(h, 0) + 1
    now = time.time()
    with store.batch():
        n = 0
        for a, b in itertools.combinations(sorted(counts), 2):
            store.execute(
                "INSERT INTO dup_dismissed (hash_a, hash_b, copies, created_at) VALUES (?, ?, NULL, ?) "
                "ON CONFLICT (hash_a, hash_b) DO NOTHING",
                [a, b, now],
            )
            n += 1
        for h, c in counts.items():
            if c > 1:
                total = store.execute("SELECT count(*) FROM images WHERE hash = ? AND state = 'ok'", [h])[0][0]
                store.execute(
                    "INSERT INTO dup_dismissed (hash_a, hash_b, copies, created_at) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (hash_a, hash_b) DO UPDATE SET copies = max(coalesce(copies, 0), excluded.copies)",
                    [h, h, max(int(total), c), now],
                )
                n += 1
        bump(store)
    log.info("dismissed as not duplicates: %d pairs of contents", n)
    return n
