"""The in-RAM index: exact top-k against a brute force, exclusion, deterministic ties, upserts and
removals that keep it exact, and concurrent use. Every test runs with the float32 scan, and with the
int8 first pass (`simd.quantized`) forced on whatever the index size."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from sklearn.metrics.pairwise import cosine_similarity

from simd import quantized
from simd.vectors import VectorIndex


@pytest.fixture(autouse=True, params=["scan", "int8", "int8+float32"])
def search_path(request, monkeypatch):
    """Force one of the search paths (int8+float32: the candidates of the int8 pass, however few,
    get a float32 pass before the float64 rescoring); count the searches the int8 pass answered."""
    used = []
    if request.param.startswith("int8"):
        monkeypatch.setattr(VectorIndex, "coarse_min_values", 0)
        monkeypatch.setattr(VectorIndex, "direct_rescore_max", 0 if request.param == "int8+float32" else 1 << 62)
        real = quantized.candidate_rows

        def counting(*args, **kwargs):
            rows = real(*args, **kwargs)
            used.append(rows is not None)
            return rows

        monkeypatch.setattr(quantized, "candidate_rows", counting)
    else:
        monkeypatch.setattr(VectorIndex, "coarse_min_values", 1 << 62)
    yield used
    # Where it ran (not for k >= the rows left), it pruned rather than gave up in most searches.
    assert sum(used) >= len(used) / 2, used


def assert_int8_copy_in_step(index):
    """The int8 copy's rows are those of the float32 matrix, whatever writes came before."""
    n = len(index)
    arrays = (index._mat, index._ids, index._codes, index._scale, index._resid)
    assert len({len(a) for a in arrays}) == 1, [len(a) for a in arrays]  # one capacity for all
    codes, scale, resid = quantized.encode(index._mat[:n])
    assert np.array_equal(index._codes[:n], codes)
    assert np.array_equal(index._scale[:n], scale) and np.array_equal(index._resid[:n], resid)


def data(n, dim=64, seed=0):
    rng = np.random.default_rng(seed)
    m = rng.standard_normal((n, dim)).astype(np.float32)
    return m / np.linalg.norm(m, axis=1, keepdims=True)


def brute(ids, mat, q, k, exclude=()):
    scores = cosine_similarity(q[None, :].astype(np.float64), mat.astype(np.float64))[0]
    order = sorted((i for i in range(len(ids)) if ids[i] not in set(exclude)), key=lambda i: (-scores[i], ids[i]))
    return [(int(ids[i]), float(scores[i])) for i in order[:k]]


def assert_same(got, want, tol=1e-5):
    assert len(got) == len(want)
    assert np.allclose([s for _, s in got], [s for _, s in want], atol=tol)
    for pos, ((gi, gs), (wi, ws)) in enumerate(zip(got, want, strict=True)):
        if gi != wi:  # only acceptable between scores equal within float precision
            assert abs(gs - ws) < tol, (pos, got, want)
    assert {i for i, s in got if s > want[-1][1] + tol} == {i for i, s in want if s > want[-1][1] + tol}


@pytest.mark.parametrize("k", [1, 5, 10, 100, 1999, 2000, 5000])
def test_exact_against_brute_force(k):
    mat = data(2000, 96, seed=1)
    ids = np.arange(1000, 3000, dtype=np.int64)[::-1].copy()  # ids unrelated to rows
    index = VectorIndex(96)
    index.replace_all(ids, mat.copy())
    assert len(index) == 2000
    for seed in range(5):
        q = np.random.default_rng(100 + seed).standard_normal(96).astype(np.float32) * 3  # not normalised
        got = index.search(q, k)
        assert len(got) == min(k, 2000)
        assert_same(got, brute(ids, mat, q, k))


def test_exclusion_never_returns_excluded_ids():
    mat = data(50, 16, seed=2)
    ids = np.arange(50)
    index = VectorIndex(16)
    index.replace_all(ids, mat.copy())
    q = mat[7]
    assert index.search(q, 1)[0][0] == 7
    got = index.search(q, 10, exclude_ids=[7, 8, 12345])
    assert 7 not in dict(got) and 8 not in dict(got) and len(got) == 10
    assert_same(got, brute(ids, mat, q, 10, exclude=[7, 8]))
    assert len(index.search(q, 100, exclude_ids=range(10))) == 40
    assert index.search(index.get(7), 10, exclude_ids=[7, 8]) == got  # from an indexed image's row
    assert index.search(q, 5, exclude_ids=range(50)) == []
    assert VectorIndex(16).search(q, 3) == []


def test_ties_are_ordered_by_id():
    # 41 rows: BLAS computes the tail rows (past a multiple of 8) in another order, so the float32
    # products of equal rows differ by an ulp there; equal vectors must still tie and go by id.
    base = data(41, 64, seed=3)
    dup = base[5]
    mat = base.copy()
    for r in (0, 3, 11, 17, 29, 40):
        mat[r] = dup
    ids = np.arange(100, 141)
    dup_ids = [int(ids[r]) for r in (0, 3, 5, 11, 17, 29, 40)]
    q = dup + 0.5 * data(1, 64, seed=99)[0]
    index = VectorIndex(64)
    for order in (slice(None), slice(None, None, -1)):  # whatever order the rows are in
        index.replace_all(ids[order].copy(), mat[order].copy())
        for k in (1, 3, 7):
            got = index.search(q, k)
            assert [i for i, _ in got] == dup_ids[:k]
            assert len({s for _, s in got}) == 1
        got = index.search(q, 3, exclude_ids=[dup_ids[0]])
        assert [i for i, _ in got] == dup_ids[1:4]
        assert [i for i, _ in index.search(q, 8)][:7] == dup_ids


def test_upsert_remove_and_regrow_stay_exact():
    dim = 48
    rng = np.random.default_rng(4)
    index = VectorIndex(dim)
    truth: dict[int, np.ndarray] = {}
    for step in range(40):
        new_ids = rng.choice(5000, size=rng.integers(1, 60), replace=False)
        vecs = data(len(new_ids), dim, seed=1000 + step)
        index.upsert(new_ids.tolist(), vecs)
        truth.update({int(i): v for i, v in zip(new_ids, vecs, strict=True)})
        if step % 3 == 2:
            gone = rng.choice(list(truth), size=len(truth) // 3, replace=False)
            index.remove(gone.tolist() + [999_999])
            for i in gone:
                truth.pop(int(i))
        assert len(index) == len(truth)
        ids = np.array(sorted(truth))
        mat = np.stack([truth[i] for i in ids])
        q = rng.standard_normal(dim).astype(np.float32)
        assert_same(index.search(q, 7), brute(ids, mat, q, 7))
        some = int(ids[len(ids) // 2])
        assert np.array_equal(index.get(some), truth[some])
        assert_int8_copy_in_step(index)
    big = data(3000, dim, seed=77)  # grow past 1024 rows, then shrink (copies every array)
    index.upsert(list(range(10_000, 13_000)), big)
    assert_int8_copy_in_step(index)
    index.remove(list(range(10_000, 12_900)))
    assert_int8_copy_in_step(index)
    index.remove(list(range(12_900, 13_000)))
    index.remove(list(truth))
    assert len(index) == 0 and index.search(q, 3) == [] and index.get(some) is None
    index.upsert([1], data(1, dim)[0])
    assert index.search(q, 3)[0][0] == 1


def test_upsert_overwrites_and_last_duplicate_in_a_call_wins():
    index = VectorIndex(8)
    a, b, c = data(3, 8, seed=5)
    index.upsert([1, 2], np.stack([a, b]))
    index.upsert([2, 2, 3], np.stack([a, c, a]))
    assert len(index) == 3
    assert np.array_equal(index.get(2), c) and np.array_equal(index.get(1), a)
    assert 3 in index and 4 not in index


def test_inputs_are_normalised_and_validated():
    index = VectorIndex(4)
    index.upsert([1], np.array([3.0, 0, 0, 4.0]))
    assert np.allclose(index.get(1), [0.6, 0, 0, 0.8])
    unit = data(1, 4, seed=6)[0]
    index.upsert([2], unit)
    assert index.get(2).tobytes() == unit.tobytes()  # unit rows are kept bit-exact
    for bad in (np.zeros(4), np.array([1, np.nan, 0, 0]), np.ones(5)):
        with pytest.raises(ValueError):
            index.upsert([9], bad)
    with pytest.raises(ValueError):
        index.upsert([1, 2], unit)
    with pytest.raises(ValueError):
        index.search(np.zeros(4), 1)
    with pytest.raises(ValueError):
        index.search(unit, 0)
    with pytest.raises(ValueError):
        index.replace_all([1, 1], data(2, 4))
    index.replace_all(np.empty(0, np.int64), np.empty((0, 0), np.float32))  # Store.load_vectors when empty
    assert len(index) == 0


def test_replace_all_takes_the_matrix_without_copying():
    mat = data(100, 16)
    index = VectorIndex(16)
    index.replace_all(np.arange(100), mat)
    assert np.shares_memory(index._mat, mat)
    index.upsert([1000], data(1, 16, seed=9))  # grows into a new buffer
    assert len(index) == 101 and index.search(mat[3], 1)[0][0] == 3


def test_concurrent_upserts_removes_and_searches():
    dim = 32
    index = VectorIndex(dim)
    index.replace_all(np.arange(200), data(200, dim, seed=10))
    errors, stop = [], threading.Event()
    final: dict[int, np.ndarray] = {}
    lock = threading.Lock()

    def writer(w):
        try:
            rng = np.random.default_rng(w)
            for step in range(150):
                ids = (rng.choice(400, size=8, replace=False) + 1000 * (w + 1)).tolist()
                vecs = data(8, dim, seed=w * 10_000 + step)
                with lock:  # keep the ground truth in the index's order of writes
                    index.upsert(ids, vecs)
                    final.update(zip(ids, vecs, strict=True))
                if step % 10 == 0:
                    with lock:
                        index.remove(ids[:4])
                        for i in ids[:4]:
                            final.pop(i, None)
        except Exception as e:
            errors.append(e)

    def searcher(s):
        try:
            rng = np.random.default_rng(100 + s)
            while not stop.is_set():
                res = index.search(rng.standard_normal(dim).astype(np.float32), 10, exclude_ids=[1, 2])
                assert len(res) == 10 and all(i not in (1, 2) for i, _ in res)
                assert [s for _, s in res] == sorted((s for _, s in res), reverse=True)
        except Exception as e:
            errors.append(e)

    writers = [threading.Thread(target=writer, args=(w,)) for w in range(2)]
    searchers = [threading.Thread(target=searcher, args=(s,)) for s in range(3)]
    for t in writers + searchers:
        t.start()
    for t in writers:
        t.join(60)
    stop.set()
    for t in searchers:
        t.join(60)
    assert not errors
    truth = {i: v for i, v in zip(range(200), data(200, dim, seed=10), strict=True)} | final
    assert len(index) == len(truth)
    ids = np.array(sorted(truth))
    mat = np.stack([truth[i] for i in ids])
    q = np.random.default_rng(77).standard_normal(dim).astype(np.float32)
    assert_same(index.search(q, 25), brute(ids, mat, q, 25))
    assert_int8_copy_in_step(index)
