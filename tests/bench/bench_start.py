"""Start-up cost of the model: `Embedder.from_config` + one embedded photo, in a fresh process, on
ONNX Runtime (a cached converted model) and on TensorFlow, for both backbones (not collected by pytest).

    .venv/bin/python tests/bench/bench_start.py [--runs 3] [--resnet-weights FILE.h5]

ResNet50 uses the weights simd would use (Keras' cache) or ``--resnet-weights``; without either it
uses seeded random weights saved to a temporary .h5 (same network, same cost). The model cache is a
temporary directory, filled once before timing. Each measured process reports its wall time to the
first vector, its peak RSS (VmHWM) and whether TensorFlow was imported; its CPU time comes from wait4().
Prints a markdown table (medians of --runs) and the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from benchutil import machine_info  # noqa: E402

CHILD = """
import json, sys, time
t0 = time.perf_counter()
from simd.config import Config
from simd.embedder import Embedder
config = Config(json.loads(sys.argv[1])).validate()
emb = Embedder.from_config(config)
t1 = time.perf_counter()
vector = emb.embed_files([sys.argv[2]])[0]
t2 = time.perf_counter()
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"load_s": t1 - t0, "first_s": t2 - t1, "tensorflow": "tensorflow" in sys.modules,
                  "network": emb.network.describe(), "dim": int(vector.shape[0]), "rss_mb": hwm / 1024}))
"""


def run_child(config: dict, photo: Path) -> dict:
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, json.dumps(config), str(photo)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    out, err = proc.stdout.read(), proc.stderr.read()  # type: ignore[union-attr]
    if status != 0:
        raise SystemExit(f"child failed ({status}): {err[-2000:]}")
    result = json.loads(out.splitlines()[-1])
    # peak RSS is the child's own VmHWM: wait4's ru_maxrss also counts the parent's, folded in at exec
    result.update(wall_s=wall, cpu_s=usage.ru_utime + usage.ru_stime)
    return result


def resnet_weights(given: str | None, tmp: Path) -> tuple[Path, str]:
    if given:
        return Path(given), f"file {given}"
    from simd.backbones import resnet

    status = resnet.resolve_weights()
    if status.path is not None:
        return status.path, "ImageNet (Keras cache)"
    path = tmp / "random.weights.h5"
    subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, keras; from simd import backbones as bb; bb.import_tf(); keras.utils.set_random_seed(0);"
            " bb.random_resnet50().feature_model.save_weights(sys.argv[1])",
            str(path),
        ],
        cwd=REPO,
        check=True,
        capture_output=True,
    )
    return path, "random, seeded (no ImageNet file here)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--resnet-weights")
    args = ap.parse_args()
    import onnxruntime
    from images import make_phone_photo

    info = machine_info(onnxruntime=onnxruntime.__version__)
    with tempfile.TemporaryDirectory(prefix="simd-bench-start-") as d:
        tmp = Path(d)
        photo = make_phone_photo(tmp / "phone.jpg", seed=1)
        weights, weights_note = resnet_weights(args.resnet_weights, tmp)
        cases = [("efficientnet-lite0", None), ("resnet50", weights)]
        rows = []
        for model, w in cases:
            for runtime in ("onnxruntime", "tensorflow"):
                config = {"model": model, "runtime": runtime, "model_cache": str(tmp / "cache")}
                config.update({"weights_download": False} | ({"weights": str(w)} if w else {}))
                if runtime == "onnxruntime":
                    warm = run_child(config, photo)  # converts and caches (not timed)
                    print(f"# {model}: first start converted in {warm['wall_s']:.1f} s", file=sys.stderr)
                runs = [run_child(config, photo) for _ in range(args.runs)]
                assert all(r["tensorflow"] == (runtime == "tensorflow") for r in runs), runs
                med = {
                    k: statistics.median(r[k] for r in runs) for k in ("wall_s", "cpu_s", "rss_mb", "load_s", "first_s")
                }
                rows.append((model, runtime, runs[0]["network"], med))
                print(f"# {model} {runtime}: {med}", file=sys.stderr)
    print(f"Start-up: `Embedder.from_config` + one 12 MP phone JPEG, fresh process, median of {args.runs}.")
    print(f"ResNet50 weights: {weights_note}.\n")
    print("| backbone | runtime | wall s | CPU s | peak RSS MB | load s | first vector s | TF imported |")
    print("|---|---|---:|---:|---:|---:|---:|---|")
    for model, runtime, network, m in rows:
        print(
            f"| {model} | {network.split(' (')[0]} | {m['wall_s']:.1f} | {m['cpu_s']:.1f} | {m['rss_mb']:.0f} | "
            f"{m['load_s']:.1f} | {m['first_s']:.2f} | {'yes' if runtime == 'tensorflow' else 'no'} |"
        )
    cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model_name = next((line.split(":", 1)[1].strip() for line in cpu.splitlines() if "Model name" in line), "?")
    print(f"\nMachine: {model_name}; " + "; ".join(f"{k} {v}" for k, v in info.items()))
    print(f"Load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
