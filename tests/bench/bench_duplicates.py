"""Pairs and groups of copies at 100k x 2048 (not collected by pytest).

    .venv/bin/python tests/bench/bench_duplicates.py [--n 100000] [--dim 2048] [--write]

Data: descriptor-like unit vectors (a low-rank mixture of clusters with a decaying spectrum, a common
direction, isotropic noise) with planted groups of 2-5 copies (a source plus structured noise, cosine
~0.85-0.99). Measured, each in a fresh child process (so its peak RSS, ru_maxrss, is its own):
`build_pairs` from scratch at the model's lowest threshold; `pairs_for` per new image (with the int8
copy `VectorIndex` keeps, and without); `groups` of all the pairs at the default threshold and floor.
Through simd's own code path (`service`): a real SQLite index of the n images with the pairs
stored, the writer's hook (`dupindex.DupIndex.added`, as `Reconciler` calls it inside a chunk's
transaction, with the `VectorIndex` holding the matrix) timed per new image, and
`DuplicatesService.listing` (sizes read from real JPEG headers) timed cold, cached, and after a change.
Checked: the planted copies are found; on a 10k subset, `build_pairs` (both paths) equals a naive
full float64 product's pairs, and the groups equal those from the naive pairs and scores.
`--write` records the table in docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[2]), str(Path(__file__).resolve().parents[1])]

import numpy as np  # noqa: E402
from benchutil import machine_info, write_section  # noqa: E402

from simd import duplicates, quantized  # noqa: E402

THRESHOLD, FLOOR, LOWEST = duplicates.DUPLICATE_THRESHOLDS["efficientnet-lite0+r2"][:3]


def make_data(n: int, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[list[int]]]:
    """(ids, unit float32 matrix, planted groups as row lists), built in chunks (peak ~2x the matrix)."""
    rng = np.random.default_rng(seed)
    rank, clusters = 256, 2000
    basis = rng.standard_normal((rank, dim), dtype=np.float32) / np.sqrt(dim, dtype=np.float32)
    basis *= (1.0 / np.sqrt(np.arange(1, rank + 1, dtype=np.float32)))[:, None]  # decaying spectrum
    common = rng.standard_normal(dim, dtype=np.float32)
    common /= np.linalg.norm(common)
    centres = rng.standard_normal((clusters, rank), dtype=np.float32)
    x = np.empty((n, dim), np.float32)

    def structured(m: int, centre_rows: np.ndarray) -> np.ndarray:
        z = centres[centre_rows] + 1.3 * rng.standard_normal((m, rank), dtype=np.float32)
        v = z @ basis
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        v += 0.35 * common + 0.33 * rng.standard_normal((m, dim), dtype=np.float32) / np.sqrt(dim, dtype=np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    for s in range(0, n, 8192):
        m = min(8192, n - s)
        x[s : s + m] = structured(m, rng.integers(0, clusters, m))
    # planted groups: a source and 1-4 copies, each the source plus structured noise
    rows = rng.permutation(n)
    planted, at = [], 0
    while at < n // 4:
        size = int(rng.integers(2, 6))
        group = rows[at : at + size].tolist()
        src = x[group[0]]
        noise = structured(size - 1, rng.integers(0, clusters, size - 1))
        t = rng.uniform(0.1, 0.55, (size - 1, 1)).astype(np.float32)
        copies = src + t * noise
        x[group[1:]] = copies / np.linalg.norm(copies, axis=1, keepdims=True)
        planted.append(group)
        at += size
    ids = rng.permutation(np.arange(1, 3 * n, 3))[:n].astype(np.int64)
    return ids, x, planted


def data_path(tmp: Path, n: int, dim: int) -> Path:
    path = tmp / f"dups-{n}x{dim}.npz"
    if not path.exists():
        ids, x, planted = make_data(n, dim)
        flat = np.array([r for g in planted for r in g], np.int64)
        sizes = np.array([len(g) for g in planted], np.int64)
        np.savez(path, ids=ids, x=x, flat=flat, sizes=sizes)
    return path


def load(path: Path) -> tuple[np.ndarray, np.ndarray, list[list[int]]]:
    with np.load(path) as f:
        ids, x, flat, sizes = f["ids"], f["x"], f["flat"], f["sizes"]
    return ids, x, [g.tolist() for g in np.split(flat, np.cumsum(sizes)[:-1])]


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(task: str, path: str, out: str) -> None:
    ids, x, planted = load(Path(path))
    result: dict = {"rss_loaded_mb": peak_mb()}
    if task == "build":
        t0, c0 = time.perf_counter(), time.process_time()
        pairs = duplicates.build_pairs(ids, x, LOWEST)
        result.update(seconds=time.perf_counter() - t0, cpu=time.process_time() - c0, pairs=len(pairs.a))
        t0 = time.perf_counter()
        found = duplicates.groups(pairs, THRESHOLD, FLOOR, similarity=duplicates.matrix_similarity(ids, x))
        result.update(group_seconds=time.perf_counter() - t0, groups=len(found))
        result["grouped"] = sum(len(g.members) for g in found)
        found_sets = {frozenset(g.members) for g in found}
        whole = sum(frozenset(ids[g].tolist()) in found_sets for g in planted)
        inside = sum(any(frozenset(ids[g].tolist()) <= s for s in found_sets) for g in planted)
        result.update(planted=len(planted), planted_exact=whole, planted_inside=inside)
        np.savez(out + ".npz", a=pairs.a, b=pairs.b, s=pairs.score)
    elif task in ("incremental", "incremental-float32"):
        rng = np.random.default_rng(1)
        picks = rng.choice(len(ids), 60, replace=False)
        coarse = quantized.encode(x) if task == "incremental" else None
        times, cpu = [], []
        for r in picks:
            t0, c0 = time.perf_counter(), time.process_time()
            duplicates.pairs_for(ids[r : r + 1], x[r : r + 1], x, ids, LOWEST, coarse=coarse)
            times.append((time.perf_counter() - t0) * 1e3)
            cpu.append((time.process_time() - c0) * 1e3)
        result.update(p50=float(np.median(times)), p95=float(np.percentile(times, 95)), mean=float(np.mean(times)))
        result.update(min=float(np.min(times)), cpu_p50=float(np.median(cpu)))
        t0 = time.perf_counter()
        duplicates.pairs_for(ids[picks[:16]], x[picks[:16]], x, ids, LOWEST)
        result["batch16_per_image"] = (time.perf_counter() - t0) * 1e3 / 16
    elif task == "service":
        result.update(service_path(ids, x, Path(out)))
    elif task == "exact-subset":
        sub = slice(0, 10_000)
        ids, x = ids[sub], np.ascontiguousarray(x[sub])
        full = x.astype(np.float64) @ x.astype(np.float64).T
        i, j = np.nonzero(np.triu(full >= LOWEST, 1))
        want = {(min(ids[a], ids[b]), max(ids[a], ids[b])) for a, b in zip(i, j, strict=True)}
        near = np.abs(full[np.triu_indices(len(ids), 1)] - LOWEST) <= 1e-6
        ok: dict = {}
        row = {int(v): k for k, v in enumerate(ids)}
        for rank in (256, 0):
            got = duplicates.build_pairs(ids, x, LOWEST, rank=rank)
            got_set = set(zip(got.a.tolist(), got.b.tolist(), strict=True))
            ok[f"rank{rank}_same_pairs"] = got_set == want
            diffs = [abs(s - full[row[a], row[b]]) for a, b, s in zip(*got, strict=True)]
            ok[f"rank{rank}_scores_max_diff"] = float(max(diffs, default=0))
        naive = lambda a, b: full[[row[int(u)] for u in a], [row[int(v)] for v in b]]  # noqa: E731
        ref_pairs = sorted((a, b, full[row[a], row[b]]) for a, b in want)
        ref = duplicates.Pairs(*(np.array(c) for c in zip(*ref_pairs, strict=True)))
        g_ref = duplicates.groups(ref, THRESHOLD, FLOOR, similarity=naive)
        g_got = duplicates.groups(got, THRESHOLD, FLOOR, similarity=duplicates.matrix_similarity(ids, x))
        ok.update(
            same_groups=[g.members for g in g_ref] == [g.members for g in g_got],
            groups=len(g_ref),
            pairs=len(want),
            ties_within_1e6=int(near.sum()),
        )
        result.update(ok)
    elif task == "stats":
        rng = np.random.default_rng(2)
        s = rng.choice(len(ids), 2000, replace=False)
        sims = x[s] @ x[s].T
        iu = np.triu_indices(len(s), 1)
        in_group = [float(x[g[0]] @ x[r]) for g in planted[:2000] for r in g[1:]]
        _, sv, _ = np.linalg.svd(x[s].astype(np.float64), full_matrices=False)
        energy = np.cumsum(sv**2) / np.sum(sv**2)
        result.update(
            pair_mean=float(sims[iu].mean()),
            pair_p99=float(np.percentile(sims[iu], 99)),
            nn1_mean=float(np.sort(sims - 2 * np.eye(len(s)), axis=1)[:, -1].mean()),
            copy_p5=float(np.percentile(in_group, 5)),
            copy_p50=float(np.median(in_group)),
            pca256=float(energy[255]),
        )
    result["peak_rss_mb"] = peak_mb()
    Path(out).write_text(json.dumps(result))


def service_path(ids: np.ndarray, x: np.ndarray, out: Path) -> dict:
    """The hook and the listing through simd's code: a real index, pairs stored, real file headers."""
    from PIL import Image

    from simd import dupindex
    from simd.dupservice import DuplicatesService
    from simd.runtime import Runtime
    from simd.store import Store
    from simd.vectors import VectorIndex

    model, n, dim = "efficientnet-lite0+r2", len(ids), x.shape[1]
    held = set(np.random.default_rng(3).choice(n, 60, replace=False).tolist())  # the "new" images
    result: dict = {}
    db, lib = out.with_suffix(".db"), out.with_suffix(".lib")
    (lib / "img").mkdir(parents=True)
    t0 = time.perf_counter()
    store = Store(db)
    sid = np.zeros(n, np.int64)  # the store's id of each row
    with store.batch():
        for r in range(n):
            if r not in held:
                sid[r] = store.put_ok(f"img/{r}.jpg", 4096, 0, f"{r:032x}", model, x[r])
    result["fill_seconds"] = time.perf_counter() - t0
    keep = np.array([r for r in range(n) if r not in held])
    vectors = VectorIndex(dim)
    vectors.replace_all(sid[keep], x[keep].copy())
    t0 = time.perf_counter()
    pairs = duplicates.build_pairs(sid[keep], x[keep], LOWEST)
    stored = dupindex.store_build(store, model, pairs, {int(sid[r]): f"{r:032x}" for r in keep})
    result.update(build_store_seconds=time.perf_counter() - t0, stored_pairs=stored)
    jpeg = lib / "tiny.jpg"
    Image.new("RGB", (64, 48), (90, 120, 150)).save(jpeg, quality=80)
    data = jpeg.read_bytes()
    row_of = {int(v): r for r, v in enumerate(sid)}
    for i in set(pairs.a.tolist()) | set(pairs.b.tolist()):
        (lib / "img" / f"{row_of[i]}.jpg").write_bytes(data)
    # the sizes of the images with copies, read from their headers as the background build does
    t0 = time.perf_counter()
    members = {int(i) for i in pairs.a} | {int(i) for i in pairs.b}
    with store.batch():
        dupindex.put_sizes(store, {i: dupindex.header_size(lib / "img" / f"{row_of[i]}.jpg") for i in members})
    result["sizes_seconds"] = time.perf_counter() - t0
    service = DuplicatesService(db, lib, Runtime("idle", model=model))
    dup = dupindex.DupIndex(model, vectors, lib)
    times, cpu, scored = [], [], dup.scored
    for k, r in enumerate(sorted(held)):
        with store.batch():
            # as the reconciler does: the hashes known before the chunk's writes, the rows, then the hook
            t0, c0 = time.perf_counter(), time.process_time()
            known = dupindex.known_hashes(store, model, [f"{r:032x}"])
            before, cpu_before = time.perf_counter() - t0, time.process_time() - c0
            new_id = store.put_ok(f"img/{r}.jpg", 4096, 0, f"{r:032x}", model, x[r])
            t0, c0 = time.perf_counter(), time.process_time()
            dup.added(store, [(new_id, f"{r:032x}", x[r], f"img/{r}.jpg")], known)
            dup.removed(store, [])  # as the reconciler does after each chunk's writes
            times.append((time.perf_counter() - t0 + before) * 1e3)
            cpu.append((time.process_time() - c0 + cpu_before) * 1e3)  # both cores' CPU: load-proof
        vectors.upsert([new_id], x[r : r + 1])
        if k == len(held) // 2:  # half of them in: the listing, cold then cached
            t0 = time.perf_counter()
            first = service.listing()
            result["list_first_seconds"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            service.listing(offset=50)
            result["list_cached_ms"] = (time.perf_counter() - t0) * 1e3
            result.update(groups=first["total"], grouped=first["total_images"])
    t0 = time.perf_counter()
    service.listing()
    result["list_after_change_seconds"] = time.perf_counter() - t0
    result.update(hook_p50=float(np.median(times)), hook_p95=float(np.percentile(times, 95)))
    result["hook_mean"] = float(np.mean(times))
    result["hook_cpu_p50"] = float(np.median(cpu))
    # every new image was scored against the index (none taken for known bytes)
    result["hook_scored"] = dup.scored - scored
    assert result["hook_scored"] == len(held), result
    store.close()
    return result


def run(task: str, path: Path, tmp: Path) -> dict:
    out = str(tmp / f"{task}.json")
    proc = mp.get_context("spawn").Process(target=child, args=(task, str(path), out))
    proc.start()
    proc.join()
    if proc.exitcode != 0:
        raise SystemExit(f"{task} failed ({proc.exitcode})")
    result = json.loads(Path(out).read_text())
    print(task, result, flush=True)
    return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=2048)
    ap.add_argument("--data-dir", type=Path, help="keep the generated vectors here for the next run")
    ap.add_argument(
        "--only", help="comma-separated tasks: stats,build,incremental,incremental-float32,exact-subset,service"
    )
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    info = machine_info(NumPy=np.__version__, BLAS=blas())
    print(info, flush=True)
    tasks = (args.only or "stats,exact-subset,incremental,incremental-float32,build,service").split(",")
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        t0 = time.perf_counter()
        path = data_path(args.data_dir or tmp, args.n, args.dim)
        print(f"data: {time.perf_counter() - t0:.0f} s", flush=True)
        res = {task: run(task, path, tmp) for task in tasks}
        res["load_after"] = " ".join(f"{v:.2f}" for v in __import__("os").getloadavg())
    text = report(args, info, res)
    print(text)
    if args.write:
        write_section(Path(__file__).resolve().parents[2] / "docs" / "BENCHMARKS.md", text.split("\n", 1)[0], text)


def blas() -> str:
    cfg = np.show_config(mode="dicts")["Build Dependencies"]["blas"]  # type: ignore[index]
    return f"{cfg.get('name')} {cfg.get('version')}"


def report(args: argparse.Namespace, info: dict, res: dict) -> str:
    lines = [
        "## Duplicates: pairs and groups",
        "",
        f"`python tests/bench/bench_duplicates.py --n {args.n} --dim {args.dim}`: synthetic descriptor-like "
        "unit vectors with planted groups of 2-5 copies; each row is a fresh child process (peak RSS is its "
        f"own, ru_maxrss). Thresholds of `efficientnet-lite0+r2`: pairs kept from {LOWEST}, groups at {THRESHOLD}, "
        f"floor {FLOOR}. Machine: "
        + ", ".join(f"{k} {v}" for k, v in info.items())
        + f"; load after: {res['load_after']}.",
        "",
        "| measurement | result | peak RSS |",
        "|---|---|---|",
    ]
    if "stats" in res:
        s = res["stats"]
        lines.append(
            f"| data | mean pairwise cosine {s['pair_mean']:.2f} (p99 {s['pair_p99']:.2f}), nearest neighbour "
            f"{s['nn1_mean']:.2f} (in a 2000 sample), copies p5/p50 {s['copy_p5']:.2f}/{s['copy_p50']:.2f}, "
            f"PCA-256 keeps {s['pca256']:.0%} | |"
        )
    if "build" in res:
        b = res["build"]
        lines.append(
            f"| `build_pairs` from scratch, {args.n:,} x {args.dim} | **{b['seconds']:.0f} s** (CPU {b['cpu']:.0f} s), "
            f"{b['pairs']:,} pairs | **{b['peak_rss_mb']:.0f} MB** (matrix loaded: {b['rss_loaded_mb']:.0f} MB) |"
        )
        lines.append(
            f"| `groups` of all pairs (floor checked on demand) | {b['group_seconds']:.2f} s, {b['groups']:,} groups "
            f"of {b['grouped']:,} images; planted groups found whole {b['planted_exact']:,} / {b['planted']:,}, "
            f"inside a group {b['planted_inside']:,} | |"
        )
    for task, label in (("incremental", "with the int8 copy"), ("incremental-float32", "float32 scan")):
        if task in res:
            r = res[task]
            lines.append(
                f"| `pairs_for` one new image, {label} | p50 **{r['p50']:.1f} ms**, p95 {r['p95']:.1f} ms, "
                f"min {r.get('min', float('nan')):.1f} ms, CPU p50 {r.get('cpu_p50', float('nan')):.1f} ms; "
                f"16 at once {r['batch16_per_image']:.1f} ms each | {r['peak_rss_mb']:.0f} MB |"
            )
    if "service" in res:
        v = res["service"]
        lines.append(
            f"| the writer's hook per new image (`DupIndex.added` in a batch: known hashes, `pairs_for` with the "
            f"int8 copy, hashes of the neighbours, pairs stored) | p50 **{v['hook_p50']:.1f} ms**, "
            f"p95 {v['hook_p95']:.1f} ms, CPU p50 {v['hook_cpu_p50']:.1f} ms | {v['peak_rss_mb']:.0f} MB |"
        )
        lines.append(
            f"| `DuplicatesService.listing` ({v['groups']:,} groups of {v['grouped']:,} images, sizes from JPEG "
            f"headers) | first **{v['list_first_seconds']:.2f} s**, cached **{v['list_cached_ms']:.1f} ms**, "
            f"after a new image {v['list_after_change_seconds']:.2f} s "
            f"(index filled in {v['fill_seconds']:.0f} s, "
            f"{v['stored_pairs']:,} pairs built and stored in {v['build_store_seconds']:.0f} s, "
            f"the sizes of their images read in {v['sizes_seconds']:.0f} s) | |"
        )
    if "exact-subset" in res:
        e = res["exact-subset"]
        lines.append(
            f"| exactness, first 10k rows vs a naive float64 product | same pairs: projected {e['rank256_same_pairs']},"
            f" full product {e['rank0_same_pairs']} ({e['pairs']:,} pairs, {e['ties_within_1e6']} within 1e-6 of the "
            f"threshold); same groups: {e['same_groups']} ({e['groups']:,}) | {e['peak_rss_mb']:.0f} MB |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
