"""`simd.dupgroups.groups` (numpy, one matrix per component) gives exactly the groups of the plain
dict-per-pair algorithm it replaced (tests/dupgroups_plain.py), on randomised libraries with planted
near-copies, identical bytes, dismissals and pairs kept only above the floor (absent pairs scored)."""

from __future__ import annotations

import dataclasses
import itertools

import dupgroups_plain
import numpy as np
import pytest

from simd import dupgroups
from simd.duplicates import build_pairs, matrix_similarity


def _library(seed: int, n: int = 600, dim: int = 24):
    """Vectors in loose clusters (chains of drifting copies), some ids sharing bytes, some dismissals."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n // 8, dim))
    x = centres[rng.integers(0, len(centres), n)] + rng.normal(scale=rng.uniform(0.2, 0.9), size=(n, dim))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    ids = np.sort(rng.choice(10 * n, n, replace=False)).astype(np.int64) + 1
    hashes: dict[int, str | None] = {int(i): f"h{i}" for i in ids}
    for i in rng.choice(ids, n // 5, replace=False):  # identical bytes: another id's hash
        hashes[int(i)] = hashes[int(rng.choice(ids))]
    for i in rng.choice(ids, 5, replace=False):
        hashes[int(i)] = None  # not hashed (yet)
    contents = sorted({h for h in hashes.values() if h})
    dismissed = {frozenset(rng.choice(contents, 2, replace=False).tolist()) for _ in range(n // 6)}
    dismissed |= {frozenset({contents[0]})}  # one hash: never splits identical bytes
    return ids, x, hashes, dismissed


def _as_tuples(found) -> list[tuple]:
    return [dataclasses.astuple(g) for g in found]


@pytest.mark.parametrize("seed", range(6))
def test_fast_groups_equal_the_plain_ones(seed, monkeypatch):
    ids, x, hashes, dismissed = _library(seed)
    sim = matrix_similarity(ids, x)
    for (lowest, threshold, floor), fill_max in itertools.product(
        [(0.55, 0.7, 0.5), (0.7, 0.7, 0.7), (0.8, 0.85, 0.4)], [2000, 6]
    ):
        monkeypatch.setattr(dupgroups, "FILL_MAX", fill_max)
        monkeypatch.setattr(dupgroups_plain, "FILL_MAX", fill_max)
        p = build_pairs(ids, x, lowest)
        for similarity in (sim, None):
            # and a sixth of the pairs found dismissed: splits inside the groups
            rng = np.random.default_rng(seed)
            some = rng.random(len(p.a)) < 1 / 6
            linked = {frozenset({hashes[int(a)], hashes[int(b)]}) for a, b in zip(p.a[some], p.b[some], strict=True)}
            kw = {
                "hashes": hashes,
                "dismissed": dismissed | {d for d in linked if None not in d},
                "similarity": similarity,
            }
            want = dupgroups_plain.groups((p.a, p.b, p.score), threshold, floor, **kw)
            got = dupgroups.groups((p.a, p.b, p.score), threshold, floor, **kw)
            assert len(want) > 5 and any(g.identical for g in want)
            assert any(len(g.members) > 2 for g in want)
            assert _as_tuples(got) == _as_tuples(want)


def test_no_pairs_and_no_hashes():
    empty = (np.array([], np.int64), np.array([], np.int64), np.array([], np.float64))
    assert dupgroups.groups(empty, 0.8, 0.7) == dupgroups_plain.groups(empty, 0.8, 0.7) == []
    assert _as_tuples(dupgroups.groups(empty, 0.8, 0.7, hashes={3: "a", 5: "a"})) == [
        ((3, 5), "identical", ((3, 5),), 1.0, 1.0)
    ]


def test_pairs_but_no_link_at_the_threshold():
    pairs = (np.array([1, 2]), np.array([2, 3]), np.array([0.9, 0.8]))
    for threshold in (1.0, 0.95):
        assert dupgroups.groups(pairs, threshold, 0.7, hashes={3: "a", 4: "a"}) == [
            dupgroups.Group((3, 4), "identical", ((3, 4),), 1.0, 1.0)
        ]


def test_stored_similarity_scores_each_pair_as_a_dot_product(tmp_path):
    """The listing's similarity (one product per component, reused for its next slice; pairs of rows
    beyond 2048 ids) scores as the float64 dot product of the two normalised stored vectors."""
    from simd.dupservice import _StoredSimilarity
    from simd.store import Store

    rng = np.random.default_rng(7)
    x = rng.normal(size=(2100, 8)).astype(np.float32)
    with Store(tmp_path / "index.db") as store:
        with store.batch():
            ids = np.array([store.put_ok(f"a/{r}.jpg", 1, 0, f"{r:032x}", "m", x[r]) for r in range(len(x))])
        unit = {int(i): v / np.linalg.norm(v) for i, v in zip(ids, x.astype(np.float64), strict=True)}
        sim = _StoredSimilarity(store)
        for a, b in [
            (ids[:40], ids[40:80]),  # one product
            (ids[5:25], ids[60:80]),  # inside the last one: reused
            (rng.permutation(ids), rng.permutation(ids)),  # > 2048 ids: rows of pairs
        ]:
            want = np.array([unit[int(i)] @ unit[int(j)] for i, j in zip(a, b, strict=True)])
            assert np.allclose(sim(a, b), want, rtol=0, atol=1e-12)
        absent = int(ids.max()) + 1  # no such image: scores -1, below any floor
        assert sim(np.array([ids[0], absent]), np.array([absent, ids[1]])).tolist() == [-1.0, -1.0]
