"""The in-RAM matrix of one model's vectors and its exact cosine top-k.

Rows are L2-normalised float32, so cosine similarity is one matrix-vector product. The matrix is
preallocated and grows by doubling (amortised O(1) upsert; unused capacity is address space, not
RAM); a removal moves the last row into the hole; `_row` maps id -> row.

Threads: `_lock` guards the published state (matrix, ids, count, id -> row); a search holds it for
its product, so it sees one consistent state. Writers are serialised by `_write_lock` and take
`_lock` only to publish, so a long rebuild does not stall searches.

Large indexes also keep an int8 copy of the matrix (`simd.quantized`): a search scans it, a quarter
of the bytes, for the few rows whose score bounds reach the top k and rescores only those, with the
same ids and scores as a float32 scan (both end in the same float64 rescoring; ties are rows whose
float64 scores are equal, ordered by id). `coarse_min_values` sets from what size (rows x dim) it
is used. The matrix given to `replace_all` is owned by the index from then on: changing it behind
the index's back would leave the int8 copy stale.

The rows are the stored vectors themselves (normalised). A transform learned from the library
(DESIGN) would be applied where this matrix is built and to each query; none is, as PCA-whitening
did not help (docs/QUALITY.md).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence

import numpy as np

from simd import quantized

_NORM_TOL = 1e-4  # rows already this close to unit norm are kept bit-exact
_ROW_NORM_MAX = 1 + 2 * _NORM_TOL  # so no row's norm exceeds this


class VectorIndex:
    # Below this many values (rows x dim, ~8 MB of float32, ~4k rows at 2048-d) a float32 scan is as
    # fast as the int8 pass, so the int8 copy is kept but not used.
    coarse_min_values = 1 << 23
    # Up to this many candidates go straight to the float64 rescoring; more get a float32 pass first.
    direct_rescore_max = 256

    def __init__(self, dim: int):
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        self.dim = int(dim)  # size of the vectors given to upsert/replace_all/search, and of the rows
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._mat: np.ndarray = np.empty((0, self.dim), np.float32)
        self._ids: np.ndarray = np.empty(0, np.int64)
        self._n = 0
        self._row: dict[int, int] = {}
        self._codes, self._scale, self._resid = quantized.encode(self._mat)  # row r of each: row r of _mat

    # -- input ---------------------------------------------------------------------------------

    def _prepare(self, vectors: np.ndarray, *, adopt: bool = False) -> np.ndarray:
        """(m, dim) -> (m, dim) float32 C-contiguous unit rows; with `adopt`, a float32 C-contiguous
        writable input is used (and normalised) in place."""
        v = np.asarray(vectors)
        if v.ndim == 1:
            v = v[None, :]
        if v.ndim != 2 or (v.shape[1] != self.dim and v.shape[0] > 0):
            raise ValueError(f"expected vectors of shape (m, {self.dim}), got {np.shape(vectors)}")
        if v.dtype != np.float32 or not v.flags.c_contiguous or (adopt and not v.flags.writeable):
            v, adopt = np.array(v, dtype=np.float32, order="C"), True
        if v.shape[0] == 0:
            return np.empty((0, self.dim), np.float32)
        sq = np.einsum("ij,ij->i", v, v)  # no (m, dim) temporary, unlike np.linalg.norm
        if not (np.isfinite(sq).all() and (sq > 0).all()):
            raise ValueError("vectors must be finite and non-zero")
        norms = np.sqrt(sq)
        off = np.abs(norms - 1) > _NORM_TOL
        if off.any():
            if not adopt:
                v = v.copy()
            v[off] /= norms[off, None]
        return v

    # -- writes --------------------------------------------------------------------------------

    def replace_all(self, ids: Sequence[int] | np.ndarray, matrix: np.ndarray) -> None:
        """Replace the whole content. The index takes ownership of `matrix` when it is float32,
        C-contiguous and writable (no copy; rows off unit norm are normalised in place), so
        `replace_all(*store.load_vectors(model))` holds the matrix once."""
        with self._write_lock:
            id_arr = np.array(ids, dtype=np.int64).ravel()
            if len(id_arr) == 0 and np.size(matrix) == 0:  # also Store.load_vectors' (0, 0) when empty
                mat = np.empty((0, self.dim), np.float32)
            else:
                mat = self._prepare(matrix, adopt=True)
            if len(id_arr) != len(mat):
                raise ValueError(f"{len(id_arr)} ids for {len(mat)} vectors")
            row = {i: r for r, i in enumerate(id_arr.tolist())}
            if len(row) != len(id_arr):
                raise ValueError("duplicate ids")
            coarse = quantized.encode(mat)
            with self._lock:
                self._mat, self._ids, self._n, self._row = mat, id_arr, len(id_arr), row
                self._codes, self._scale, self._resid = coarse

    def upsert(self, ids: Sequence[int], vectors: np.ndarray) -> None:
        """Insert or overwrite; within one call a repeated id keeps its last vector."""
        id_list = [int(i) for i in ids]
        with self._write_lock:
            v = self._prepare(vectors)
            if len(id_list) != len(v):
                raise ValueError(f"{len(id_list)} ids for {len(v)} vectors")
            if not id_list:
                return
            last = {i: j for j, i in enumerate(id_list)}  # id -> its last position in the call
            old = [(self._row[i], j) for i, j in last.items() if i in self._row]
            new = [(i, j) for i, j in last.items() if i not in self._row]
            n, need = self._n, self._n + len(new)
            arrays: list[np.ndarray] = [self._mat, self._ids, self._codes, self._scale, self._resid]  # row-aligned
            if need > len(arrays[0]):  # grow by doubling, copying outside `_lock` (writers are serialised)
                cap = max(16, 2 * len(arrays[0]), need)
                grown = [np.empty((cap, *a.shape[1:]), a.dtype) for a in arrays]
                for g, a in zip(grown, arrays, strict=True):
                    g[:n] = a[:n]
                arrays = grown
            values: list[np.ndarray | None] = [v, None, *quantized.encode(v)]  # None: the ids, set below
            if new:  # rows past n are invisible to searches until n is published
                picks = [j for _, j in new]
                for a, val in zip(arrays, values, strict=True):
                    a[n:need] = [i for i, _ in new] if val is None else val[picks]
            with self._lock:
                if old:
                    rows, picks = [r for r, _ in old], [j for _, j in old]
                    for a, val in zip(arrays, values, strict=True):
                        if val is not None:
                            a[rows] = val[picks]
                self._mat, self._ids, self._codes, self._scale, self._resid = arrays
                for r, (i, _) in enumerate(new, start=n):
                    self._row[i] = r
                self._n = need

    def remove(self, ids: Iterable[int]) -> None:
        """Remove these ids (unknown ones are ignored): each hole gets the last row."""
        with self._write_lock, self._lock:
            arrays: list[np.ndarray] = [self._mat, self._ids, self._codes, self._scale, self._resid]  # row-aligned
            id_arr, row = self._ids, self._row
            for i in ids:
                r = row.pop(int(i), None)
                if r is None:
                    continue
                last = self._n - 1
                if r != last:
                    for a in arrays:
                        a[r] = a[last]
                    row[int(id_arr[r])] = r
                self._n = last
            if len(id_arr) > 1024 and self._n < len(id_arr) // 4:  # give memory back after mass removals
                self._mat, self._ids, self._codes, self._scale, self._resid = [a[: 2 * self._n].copy() for a in arrays]

    def view(self) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """(ids, rows, int8 copy) as published, not copied: stable only while no one writes (the
        writer thread's own reads, e.g. `duplicates.pairs_for` in a batch; `snapshot()` elsewhere)."""
        with self._lock:
            n = self._n
            return self._ids[:n], self._mat[:n], (self._codes[:n], self._scale[:n], self._resid[:n])

    def snapshot(self) -> tuple[np.ndarray, np.ndarray]:
        """Copies of (ids, rows) as published now: for a long computation in another thread."""
        with self._lock:
            return self._ids[: self._n].copy(), self._mat[: self._n].copy()

    # -- reads ---------------------------------------------------------------------------------

    def __len__(self) -> int:
        return self._n

    def __contains__(self, image_id: object) -> bool:
        return image_id in self._row

    def get(self, image_id: int) -> np.ndarray | None:
        """A copy of the row in the matrix (the vector, normalised), or None."""
        with self._lock:
            r = self._row.get(int(image_id))
            return None if r is None else self._mat[r].copy()

    def search(self, query: np.ndarray, k: int, exclude_ids: Iterable[int] = ()) -> list[tuple[int, float]]:
        """The k best (id, cosine score) for a query vector, best first; ties by id ascending;
        exact. k larger than the index returns everything not excluded."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        q = np.asarray(query, dtype=np.float32).ravel()
        if q.shape != (self.dim,):
            raise ValueError(f"expected a query of size {self.dim}, got {np.shape(query)}")
        norm = float(np.sqrt(np.dot(q, q)))
        if not np.isfinite(norm) or norm == 0:
            raise ValueError("the query vector must be finite and non-zero")
        q = q / norm
        with self._lock:
            found = self._candidates(q, k, exclude_ids)
        return _best(q, k, *found)

    def _candidates(self, q: np.ndarray, k: int, exclude_ids: Iterable[int]) -> tuple[np.ndarray, np.ndarray]:
        """(ids, rows) holding the top k for the unit query `q`; call with `_lock` held."""
        n = self._n
        if n == 0:
            return np.empty(0, np.int64), np.empty((0, q.size), np.float32)
        excluded = sorted({self._row[i] for i in map(int, exclude_ids) if i in self._row})
        k = min(k, n - len(excluded))
        if k <= 0:
            return np.empty(0, np.int64), np.empty((0, q.size), np.float32)
        rows = None  # the candidates' row numbers
        if k < n - len(excluded) and n * q.size >= self.coarse_min_values:
            # Past ~4k candidates, rescoring them costs about what a float32 scan does.
            rows = quantized.candidate_rows(
                self._codes[:n],
                self._scale[:n],
                self._resid[:n],
                q,
                k,
                excluded,
                _ROW_NORM_MAX,
                max_candidates=max(4096, n // 32),
            )
        if rows is None:
            scores = self._mat[:n] @ q
            if excluded:
                scores[excluded] = -np.inf
            rows = _near_top(scores, k, q.size)
        elif len(rows) > self.direct_rescore_max:  # float32 first (no BLAS: its idle threads would spin on our cores)
            rows = rows[_near_top(np.einsum("ij,j->i", self._mat[rows], q), k, q.size)]
        return self._ids[rows], self._mat[rows]


def _near_top(scores: np.ndarray, k: int, dim: int) -> np.ndarray:
    """Positions of the k best float32 scores of `dim`-term products and of every other one within
    rounding of the k-th (-inf ones never): float32 products of equal rows differ by an ulp or so
    with the row's place, so `_best`'s float64 rescoring of all of these decides the order."""
    n = len(scores)
    if k >= n:
        return np.flatnonzero(scores > -np.inf)
    top = np.argpartition(scores, n - k)[n - k :]
    eps = max(1e-6, 2 * dim * 2.0**-24)
    return np.flatnonzero(scores >= scores[top].min() - eps)


def _best(q: np.ndarray, k: int, cand_ids: np.ndarray, rows: np.ndarray) -> list[tuple[int, float]]:
    exact = _rescore(rows, q)
    order = np.lexsort((cand_ids, -exact))[:k]
    return [(int(cand_ids[o]), float(exact[o])) for o in order]


def _rescore(rows: np.ndarray, q: np.ndarray) -> np.ndarray:
    """float64 scores that depend only on a row's values, not on its place nor on how many rows
    come with it (one kernel for any count), so equal rows tie and both search paths agree."""
    return np.einsum("ij,j->i", rows.astype(np.float64), q.astype(np.float64))
