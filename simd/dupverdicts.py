"""The pixels' verdicts on pairs of copies (`dup_pairs.inliers`, `verify_note`): all their SQL, and what
a grouping makes of them.

A pair of contents scoring in its model's ambiguous band (from `Thresholds.lowest` up to `sure`) is
a candidate only: the background verifier (`simd.dupverifier`) matches the two images' local
features (`simd.dupverify`) and stores how many agree with one transform (`inliers`), or why it
could not (`verify_note`: a file that does not decode, no file of that content left). The verdict
lives on the pair's row, keyed by the two content hashes and the model: a rename, a move, a rescan
or the rebuild of the pairs (`ON CONFLICT ... DO UPDATE SET score`) keeps it.

**Grouping** (`grouping_pairs`): a pair in the band links two images only when verified as the same
photo (`inliers >= dupverify.MIN_INLIERS`); a pair not verified yet, refused, or that could not be
verified is no link (its score is taken as just under `lowest`, below any threshold a request may
ask for) but still counts for the floor (it is a pair of look-alikes, not a dismissal). Pairs from
`sure` up link by their cosine alone.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence

from simd import dupindex, dupverify
from simd.store import Store
from simd.storevalues import path_from_db

_counted: dict[tuple[str, str, str, str | None], dict[str, int]] = {}
_counted_lock = threading.Lock()
Verdict = tuple[str, str, int | None, str | None]  # (hash_a, hash_b, inliers, note)


VERDICTS_KEY = "dup_verdicts"  # bumped with every verdict stored (the counts' cache key)


def band(model: str) -> tuple[float, float] | None:
    """[lowest, sure) of the model's pairs that need the pixels' verdict; None: none do (a floor at
    `lowest` would leave no score for a pair that is no link but counts for the floor)."""
    t, calibrated = dupindex.thresholds(model)
    if not calibrated or t.sure is None or t.sure <= t.lowest or t.floor >= t.lowest:
        return None
    return t.lowest, t.sure


def pending(
    store: Store, model: str, limit: int, skip: Iterable[tuple[str, str]] = (), after: tuple[str, str] | None = None
) -> list[tuple[str, str, float]]:
    """Up to `limit` pairs in the model's band with neither a verdict nor a note, in key order from
    after the pair `after` (a cursor: the primary key's order, no sort and no rescan of the pairs
    done), but those of `skip` (handed to the writer, not stored yet). By hash, so that one image's
    features serve its pairs in a row."""
    b = band(model)
    if b is None:
        return []
    skipped = set(skip)
    since = "" if after is None else " AND (hash_a, hash_b) > (?, ?)"
    rows = store.execute(
        f"SELECT hash_a, hash_b, score FROM dup_pairs WHERE model = ?{since} AND score >= ? AND score < ? "
        "AND inliers IS NULL AND verify_note IS NULL ORDER BY hash_a, hash_b LIMIT ?",
        [model, *(after or ()), b[0], b[1], int(limit) + len(skipped)],
    )
    return [(a, h, float(s)) for a, h, s in rows if (a, h) not in skipped][:limit]


def counts(store: Store, model: str) -> dict[str, int]:
    """The band's pairs: `verified` (a verdict), `pending` (none yet), `unverifiable` (a note). Kept
    until the next write (`dupindex.version`): /api/status asks often, and it reads every pair."""
    b = band(model)
    if b is None:
        return {"verified": 0, "pending": 0, "unverifiable": 0}
    key = (str(store.path), model, dupindex.version(store), store.get_meta(VERDICTS_KEY, "0"))
    with _counted_lock:
        hit = _counted.get(key)
    if hit is None:
        hit = _count(store, model, b)
        with _counted_lock:
            _counted.clear()  # one index, one model at a time in practice
            _counted[key] = hit
    return dict(hit)


def _count(store: Store, model: str, b: tuple[float, float]) -> dict[str, int]:
    ((verified, noted, total),) = store.execute(
        "SELECT count(inliers), count(verify_note), count(*) FROM dup_pairs "
        "WHERE model = ? AND score >= ? AND score < ?",
        [model, b[0], b[1]],
    )
    noted_only = int(noted)  # a note is only written without a verdict
    return {"verified": int(verified), "pending": int(total) - int(verified) - noted_only, "unverifiable": noted_only}


def summary(store: Store, model: str, running: dict | None) -> dict:
    """The listing's and /api/status's `verification`: the band, its pairs' counts, and the state of
    the verifier (`running`: `Runtime.verification`): `verifying`, `idle` (all done), `off` (no
    verifier runs: pairs of the band stay unlinked until a daemon serves the index) or `none` (the
    model links by cosine alone)."""
    b = band(model)
    if b is None:
        return {"state": "none", "band": None}
    state = (running or {}).get("state") or "off"
    c = counts(store, model)
    if state == "idle" and c["pending"]:
        state = "verifying"  # pairs stored since the verifier last looked
    extra = {k: v for k, v in (running or {}).items() if k in ("ms_per_pair", "error") and v is not None}
    return {"state": state, "band": list(b), "min_inliers": dupverify.MIN_INLIERS, **c, **extra}


def files_of(store: Store, model: str, digest: str) -> list[tuple[str, int, int]]:
    """(relative path, size, mtime_ns) of the ok images of `model` with these bytes (any will do)."""
    rows = store.execute(
        "SELECT path, size, mtime_ns FROM images WHERE +model = ? AND +state = 'ok' AND hash = ? ORDER BY id",
        [model, digest],
    )
    return [(path_from_db(p), int(size), int(mtime)) for p, size, mtime in rows]


def put(store: Store, model: str, verdicts: Sequence[Verdict]) -> int:
    """Store verdicts (inside a batch of the writer); a pair gone since is skipped. Returns those stored."""
    n, links = 0, False
    for a, b, inliers, note in verdicts:
        stored = store.execute(
            "UPDATE dup_pairs SET inliers = ?, verify_note = ? WHERE model = ? AND hash_a = ? AND hash_b = ? "
            "RETURNING hash_a",
            [inliers, note, model, a, b],
        )
        n += len(stored)
        links = links or bool(stored and inliers is not None and inliers >= dupverify.MIN_INLIERS)
    # Only a verdict that links changes the groups: a refusal or a note leaves every listing as it was,
    # and a bump would make the next one regroup the whole library (seconds at 100k, for hours).
    if links:
        dupindex.bump(store)
    if n:  # the counts' own key: a refusal changes them, not the groups
        store.set_meta(VERDICTS_KEY, str(int(store.get_meta(VERDICTS_KEY, "0") or "0") + 1))
    return n


def grouping_pairs(store: Store, model: str) -> tuple[list[tuple[str, str, float]], dict[tuple[str, str], float]]:
    """The stored pairs as `groups` should link them (see the module's doc), and their cosines as shown."""
    b = band(model)
    rows = store.execute("SELECT hash_a, hash_b, score, inliers FROM dup_pairs WHERE model = ?", [model])
    shown = {(a, h): float(s) for a, h, s, _ in rows}
    if b is None:
        return [(a, h, float(s)) for a, h, s, _ in rows], shown
    lo, sure = b
    out = []
    for a, h, s, inliers in rows:
        s = float(s)
        if s < sure and not (inliers is not None and inliers >= dupverify.MIN_INLIERS):
            s = min(s, lo - 1e-6)  # no link at any threshold a request may ask for; still a pair for the floor
        out.append((a, h, s))
    return out, shown
