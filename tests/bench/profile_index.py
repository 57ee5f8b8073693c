"""Where `simd index`'s time goes, stage by stage, in one process (not collected by pytest).

    .venv/bin/python tests/bench/profile_index.py FOLDER [--model resnet50|efficientnet-lite0]

Runs `Reconciler.run()` over FOLDER into a fresh store, as `simd index` does, with timers around
each stage: hashing (`Reconciler._hash`), decoding (`Embedder._decode_file`, in the pool: wall and
the thread's own CPU), the network (`Embedder._run`), the commits (`Reconciler._commit`). Then, in
the same process, the network alone on prepared batches of 32 (`_run`), so the ratio end to end /
model-only comes from one run. *network busy* is the share of the run's wall time spent inside
`_run`: what the pipeline loses to the model is the rest.
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

STATS: dict[str, list[float]] = defaultdict(lambda: [0, 0.0, 0.0])  # calls, wall, thread CPU
_lock = threading.Lock()


def timed(name: str, fn):
    @functools.wraps(fn)
    def wrapper(*a, **kw):
        w, c = time.perf_counter(), time.thread_time()
        try:
            return fn(*a, **kw)
        finally:
            dw, dc = time.perf_counter() - w, time.thread_time() - c
            with _lock:
                s = STATS[name]
                s[0] += 1
                s[1] += dw
                s[2] += dc

    return wrapper


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder")
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--weights", help="ResNet50 .h5 (default: seeded random weights)")
    ap.add_argument("--tf-threads", type=int, default=0)
    ap.add_argument("--workers", type=int, default=0, help="decode threads (default: the embedder's)")
    ap.add_argument("--nice", type=int, default=0, help="lower the decode threads' priority by this much")
    ap.add_argument("--warm", action="store_true", help="build the network's function before the run")
    args = ap.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    import numpy as np

    import simd.backbones as bb
    from simd import indexer
    from simd.embedder import Embedder
    from simd.ignore import IgnoreRules
    from simd.store import Store

    if args.tf_threads:
        bb.configure_tensorflow(args.tf_threads)
    bb.import_tf()
    if args.model == "resnet50" and not args.weights:
        import keras

        keras.utils.set_random_seed(0)
        backbone = bb.random_resnet50()
    else:
        backbone = bb.load_backbone(args.model, weights=args.weights, allow_download=False)
    emb = Embedder(backbone, decode_workers=args.workers or None)
    if args.nice:
        import simd.embedder

        class NicePool(simd.embedder.ThreadPoolExecutor):  # type: ignore[misc]
            def __init__(self, *a, **kw):
                kw["initializer"] = lambda: os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), args.nice)
                super().__init__(*a, **kw)

        simd.embedder.ThreadPoolExecutor = NicePool  # type: ignore[misc]
    build = 0.0
    if args.warm:
        build = time.perf_counter()
        for size in emb.sizes:
            emb._run(size, np.zeros((1, size, size, 3), np.uint8))
        build = time.perf_counter() - build
    for name in ("_decode_file", "_run", "embed_files"):
        setattr(emb, name, timed(name, getattr(emb, name)))
    indexer.Reconciler._hash = timed("hash", indexer.Reconciler._hash)  # type: ignore[method-assign]
    indexer.Reconciler._commit = timed("commit", indexer.Reconciler._commit)  # type: ignore[method-assign]
    indexer.Reconciler.plan = timed("plan", indexer.Reconciler.plan)  # type: ignore[method-assign]
    paths = sorted(Path(args.folder).glob("*.jpg"))
    with tempfile.TemporaryDirectory() as tmp, Store(Path(tmp) / "index.db") as store:
        rec = indexer.Reconciler(Path(args.folder), store, emb, None, IgnoreRules([]))
        cpu0, t0 = time.process_time(), time.perf_counter()
        summary = rec.run()
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    n = summary.embedded
    run_stats = {k: list(v) for k, v in STATS.items()}
    # model-only, same process: prepared batches of 32 from the folder (the function is built already)
    prepared = [emb._decode_file(p) for p in paths[:32]]
    batches = [np.stack([p[s] for p in prepared]) for s in range(len(emb.sizes))]
    rounds = max(2, math.ceil(n / 32))
    mc, mt = time.process_time(), time.perf_counter()
    for _ in range(rounds):
        for size, batch in zip(emb.sizes, batches, strict=True):
            emb._run(size, batch)
    mwall, mcpu = time.perf_counter() - mt, time.process_time() - mc
    model_ips = rounds * 32 / mwall

    print(f"{args.model}: {n} images from {args.folder}, decode workers {emb.decode_workers} (nice {args.nice})")
    if args.warm:
        print(f"function built before the run in {build:.1f} s")
    print(f"run: {wall:.2f} s, {n / wall:.2f} img/s, CPU {1000 * cpu / n:.0f} ms/img (all threads)")
    print(f"model-only (same process): {model_ips:.2f} img/s, CPU {1000 * mcpu / (rounds * 32):.0f} ms/img")
    print(f"ratio run / model-only: {n / wall / model_ips:.2f}")
    print(f"{'stage':<14}{'calls':>6}{'wall s':>9}{'% of run':>9}{'thread CPU s':>13}{'CPU ms/img':>11}")
    for name in ("plan", "hash", "_decode_file", "embed_files", "_run", "commit"):
        calls, w, c = run_stats.get(name, [0, 0.0, 0.0])
        print(f"{name:<14}{calls:>6}{w:>9.2f}{100 * w / wall:>8.0f}%{c:>13.2f}{1000 * c / max(n, 1):>11.1f}")
    run_wall = run_stats.get("_run", [0, 0.0])[1]
    embed_wall = run_stats.get("embed_files", [0, 0.0])[1]
    print(
        f"network busy: {100 * run_wall / wall:.0f}% of the run; inside embed_files but not in the network "
        f"(waiting for decodes, stacking, L2): {embed_wall - run_wall:.2f} s; outside embed_files: "
        f"{wall - embed_wall:.2f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
