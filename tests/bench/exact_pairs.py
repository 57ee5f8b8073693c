"""At full size: `build_pairs` (projected) against the brute force (not collected by pytest).

    .venv/bin/python tests/bench/exact_pairs.py DATA.npz

DATA.npz: the vectors `bench_duplicates.py --data-dir DIR` keeps (`ids`, `x`). The brute force is
`build_pairs(..., rank=0)`: every pair scored in float32, those near the threshold again in float64.
Prints both runs' pairs, whether they are the same (and their scores), and whether the groups at the
default model's threshold and floor are the same.
"""

from __future__ import annotations

import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from simd import duplicates  # noqa: E402


def main() -> None:
    data = np.load(sys.argv[1])
    ids, x = data["ids"], data["x"]
    thr, floor, lowest = duplicates.DUPLICATE_THRESHOLDS["efficientnet-lite0+r2"][:3]
    t = time.perf_counter()
    projected = duplicates.build_pairs(ids, x, lowest)
    t_projected = time.perf_counter() - t
    t = time.perf_counter()
    brute = duplicates.build_pairs(ids, x, lowest, rank=0)
    t_brute = time.perf_counter() - t
    got = dict(zip(zip(projected.a.tolist(), projected.b.tolist(), strict=True), projected.score.tolist(), strict=True))
    ref = dict(zip(zip(brute.a.tolist(), brute.b.tolist(), strict=True), brute.score.tolist(), strict=True))
    sim = duplicates.matrix_similarity(ids, x)
    g_got = [g.members for g in duplicates.groups(projected, thr, floor, similarity=sim)]
    g_ref = [g.members for g in duplicates.groups(brute, thr, floor, similarity=sim)]
    print(
        {
            "n": len(ids),
            "pairs_projected": len(got),
            "pairs_brute_force": len(ref),
            "same_pairs": got.keys() == ref.keys(),
            "max_score_diff": max((abs(got[k] - ref[k]) for k in got.keys() & ref.keys()), default=0.0),
            "groups": len(g_got),
            "same_groups": g_got == g_ref,
            "seconds_projected": round(t_projected, 1),
            "seconds_brute_force": round(t_brute, 1),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        }
    )


if __name__ == "__main__":
    main()
