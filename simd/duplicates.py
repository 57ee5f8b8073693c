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

**Groups** (`groups`, from `dupgroups`): identical bytes always together, links at a threshold,
never two members below a floor or dismissed by the user; `matrix_similarity` scores the pairs a
component lacks.

**Keep** (`suggest_keep`): an ordered list of rules, each narrowing the members to those it likes
best, until one is left; each step says what it decided and why.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np

from simd import quantized
from simd.budget import Stopped
from simd.dupgroups import Group, Similarity, group_dismissals, groups
from simd.keeprules import DEFAULT_KEEP_RULES, Keep, KeepStep, Member, parse_keep_rules, suggest_keep

__all__ = [
    "DEFAULT_KEEP_RULES",
    "DUPLICATE_THRESHOLDS",
    "Group",
    "Keep",
    "Similarity",
    "Thresholds",
    "matrix_similarity",
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


class Thresholds(NamedTuple):
    """A model's defaults: `threshold` links two images, `floor` is the least any two of a group may
    score, `lowest` the lowest threshold a request may ask for (the pairs are kept down to it).
    `sure`: the cosine from which two images are copies whatever their pixels; a pair scoring from
    `lowest` up to it links only once its pixels say it is the same photo (`dupverify`); None: no
    pair is verified (links by cosine alone)."""

    threshold: float
    floor: float
    lowest: float
    sure: float | None = None


# Per model id, measured as the groups' pairwise precision and recall on the kit's near-duplicate
# library (docs/QUALITY.md, "Duplicates"; tests/bench/calibrate.py); uncalibrated models have none.
# `sure`: pairs from `lowest` up to it link only once their pixels are verified (tests/bench/verify_pairs.py).
DUPLICATE_THRESHOLDS: dict[str, Thresholds] = {"efficientnet-lite0+r2": Thresholds(0.70, 0.50, 0.70, 0.95)}

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


def _scores32(m: np.ndarray, li: np.ndarray, ri: np.ndarray) -> np.ndarray:
    """float32 products of rows m[li] and m[ri], pair by pair (within `_slack(dim)` of the float64 ones)."""
    out = np.empty(len(li), np.float32)
    for s in range(0, len(li), _RESCORE_CHUNK):
        part = slice(s, s + _RESCORE_CHUNK)
        out[part] = np.einsum("ij,ij->i", m[li[part]], m[ri[part]])
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
    rank: int = 256,
    progress: Progress | None = None,
    stop: threading.Event | None = None,
) -> Pairs:
    """Every pair of rows with cosine >= `min_score`, from tiles of `block` rows by ~32 MB of columns
    to their right (float32 BLAS), each pair that may reach it rescored in float64. With `rank`, the
    tiles are products of `rank`-d projections plus a bound of what they miss (see `_Projection`),
    when a sample says it prunes. `progress(done, total)` after each tile (in tiles); `stop` set:
    `budget.Stopped` at the next tile."""
    id_arr = np.asarray(ids, dtype=np.int64).ravel()
    if len(id_arr) != len(matrix):
        raise ValueError(f"{len(id_arr)} ids for {len(matrix)} vectors")
    if len(np.unique(id_arr)) != len(id_arr):
        raise ValueError("duplicate ids")
    n = len(id_arr)
    if n < 2:
        return _empty_pairs()
    m = _unit(matrix)
    proj = _Projection.fit(m, rank, min_score) if 0 < rank <= m.shape[1] // 4 and n >= 4 * rank else None
    left, slack = (proj.y, proj.slack) if proj is not None else (m, _slack(m.shape[1]))
    block = max(1, min(int(block), n))
    cols = max(block, TILE_BYTES // (4 * block))
    cut = np.float32(min_score - slack)
    tiles = [(r, c) for r in range(0, n, block) for c in range(r, n, cols)]
    scores = np.empty((block, cols), np.float32)
    found: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for done, (r, c) in enumerate(tiles):
        if stop is not None and stop.is_set():
            raise Stopped()
        rows, right = left[r : r + block], left[c : c + cols]
        s = scores[: len(rows), : len(right)]
        np.matmul(rows, right.T, out=s)
        if proj is not None:  # an upper bound: + |what the projection misses| of both rows
            s += np.multiply.outer(proj.e[r : r + block], proj.e[c : c + cols])
        ii, jj = np.nonzero(s >= cut)
        ii += r
        jj += c
        if c < r + len(rows):  # the tile holds the diagonal: the upper triangle only
            upper = jj > ii
            ii, jj = ii[upper], jj[upper]
        if len(ii) and proj is not None:  # the bound's candidates: float32 scores first (no float64 copies)
            near = _scores32(m, ii, jj) >= np.float32(min_score - _slack(m.shape[1]))
            ii, jj = ii[near], jj[near]
        if len(ii):
            exact = _rescore(m, m, ii, jj)
            hit = exact >= min_score
            found.append((ii[hit], jj[hit], exact[hit]))
        if progress is not None:
            progress(done + 1, len(tiles))
    if not found:
        return _empty_pairs()
    ii, jj, exact = (np.concatenate(parts) for parts in zip(*found, strict=True))
    return _finish(id_arr[ii], id_arr[jj], exact)


class _Projection:
    """Unit rows x as y = P^T x, P the top `rank` directions of a sample's second moments (orthonormal,
    float64), and e = ||x - P y||: then x·x' = y·y' + (x - Py)·(x' - Py') <= y·y' + e e'. A tile
    of y products (rank/dim of the work) plus e e' bounds every score; only pairs whose bound
    reaches min_score are rescored. `slack` covers float32 y and products (with a margin)."""

    SAMPLE = 4096  # rows to learn P from
    PROBE = 256  # rows whose bounds against all say whether it prunes
    MAX_FRACTION = 0.01  # of pairs left to rescore: above it the full product costs less

    def __init__(self, y: np.ndarray, e: np.ndarray, rank: int):
        self.y, self.e, self.slack = y, e, _slack(rank) + 1e-6

    @classmethod
    def fit(cls, m: np.ndarray, rank: int, min_score: float) -> _Projection | None:
        n, dim = m.shape
        p = _top_subspace(m[np.linspace(0, n - 1, min(n, cls.SAMPLE)).astype(np.intp)], rank)
        rank = p.shape[1]
        y = np.empty((n, rank), np.float32)
        e = np.empty(n, np.float32)
        for s in range(0, n, 4096):
            x = m[s : s + 4096].astype(np.float64)
            y64 = x @ p
            rest = np.einsum("ij,ij->i", x, x) - np.einsum("ij,ij->i", y64, y64)
            y[s : s + len(x)] = y64
            e[s : s + len(x)] = np.sqrt(np.maximum(rest, 0)) * (1 + 1e-6) + 1e-6
        proj = cls(y, e, rank)
        probe = np.linspace(0, n - 1, min(n, cls.PROBE)).astype(np.intp)
        bound = y[probe] @ y.T + np.multiply.outer(e[probe], e)
        return proj if np.mean(bound >= min_score - proj.slack) <= cls.MAX_FRACTION else None


def _top_subspace(sample: np.ndarray, rank: int) -> np.ndarray:
    """An orthonormal (dim, <= rank) float64 basis close to the sample's top `rank` directions: three
    rounds of subspace iteration from a fixed random start, orthonormalised through the small Gram
    matrix (no LAPACK: OpenBLAS' threaded QR and eigh crawl on a busy machine)."""
    s32 = np.ascontiguousarray(sample, dtype=np.float32)
    q = np.random.default_rng(0).standard_normal((s32.shape[1], rank))
    for _ in range(3):
        q = _orthonormal((s32.T @ (s32 @ q.astype(np.float32))).astype(np.float64))
    return q


def _orthonormal(y: np.ndarray) -> np.ndarray:
    """Columns spanning (nearly all of) y's, orthonormal to ~1e-15: Gram-Schmidt twice per column
    (products of a few hundred columns, no LAPACK); columns with nothing new are dropped."""
    q = np.empty_like(y)
    k = 0
    for j in range(y.shape[1]):
        v = y[:, j].copy()
        for _ in range(2):
            v -= q[:, :k] @ (q[:, :k].T @ v)
        norm = float(np.sqrt(v @ v))
        if norm > 1e-6 * float(np.sqrt(y[:, j] @ y[:, j])):
            q[:, k] = v / norm
            k += 1
    return q[:, :k]


def pairs_for(
    new_ids: Sequence[int] | np.ndarray,
    new_vectors: np.ndarray,
    index_matrix: np.ndarray,
    index_ids: Sequence[int] | np.ndarray,
    min_score: float,
    *,
    coarse: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    skip_ids: Sequence[int] | np.ndarray = (),
) -> Pairs:
    """The pairs with cosine >= `min_score` that hold a new image: each new one against the index (its
    own row there, if any, and the rows of `skip_ids`, whose vectors are about to be replaced, left
    out) and against the other new ones: what `build_pairs` over the
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
    if len(skip_ids):
        renewed |= np.isin(idx_id, np.asarray(skip_ids, dtype=np.int64))
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


def matrix_similarity(ids: Sequence[int] | np.ndarray, matrix: np.ndarray) -> Similarity:
    """`groups`' similarity from the index's rows, with `build_pairs`' float64 scoring."""
    row = {int(i): r for r, i in enumerate(np.asarray(ids, dtype=np.int64).ravel().tolist())}

    def score(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        li = np.array([row[int(i)] for i in a], np.intp)
        ri = np.array([row[int(i)] for i in b], np.intp)
        return _rescore(matrix, matrix, li, ri)

    return score
