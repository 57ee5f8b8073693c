"""Calibrate a model's score bands and duplicate thresholds on the evaluation kit.

    python tests/bench/calibrate.py /tmp/simd-eval [--model auto] [--descriptor default]
    python tests/bench/calibrate.py /tmp/simd-eval --state ND_STATE_DIR CAT_STATE_DIR --model-id ID

Embeds the kit's two libraries with the embedder the settings give (``Embedder.from_config``, the
model id the daemon would store), or reads the vectors an index already holds (``--state``: the
state dirs run_eval.py --keep leaves, the very vectors the daemon searched), then prints:
- score percentiles of a photo and its edited copy, of two photos with the same label, of
  unrelated photos (the search page's match bands, ``simd.search.MATCH_BANDS``);
- the duplicate groups' pairwise precision and recall on the near-duplicate library at a few
  thresholds and floors (``simd.duplicates.build_pairs`` + ``groups``): the kit's groups are the
  truth (an original and its copies), distractors must stay alone
  (``simd.duplicates.DUPLICATE_THRESHOLDS``).
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from tune_descriptor import read_kit  # noqa: E402

from simd.config import Config  # noqa: E402
from simd.duplicates import build_pairs, groups  # noqa: E402
from simd.embedder import Embedder  # noqa: E402


def embed(emb: Embedder, root: Path, rows: list[dict]) -> np.ndarray:
    out = emb.embed_files([root / r["path"] for r in rows])
    return np.stack([v if isinstance(v, np.ndarray) else np.zeros(emb.dim, np.float32) for v in out])


def from_state(state: Path, rows: list[dict], model_id: str) -> np.ndarray:
    from simd.store import Store

    with Store(state / "index.db") as store:
        ids, matrix = store.load_vectors(model_id)
        row_of = {int(i): k for k, i in enumerate(ids)}
        records = store.records()
    return np.stack([matrix[row_of[records[r["path"]].id]] for r in rows])


def percentiles(scores: list[float]) -> str:
    p = np.percentile(scores, [1, 5, 50, 95, 99])
    return " ".join(f"{x:6.3f}" for x in p) + f"  (n={len(scores)})"


def pair_quality(rows, matrix, threshold: float, floor: float) -> tuple[float, float, int]:
    """Pairwise precision and recall of the groups: a pair is true when both are of one kit group."""
    ids = np.arange(len(rows))
    pairs = build_pairs(ids, matrix, min(threshold, floor))
    found = groups((pairs.a, pairs.b, pairs.score), threshold, floor)
    truth = {
        (i, j) for i, j in itertools.combinations(ids, 2) if rows[i]["group"] and rows[i]["group"] == rows[j]["group"]
    }
    got = {(a, b) for g in found for a, b in itertools.combinations(sorted(g.members), 2)}
    tp = len(got & truth)
    return tp / max(1, len(got)), tp / len(truth), sum(len(g.members) for g in found)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("kit", type=Path)
    ap.add_argument("--model", default="auto")
    ap.add_argument("--descriptor", default="default")
    ap.add_argument("--runtime", default="onnxruntime")
    ap.add_argument("--state", type=Path, nargs=2, metavar=("NEARDUP", "CATEGORY"))
    ap.add_argument("--model-id", help="with --state: the model id whose vectors to read")
    a = ap.parse_args()
    nd_rows, cat_rows = read_kit(a.kit, "neardup"), read_kit(a.kit, "category")
    if a.state:
        nd, cat = from_state(a.state[0], nd_rows, a.model_id), from_state(a.state[1], cat_rows, a.model_id)
        print(f"model {a.model_id} ({nd.shape[1]}-d, from {a.state[0]} and {a.state[1]})")
    else:
        config = Config(
            {
                "library": ".",
                "model": a.model,
                "descriptor": a.descriptor,
                "runtime": a.runtime,
                "weights_download": False,
            }
        )
        emb = Embedder.from_config(config)
        nd, cat = embed(emb, a.kit / "neardup", nd_rows), embed(emb, a.kit / "category", cat_rows)
        print(f"model {emb.model_id} ({emb.dim}-d, sizes {emb.sizes})")
    copies = defaultdict(list)
    for i, r in enumerate(nd_rows):
        if r["group"]:
            copies[r["group"]].append(i)
    edit = [float(nd[i] @ nd[j]) for m in copies.values() for i, j in itertools.combinations(m, 2)]
    originals = {r["group"]: i for i, r in enumerate(nd_rows) if r["kind"] == "original"}
    orig_edit = [float(nd[originals[g]] @ nd[j]) for g, m in copies.items() for j in m if j != originals[g]]
    labels = defaultdict(list)
    for i, r in enumerate(cat_rows):
        if r["kind"] == "category":
            labels[r["label"]].append(i)
    same = [float(cat[i] @ cat[j]) for m in labels.values() for i, j in itertools.combinations(m, 2)]
    label_of = {i: r["label"] for i, r in enumerate(cat_rows) if r["kind"] == "category"}
    cat_s = cat @ cat.T
    unrelated = [
        float(cat_s[i, j])
        for i, j in itertools.combinations(range(len(cat_rows)), 2)
        if label_of.get(i) is None or label_of.get(i) != label_of.get(j)
    ]
    print("pairs                          p1     p5    p50    p95    p99")
    print(f"original and its copy      {percentiles(orig_edit)}")
    print(f"two copies of one photo    {percentiles(edit)}")
    print(f"same label                 {percentiles(same)}")
    print(f"unrelated                  {percentiles(unrelated)}")
    oe, un, sa = np.array(orig_edit), np.array(unrelated), np.array(same)
    for band in (0.70, 0.75, 0.80, 0.85):
        print(f"  near-dup band >= {band:.2f}: copies {np.mean(oe >= band):.3f}, unrelated {np.mean(un >= band):.4f}")
    for band in (0.35, 0.40, 0.45, 0.50):
        print(
            f"  similar band >= {band:.2f}: same label {np.mean(sa >= band):.3f}, unrelated {np.mean(un >= band):.4f}"
        )
    print("duplicates (kit near-dup library)   threshold floor  precision recall  grouped")
    for threshold, floor in itertools.product((0.60, 0.65, 0.70, 0.75, 0.80), (0.45, 0.50, 0.55)):
        p, r, n = pair_quality(nd_rows, nd, threshold, floor)
        print(f"  {threshold:.2f} {floor:.2f}  {p:.3f} {r:.3f} {n}")


if __name__ == "__main__":
    main()
