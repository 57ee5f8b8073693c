"""Descriptor transforms on cached raw features, paired against a reference on the kit and the holdout.

    python tests/bench/sweep_transforms.py --kit /tmp/simd-eval --holdout /tmp/holdout --cache /tmp/views \
        --model efficientnet-lite0 --sizes 224_288 [--small-tag ""] [--groups 3]

Reads the caches ``sweep_views.py`` wrote (raw pooled features per view) and scores candidates in
numpy. A candidate: the input size, the size small images (long side < 200 px) are embedded at, the
weight of the pooled features beside the logits, trimming, and a transform of each part:

- pooled features: ``l2`` (as r2), ``pow<a>`` (power normalisation x^a, then L2; the features are
  non-negative after ReLU6),
- logits: ``raw`` (as r2), ``nobias`` (the classifier's bias dropped: a constant vector every image
  shares), ``centre`` (each vector's mean over the 1000 classes subtracted), ``soft<T>`` (square
  root of the softmax at temperature T: a Hellinger-style probability vector).

Every row is compared with the first (the reference) on the same images: category precision per
query (mean difference and its 95 % interval), copies found per copy (gained / lost).
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from simd.backbones import load_backbone  # noqa: E402

K = 10


def l2(x):
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def gap_part(g: np.ndarray, how: str) -> np.ndarray:
    if how == "l2":
        return l2(g)
    if how.startswith("pow"):
        return l2(np.sign(g) * np.abs(g) ** float(how[3:]))
    raise ValueError(how)


def logit_part(g: np.ndarray, W: np.ndarray, b: np.ndarray, how: str) -> np.ndarray:
    z = g @ W.T
    if how == "raw":
        return l2(z + b)
    if how == "nobias":
        return l2(z)
    if how == "centre":
        z = z + b
        return l2(z - z.mean(axis=1, keepdims=True))
    if how.startswith("soft"):
        z = (z + b) / float(how[4:])
        z = z - z.max(axis=1, keepdims=True)
        p = np.exp(z)
        return l2(np.sqrt(p / p.sum(axis=1, keepdims=True)))
    raise ValueError(how)


def vectors(F, W, b, c: dict) -> np.ndarray:
    v = one_size(F, W, b, c)
    if c["ms"]:  # a second input size, its vector added at weight ms (two network passes)
        v = l2(v + c["ms"] * one_size(F, W, b, dict(c, size=c["ms_size"])))
    return v


def one_size(F, W, b, c: dict) -> np.ndarray:
    pre = "t" if c["trim"] else "s"
    g = F[pre + str(c["size"])].astype(np.float64)
    gs = g.copy()  # small images: the view at c["small"] px, for the parts c["smallpart"] names
    if c["small"]:
        small = F["long"] < 200
        gs[small] = F[pre + str(c["small"])][small]
    w = c["w"]
    parts = []
    if w > 0:
        parts.append(np.sqrt(w) * gap_part(gs if c["smallpart"] in ("both", "gap") else g, c["gap"]))
    if w < 1:
        lg = gs if c["smallpart"] in ("both", "logit") else g
        parts.append(np.sqrt(1 - w) * logit_part(lg, W, b, c["logit"]))
    return l2(np.concatenate(parts, axis=1))


def precision_per_query(rows, m) -> np.ndarray:
    cat = [i for i, r in enumerate(rows) if r["kind"] == "category"]
    labels = np.array([rows[i]["label"] for i in range(len(rows))])
    count = defaultdict(int)
    for i in cat:
        count[labels[i]] += 1
    sims = m @ m.T
    np.fill_diagonal(sims, -np.inf)
    out = []
    for i in cat:
        n = count[labels[i]]
        if n < 2:
            continue
        top = np.argpartition(-sims[i], K)[:K]
        out.append(np.sum(labels[top] == labels[i]) / min(K, n - 1))
    return np.asarray(out)


def kit_groups(rows) -> list[list[int]]:
    """Row indices of each group (an original and its copies), distractors left out."""
    groups = defaultdict(list)
    for i, r in enumerate(rows):
        if r["group"]:
            groups[r["group"]].append(i)
    return list(groups.values())


def kit_hits(rows, m) -> tuple[np.ndarray, list[str]]:
    """The kit's score.py: a copy is found when it is in the original's top 10 (itself excluded)."""
    hits, kinds = [], []
    for members in kit_groups(rows):
        orig = next(i for i in members if rows[i]["kind"] == "original")
        s = m @ m[orig]
        s[orig] = -np.inf
        top = set(np.argpartition(-s, K)[:K].tolist())
        for i in members:
            if i != orig:
                hits.append(i in top)
                kinds.append(rows[i]["kind"].split(":", 1)[1])
    return np.asarray(hits), kinds


def hold_hits(rows, m) -> tuple[np.ndarray, list[str]]:
    """The holdout: in the original's top 10 with the group's other copies left out."""
    hits, kinds = [], []
    for members in kit_groups(rows):
        orig = next(i for i in members if rows[i]["kind"] == "original")
        s = m @ m[orig]
        s[members] = -np.inf
        kth = np.partition(s, -K)[-K]
        for i in members:
            if i != orig:
                hits.append(float(m[i] @ m[orig]) > kth)
                kinds.append(rows[i]["kind"].split(":", 1)[1])
    return np.asarray(hits), kinds


def kit_recall(rows, hits) -> float:
    """Mean over groups of the share of copies found (score.py's recall@10); hits in kit_hits' order."""
    groups = defaultdict(list)
    for i, r in enumerate(rows):
        if r["group"]:
            groups[r["group"]].append(i)
    order = [g for g, members in groups.items() for i in members if rows[i]["kind"] != "original"]
    per = defaultdict(list)
    for g, h in zip(order, hits, strict=True):
        per[g].append(h)
    return float(np.mean([np.mean(v) for v in per.values()]))


def load(root: Path, task: str, groups: int) -> list[dict]:
    with open(root / f"{task}.csv") as f:
        rows = list(csv.DictReader(f))
    if groups > 1:
        keep = sorted({r["group"] for r in rows if r["group"]})[::groups]
        rows = [r for r in rows if not r["group"] or r["group"] in keep]
    return rows


def parse(spec: str) -> dict:
    """e.g. size=288,small=224,w=0.5,trim=1,gap=l2,logit=raw"""
    c = dict(size=288, small=224, w=0.5, trim=True, gap="l2", logit="raw", ms=0.0, ms_size=224, smallpart="both")
    for kv in filter(None, spec.split(",")):
        k, v = kv.split("=")
        c[k] = v if k in ("gap", "logit", "smallpart") else (float(v) if k in ("w", "ms") else int(v))
    c["trim"] = bool(c["trim"])
    return c


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kit", type=Path, required=True)
    ap.add_argument("--holdout", type=Path, required=True)
    ap.add_argument("--cache", type=Path, required=True)
    ap.add_argument("--model", default="efficientnet-lite0")
    ap.add_argument("--sizes", default="224_288", help="the cache files' size tag")
    ap.add_argument("--groups", type=int, default=3)
    ap.add_argument("candidates", nargs="+", help="the first is the reference; see parse()")
    a = ap.parse_args()
    bb = load_backbone(a.model, allow_download=False)
    W, b = (np.asarray(x, np.float64) for x in bb.classifier)
    sets = {}
    for tag, root in (("kit", a.kit), ("hold", a.holdout)):
        for task in ("neardup", "category"):
            part = f"-every{a.groups}" if tag == "hold" and task == "neardup" and a.groups > 1 else ""
            rows = load(root, task, a.groups if part else 0)
            F = dict(np.load(a.cache / f"{a.model}-{tag}-{task}{part}-{a.sizes}.npz"))
            sets[tag, task] = (rows, F)
    ref = None
    for spec in a.candidates:
        c = parse(spec)
        res = {}
        for tag in ("kit", "hold"):
            nd_rows, ndF = sets[tag, "neardup"]
            cat_rows, catF = sets[tag, "category"]
            hits, kinds = (kit_hits if tag == "kit" else hold_hits)(nd_rows, vectors(ndF, W, b, c))
            prec = precision_per_query(cat_rows, vectors(catF, W, b, c))
            res[tag] = (hits, kinds, prec)
        if ref is None:
            ref = res
        line = [f"{spec:<48}"]
        for tag in ("kit", "hold"):
            hits, kinds, prec = res[tag]
            rh, _, rp = ref[tag]
            per = defaultdict(list)
            for h, k in zip(hits, kinds, strict=True):
                per[k].append(h)
            worst = min(per, key=lambda k: np.mean(per[k]))
            rec = kit_recall(sets[tag, "neardup"][0], hits) if tag == "kit" else float(np.mean(hits))
            d = prec - rp
            ci = 1.96 * d.std(ddof=1) / np.sqrt(len(d)) if len(d) > 1 else 0.0
            gained, lost = int(np.sum(hits & ~rh)), int(np.sum(~hits & rh))
            line.append(
                f"{tag} rec {rec:.3f} worst {worst} {np.mean(per[worst]):.3f} +{gained}/-{lost} "
                f"prec {prec.mean():.3f} ({d.mean():+.3f}±{ci:.3f})"
            )
        print(" | ".join(line), flush=True)


if __name__ == "__main__":
    main()
