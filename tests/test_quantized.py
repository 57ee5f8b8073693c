"""The int8 first pass: its error bound holds for every kind of row, its candidates always hold the
true top k (near-duplicates, ties and exclusions included), it prunes on structured data, it gives up
when it cannot prune, and VectorIndex uses it on its own past its size threshold."""

from __future__ import annotations

import numpy as np
import pytest

from simd import quantized
from simd.vectors import _ROW_NORM_MAX, VectorIndex


def unit(x):
    x = np.asarray(x, np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def kinds(n, dim, seed):
    """Rows of very different shapes: isotropic, heavy-tailed, sparse non-negative (like ReLU
    descriptors), one spike per row, clustered around a few centres with a shared mean."""
    rng = np.random.default_rng(seed)
    iso = rng.standard_normal((n, dim))
    heavy = rng.standard_t(1.5, (n, dim))
    relu = np.maximum(rng.standard_normal((n, dim)) - 1.0, 0)
    relu[np.arange(n), rng.integers(dim, size=n)] += 0.5  # never an all-zero row
    spike = 1e-4 * rng.standard_normal((n, dim))
    spike[np.arange(n), rng.integers(dim, size=n)] = 1.0
    centres = rng.standard_normal((8, dim))
    clustered = centres[rng.integers(8, size=n)] + 0.3 * rng.standard_normal((n, dim)) + 2.0
    return {
        "iso": unit(iso),
        "heavy": unit(heavy),
        "relu": unit(relu),
        "spike": unit(spike),
        "clustered": unit(clustered),
    }


@pytest.mark.parametrize("dim", [1, 7, 64, 1000, 2048])
def test_the_residual_bound_holds_for_every_row(dim):
    for name, rows in kinds(300, dim, seed=dim).items():
        codes, scale, resid = quantized.encode(rows)
        assert codes.dtype == np.int8 and codes.shape == rows.shape
        assert np.abs(codes.astype(int)).max() <= 127
        err = rows.astype(np.float64) - scale[:, None] * codes.astype(np.float64)
        true = np.sqrt((err * err).sum(axis=1))
        assert (true <= resid).all(), name
        assert np.median(resid) < (0.1 if name == "heavy" else 0.02), name  # a bound, but a useful one


def true_top(rows, q, k, excluded=()):
    s = rows.astype(np.float64) @ q.astype(np.float64)
    s[list(excluded)] = -np.inf
    kth = np.sort(s)[-k]
    return set(np.flatnonzero(s >= kth).tolist())  # the k best and every row tied with the k-th


@pytest.mark.parametrize("dim", [16, 300, 2048])
def test_candidates_hold_the_true_top_k(dim):
    rng = np.random.default_rng(dim)
    for name, rows in kinds(2000, dim, seed=dim + 1).items():
        codes, scale, resid = quantized.encode(rows)
        for trial in range(6):
            k = int(rng.choice([1, 10, 100]))
            q = rows[rng.integers(len(rows))] if trial % 2 else unit(rng.standard_normal(dim))
            excluded = sorted(set(rng.integers(len(rows), size=trial).tolist()))
            cand = quantized.candidate_rows(codes, scale, resid, q, k, excluded, _ROW_NORM_MAX, len(rows))
            assert cand is not None
            assert true_top(rows, q, k, excluded) <= set(cand.tolist()), (name, trial)
            assert not set(excluded) & set(cand.tolist())


def test_near_duplicates_closer_than_the_bound_are_all_kept():
    # 500 rows within ~1e-5 of each other: int8 codes cannot tell them apart, so all must survive.
    rng = np.random.default_rng(5)
    base = unit(rng.standard_normal(256))
    rows = unit(base + 1e-5 * rng.standard_normal((500, 256)))
    rows = np.vstack([rows, unit(rng.standard_normal((1500, 256)))])
    codes, scale, resid = quantized.encode(rows)
    q = unit(base + 0.01 * rng.standard_normal(256))
    cand = quantized.candidate_rows(codes, scale, resid, q, 10, [], _ROW_NORM_MAX, len(rows))
    assert set(range(500)) <= set(cand.tolist())
    assert len(cand) < 600  # the unrelated rows are pruned
    assert quantized.candidate_rows(codes, scale, resid, q, 10, [], _ROW_NORM_MAX, 100) is None


def descriptor_like(n, dim, seed):
    """Clusters in a low-rank latent space with a decaying spectrum and a shared mean direction, as
    CNN descriptors are (mean pairwise cosine ~0.4); the shape of tests/bench/bench_query.py's data."""
    rng = np.random.default_rng(seed)
    r = dim // 4
    basis = np.linalg.qr(rng.standard_normal((dim, r)))[0].T
    spectrum = (1 + np.arange(r)) ** -0.8
    centres = rng.standard_normal((n // 20, r)) * spectrum
    lat = centres[rng.integers(len(centres), size=n)] + 0.6 * rng.standard_normal((n, r)) * spectrum
    x = lat @ basis + 0.035 * (rng.random((n, dim)) - 0.5)
    x += 0.9 * np.linalg.norm(lat, axis=1)[:, None] * unit(np.abs(rng.standard_normal(dim)))
    return unit(x)


def test_descriptor_like_data_is_pruned_to_a_few_rows():
    rows = descriptor_like(20_000, 1024, seed=9)
    codes, scale, resid = quantized.encode(rows)
    sizes = []
    for r in range(0, 20_000, 1000):
        cand = quantized.candidate_rows(codes, scale, resid, rows[r], 10, [r], _ROW_NORM_MAX, len(rows))
        assert true_top(rows, rows[r], 10, [r]) <= set(cand.tolist())
        sizes.append(len(cand))
    assert np.median(sizes) < 200, sizes  # 1% of the rows: 100x less to rescore than a scan


def test_index_uses_the_int8_pass_past_its_threshold_and_matches_the_scan(monkeypatch):
    rows = kinds(6000, 1500, seed=11)["relu"]  # 9M values: past the default threshold
    assert rows.size >= VectorIndex.coarse_min_values
    ids = np.arange(10, 6010)
    calls = []
    real = quantized.candidate_rows
    monkeypatch.setattr(quantized, "candidate_rows", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    fast, scan = VectorIndex(1500), VectorIndex(1500)
    fast.replace_all(ids, rows.copy())
    scan.replace_all(ids, rows.copy())
    scan.coarse_min_values = 1 << 62  # this instance only
    rng = np.random.default_rng(12)
    for trial in range(8):
        q = rows[trial * 700] if trial % 2 else rng.standard_normal(1500).astype(np.float32)
        exclude = [int(ids[trial * 700])]
        assert fast.search(q, 10, exclude_ids=exclude) == scan.search(q, 10, exclude_ids=exclude)
        row = fast.get(int(ids[trial]))  # from an indexed image's row
        assert fast.search(row, 25) == scan.search(row, 25)
    assert len(calls) == 16  # every search of `fast` went through it; none of `scan`
    fast.remove(ids[:5000].tolist())  # now under the threshold: the scan answers
    fast.search(rows[5500], 3)
    assert len(calls) == 16


def test_the_score_bounds_hold_and_are_nearly_reached_by_adversarial_queries():
    """Each half of the bound is needed: a query along a row's own int8 error, and a row along a
    query's int8 error, come within 20% of the interval's edge (and never past it)."""
    rng = np.random.default_rng(13)
    dim = 512
    heavy = kinds(50, dim, seed=13)["heavy"]  # rows with large int8 errors
    codes, scale, _ = quantized.encode(heavy)
    row_err = heavy.astype(np.float64) - scale[:, None] * codes  # exact residual of each row
    q_row = unit(row_err[7])  # aligned with row 7's residual

    q_spiky = np.full(dim, 0.0) + 0.02 * rng.standard_normal(dim)
    q_spiky[0] = 1.0
    q_spiky = unit(q_spiky).astype(np.float64)
    s_q = np.abs(q_spiky).max() / 127
    q_err = q_spiky - s_q * np.rint(q_spiky / s_q)  # the query's own int8 error, as score_bounds sees it
    rows = np.vstack([heavy, unit(q_err)[None, :], unit(rng.standard_normal((50, dim)))]).astype(np.float32)
    codes, scale, resid = quantized.encode(rows)
    for q, target in ((q_row.astype(np.float32), 7), (q_spiky.astype(np.float32), 50)):
        lo, hi = quantized.score_bounds(codes, scale, resid, q, _ROW_NORM_MAX)
        true = rows.astype(np.float64) @ q.astype(np.float64)
        assert (lo <= true).all() and (true <= hi).all()
        mid, half = (lo + hi) / 2, (hi - lo) / 2
        assert abs(true[target] - mid[target]) > 0.8 * half[target], (target, true[target], lo[target], hi[target])


def test_the_row_norm_allowance_is_needed():
    """Rows within 1e-4 of unit norm are stored as they are, so the bound must allow for it: a row
    along the query's own int8 error, with norm 1 + 0.99e-4, lands outside a bound that assumed 1."""
    d = 4096
    sigma = np.sign(np.random.default_rng(0).standard_normal(d))
    sigma[0] = 0
    q = 0.9 / 254 * sigma  # under half an int8 step of the spike's scale: all of it is error
    q[0] = 1.0
    q = unit(q)
    x = (sigma / np.linalg.norm(sigma) * (1 + 0.99e-4)).astype(np.float32)[None, :]
    codes, scale, resid = quantized.encode(x)
    true = float(x[0].astype(np.float64) @ q.astype(np.float64))
    lo, hi = quantized.score_bounds(codes, scale, resid, q, _ROW_NORM_MAX)
    assert lo[0] <= true <= hi[0]
    _, hi_unit = quantized.score_bounds(codes, scale, resid, q, 1.0)
    assert hi_unit[0] - 1e-6 < true  # without the allowance only the 1e-6 slack would save it


def near_grid_rows(seed, permuted):
    """Rows almost exactly on the int8 grid (tight intervals) around a query: 10 (or 40 with equal
    exact scores) at the top, then 600 within float32 rounding of the 10th: the int8 pass keeps a
    few rows where the float32 scan keeps hundreds, and both must still agree to the last bit."""
    d, rng = 2048, np.random.default_rng(seed)
    if permuted:
        q = np.full(d, 127.0, np.float32)
        q[: d // 2] = 120
        top = []
        for _ in range(40):  # the same values in each half, moved about: equal exact scores
            r = q.copy()
            r[rng.choice(np.arange(d // 2, d), 20, replace=False)] -= 1
            r[rng.choice(np.arange(d // 2), 20, replace=False)] -= 1
            top.append(r)
    else:
        q = (127 - rng.integers(0, 3, d)).astype(np.float32)
        top = q - rng.integers(0, 2, (10, d)) * (rng.random((10, d)) < 0.01)
    near = q - rng.integers(0, 5, (600, d)) * (rng.random((600, d)) < 0.05)
    return q, unit(np.vstack([top, near]))


@pytest.mark.parametrize("permuted", [False, True])
def test_both_paths_agree_to_the_bit_when_their_candidate_counts_differ(permuted):
    q, rows = near_grid_rows(3 if not permuted else 4, permuted)
    ids = np.arange(len(rows))
    fast, scan = VectorIndex(rows.shape[1]), VectorIndex(rows.shape[1])
    fast.coarse_min_values, scan.coarse_min_values = 0, 1 << 62
    fast.replace_all(ids, rows.copy())
    scan.replace_all(ids, rows.copy())
    qn = unit(q)
    assert len(fast._candidates(qn, 10, ())[0]) < 100 < len(scan._candidates(qn, 10, ())[0])
    for k in (5, 10, 20):
        assert fast.search(q, k) == scan.search(q, k)
