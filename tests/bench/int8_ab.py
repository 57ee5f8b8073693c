"""int8 against fp32 model-only, interleaved in one process (not collected by pytest).

    .venv/bin/python tests/bench/int8_ab.py [--rounds 6] [--folder /tmp/simd-bench-index/small-96]

On a busy machine two measurements minutes apart see different loads; here each round runs one
batch of 32 through the fp32 session, then the same batch through the int8 session (both from
the model cache, made by `bench_index.py` or `simd index --precision int8` on the same folder), so
both see the same load. Prints img/s of each (median over rounds) and their ratio per backbone.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from simd.config import Config  # noqa: E402
from simd.embedder import Embedder  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--folder", default="/tmp/simd-bench-index/small-96")
    ap.add_argument("--resnet-weights", default="/tmp/simd-bench-index/resnet50-random-seed0.weights.h5")
    a = ap.parse_args()
    print(f"load average before: {os.getloadavg()}")
    for model in ("resnet50", "efficientnet-lite0"):
        settings = {"model": model, "weights_download": False, "library": a.folder}
        if model == "resnet50":
            settings["weights"] = a.resnet_weights
        emb = {p: Embedder.from_config(Config({**settings, "precision": p}).validate()) for p in ("fp32", "int8")}
        if emb["int8"].model_id == emb["fp32"].model_id:
            raise SystemExit(f"no int8 model of {model} for {a.folder}")
        paths = sorted(Path(a.folder).glob("*.jpg"))[:32]
        prepared = [emb["fp32"]._decode_file(p) for p in paths]
        size = emb["fp32"].sizes[0]
        batch = np.stack([p[0] for p in prepared])
        times: dict[str, list[float]] = {"fp32": [], "int8": []}
        for e in emb.values():
            e._run(size, batch)  # warm up
        for _ in range(a.rounds):
            for p, e in emb.items():
                t = time.perf_counter()
                e._run(size, batch)
                times[p].append(time.perf_counter() - t)
        ips = {p: len(batch) / statistics.median(t) for p, t in times.items()}
        print(
            f"{model}: fp32 {ips['fp32']:.1f} img/s, int8 {ips['int8']:.1f} img/s, "
            f"int8 / fp32 {ips['int8'] / ips['fp32']:.2f}x ({a.rounds} interleaved batches of 32)",
            flush=True,
        )
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
