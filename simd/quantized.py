"""Exact top-k from a quarter of the bytes: an int8 copy of the index matrix that bounds every score.

A float32 scan of 100k 2048-d rows reads 800 MB per query and is bound by memory bandwidth (~26 ms
on 2 cores). Here each unit row x is also kept as int8 codes c = round(x / s), with s = max|x| / 127,
and the norm r of what the codes miss, x - s c. A query q is quantised the same way, q = s_q ĉ + e_q:

    q·x = s_q s (ĉ·c)  +  s_q ĉ·(x - s c)  +  e_q·x
    |q·x - s_q s (ĉ·c)| <= ||s_q ĉ|| r + ||e_q|| ||x||          (Cauchy-Schwarz, twice)

ĉ·c is an exact integer from simsimd's int8 kernels (a quarter of the bytes, SIMD on every core), so
every row gets an interval [lo, hi] that holds its true score. The k-th largest `lo`, τ, is at most
the true k-th score, so every row of the true top k (ties with the k-th included) has hi >= τ: those
rows, rescored in full precision by the caller, give exactly the same top k as a float32 scan.

The pruning is what makes it fast, not what makes it right: with 8 bits a row's interval is about
±0.01 wide, so on descriptors with any structure a few hundred rows of 100k survive. When too many
survive (nearly identical vectors everywhere) `candidate_rows` says so and the caller scans instead.
"""

from __future__ import annotations

import os

import numpy as np
import simsimd

_LEVELS = 127  # symmetric int8 range, so -c is always representable
_ENCODE_CHUNK = 1024  # rows per step: bounds the float32 temporaries to ~8 MB each at 2048-d
# simsimd's int8 dot product spreads over this many threads (OpenMP); one per core we may use
# (sched_getaffinity is Linux-only; elsewhere every core counts).
_CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
THREADS = max(1, min(8, _CORES))


def encode(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(m, d) float32 non-zero rows -> (codes (m, d) int8, scale (m,) float64, resid (m,) float64) with
    ||row - scale * codes|| <= resid for every row.

    The residual x - s·c is computed in float32 for speed: x - fl(s·c) is exact where c != 0
    (Sterbenz), so each term errs by at most 2^-24·|s·c|, ~6e-8 in all for a unit row; its squares
    are summed in float64. It is widened by 0.1% + 1e-6, far more than that and far less than the
    bound itself (~0.01)."""
    rows = np.asarray(rows, dtype=np.float32)
    m, d = rows.shape
    codes = np.empty((m, d), np.int8)
    scale = np.empty(m, np.float64)
    resid = np.empty(m, np.float64)
    for start in range(0, m, _ENCODE_CHUNK):
        x = rows[start : start + _ENCODE_CHUNK]
        s = (np.abs(x).max(axis=1) / np.float32(_LEVELS)).astype(np.float32)
        c = np.rint(x / s[:, None])
        np.clip(c, -_LEVELS, _LEVELS, out=c)  # |x / s| <= 127 up to rounding
        codes[start : start + len(x)] = c
        np.multiply(c, s[:, None], out=c)
        np.subtract(x, c, out=c)  # c is now the residual x - s * codes
        resid[start : start + len(x)] = np.sqrt(np.einsum("ij,ij->i", c, c, dtype=np.float64))
        scale[start : start + len(x)] = s
    resid *= 1.001
    resid += 1e-6
    return codes, scale, resid


def score_bounds(
    codes: np.ndarray, scale: np.ndarray, resid: np.ndarray, q: np.ndarray, row_norm_max: float
) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi) float64 with lo <= q·x <= hi for every row x encoded as (codes, scale, resid), whose
    norm is at most `row_norm_max`."""
    q64 = q.astype(np.float64)
    s_q = max(float(np.abs(q64).max()), 1e-300) / _LEVELS
    q_codes = np.clip(np.rint(q64 / s_q), -_LEVELS, _LEVELS)
    q_deq = s_q * q_codes
    q_err = q64 - q_deq
    dots = np.asarray(simsimd.cdist(q_codes.astype(np.int8)[None, :], codes, metric="dot", threads=THREADS)).ravel()
    approx = dots * (s_q * scale)
    # Half-width of each row's interval: the per-row term, then one for all rows (the query's own
    # quantisation error, and float64 rounding of `approx`, ~1e-13, covered many times over).
    half = float(np.sqrt(q_deq @ q_deq)) * resid
    half += float(np.sqrt(q_err @ q_err)) * row_norm_max + 1e-9
    return approx - half, approx + half


def candidate_rows(
    codes: np.ndarray,
    scale: np.ndarray,
    resid: np.ndarray,
    q: np.ndarray,
    k: int,
    excluded: list[int],
    row_norm_max: float,
    max_candidates: int,
) -> np.ndarray | None:
    """Rows (ascending) that can be in the top k by q·x (`excluded` rows never are), or None when
    more than `max_candidates` would be; k must be less than the number of rows not excluded."""
    lo, hi = score_bounds(codes, scale, resid, q, row_norm_max)
    if not 0 < k < len(lo) - len(set(excluded)):  # else τ would be -inf and excluded rows pass
        raise ValueError(f"k={k} must be from 1 to the rows not excluded - 1")
    if excluded:
        lo[excluded] = -np.inf
        hi[excluded] = -np.inf
    n = len(lo)
    tau = np.partition(lo, n - k)[n - k]  # at most the true k-th score
    rows = np.flatnonzero(hi >= tau)
    return rows if len(rows) <= max_candidates else None
