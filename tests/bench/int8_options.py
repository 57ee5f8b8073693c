"""Which quantize_static options keep an int8 model's vectors closest to fp32's (not collected by pytest).

    .venv/bin/python tests/bench/int8_options.py efficientnet-lite0 minmax,minmax-rr,pct,rr-conv,rr-u8u8 \
        --calibrate /tmp/simd-eval/category --test /tmp/simd-eval/neardup

Calibrates on 64 photos of one folder (every 4th in path order), embeds 160 of another (every 7th)
with the fp32 model and each int8 variant, and prints the cosine of each photo's int8 vector to its
fp32 vector (min, 5th percentile, mean), how many of each photo's 10 nearest neighbours stay the
same, and the seconds the quantization and the 160 photos took. Results: docs/QUALITY.md "int8".
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from simd.backbones.onnx import _session, cache_dir, cache_key  # noqa: E402
from simd.config import Config  # noqa: E402
from simd.embedder import Embedder  # noqa: E402


def variants():
    from onnxruntime.quantization import CalibrationMethod, QuantType

    minmax = {"calibrate_method": CalibrationMethod.MinMax}
    rr = {**minmax, "reduce_range": True}
    return {
        "minmax": minmax,
        "minmax-rr": rr,
        "pct": {"calibrate_method": CalibrationMethod.Percentile, "extra_options": {"CalibPercentile": 99.999}},
        "rr-conv": {**rr, "op_types_to_quantize": ["Conv"]},
        "rr-u8u8": {**rr, "activation_type": QuantType.QUInt8, "weight_type": QuantType.QUInt8},
    }


def main() -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("variants")
    ap.add_argument("--calibrate", type=Path, required=True)
    ap.add_argument("--test", type=Path, required=True)
    ap.add_argument("--weights")
    a = ap.parse_args()
    settings = {"model": a.model, "weights_download": False, "library": "."}
    if a.weights:
        settings["weights"] = a.weights
    emb = Embedder.from_config(Config(settings).validate())
    size = emb.sizes[0]
    weights = a.weights or emb.backbone.weights_file
    fp32 = cache_dir(None) / f"{cache_key(emb.backbone.id, emb.backbone.classes, emb.descriptor, size, weights)}.onnx"
    cal_files = sorted(p for p in a.calibrate.rglob("*") if p.is_file())[::4][:64]
    test_files = sorted(p for p in a.test.rglob("*") if p.is_file())[::7][:160]
    cal = np.stack([emb._decode_file(f)[0] for f in cal_files])
    test = np.stack([emb._decode_file(f)[0] for f in test_files])
    ref = _session(str(fp32), 0)
    name = ref.get_inputs()[0].name

    def run(session, x):
        out = np.concatenate([session.run(None, {name: x[i : i + 32]})[0] for i in range(0, len(x), 32)])
        return out / np.linalg.norm(out, axis=1, keepdims=True)

    t = time.time()
    want = run(ref, test)
    t_fp32 = time.time() - t

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{name: cal[i : i + 8]} for i in range(0, len(cal), 8)])

        def get_next(self):
            return next(self.it, None)

    with tempfile.TemporaryDirectory() as tmp:
        pre = os.path.join(tmp, "pre.onnx")
        quant_pre_process(str(fp32), pre, skip_symbolic_shape=True)
        table = variants()
        for v in a.variants.split(","):
            out = os.path.join(tmp, f"{v}.onnx")
            t = time.time()
            quantize_static(pre, out, Reader(), quant_format=QuantFormat.QDQ, per_channel=True, **table[v])
            t_quant = time.time() - t
            session = _session(out, 0)
            t = time.time()
            got = run(session, test)
            t_int8 = time.time() - t
            cos = np.sum(got * want, axis=1)
            near_f = np.argsort(-(want @ want.T), axis=1)[:, 1:11]
            near_q = np.argsort(-(got @ got.T), axis=1)[:, 1:11]
            overlap = np.mean([len(set(x) & set(y)) / 10 for x, y in zip(near_f, near_q, strict=True)])
            print(
                f"{a.model} {v}: quantize {t_quant:.0f} s; cosine min {cos.min():.4f} p5 "
                f"{np.percentile(cos, 5):.4f} mean {cos.mean():.4f}; top-10 overlap {overlap:.3f}; "
                f"160 photos fp32 {t_fp32:.1f} s, int8 {t_int8:.1f} s",
                flush=True,
            )


if __name__ == "__main__":
    main()
