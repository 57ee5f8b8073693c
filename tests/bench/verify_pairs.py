"""Geometric verification of duplicate pairs, measured (simd.dupverify; docs/QUALITY.md "Duplicates").

    python tests/bench/verify_pairs.py KIT [--state NEARDUP_STATE --model-id ID] [--cache FILE.npz]

KIT is a directory with neardup.csv and neardup/ (the evaluation kit's near-duplicate library, or the
holdout tests/bench/build_holdout.py writes). The vectors come from an index (`--state`: the state
dir run_eval.py --keep leaves) or are embedded with the default embedder. Every pair scoring at least
the lowest cosine asked (`--lowest`) is verified (ORB features, ratio test, RANSAC partial affine:
`dupverify`); the inlier counts of each pair, both ways and mirrored, are kept in `--cache`. Prints:
- the time to decode and find the features of one image, and to verify one pair (ms, p50 and p95);
- the inlier counts of true pairs (one kit group) and false pairs, by the edit and by cosine band;
- the groups' pairwise precision and recall (as tests/bench/calibrate.py) when a pair scoring from
  `lowest` to `sure` links only if it has at least T inliers, for a grid of T, sure and threshold.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from calibrate import embed, from_state  # noqa: E402
from tune_descriptor import read_kit  # noqa: E402

from simd import dupverify  # noqa: E402
from simd.duplicates import build_pairs, groups  # noqa: E402


def vectors(a, rows) -> np.ndarray:
    if a.state:
        return from_state(a.state, rows, a.model_id)
    saved = a.cache.with_suffix(".vectors.npy") if a.cache else None
    if saved and saved.exists():
        return np.load(saved)
    from simd.config import Config
    from simd.embedder import Embedder

    emb = Embedder.from_config(Config({"library": ".", "model": "auto", "weights_download": False}))
    print(f"embedding {len(rows)} images with {emb.model_id}", flush=True)
    matrix = embed(emb, a.kit / "neardup", rows)
    if saved:
        np.save(saved, matrix)
    return matrix


def measure(a) -> dict:
    rows = read_kit(a.kit, "neardup")
    if a.cache and a.cache.exists():
        got = dict(np.load(a.cache, allow_pickle=False))
        if len(got["matrix"]) == len(rows):
            return got
    matrix = vectors(a, rows)
    pairs = build_pairs(np.arange(len(rows)), matrix, a.floor_min)
    todo = np.flatnonzero(pairs.score >= a.lowest)
    need = sorted(set(pairs.a[todo].tolist()) | set(pairs.b[todo].tolist()))
    print(f"{len(todo)} pairs >= {a.lowest} among {len(need)} images", flush=True)
    feats: dict[int, dupverify.Features | None] = {}
    t_feat = []
    for i in need:
        t0 = time.perf_counter()
        try:
            feats[i] = dupverify.features(a.kit / "neardup" / rows[i]["path"])
        except Exception as e:  # noqa: BLE001 - a file that does not decode: no verdict
            print("no features:", rows[i]["path"], e)
            feats[i] = None
        t_feat.append(time.perf_counter() - t0)
    counts = np.zeros((len(todo), 4), np.int32)  # a->b, b->a, mirror(a)->b, mirror(b)->a
    t_pair = []
    for k, p in enumerate(todo.tolist()):
        fa, fb = feats[int(pairs.a[p])], feats[int(pairs.b[p])]
        if fa is None or fb is None:
            continue
        t0 = time.perf_counter()
        counts[k, 0] = dupverify._one_way(fa.points, fa.desc, fb.points, fb.desc)
        t_pair.append(time.perf_counter() - t0)
        counts[k, 1] = dupverify._one_way(fb.points, fb.desc, fa.points, fa.desc)
        counts[k, 2] = dupverify._one_way(*fa.mirrored(), fb.points, fb.desc)
        counts[k, 3] = dupverify._one_way(*fb.mirrored(), fa.points, fa.desc)
    got = {
        "matrix": matrix,
        "a": pairs.a,
        "b": pairs.b,
        "score": pairs.score,
        "todo": todo,
        "counts": counts,
        "t_feat": np.array(t_feat),
        "t_pair": np.array(t_pair),
    }
    if a.cache:
        np.savez(a.cache, **got)
    return got


def quality(rows, a, b, score, threshold, floor) -> tuple[float, float]:
    found = groups((a, b, score), threshold, floor)
    truth = {
        (i, j)
        for i, j in itertools.combinations(range(len(rows)), 2)
        if rows[i]["group"] and rows[i]["group"] == rows[j]["group"]
    }
    got = {(x, y) for g in found for x, y in itertools.combinations(sorted(g.members), 2)}
    tp = len(got & truth)
    return tp / max(1, len(got)), tp / len(truth)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("kit", type=Path)
    ap.add_argument("--state", type=Path)
    ap.add_argument("--model-id", default="efficientnet-lite0+r2")
    ap.add_argument("--cache", type=Path)
    ap.add_argument("--lowest", type=float, default=0.70)
    ap.add_argument("--floor-min", type=float, default=0.50)
    a = ap.parse_args()
    rows = read_kit(a.kit, "neardup")
    m = measure(a)
    ms = lambda t: f"p50 {np.median(t) * 1e3:.1f} ms, p95 {np.percentile(t, 95) * 1e3:.1f} ms"  # noqa: E731
    print(f"features per image (decode + ORB): {ms(m['t_feat'])}  (n={len(m['t_feat'])})")
    print(f"match + RANSAC per pair, one way: {ms(m['t_pair'])}  (n={len(m['t_pair'])})")
    todo, counts = m["todo"], m["counts"]
    pa, pb, ps = m["a"][todo], m["b"][todo], m["score"][todo]
    best = counts.max(axis=1)
    grp = [r["group"] for r in rows]
    same = np.array([grp[i] != "" and grp[i] == grp[j] for i, j in zip(pa, pb, strict=True)])
    print(f"pairs verified: {len(todo)} ({same.sum()} true, {(~same).sum()} false)")
    for lo, hi in ((0.70, 0.76), (0.76, 0.85), (0.85, 0.92), (0.92, 1.01)):
        band = (ps >= lo) & (ps < hi)
        for name, sel in (("true", band & same), ("false", band & ~same)):
            if sel.any():
                q = np.percentile(best[sel], [0, 1, 5, 50])
                print(f"  cosine {lo:.2f}-{hi:.2f} {name:5} n={sel.sum():5}  inliers min/p1/p5/p50 {q}")
    kind = lambda i: rows[i]["kind"].split(":")[-1]  # noqa: E731
    miss = same & (best < 15)
    if miss.any():
        from collections import Counter

        print(
            "true pairs under 15 inliers, by edit:",
            Counter("/".join(sorted((kind(i), kind(j)))) for i, j in zip(pa[miss], pb[miss], strict=True)).most_common(
                12
            ),
        )
    fp = ~same & (best >= 10)
    for i, j, s, c in sorted(zip(pa[fp], pb[fp], ps[fp], best[fp], strict=True), key=lambda x: -x[3])[:15]:
        print(f"  false pair {c:4d} inliers cos {s:.3f}: {rows[i]['path']}  {rows[j]['path']}")
    print("threshold floor sure  T   precision recall")
    for threshold, floor in ((0.76, 0.60), (0.70, 0.60), (0.70, 0.55), (0.72, 0.60)):
        p, r = quality(rows, m["a"], m["b"], m["score"], threshold, floor)
        print(f"  {threshold:.2f} {floor:.2f}  (cosine only)      {p:.3f} {r:.3f}")
        for sure, t in itertools.product((0.85, 0.90, 0.95, 1.01), (8, 10, 12, 15, 20, 30)):
            score = m["score"].copy()
            fail = (ps < sure) & (best < t)
            # a pair the pixels refuse links nothing (below the threshold) but still counts for the floor
            score[todo[fail]] = np.minimum(score[todo[fail]], min(threshold, 0.999) - 1e-6)
            p, r = quality(rows, m["a"], m["b"], score, threshold, floor)
            print(f"  {threshold:.2f} {floor:.2f}  {sure:.2f} {t:3d}   {p:.3f} {r:.3f}")


if __name__ == "__main__":
    main()
