"""Which images are copies of each other: pairs of one model's vectors, groups of them, and which copy to keep.

Pure functions over arrays (no store, no threads of their own); the caller reads the vectors, hashes
and file facts and stores what comes back.

**Pairs** are every two images whose cosine is at least `min_score`, each once (a < b by id), with
its score. `build_pairs` computes them for a whole index from blocked float32 matrix products
(tiles of `block` rows by the columns to their right, ~32 MB of scores each: the upper triangle
only), `pairs_for` for one or a few new images against the index. Both keep every float32 score
within rounding of `min_score` and then decide on a float64 rescoring of the two rows, which
depends on the two rows alone: the two functions, any block size and a naive full product give the
same pairs, scores included.

**Groups** (`groups`): images of the same content hash are one node (identical bytes, always one
group whatever their vectors). Two nodes are linked when their score is at least `threshold`; a
group is built from its strongest links first, and two groups are joined only when *every* pair
between them scores at least `floor` and none was dismissed as "not duplicates". So a chain of
drifting crops a ~ b ~ c, where a and c score below the floor, is never one group: c is left out
of {a, b} (or joins whichever side it is close to all of). The same as taking the connected
components at `threshold` and splitting each one complete-linkage style: deterministic (links by
score, then ids) and O(k^2) for a component of k nodes. Pairs must have been built with
`min_score <= floor`: a pair that is absent scores below the floor.

**Dismissals** are keyed by content hashes (frozenset({hash_a, hash_b})), so they survive renames
and rescans: a dismissed pair is neither a link nor allowed in one group. A dismissed group is all
its pairs (`group_dismissals`); a new copy (a new hash) of the same photo links to them again and
starts a group showing it.

**Keep** (`suggest_keep`): an ordered list of rules, each narrowing the members to those it likes
best, until one is left; each step says what it decided and why.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from simd import quantized
from simd.budget import Stopped
from simd.keeprules import DEFAULT_KEEP_RULES, Keep, KeepStep, Member, parse_keep_rules, suggest_keep

__all__ = [
    "DEFAULT_KEEP_RULES",
    "DUPLICATE_THRESHOLDS",
    "Group",
    "Keep",
    "KeepStep",
    "Member",
    "Pairs",
    "build_pairs",
    "group_dismissals",
    "groups",
    "pairs_for",
    "parse_keep_rules",
    "suggest_keep",
]

# Per model id: (threshold, floor). Derived from docs/QUALITY.md's score table and the real copies
# of tests/test_duplicates.py (see docs/QUALITY.md, "Duplicates"); uncalibrated models get none.
DUPLICATE_THRESHOLDS: dict[str, tuple[float, float]] = {"efficientnet-lite0": (0.85, 0.75)}

TILE_BYTES = 32 << 20  # one tile's float32 scores: ~32 MB whatever the index size
_NORM_TOL = 1e-4  # as simd.vectors: rows this close to unit norm are kept bit-exact
_ROW_NORM_MAX = 1 + 2 * _NORM_TOL
_RESCORE_CHUNK = 4096  # pairs rescored at a time (2 x 4096 x dim float64 temporaries)

Progress = Callable[[int, int], None]


class Pairs(NamedTuple):
    """Parallel arrays, sorted by (a, b): a < b (int64 ids) and their cosine (float64)."""

    a: np.ndarray
    b: np.ndarray
    score: np.ndarray


def _empty_pairs() -> Pairs:
    return Pairs(np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float64))


def _unit(rows: np.ndarray) -> np.ndarray:
    """float32 C-contiguous rows of unit norm; rows already within 1e-4 of it are kept bit-exact."""
    v = np.ascontiguousarray(rows, dtype=np.float32)
    owned = not np.may_share_memory(v, rows)
    if v.ndim == 1:
        v = v[None, :]
    if v.ndim != 2:
        raise ValueError(f"expected a (rows, dim) matrix, got shape {np.shape(rows)}")
    sq = np.einsum("ij,ij->i", v, v)
    if not (np.isfinite(sq).all() and (sq > 0).all()):
        raise ValueError("vectors must be finite and non-zero")
    off = np.abs(np.sqrt(sq) - 1) > _NORM_TOL
    if off.any():
        v = v if owned else v.copy()  # never the caller's array
        v[off] /= np.sqrt(sq[off])[:, None]
    return v


def _slack(dim: int) -> float:
    """How far a float32 product of two unit `dim`-vectors can be from their float64 one."""
    return max(1e-6, 2 * dim * 2.0**-24)


def _rescore(left: np.ndarray, right: np.ndarray, li: np.ndarray, ri: np.ndarray) -> np.ndarray:
    """float64 cosines of rows left[li] and right[ri], pair by pair: depends on the two rows only."""
    out = np.empty(len(li), np.float64)
    for s in range(0, len(li), _RESCORE_CHUNK):
        a = left[li[s : s + _RESCORE_CHUNK]].astype(np.float64)
        b = right[ri[s : s + _RESCORE_CHUNK]].astype(np.float64)
        out[s : s + len(a)] = np.einsum("ij,ij->i", a, b)
    return out


def _finish(a: np.ndarray, b: np.ndarray, score: np.ndarray) -> Pairs:
    """Ordered a < b, sorted by (a, b), with a pair given twice kept once."""
    lo, hi = np.minimum(a, b).astype(np.int64), np.maximum(a, b).astype(np.int64)
    order = np.lexsort((hi, lo))
    lo, hi, score = lo[order], hi[order], np.asarray(score, np.float64)[order]
    keep = np.ones(len(lo), bool)
    keep[1:] = (lo[1:] != lo[:-1]) | (hi[1:] != hi[:-1])
    return Pairs(lo[keep], hi[keep], score[keep])


def build_pairs(
    ids: Sequence[int] | np.ndarray,
    matrix: np.ndarray,
    min_score: float,
    *,
    block: int = 1024,
    progress: Progress | None = None,
    stop: threading.Event | None = None,
) -> Pairs:
    """Every pair of rows with cosine >= `min_score`, from tiles of `block` rows by ~32 MB of columns
    to their right (float32 BLAS), each hit within rounding rescored in float64. `progress(done, total)`
    after each tile (in tiles); `stop` set: `budget.Stopped` at the next tile."""
    id_arr = np.asarray(ids, dtype=np.int64).ravel()
    if len(id_arr) != len(matrix):
        raise ValueError(f"{len(id_arr)} ids for {len(matrix)} vectors")
    if len(np.unique(id_arr)) != len(id_arr):
        raise ValueError("duplicate ids")
    n = len(id_arr)
    if n < 2:
        return _empty_pairs()
    m = _unit(matrix)
    block = max(1, min(int(block), n))
    cols = max(block, TILE_BYTES // (4 * block))
    cut = np.float32(min_score - _slack(m.shape[1]))
    tiles = [(r, c) for r in range(0, n, block) for c in range(r, n, cols)]
    scores = np.empty((block, cols), np.float32)
    found_i: list[np.ndarray] = []
    found_j: list[np.ndarray] = []
    for done, (r, c) in enumerate(tiles):
        if stop is not None and stop.is_set():
            raise Stopped()
        rows, right = m[r : r + block], m[c : c + cols]
        s = scores[: len(rows), : len(right)]
        np.matmul(rows, right.T, out=s)
        ii, jj = np.nonzero(s >= cut)
        ii += r
        jj += c
        if c < r + len(rows):  # the tile holds the diagonal: the upper triangle only
            upper = jj > ii
            ii, jj = ii[upper], jj[upper]
        if len(ii):
            found_i.append(ii)
            found_j.append(jj)
        if progress is not None:
            progress(done + 1, len(tiles))
    if not found_i:
        return _empty_pairs()
    ii, jj = np.concatenate(found_i), np.concatenate(found_j)
    exact = _rescore(m, m, ii, jj)
    keep = exact >= min_score
    return _finish(id_arr[ii[keep]], id_arr[jj[keep]], exact[keep])


def pairs_for(
    new_ids: Sequence[int] | np.ndarray,
    new_vectors: np.ndarray,
    index_matrix: np.ndarray,
    index_ids: Sequence[int] | np.ndarray,
    min_score: float,
    *,
    coarse: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> Pairs:
    """The pairs with cosine >= `min_score` that hold a new image: each new one against the index (its
    own row there, if any, left out) and against the other new ones: what `build_pairs` over the
    index with the new vectors in it would give for them. `index_matrix` holds unit rows (as
    `VectorIndex` keeps them; not checked, that would read it all). With `coarse`, the index's int8
    copy (`quantized.encode(index_matrix)`, as `VectorIndex` keeps it), each image scans a quarter
    of the bytes and rescores only rows whose score bound reaches `min_score`."""
    new_id = np.asarray(new_ids, dtype=np.int64).ravel()
    idx_id = np.asarray(index_ids, dtype=np.int64).ravel()
    if len(new_id) == 0:
        return _empty_pairs()
    q = _unit(new_vectors)
    if len(new_id) != len(q):
        raise ValueError(f"{len(new_id)} new ids for {len(q)} vectors")
    if len(np.unique(new_id)) != len(new_id):
        raise ValueError("duplicate new ids")
    if len(idx_id) != len(index_matrix):
        raise ValueError(f"{len(idx_id)} index ids for {len(index_matrix)} vectors")
    a_parts, b_parts, s_parts = [], [], []
    renewed = np.isin(idx_id, new_id)  # rows the new vectors replace
    if len(idx_id):
        rows, cols = _index_candidates(q, index_matrix, min_score, coarse)
        keep = ~renewed[cols]
        rows, cols = rows[keep], cols[keep]
        exact = _rescore(q, index_matrix, rows, cols)
        hit = exact >= min_score
        a_parts += [new_id[rows[hit]]]
        b_parts += [idx_id[cols[hit]]]
        s_parts += [exact[hit]]
    if len(new_id) > 1:
        ii, jj = np.triu_indices(len(new_id), 1)
        exact = _rescore(q, q, ii, jj)
        hit = exact >= min_score
        a_parts += [new_id[ii[hit]]]
        b_parts += [new_id[jj[hit]]]
        s_parts += [exact[hit]]
    if not a_parts:
        return _empty_pairs()
    return _finish(np.concatenate(a_parts), np.concatenate(b_parts), np.concatenate(s_parts))


def _index_candidates(
    q: np.ndarray, matrix: np.ndarray, min_score: float, coarse: tuple[np.ndarray, np.ndarray, np.ndarray] | None
) -> tuple[np.ndarray, np.ndarray]:
    """(query rows, index rows) whose score may reach `min_score`."""
    n, dim = len(matrix), q.shape[1]
    if coarse is None or len(q) > 2:  # from 3 queries on, one float32 product reads the matrix once for all
        s = matrix @ q.T if len(q) > 1 else (matrix @ q[0])[:, None]
        cols, rows = np.nonzero(s >= np.float32(min_score - _slack(dim)))
        return rows, cols
    codes, scale, resid = coarse
    rows_out, cols_out = [], []
    for r, v in enumerate(q):
        _, hi = quantized.score_bounds(codes, scale, resid, v, _ROW_NORM_MAX)
        cols = np.flatnonzero(hi >= min_score)
        if len(cols) > max(4096, n // 32):  # the bounds pruned too little: a float32 scan costs less
            cols = np.flatnonzero(matrix @ v >= np.float32(min_score - _slack(dim)))
        rows_out.append(np.full(len(cols), r, np.intp))
        cols_out.append(cols)
    return np.concatenate(rows_out), np.concatenate(cols_out)


# -- groups ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Group:
    """One group of copies. `members`: ids ascending; `tier`: "identical" (all of the same bytes) or
    "near-duplicate"; `identical`: the members of the same bytes, 2 or more a set; `min_score` and
    `max_score`: its weakest and strongest link between different contents (1.0 when there are none)."""

    members: tuple[int, ...]
    tier: str
    identical: tuple[tuple[int, ...], ...]
    min_score: float
    max_score: float


def group_dismissals(hashes: Iterable[str]) -> set[frozenset[str]]:
    """A whole group's "not duplicates" decision, as the dismissals of all its pairs of contents."""
    return {frozenset(p) for p in itertools.combinations(sorted(set(hashes)), 2)}


def groups(
    pairs: Pairs | tuple[np.ndarray, np.ndarray, np.ndarray],
    threshold: float,
    floor: float,
    *,
    hashes: Mapping[int, str | None] | None = None,
    dismissed: Iterable[frozenset[str]] = (),
) -> list[Group]:
    """The groups of copies (2 or more images each), by their smallest id: images of one content hash
    (`hashes`: id -> hash) always together, other images linked by a score >= `threshold`, no two
    contents in a group below `floor` or dismissed (see the module's doc)."""
    if not floor <= threshold:
        raise ValueError(f"floor {floor} must not be above the threshold {threshold}")
    hashes = hashes or {}
    ban = {d for d in dismissed if len(d) == 2}  # one hash: identical bytes are always a group
    by_hash: dict[str, list[int]] = {}
    for i, h in hashes.items():
        if h is not None:
            by_hash.setdefault(h, []).append(int(i))
    node_of: dict[int, int] = {}  # id -> its content's node (the smallest id of that hash)
    ids_of: dict[int, list[int]] = {}  # node -> its ids, for nodes of 2+ ids
    for same in by_hash.values():
        if len(same) > 1:
            same.sort()
            ids_of[same[0]] = same
            node_of.update((i, same[0]) for i in same)

    a, b, score = (np.asarray(x) for x in pairs)
    keep = score >= floor
    best: dict[tuple[int, int], float] = {}  # (node, node) -> the best score of their ids
    for i, j, s in zip(a[keep].tolist(), b[keep].tolist(), score[keep].tolist(), strict=True):
        u, v = node_of.get(i, i), node_of.get(j, j)
        if u == v:
            continue
        hi, hj = hashes.get(i), hashes.get(j)
        if hi is not None and hj is not None and frozenset((hi, hj)) in ban:
            continue
        key = (u, v) if u < v else (v, u)
        if s > best.get(key, -2.0):
            best[key] = s

    root: dict[int, int] = {}  # node -> its cluster's root
    nodes: dict[int, list[int]] = {}  # root -> its nodes
    ok: dict[int, dict[int, int]] = {}  # root -> {root: node pairs between them scoring >= floor}
    for u, v in best:
        ok.setdefault(u, {})[v] = 1
        ok.setdefault(v, {})[u] = 1
    for (u, v), s in sorted(best.items(), key=lambda e: (-e[1], e[0])):
        if s < threshold:
            break
        ru, rv = root.get(u, u), root.get(v, v)
        if ru == rv:
            continue
        nu, nv = nodes.setdefault(ru, [ru]), nodes.setdefault(rv, [rv])
        if ok[ru].get(rv, 0) < len(nu) * len(nv):  # some pair between them below the floor
            continue
        if len(nu) < len(nv):
            ru, rv, nu, nv = rv, ru, nv, nu
        for w in nv:
            root[w] = ru
        nu += nodes.pop(rv)
        for x, c in ok.pop(rv).items():
            if x != ru:
                ok[ru][x] = ok[ru].get(x, 0) + c
                ok[x][ru] = ok[x].pop(rv) + ok[x].get(ru, 0)
        ok[ru].pop(rv, None)

    spread: dict[int, list[float]] = {}  # root -> [min, max] of its links
    for (u, v), s in best.items():
        r = root.get(u, u)
        if r == root.get(v, v):
            lo_hi = spread.setdefault(r, [s, s])
            lo_hi[0], lo_hi[1] = min(lo_hi[0], s), max(lo_hi[1], s)
    found = []
    for r in sorted(set(nodes) | (set(ids_of) - set(root))):
        members = nodes.get(r, [r])
        if len(members) == 1 and r not in ids_of:
            continue
        same = tuple(tuple(ids_of[n]) for n in sorted(members) if n in ids_of)
        lo, hi = spread.get(r, [1.0, 1.0])
        ids = tuple(sorted(i for n in members for i in ids_of.get(n, [n])))
        found.append(Group(ids, "identical" if len(members) == 1 else "near-duplicate", same, lo, hi))
    return sorted(found, key=lambda g: g.members[0])
