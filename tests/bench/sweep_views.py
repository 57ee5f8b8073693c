"""Sweep descriptor ideas on the kit and the holdout from cached raw features (one network pass per view).

    python tests/bench/sweep_views.py --kit /tmp/simd-eval --holdout /tmp/holdout --cache /tmp/views \
        [--model efficientnet-lite0] [--sizes 224,288]

Each image is decoded once (EXIF applied, JPEG draft) and run through the network as a few *views*:
squashed (bicubic) to each size, the same after trimming letterbox bands (``simd.borders``), and a
low-resolution view (long side 160, then up). The raw pooled features are cached per view, so the
candidates below (pooled features, logits, both concatenated with a weight; trimming; size matched
to small images; the low-resolution view added) are scored in numpy, with the kit's metrics
(tune_descriptor.py's scorers), on the kit's two libraries and the holdout's.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from tune_descriptor import score_category, score_neardup  # noqa: E402

from simd.backbones import load_backbone  # noqa: E402
from simd.backbones.tfnet import TFNetwork  # noqa: E402
from simd.borders import trim  # noqa: E402
from simd.embedder import Descriptor  # noqa: E402
from simd.imaging import open_image  # noqa: E402

LOW = 160


def score_copies(rows: list[dict], matrix: np.ndarray, k: int = 10) -> tuple[float, dict[str, float]]:
    """Per copy: is it in the original's top k when the group's other copies are left out? (The
    holdout has 11 copies per photo, more than k = 10 places: with all of them in, the weakest copy
    of each photo is pushed out by its siblings, not by unrelated images.) Mean and per kind."""
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        if r["group"]:
            groups.setdefault(r["group"], []).append(i)
    hits: dict[str, list[bool]] = {}
    for members in groups.values():
        orig = next(i for i in members if rows[i]["kind"] == "original")
        scores = matrix @ matrix[orig]
        scores[members] = -np.inf
        kth = np.partition(scores, -k)[-k]  # the k-th best image outside the group
        for i in members:
            if i != orig:
                s = float(matrix[i] @ matrix[orig])
                hits.setdefault(rows[i]["kind"].split(":", 1)[1], []).append(s > kth)
    kinds = {kind: float(np.mean(h)) for kind, h in sorted(hits.items())}
    return float(np.mean([x for h in hits.values() for x in h])), kinds


LOW_UP_TO = 240  # a low-resolution view costs a second pass: only at sizes that leave time for it


def views(image: Image.Image, sizes: list[int], small: tuple[int, int] = (0, 0)) -> dict[str, np.ndarray]:
    """small = (size, below): also a view at `size`, only for images whose long side is below `below`."""
    out = {}
    trimmed = trim(image)
    main = sizes
    if small[0] and small[0] not in sizes and max(image.size) < small[1]:
        sizes = sizes + [small[0]]
    for s in sizes:
        out[f"s{s}"] = np.asarray(image.resize((s, s), Image.Resampling.BICUBIC), np.uint8)
        if trimmed is not image:
            out[f"t{s}"] = np.asarray(trimmed.resize((s, s), Image.Resampling.BICUBIC), np.uint8)
        if s <= LOW_UP_TO and s in main:
            low = trimmed.copy()
            low.thumbnail((LOW, LOW), Image.Resampling.LANCZOS)
            out[f"l{s}"] = np.asarray(low.resize((s, s), Image.Resampling.BICUBIC), np.uint8)
    return out


def network(bb, sizes: list[int]):
    """Raw pooled features (n, C) per size, on ONNX Runtime (converted in memory: ~1.4x TensorFlow)."""
    from simd.backbones.onnx import open_network

    tf = TFNetwork(bb, Descriptor("raw"))
    return open_network(bb.id, 0, Descriptor("raw"), tuple(sizes), None, convert_from=tf) or tf


def features(
    net, root: Path, rows: list[dict], sizes: list[int], cache: Path, small: tuple[int, int] = (0, 0)
) -> dict[str, np.ndarray]:
    if cache.is_file():
        return dict(np.load(cache))
    draft = 2 * max(sizes)
    feats: dict[str, list] = {}
    longs = []
    t = time.perf_counter()
    for i in range(0, len(rows), 16):
        chunk = [open_image(root / r["path"], draft_size=(draft, draft)) for r in rows[i : i + 16]]
        vs = [views(im, sizes, small) for im in chunk]
        longs += [max(im.size) for im in chunk]
        keys = sorted({k for v in vs for k in v if k[0] != "t"})
        if small[0] and f"s{small[0]}" not in keys:
            keys.append(f"s{small[0]}")
        for key in keys:
            # every image has the main sizes' views; the small-only size just the small images (NaN else)
            have = [j for j, v in enumerate(vs) if key in v]
            f = np.full((len(vs), net_dim(net, sizes)), np.nan, np.float32)
            if have:
                f[have] = net.run(int(key[1:]), np.stack([vs[j][key] for j in have]))
            feats.setdefault(key, []).append(f)
            tk = "t" + key[1:]
            if key[0] == "s":  # trimmed views only where trimming changed the image
                idx = [j for j, v in enumerate(vs) if tk in v]
                tf = f.copy()
                if idx:
                    tf[idx] = net.run(int(key[1:]), np.stack([vs[j][tk] for j in idx]))
                feats.setdefault(tk, []).append(tf)
        if i % 320 == 0:
            print(f"  {cache.name}: {i}/{len(rows)} after {time.perf_counter() - t:.0f} s", flush=True)
    out = {k: np.concatenate(v) for k, v in feats.items()}
    out["long"] = np.asarray(longs)
    print(f"  {cache.name}: {len(rows)} images in {time.perf_counter() - t:.0f} s", flush=True)
    np.savez(cache, **out)
    return out


_DIM: dict[int, int] = {}


def net_dim(net, sizes: list[int]) -> int:
    key = id(net)
    if key not in _DIM:
        _DIM[key] = net.run(sizes[0], np.zeros((1, sizes[0], sizes[0], 3), np.uint8)).shape[1]
    return _DIM[key]


def l2(x):
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def head(f: np.ndarray, bb, w: float) -> np.ndarray:
    """w = weight of the pooled features (1: GAP only, 0: logits only); cos = w cos_gap + (1-w) cos_logit."""
    W, b = bb.classifier
    parts = []
    if w > 0:
        parts.append(np.sqrt(w) * l2(f))
    if w < 1:
        parts.append(np.sqrt(1 - w) * l2(f @ np.asarray(W).T + np.asarray(b)))
    return np.concatenate(parts, axis=1)


def vectors(F, bb, *, size, w, trimmed, low, match=0):
    """match > 0: images whose long side is below `match` px use the 224 view instead of `size`."""
    key = ("t" if trimmed else "s") + str(size)
    v = l2(head(F[key], bb, w))
    if match:
        small = F["long"] < match
        v[small] = l2(head(F[("t" if trimmed else "s") + "224"], bb, w))[small]
    if low:
        v = l2(v + low * l2(head(F[f"l{size}"], bb, w)))
    return v


def main() -> None:
    global LOW_UP_TO
    ap = argparse.ArgumentParser()
    ap.add_argument("--kit", type=Path, required=True)
    ap.add_argument("--holdout", type=Path, required=True)
    ap.add_argument("--cache", type=Path, required=True)
    ap.add_argument("--model", default="efficientnet-lite0")
    ap.add_argument("--sizes", default="224,288")
    ap.add_argument("--kinds", action="store_true", help="print every kind's hit rate")
    ap.add_argument("--only", help="python expression on a candidate dict g, e.g. \"g['w'] == 0.5\"")
    ap.add_argument("--groups", type=int, default=0, help="holdout: every n-th group only (0: all), for speed")
    ap.add_argument("--small", default="", help="SIZE:BELOW: a view at SIZE for images under BELOW px only")
    ap.add_argument("--low-up-to", type=int, default=240, help="low-resolution views up to this size")
    ap.add_argument("--no-grid", action="store_true", help="only compute and cache the features")
    a = ap.parse_args()
    LOW_UP_TO = a.low_up_to
    sizes = [int(s) for s in a.sizes.split(",")]
    small = tuple(int(x) for x in a.small.split(":")) if a.small else (0, 0)
    bb = load_backbone(a.model, allow_download=False)
    net = network(bb, sizes + ([small[0]] if small[0] and small[0] not in sizes else []))
    a.cache.mkdir(parents=True, exist_ok=True)
    sets = {}
    for tag, root in (("kit", a.kit), ("hold", a.holdout)):
        for task in ("neardup", "category"):
            with open(root / f"{task}.csv") as f:
                rows = list(csv.DictReader(f))
            part = ""
            if tag == "hold" and task == "neardup" and a.groups > 1:
                keep = sorted({r["group"] for r in rows if r["group"]})[:: a.groups]
                rows = [r for r in rows if not r["group"] or r["group"] in keep]
                part = f"-every{a.groups}"
            extra = f"-small{small[0]}_{small[1]}" if small[0] else ""
            cache = a.cache / f"{a.model}-{tag}-{task}{part}-{'_'.join(map(str, sizes))}{extra}.npz"
            sets[tag, task] = (rows, features(net, root / task, rows, sizes, cache, small))
    if a.no_grid:
        return
    grid = []
    for size in sizes:
        for w in (0.0, 0.3, 0.5, 0.7, 1.0):
            for trimmed in (False, True):
                for low in (0.0, 0.5, 1.0) if size <= LOW_UP_TO else (0.0,):
                    grid.append(dict(size=size, w=w, trimmed=trimmed, low=low))
    if 224 in sizes:
        for size in sizes:
            if size > 224:
                for w in (0.0, 0.5):
                    grid.append(dict(size=size, w=w, trimmed=True, low=0.0, match=size))
    print(f"model {a.model}")
    print(f"{'candidate':<34} | {'kit rec':>7} {'worst':>16} {'prec':>5} | {'hold rec':>8} {'worst':>20} {'prec':>5}")
    for g in grid:
        if a.only and not eval(a.only, {"g": g}):
            continue
        cols = []
        for tag in ("kit", "hold"):
            nd_rows, ndF = sets[tag, "neardup"]
            cat_rows, catF = sets[tag, "category"]
            score = score_neardup if tag == "kit" else score_copies
            rec, kinds = score(nd_rows, vectors(ndF, bb, **g))
            prec = score_category(cat_rows, vectors(catF, bb, **g))
            worst = min(kinds, key=kinds.get)
            cols.append(f"{rec:7.3f} {worst:>11} {kinds[worst]:.3f} {prec:5.3f}")
            if a.kinds:
                cols[-1] += " [" + " ".join(f"{k[:7]}={v:.2f}" for k, v in kinds.items()) + "]"
        label = " ".join(f"{k}={v}" for k, v in g.items())
        print(f"{label:<34} | {cols[0]} | {cols[1]}", flush=True)


if __name__ == "__main__":
    main()
