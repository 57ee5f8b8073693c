#!/usr/bin/env python3
"""Store and search benchmark: `VectorIndex.search` latency and process RSS at 10k, 100k and 1M
2048-d vectors, on the product's path (an int8 first pass with exact bounds, then an exact rescoring)
and on the float32 scan it replaces, measured one after the other in the same run and checked to
return the same ids and scores; the same at 100k on isotropic vectors (the int8 pass's worst case);
`Store.load_vectors` / `Store.records()` at 100k rows; and two ways to fit 1M vectors in less RAM
(float16 storage; PCA-256 with an exact re-rank), with their recall.

    .venv/bin/python tests/bench/bench_query.py            # full run, a few minutes, 8 GB of temp disk
    .venv/bin/python tests/bench/bench_query.py --quick    # 10k and 100k only

Every measurement runs in a fresh subprocess (`--child KIND`), so its RSS is its own. The data are
synthetic but shaped like CNN descriptors (clusters in a 512-d latent space with a decaying spectrum,
a common mean direction, a little isotropic noise; mean pairwise cosine ~0.4, PCA-256 keeps ~90% of
the variance), generated once into a flat float32 file that every child reads.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from benchutil import machine_info

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

D = 2048
K = 10
MODEL = "bench/synthetic"
GT_QUERIES = 40  # query rows (spread over all rows) with exact ground truth at the largest size


# -- helpers ------------------------------------------------------------------------------------


def mem() -> dict:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                out[line.split(":")[0]] = round(int(line.split()[1]) / 1024)
    return {"rss_mb": out["VmRSS"], "hwm_mb": out["VmHWM"]}


def cpu_s() -> float:
    t = os.times()
    return t.user + t.system


def pct(lat: list[float], cpu: float | None = None) -> dict:
    """Latency percentiles; cpu_share: CPU time used / (wall time x cores) while querying (near 1
    when BLAS had both cores to itself, lower when other work shared them)."""
    a = np.array(lat) * 1000
    extra = {} if cpu is None else {"cpu_share": round(cpu / (sum(lat) * len(os.sched_getaffinity(0))), 2)}
    return {
        **extra,
        "min_ms": round(float(a.min()), 2),
        "p50_ms": round(float(np.percentile(a, 50)), 2),
        "p95_ms": round(float(np.percentile(a, 95)), 2),
        "mean_ms": round(float(a.mean()), 2),
        "queries": len(a),
    }


def read_rows(path: str, start: int, count: int) -> np.ndarray:
    return np.fromfile(path, dtype=np.float32, count=count * D, offset=start * D * 4).reshape(count, D)


def query_rows(n: int, count: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).choice(n, size=min(count, n), replace=False)


def topk_exclude(scores: np.ndarray, k: int, exclude: int) -> np.ndarray:
    scores = scores.copy()
    scores[exclude] = -np.inf
    top = np.argpartition(scores, len(scores) - k)[-k:]
    return top[np.lexsort((top, -scores[top]))]


def recall(got: list[np.ndarray], want: np.ndarray) -> float:
    return float(np.mean([len(set(map(int, g)) & set(map(int, w))) / len(w) for g, w in zip(got, want, strict=True)]))


# -- children -----------------------------------------------------------------------------------


def child_generate(a) -> dict:
    """Write n synthetic unit vectors; exact top-K ground truth (self excluded) for GT_QUERIES rows."""
    rng = np.random.default_rng(0)
    r, clusters = 512, 5000
    basis = np.linalg.qr(rng.standard_normal((D, r)))[0].T.astype(np.float32)
    spectrum = ((1 + np.arange(r)) ** -0.8).astype(np.float32)
    centers = rng.standard_normal((clusters, r)).astype(np.float32) * spectrum
    mean = np.abs(rng.standard_normal(D)).astype(np.float32)
    mean /= np.linalg.norm(mean)
    chunk = 20_000

    def gen(start: int, count: int) -> np.ndarray:
        g = np.random.default_rng(1000 + start // chunk)
        lat = centers[g.integers(clusters, size=count)]
        lat += 0.6 * g.standard_normal((count, r), dtype=np.float32) * spectrum
        x = lat @ basis
        x += 0.035 * (g.random((count, D), dtype=np.float32) - 0.5)
        x += 0.9 * np.sqrt(np.einsum("ij,ij->i", lat, lat))[:, None] * mean
        x /= np.sqrt(np.einsum("ij,ij->i", x, x))[:, None]
        return x

    t = time.perf_counter()
    with open(a.data, "wb") as f:
        for start in range(0, a.n, chunk):
            gen(start, min(chunk, a.n - start)).tofile(f)
    gen_s = time.perf_counter() - t
    gt_rows = np.sort(query_rows(a.n, GT_QUERIES, seed=2))
    queries = np.stack([read_rows(a.data, int(r), 1)[0] for r in gt_rows])
    scores = np.empty((len(gt_rows), a.n), np.float32)
    for start in range(0, a.n, 50_000):
        x = read_rows(a.data, start, min(50_000, a.n - start))
        scores[:, start : start + len(x)] = queries @ x.T
    gt = np.stack([topk_exclude(s, K, row) for s, row in zip(scores, gt_rows, strict=True)])
    np.savez(a.gt, rows=gt_rows, topk=gt)
    sample = read_rows(a.data, 0, 2000)
    cos = sample @ sample.T
    nn = np.sort(scores, axis=1)[:, -K - 1 : -1]
    return {
        "n": a.n,
        "generate_s": round(gen_s, 1),
        "ground_truth_s": round(time.perf_counter() - t - gen_s, 1),
        "mean_pairwise_cos": round(float(cos[np.triu_indices(2000, 1)].mean()), 3),
        "mean_top10_cos": round(float(nn.mean()), 3),
    }


def child_exact(a) -> dict:
    """`VectorIndex.search` as the product runs it (`--path int8`: the int8 first pass above its size
    threshold) or forced to the float32 scan (`--path scan`)."""
    from simd import quantized
    from simd.vectors import VectorIndex

    if a.path == "scan":
        VectorIndex.coarse_min_values = 1 << 62
    candidates = []
    real = quantized.candidate_rows

    def counting(*args, **kw):
        rows = real(*args, **kw)
        candidates.append(-1 if rows is None else len(rows))
        return rows

    quantized.candidate_rows = counting
    base = mem()
    t = time.perf_counter()
    mat = read_rows(a.data, 0, a.n) if a.data else isotropic(a.n)  # one array, as Store.load_vectors gives
    read = time.perf_counter() - t
    ids = np.arange(1, a.n + 1, dtype=np.int64)  # SQLite ids start at 1
    index = VectorIndex(D)
    t = time.perf_counter()
    index.replace_all(ids, mat)
    build = time.perf_counter() - t
    del mat
    after = mem()
    gt = np.load(a.gt) if a.gt else None
    rows = gt["rows"][: a.queries] if gt is not None and a.n == a.gt_n else query_rows(a.n, a.queries)
    for r in rows[:3]:  # warm-up
        index.search(index.get(int(r) + 1), K, exclude_ids=[int(r) + 1])
    candidates.clear()
    lat, got, c0 = [], [], cpu_s()
    for r in rows:
        q = index.get(int(r) + 1)  # "similar to this indexed image", as the product does
        t = time.perf_counter()
        res = index.search(q, K, exclude_ids=[int(r) + 1])
        lat.append(time.perf_counter() - t)
        got.append(res)
    out = {
        "n": a.n,
        "path": a.path,
        **pct(lat, cpu_s() - c0),
        "read_s": round(read, 2),
        "load_into_index_s": round(build, 2),
        "base_rss_mb": base["rss_mb"],
        **after,
        "matrix_mb": round(a.n * D * 4 / 2**20),
    }
    if candidates:
        c = np.array(candidates)
        out["candidates"] = {
            "median": int(np.median(c)),
            "p95": int(np.percentile(c, 95)),
            "max": int(c.max()),
            "gave_up": int((c < 0).sum()),
        }
    if gt is not None and a.n == a.gt_n:
        out["recall_vs_gt"] = recall([np.array([i - 1 for i, _ in g]) for g in got], gt["topk"][: len(got)])
    if a.results:  # for the parent to check that both paths return the same ids and scores
        Path(a.results).write_text(json.dumps([[list(p) for p in g] for g in got]))
    return out


def isotropic(n: int) -> np.ndarray:
    """Gaussian unit vectors: no structure at all, the worst case for the int8 pass's pruning."""
    x = np.empty((n, D), np.float32)
    for start in range(0, n, 20_000):
        g = np.random.default_rng(7000 + start).standard_normal((min(20_000, n - start), D), dtype=np.float32)
        x[start : start + len(g)] = g / np.sqrt(np.einsum("ij,ij->i", g, g))[:, None]
    return x


def child_transform(a) -> dict:
    """A rank-512 projection (top eigenvectors of the uncentered X^T X, the best low-rank stand-in
    for the raw dot product) applied where the index is built (the matrix before `replace_all`) and to
    each query before `search`: exact in the reduced space; recall vs raw. `build_s` is the projection
    and the load; each query's latency includes its projection."""
    from simd.vectors import VectorIndex

    mat = read_rows(a.data, 0, a.n)
    ids = np.arange(1, a.n + 1, dtype=np.int64)
    t = time.perf_counter()
    sample = mat[:20_000].astype(np.float64)
    w, v = np.linalg.eigh(sample.T @ sample)  # uncentered: the best rank-r stand-in for x·q
    comps = np.ascontiguousarray(v[:, ::-1][:, : a.dims].T, dtype=np.float32)
    del sample
    fit = time.perf_counter() - t
    rows = query_rows(a.n, a.queries)
    exact = [topk_exclude(mat @ mat[r], K, r) for r in rows]
    queries = mat[rows].copy()
    index = VectorIndex(a.dims)
    t = time.perf_counter()
    index.replace_all(ids, mat @ comps.T)  # a fresh float32 (n, dims) array: the index takes it
    build = time.perf_counter() - t
    del mat
    lat, got = [], []
    for r, q in zip(rows, queries, strict=True):
        t = time.perf_counter()
        res = index.search(q @ comps.T, K, exclude_ids=[int(r) + 1])
        lat.append(time.perf_counter() - t)
        got.append(np.array([i - 1 for i, _ in res]))
    return {
        "n": a.n,
        "dims": a.dims,
        **pct(lat),
        "fit_s": round(fit, 1),
        "build_s": round(build, 1),
        "recall@10": round(recall(got, exact), 3),
        **mem(),
    }


def child_store(a) -> dict:
    from simd.store import Store

    tmp = tempfile.mkdtemp(prefix="simd-bench-store-")
    try:
        db = Path(tmp) / "state" / "index.db"
        store = Store(db)
        t = time.perf_counter()
        batch = 500
        for start in range(0, a.n, batch):
            x = read_rows(a.data, start, min(batch, a.n - start))
            with store.batch():
                for j, v in enumerate(x):
                    i = start + j
                    store.put_ok(
                        f"dir{i // 1000:03d}/img_{i:07d}.jpg",
                        1_000_000 + i,
                        1_700_000_000_000_000_000 + i,
                        f"{i:064x}",
                        MODEL,
                        v,
                    )
        insert = time.perf_counter() - t
        store.close()
        size_mb = round(sum(p.stat().st_size for p in db.parent.iterdir()) / 2**20)
        store = Store(db, readonly=True)

        def timed(fn, repeat):
            ts, res = [], None
            for _ in range(repeat):
                res = None  # never two results alive at once (RSS)
                t = time.perf_counter()
                res = fn()
                ts.append(time.perf_counter() - t)
            return res, round(min(ts), 3), round(float(np.median(ts)), 3)

        base = mem()
        (ids, mat), lv_min, lv_med = timed(lambda: store.load_vectors(MODEL), 3)
        assert mat.shape == (a.n, D)
        after_load = mem()
        del ids, mat
        recs, rec_min, rec_med = timed(store.records, 3)
        assert len(recs) == a.n
        del recs
        _, sub_min, _ = timed(lambda: store.records("dir050"), 3)
        _, li_min, _ = timed(lambda: store.list_images(0, 100, q="IMG_00123"), 3)
        _, cnt_min, _ = timed(lambda: store.counts(MODEL), 3)
        rng = np.random.default_rng(3)
        picks = rng.integers(1, a.n + 1, size=400)
        t = time.perf_counter()
        for i in picks:
            store.vector_of(int(i), MODEL)
        vo = (time.perf_counter() - t) / len(picks)
        store.close()
        return {
            "n": a.n,
            "insert_s": round(insert, 1),
            "insert_rows_per_s": round(a.n / insert),
            "db_mb": size_mb,
            "load_vectors_s": lv_min,
            "load_vectors_median_s": lv_med,
            "records_s": rec_min,
            "records_median_s": rec_med,
            "records_prefix_s": sub_min,
            "list_images_q_s": li_min,
            "counts_s": cnt_min,
            "vector_of_ms": round(vo * 1000, 3),
            "rss_before_load_mb": base["rss_mb"],
            "rss_after_load_mb": after_load["rss_mb"],
            "hwm_mb": mem()["hwm_mb"],
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def child_f16(a) -> dict:
    """float16 storage (half the RAM), upcast chunk by chunk to float32 for the product."""
    from concurrent.futures import ThreadPoolExecutor

    from threadpoolctl import threadpool_limits

    base = mem()
    h = np.empty((a.n, D), np.float16)
    chunk = 16_384
    for start in range(0, a.n, 50_000):
        count = min(50_000, a.n - start)
        h[start : start + count] = read_rows(a.data, start, count)
    after = mem()
    gt = np.load(a.gt)
    rows, want = gt["rows"][: a.queries], gt["topk"][: a.queries]
    bufs = [np.empty((chunk, D), np.float32) for _ in range(2)]

    def part(q, scores, starts, buf):
        for s in starts:
            m = min(chunk, a.n - s)
            np.copyto(buf[:m], h[s : s + m])
            np.dot(buf[:m], q, out=scores[s : s + m])

    def search(q, exclude, threads):
        scores = np.empty(a.n, np.float32)
        starts = list(range(0, a.n, chunk))
        if threads == 1:
            part(q, scores, starts, bufs[0])
        else:
            with threadpool_limits(1, user_api="blas"), ThreadPoolExecutor(2) as pool:
                list(pool.map(part, [q, q], [scores, scores], [starts[0::2], starts[1::2]], bufs))
        return topk_exclude(scores, K, exclude)

    out = {"n": a.n, "base_rss_mb": base["rss_mb"], **after, "matrix_mb": round(a.n * D * 2 / 2**20)}
    for threads in (1, 2):
        lat, got = [], []
        for r in rows:
            q = h[r].astype(np.float32)
            q /= np.linalg.norm(q)
            t = time.perf_counter()
            got.append(search(q, r, threads))
            lat.append(time.perf_counter() - t)
        out[f"threads{threads}"] = {**pct(lat), "recall@10": round(recall(got, want), 3)}
    q16 = h[rows[0]]
    t = time.perf_counter()
    h[:100_000] @ q16  # numpy's own float16 product (no BLAS), on 100k rows only
    out["native_f16_matvec_100k_ms"] = round((time.perf_counter() - t) * 1000)
    out["hwm_mb"] = mem()["hwm_mb"]
    return out


def child_pca(a) -> dict:
    """PCA-256 projections in RAM; the top C by approximate score re-ranked exactly with full vectors
    read from disk (pread of the flat file, standing in for the store)."""
    from sklearn.decomposition import PCA

    base = mem()
    t = time.perf_counter()
    sample = read_rows(a.data, 0, 20_000)
    pca = PCA(a.dims, svd_solver="covariance_eigh").fit(sample)
    del sample
    comps, mu = pca.components_.astype(np.float32), pca.mean_.astype(np.float32)
    fit = time.perf_counter() - t
    t = time.perf_counter()
    red = np.empty((a.n, a.dims), np.float32)
    for start in range(0, a.n, 50_000):
        count = min(50_000, a.n - start)
        red[start : start + count] = (read_rows(a.data, start, count) - mu) @ comps.T
    project = time.perf_counter() - t
    after = mem()
    gt = np.load(a.gt)
    rows, want = gt["rows"][: a.queries], gt["topk"][: a.queries]
    fd = os.open(a.data, os.O_RDONLY)
    row_bytes = D * 4

    def search(q, exclude, c):
        s = red @ (comps @ q)  # ranking by (x - mu)·q; mu·q is the same for every row
        s[exclude] = -np.inf
        cand = np.sort(np.argpartition(s, a.n - c)[-c:])
        full = np.stack([np.frombuffer(os.pread(fd, row_bytes, int(i) * row_bytes), np.float32) for i in cand])
        exact = full @ q
        return cand[np.lexsort((cand, -exact))[:K]]

    out = {
        "n": a.n,
        "dims": a.dims,
        "fit_s": round(fit, 1),
        "project_s": round(project, 1),
        "base_rss_mb": base["rss_mb"],
        **after,
        "matrix_mb": round(a.n * a.dims * 4 / 2**20),
    }
    try:
        for c in (100, 400):
            lat, got = [], []
            for r in rows:
                q = np.frombuffer(os.pread(fd, row_bytes, int(r) * row_bytes), np.float32)
                t = time.perf_counter()
                got.append(search(q, r, c))
                lat.append(time.perf_counter() - t)
            out[f"rerank{c}"] = {**pct(lat), "recall@10": round(recall(got, want), 3)}
    finally:
        os.close(fd)
    out["hwm_mb"] = mem()["hwm_mb"]
    return out


CHILDREN = {
    "generate": child_generate,
    "exact": child_exact,
    "transform": child_transform,
    "store": child_store,
    "f16": child_f16,
    "pca": child_pca,
}


# -- parent -------------------------------------------------------------------------------------


def machine() -> dict[str, str]:
    from threadpoolctl import threadpool_info

    blas = [
        f"{i['internal_api']} {i.get('version')} ({i.get('architecture')}, {i['num_threads']} threads)"
        for i in threadpool_info()
        if i["user_api"] == "blas" and "numpy" in i["filepath"]
    ]
    import simsimd

    caps = ",".join(k for k, v in simsimd.get_capabilities().items() if v and k != "serial")
    return machine_info(
        NumPy=np.__version__,
        SQLite=sqlite3.sqlite_version,
        BLAS="; ".join(blas),
        simsimd=f"{simsimd.__version__} ({caps})",
        OPENBLAS_CORETYPE=os.environ.get("OPENBLAS_CORETYPE", "(unset)"),
    )


def run_child(kind: str, env_extra: dict | None = None, **kw) -> dict:
    cmd = [sys.executable, __file__, "--child", kind]
    for k, v in kw.items():
        cmd += [f"--{k.replace('_', '-')}", str(v)]
    env = {**os.environ, **(env_extra or {})}
    for k, v in (env_extra or {}).items():
        if v is None:
            env.pop(k, None)
    t = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    if p.returncode:
        sys.stderr.write(p.stderr)
        raise SystemExit(f"child {kind} {kw} failed ({p.returncode})")
    res = json.loads(p.stdout.strip().splitlines()[-1])
    print(f"  {kind} {kw.get('n', '')} ({time.perf_counter() - t:.0f} s): {json.dumps(res)}", file=sys.stderr)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="10k and 100k only (no 1M, no alternatives)")
    ap.add_argument(
        "--data-dir",
        help="keep the synthetic vectors here and reuse them on the next run (default: a temp dir, removed after)",
    )
    ap.add_argument("--json", help="also write all results to this file")
    ap.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--gt-n", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--queries", type=int, default=50, help=argparse.SUPPRESS)
    ap.add_argument("--dims", type=int, default=256, help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--gt", help=argparse.SUPPRESS)
    ap.add_argument("--path", choices=["int8", "scan"], default="int8", help=argparse.SUPPRESS)
    ap.add_argument("--results", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        res = CHILDREN[a.child](a)
        res["loadavg_1m"] = os.getloadavg()[0]  # > ~2 means other work shared the 2 cores
        print(json.dumps(res))
        return

    t0 = time.perf_counter()
    big = 100_000 if a.quick else 1_000_000
    tmp = Path(a.data_dir or tempfile.mkdtemp(prefix="simd-bench-"))
    tmp.mkdir(parents=True, exist_ok=True)
    data, gt = str(tmp / "vectors-f32.bin"), str(tmp / "gt.npz")
    common = {"data": data, "gt": gt, "gt_n": big}
    res: dict = {"machine": machine()}
    print(json.dumps(res["machine"]), file=sys.stderr)
    try:
        stats = tmp / f"generate-{big}.json"
        if a.data_dir and stats.exists() and os.path.getsize(data) == big * D * 4:
            res["data"] = {**json.loads(stats.read_text()), "reused": True}  # --data-dir: generated earlier
        else:
            res["data"] = run_child("generate", n=big, data=data, gt=gt)
            stats.write_text(json.dumps(res["data"]))
        res["exact"], res["same_results"] = [], []
        for n, q in ((10_000, 200), (100_000, 100), (1_000_000, 15)):
            if n > big:
                continue
            by_path = {}
            for path in ("int8", "scan"):  # the product's search, then the float32 scan it replaces
                out = str(tmp / f"results-{path}.json")
                res["exact"].append(run_child("exact", n=n, queries=q, path=path, results=out, **common))
                by_path[path] = json.loads(Path(out).read_text())
            res["same_results"].append({"n": n, "same": by_path["int8"] == by_path["scan"]})
        by_path = {}
        for path in ("int8", "scan"):  # no structure: the int8 pass's worst case
            out = str(tmp / f"results-iso-{path}.json")
            res["exact"].append(
                {"data": "isotropic", **run_child("exact", n=100_000, queries=100, path=path, results=out)}
            )
            by_path[path] = json.loads(Path(out).read_text())
        res["same_results"].append({"n": 100_000, "data": "isotropic", "same": by_path["int8"] == by_path["scan"]})
        print(f"  same results on both paths: {res['same_results']}", file=sys.stderr)
        if not all(r["same"] for r in res["same_results"]):
            raise SystemExit(f"the int8 path and the float32 scan disagree: {res['same_results']}")
        res["store"] = run_child("store", n=100_000, **common)
        res["transform"] = run_child("transform", n=100_000, queries=50, dims=512, **common)
        if not a.quick:
            res["f16"] = run_child("f16", n=big, queries=5, **common)
            res["pca"] = run_child("pca", n=big, queries=GT_QUERIES, dims=256, **common)
    finally:
        if not a.data_dir:
            shutil.rmtree(tmp, ignore_errors=True)
    res["total_s"] = round(time.perf_counter() - t0)
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
