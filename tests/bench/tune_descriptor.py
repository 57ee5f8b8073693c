"""Sweep descriptor knobs on the public evaluation kit, in-process, with the kit's own metrics.

    python tests/bench/tune_descriptor.py /tmp/simd-eval [--model efficientnet-lite0] [--only default,seed]

Embeds every image of both kit libraries with each candidate descriptor (the product's Embedder),
then scores near-duplicate recall@10 and category precision@10 exactly as ../shared/eval/score.py
does (query = original / labelled image, itself excluded), plus throughput relative to `seed`.
This is a tuning aid; the numbers that count come from score.py against `simd serve`
(tests/bench/run_eval.py), recorded in docs/QUALITY.md.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from whitening import WhiteningParams, fit_whitening  # noqa: E402

from simd.backbones import load_backbone  # noqa: E402
from simd.embedder import DESCRIPTORS, Descriptor, Embedder, resolve_descriptor  # noqa: E402

K = 10
WHITENING_GRID = [
    WhiteningParams(0.5, 1.0, 512),
    WhiteningParams(0.5, 0.1, 512),
    WhiteningParams(1.0, 1.0, 512),
    WhiteningParams(1.0, 0.1, 128),
    WhiteningParams(0.25, 0.1, 512),
]


def candidates(model: str) -> dict[str, Descriptor]:
    base = Descriptor("squash", preprocess="default", resize="bilinear", aspect="squash")
    return {
        "seed": DESCRIPTORS["seed"],
        "default": resolve_descriptor("default", model),
        "squash": base,
        "bicubic": replace(base, name="bicubic", resize="bicubic"),
        "crop": replace(base, name="crop", aspect="crop"),
        "gem": replace(base, name="gem", pooling="gem"),
        "flip": replace(base, name="flip", flip=True),
        "ms": replace(base, name="ms", scales=(1.0, 1.5)),
        "s1.3": replace(base, name="s1.3", scales=(1.3,)),
        "gem_ms": replace(base, name="gem_ms", pooling="gem", scales=(1.0, 1.5)),
        "logits": replace(base, name="logits", logits=True),
        "l_bic": replace(base, name="l_bic", resize="bicubic", logits=True),
        "l_s1.15": replace(base, name="l_s1.15", resize="bicubic", scales=(1.15,), logits=True),
        "l_s1.5": replace(base, name="l_s1.5", resize="bicubic", scales=(1.5,), logits=True),
        "l_ms": replace(base, name="l_ms", resize="bicubic", scales=(1.0, 1.4), logits=True),
        "l_flip": replace(base, name="l_flip", resize="bicubic", scales=(288 / 224,), logits=True, flip=True),
    }


def read_kit(out: Path, task: str) -> list[dict]:
    with open(out / f"{task}.csv") as f:
        return list(csv.DictReader(f))


def topk(matrix: np.ndarray, qi: int, k: int) -> list[int]:
    scores = matrix @ matrix[qi]
    scores[qi] = -np.inf
    idx = np.argpartition(-scores, k)[:k]
    return list(idx[np.argsort(-scores[idx], kind="stable")])


def score_neardup(rows, matrix) -> tuple[float, dict]:
    index = {r["path"]: i for i, r in enumerate(rows)}
    groups = defaultdict(list)
    for r in rows:
        if r["group"]:
            groups[r["group"]].append(r)
    recalls, hits, n = [], defaultdict(int), defaultdict(int)
    for members in groups.values():
        orig = next(r for r in members if r["kind"] == "original")
        got = {rows[i]["path"] for i in topk(matrix, index[orig["path"]], K)}
        rel = [r for r in members if r is not orig]
        for r in rel:
            kind = r["kind"].split(":", 1)[1]
            n[kind] += 1
            hits[kind] += r["path"] in got
        recalls.append(sum(r["path"] in got for r in rel) / len(rel))
    return float(np.mean(recalls)), {k: hits[k] / n[k] for k in sorted(n)}


def score_category(rows, matrix) -> float:
    index = {r["path"]: i for i, r in enumerate(rows)}
    labels = defaultdict(list)
    for r in rows:
        if r["kind"] == "category":
            labels[r["label"]].append(r["path"])
    precs = []
    for paths in labels.values():
        if len(paths) < 2:
            continue
        members = set(paths)
        for p in paths:
            got = [rows[i]["path"] for i in topk(matrix, index[p], K)]
            precs.append(sum(g in members for g in got) / min(K, len(paths) - 1))
    return float(np.mean(precs))


def embed(embedder: Embedder, root: Path, rows) -> tuple[np.ndarray, float]:
    t = time.perf_counter()
    out = embedder.embed_files([root / r["path"] for r in rows])
    seconds = time.perf_counter() - t
    return np.stack([v if isinstance(v, np.ndarray) else np.zeros(embedder.dim, np.float32) for v in out]), seconds


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("kit", type=Path)
    ap.add_argument("--model", default="efficientnet-lite0")
    ap.add_argument("--only", help="comma-separated candidate names")
    ap.add_argument("--no-whitening", action="store_true", help="skip the PCA-whitening grid")
    a = ap.parse_args()
    backbone = load_backbone(a.model, allow_download=False)
    nd_rows, cat_rows = read_kit(a.kit, "neardup"), read_kit(a.kit, "category")
    cands = candidates(a.model)
    if a.only:
        cands = {k: v for k, v in cands.items() if k in a.only.split(",")}
    print(f"model {a.model}; {len(nd_rows)} near-dup and {len(cat_rows)} category images")
    print(f"{'descriptor':<10} {'recall':>7} {'min kind':>14} {'prec':>6} {'prec+W':>7} {'rec+W':>6} {'img/s':>7}")
    for name, desc in cands.items():
        emb = Embedder(backbone, descriptor=desc)
        emb.embed_files([a.kit / "neardup" / nd_rows[0]["path"]])  # trace outside the timing
        nd, t1 = embed(emb, a.kit / "neardup", nd_rows)
        cat, t2 = embed(emb, a.kit / "category", cat_rows)
        recall, kinds = score_neardup(nd_rows, nd)
        prec = score_category(cat_rows, cat)
        worst = min(kinds, key=kinds.get)
        rate = (len(nd_rows) + len(cat_rows)) / (t1 + t2)
        print(
            f"{name:<10} {recall:7.3f} {worst:>8} {kinds[worst]:.3f} {prec:6.3f} {'':>7} {'':>6} {rate:7.1f}",
            flush=True,
        )
        for wp in [] if a.no_whitening else WHITENING_GRID:
            w_cat, w_nd = fit_whitening(cat, wp), fit_whitening(nd, wp)
            rec_w, kinds_w = score_neardup(nd_rows, w_nd(nd))
            worst_w = min(kinds_w, key=kinds_w.get)
            print(
                f"  +W p={wp.power} s={wp.shrink} c={wp.max_components:<4} {rec_w:6.3f} {worst_w:>8} "
                f"{kinds_w[worst_w]:.3f} {score_category(cat_rows, w_cat(cat)):6.3f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
