"""The duplicates listing (`GET /api/duplicates`, `simd duplicates`) and the "not duplicates" decisions.

Reads the stored pairs of contents (`simd.dupindex`), groups them at the request's threshold
(`duplicates.groups`: identical bytes always together, never two members below the model's floor,
dismissed pairs never linked), suggests the copy to keep (`keep_rules`) and orders the groups by the
bytes the other copies take. Never writes, but for `dismiss` (the user's decision: one small
transaction of its own, not index content).

**Fast at 100k images**: the whole grouping of a (model, threshold) is computed once and cached until
the index, its pairs or the dismissals change (`dupindex.version`, bumped by each of the writer's batches);
a page is a slice of it.

**Image sizes** (for the `most_pixels` rule and the page) come from the index (`images.width`,
`height`, `format`: the writer reads each new content's header when it indexes it, and the
background build those of the images with copies in an index from before); a row without them is
read from its file's header here, once (kept in memory by id, size and mtime). A file that cannot be
read has width and height null (the rule ranks it last).
"""

from __future__ import annotations

import hashlib
import math
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from simd import dupindex, duptrash, dupverdicts
from simd.duplicates import DEFAULT_KEEP_RULES, Member, groups, suggest_keep
from simd.errors import BadRequest, NotFound, NotReady
from simd.paths import display_path
from simd.runtime import Runtime
from simd.search import ID_MAX, LIMIT_MAX, OFFSET_MAX, _int_param, shown
from simd.store import Store
from simd.storevalues import from_blob, path_from_db

TIERS = ("identical", "near-duplicate")
_CACHE_MAX = 8  # groupings kept (model x threshold)
# ids in one dismiss or trash request: a dismissal stores every pair of their contents (500 ids:
# ~125k rows, a second or two; 10k would be 50M rows in one transaction that holds off the writer)
IDS_MAX = 500


def parse_threshold(value: Any, lowest: float, default: float) -> float:
    if value is None or value == "":
        return default
    try:
        t = float(str(value).strip())
    except ValueError:
        raise BadRequest(f"threshold must be a number from {lowest} to 1.0, got {shown(value)}") from None
    if not (math.isfinite(t) and lowest <= t <= 1.0):
        raise BadRequest(f"threshold must be from {lowest} to 1.0 (this model's lowest), got {shown(value)}")
    return t


def parse_tier(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if value not in TIERS:
        raise BadRequest(f"tier must be one of {', '.join(TIERS)} (or absent for both), got {shown(value)}")
    return str(value)


class DuplicatesService:
    """The groups of copies of the active model (`runtime.model`) in the index at `db_path`."""

    def __init__(
        self,
        db_path: Path,
        library_root: Path,
        runtime: Runtime,
        *,
        keep_rules: tuple[str, ...] | list[str] = DEFAULT_KEEP_RULES,
        allow_trash: bool = False,
    ):
        self.db_path, self.library_root, self.runtime = Path(db_path), Path(library_root), runtime
        self.keep_rules = tuple(keep_rules)
        self.allow_trash = allow_trash
        self._local = threading.local()
        self._lock = threading.Lock()  # one grouping computed at a time; the cache
        self._cache: dict[tuple, tuple[str, dict]] = {}
        self._headers: dict[tuple[int, int, int], tuple[int | None, int | None, str]] = {}
        self._groups: dict[tuple, dict] = {}  # the last grouping's groups, by what they were made of
        self._trash_lock = threading.Lock()
        self._trashed: set[int] = set()  # ids this process sent to the trash (the index may lag)
        self.computed = 0  # groupings computed (not from the cache), for tests and the benchmark

    def store(self) -> Store:
        store = getattr(self._local, "store", None)
        if store is None:
            store = self._local.store = Store(self.db_path, readonly=True)
        return store

    def model(self) -> str:
        model = self.runtime.model or self.store().get_meta("model")
        if not model:
            raise NotReady("the model is still loading; try again in a moment")
        return model

    def state(self) -> dict:
        """/api/status's "duplicates": building (with done/total), ready, or off (pairs not built and
        no build running: an index `simd index` made, until a daemon serves it); `verification`."""
        dup, model = self.runtime.duplicates, self.runtime.model or self.store().get_meta("model")
        check = dupverdicts.summary(self.store(), model, self.runtime.verification) if model else None
        if dup and dup.get("state") in ("building", "ready"):  # this daemon's build
            return {**{k: dup[k] for k in ("state", "done", "total")}, "verification": check}
        built = model is not None and dupindex.is_built(self.store(), model)
        return {"state": "ready" if built else "off", "done": 0, "total": 0, "verification": check}

    def listing(self, threshold: Any = None, tier: Any = None, offset: Any = 0, limit: Any = 50) -> dict:
        model = self.model()
        t, calibrated = dupindex.thresholds(model)
        thr = parse_threshold(threshold, t.lowest, t.threshold)
        tier_s = parse_tier(tier)
        offset_i = _int_param("offset", offset, 0, 0, OFFSET_MAX)
        limit_i = _int_param("limit", limit, 50, 1, LIMIT_MAX)
        floor = t.floor if calibrated else thr  # uncalibrated: no chains below the asked threshold
        store = self.store()
        built = dupindex.is_built(store, model)
        every = self._grouping(store, model, thr, min(floor, thr))
        listed = [g for g in every if tier_s is None or g["tier"] == tier_s]
        dup = self.runtime.duplicates or {}
        return {
            "complete": built,
            "model": model,
            "threshold": thr,
            "floor": min(floor, thr),
            "lowest": t.lowest,
            "calibrated": calibrated,
            "progress": None if built else {"done": int(dup.get("done", 0)), "total": int(dup.get("total", 0))},
            "verification": dupverdicts.summary(store, model, self.runtime.verification),
            "total": len(listed),
            "total_images": sum(len(g["images"]) for g in listed),
            "reclaimable_bytes": sum(g["reclaimable_bytes"] for g in listed),
            "offset": offset_i,
            "limit": limit_i,
            "allow_trash": self.allow_trash,
            "groups": listed[offset_i : offset_i + limit_i],
        }

    def _grouping(self, store: Store, model: str, threshold: float, floor: float) -> list[dict]:
        key = (model, threshold, floor, self.keep_rules)
        with self._lock:
            version = dupindex.version(store)  # bumped by every write of the index (`DupIndex.removed`)
            hit = self._cache.get(key)
            if hit is not None and hit[0] == version:
                return hit[1]["groups"]
            found = self._compute(store, model, threshold, floor)
            self.computed += 1
            self._cache[key] = (version, {"groups": found})
            while len(self._cache) > _CACHE_MAX:
                self._cache.pop(next(iter(self._cache)))
            return found

    def _compute(self, store: Store, model: str, threshold: float, floor: float) -> list[dict]:
        stored, shown = dupverdicts.grouping_pairs(store, model)  # the band's links: verified pairs only
        ids_of = dupindex.listed_ids(store, model)
        rep = {h: ids[0] for h, ids in ids_of.items()}
        hash_of = {i: h for h, ids in ids_of.items() for i in ids}
        known = [(a, b, s) for a, b, s in stored if a in rep and b in rep]
        pair_score = {(a, b): shown[a, b] for a, b, _ in known}
        arrays = (
            np.array([rep[a] for a, _, _ in known], np.int64),
            np.array([rep[b] for _, b, _ in known], np.int64),
            np.array([s for _, _, s in known], np.float64),
        )
        similarity = _StoredSimilarity(store)
        dismissed = dupindex.load_dismissed(store)
        found = groups(
            arrays,
            threshold,
            floor,
            hashes=hash_of,
            dismissed={frozenset(k) for k in dismissed if k[0] != k[1]},
            similarity=similarity,
        )
        out = []
        rows = _rows(store, [i for g in found for i in g.members])
        memo, self._groups = self._groups, {}
        for g in found:
            if g.tier == "identical":
                (h,) = {hash_of[i] for i in g.members}
                if (dismissed.get((h, h)) or 0) >= len(g.members):  # no copy since it was dismissed
                    continue
            members = [rows[i] for i in g.members if i in rows]
            if len(members) > 1:
                # a group whose members did not change is not worked out again (keep rules, scores)
                key = (
                    g.tier,
                    g.min_score,
                    g.max_score,
                    tuple(tuple(r.values()) + (hash_of[r["id"]],) for r in members),
                )
                done = memo.get(key)
                if done is None:
                    done = self._group(g.tier, g.min_score, g.max_score, members, hash_of, pair_score, similarity)
                self._groups[key] = done
                out.append(done)
        out.sort(key=lambda g: (-g["reclaimable_bytes"], g["images"][0]["path"]))
        return out

    def _group(self, tier, lo, hi, rows: list[dict], hash_of, pair_score, similarity) -> dict:
        facts = [self._header(r) for r in rows]
        members = [
            Member(r["path"], w, h, r["size"], r["mtime_ns"] / 1e9, r["id"])
            for r, (w, h, _) in zip(rows, facts, strict=True)
        ]
        keep = suggest_keep(members, self.keep_rules)
        keeper = rows[keep.index]
        kh = hash_of[keeper["id"]]
        images = []
        for r, (w, h, fmt) in zip(rows, facts, strict=True):
            mh = hash_of[r["id"]]
            if mh == kh:
                score = 1.0
            else:
                score = pair_score.get((min(kh, mh), max(kh, mh)))
                if score is None:
                    score = float(similarity(np.array([keeper["id"]]), np.array([r["id"]]))[0])
            v = _version(r)
            images.append(
                {
                    "id": r["id"],
                    "path": display_path(r["path"]),
                    "keep": r["id"] == keeper["id"],
                    "score": round(float(score), 4),
                    "identical_to_keeper": mh == kh,
                    "bytes": r["size"],
                    "width": w,
                    "height": h,
                    "mtime": r["mtime_ns"] / 1e9,
                    "format": fmt,
                    "version": v,
                    "thumb": f"/api/images/{r['id']}/thumb?v={v}",
                    "url": f"/api/images/{r['id']}/file?v={v}",
                }
            )
        images.sort(key=lambda m: (not m["keep"], -m["score"], m["path"]))
        contents = sorted({hash_of[r["id"]] for r in rows})
        return {
            "id": hashlib.blake2b("\n".join(contents).encode(), digest_size=16).hexdigest(),
            "tier": tier,
            "min_score": round(float(lo), 4),
            "max_score": round(float(hi), 4),
            "reclaimable_bytes": sum(r["size"] for r in rows if r["id"] != keeper["id"]),
            "keep": {
                "id": keeper["id"],
                "decided_by": keep.decided_by,
                "steps": [
                    {"rule": s.rule, "reason": s.reason, "kept": [rows[i]["id"] for i in s.kept]} for s in keep.steps
                ],
            },
            "images": images,
        }

    def _header(self, row: dict) -> tuple[int | None, int | None, str]:
        """The stored size and format (recorded when indexed), else read from the header once."""
        if row["width"] is not None and row["format"] is not None:
            return row["width"], row["height"], row["format"]
        key = (row["id"], row["size"], row["mtime_ns"])
        hit = self._headers.get(key)
        if hit is None:
            hit = self._headers[key] = dupindex.header_size(self.library_root / row["path"])
        return hit

    def image_rows(self, body: Any, *, least: int) -> list[dict]:
        """The indexed images a JSON body `{"images": [id, ...]}` names (at least `least` distinct ids):
        BadRequest for a bad body, NotFound for an id that is no indexed image."""
        ids = body.get("images") if isinstance(body, dict) else None
        if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
            raise BadRequest('send a JSON object {"images": [id, id, ...]} of image ids (integers)')
        ids = list(dict.fromkeys(ids))
        if not least <= len(ids) <= IDS_MAX:
            raise BadRequest(f"images must hold from {least} to {IDS_MAX} distinct ids, got {len(ids)}")
        rows = []
        for i in ids:
            row = self.store().get(i) if 0 <= i <= ID_MAX else None
            if row is None or row["state"] != "ok" or not row["hash"]:
                raise NotFound(f"no indexed image with id {i}")
            rows.append(row)
        return rows

    def dismiss(self, body: Any) -> dict:
        """ "Not duplicates" for every pair of the contents of these images (POST /api/duplicates/dismiss)."""
        rows = self.image_rows(body, least=2)
        with Store(self.db_path) as store:
            n = dupindex.dismiss(store, [r["hash"] for r in rows])
        return {"dismissed_pairs": n}

    def trash(self, body: Any) -> dict:
        """Move these copies to the desktop trash (POST /api/duplicates/trash; see `simd.duptrash`):
        each must be in a group at the threshold (`threshold` in the body, else the model's), and no
        group may lose every member."""
        if not self.allow_trash:
            raise duptrash.TrashDisabled(duptrash.DISABLED_MESSAGE)
        rows = self.image_rows(body, least=1)
        model = self.model()
        t, calibrated = dupindex.thresholds(model)
        thr = parse_threshold(body.get("threshold"), t.lowest, t.threshold)
        wanted = {r["id"] for r in rows}
        with self._trash_lock:  # two requests at once must not empty one group between them
            groups = self._grouping(self.store(), model, thr, t.floor if calibrated else thr)
            duptrash.check_groups(groups, wanted, self._trashed, self._on_disk, thr)
            files, changed = [], []
            for r in rows:
                shown, path = display_path(r["path"]), self.absolute_path(r["path"])
                if duptrash.on_disk_as_indexed(path, r):
                    files.append((shown, path))
                else:
                    changed.append({"path": shown, "error": "changed or gone since it was indexed; not moved"})
            duptrash.check_writable([f for _, f in files], self.library_root)
            trashed, failed = duptrash.move_to_trash(files)
            moved = set(trashed)
            self._trashed |= {r["id"] for r in rows if display_path(r["path"]) in moved}
        return {"trashed": trashed, "failed": changed + failed}

    def _on_disk(self, image_id: int) -> bool:
        row = self.store().get(image_id)
        return row is not None and duptrash.on_disk_as_indexed(self.absolute_path(row["path"]), row)

    def absolute_path(self, rel: str) -> str:
        return os.path.join(self.library_root, *rel.split("/"))


def _version(row: dict) -> str:
    return f"{row['size']:x}-{row['mtime_ns']:x}-{int((row.get('updated_at') or 0) * 1000):x}"


def _rows(store: Store, ids: list[int]) -> dict[int, dict]:
    out: dict[int, dict] = {}
    for s in range(0, len(ids), 500):
        for r in store.execute(
            "SELECT id, path, size, mtime_ns, updated_at, width, height, format FROM images WHERE id IN ({})".format(
                ", ".join("?" * len(ids[s : s + 500]))
            ),
            ids[s : s + 500],
        ):
            out[int(r[0])] = {
                "id": int(r[0]),
                "path": path_from_db(r[1]),
                "size": r[2],
                "mtime_ns": r[3],
                "updated_at": r[4],
                "width": r[5],
                "height": r[6],
                "format": r[7],
            }
    return out


class _StoredSimilarity:
    """`groups`' similarity from the stored vectors of the ids it is asked about (float64 cosines)."""

    def __init__(self, store: Store):
        self.store = store
        self.vec: dict[int, np.ndarray] = {}
        self._product: tuple[np.ndarray, np.ndarray] | None = None  # (ids, their cosines) last computed

    def _load(self, ids: set[int]) -> None:
        missing = sorted(ids - set(self.vec))
        for s in range(0, len(missing), 500):
            part = missing[s : s + 500]
            marks = ", ".join("?" * len(part))
            for image_id, blob in self.store.execute(
                f"SELECT id, vector FROM images WHERE id IN ({marks}) AND vector IS NOT NULL", part
            ):
                raw = from_blob(blob)
                if raw is None:
                    continue
                v = raw.astype(np.float64)
                self.vec[int(image_id)] = v / (np.linalg.norm(v) or 1.0)

    def __call__(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        a, b = np.asarray(a, np.int64), np.asarray(b, np.int64)
        self._load({int(i) for i in np.unique(np.concatenate([a, b]))})
        # the ids asked about (a component's: a few thousand at most) as one matrix, each pair a row of it
        ids = np.array(sorted(i for i in set(np.unique(a).tolist()) | set(np.unique(b).tolist()) if i in self.vec))
        out = np.full(len(a), -1.0)
        if len(ids) == 0:
            return out
        product: np.ndarray | None = None
        if self._product is not None and np.isin(ids, self._product[0]).all():
            ids, product = self._product  # the next slice of the same large component: the same product
        else:
            m = np.stack([self.vec[i] for i in ids.tolist()])
            product = m @ m.T if len(ids) <= 2048 else None  # a component's (FILL_MAX): 32 MB at most
            self._product = (ids, product) if product is not None else None
        pa, pb = np.searchsorted(ids, a), np.searchsorted(ids, b)
        pa, pb = np.minimum(pa, len(ids) - 1), np.minimum(pb, len(ids) - 1)
        has = (ids[pa] == a) & (ids[pb] == b)
        pa, pb = pa[has], pb[has]
        if product is not None:  # one product, then the pairs' cells
            out[has] = product[pa, pb]
        else:  # rows of pairs, in slices that keep the gathered vectors small
            got = [np.einsum("ij,ij->i", m[pa[s : s + 4096]], m[pb[s : s + 4096]]) for s in range(0, len(pa), 4096)]
            out[has] = np.concatenate(got) if got else []
        return out
