"""Run the public evaluation kit against fresh `simd serve` processes, baseline and default, in one run.

    python tests/bench/run_eval.py [--kit /tmp/simd-eval] [--model efficientnet-lite0]
                                   [--descriptors seed,default] [--out docs/quality-run.json]
    python tests/bench/run_eval.py --descriptors default@tensorflow,default@onnxruntime   # runtimes side by side
    python tests/bench/run_eval.py --descriptors seed,default,efficientnet-lite2/default,default^/work/main
    python tests/bench/run_eval.py --descriptors default@onnxruntime,default@onnxruntime-int8   # precisions

A variant is ``[model/]descriptor[@runtime[-precision]][^tree]``: ``model`` overrides --model, ``tree`` runs
another checkout's simd (e.g. the previous default, from main) on the same machine in the same run.

For each descriptor: index each kit library with `simd index --json` (indexing throughput, images/s),
then start `simd serve` on it (the index is already up to date) and score it with the kit's own
score.py through the HTTP API. Prints a Markdown table of recall@10 per edit kind and precision@10
per label, side by side, for docs/QUALITY.md.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
EVAL = REPO.parent / "shared" / "eval"
SIMD = [sys.executable, "-m", "simd"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_task(kit: Path, task: str, variant: str, model: str, work: Path) -> dict:
    """`variant`: [model/]descriptor[@runtime[-precision]][^tree] (see the module's doc)."""
    spec, _, tree = variant.partition("^")
    if "/" in spec:
        model, spec = spec.split("/", 1)
    descriptor, _, runtime = spec.partition("@")
    runtime, _, precision = runtime.partition("-")
    env = {**os.environ, "SIMD_DESCRIPTOR": descriptor, "SIMD_WEIGHTS_DOWNLOAD": "0", "TF_CPP_MIN_LOG_LEVEL": "3"}
    if runtime:
        env["SIMD_RUNTIME"] = runtime
    env["SIMD_PRECISION"] = precision or "fp32"
    env["PYTHONPATH"] = cwd = tree or str(REPO)  # `python -m` puts the working directory first
    state = work / f"{variant.replace('/', '_').replace('^', '_')}-{task}"
    library = kit / task
    t = time.perf_counter()
    out = subprocess.run(
        [*SIMD, "index", str(library), "--state-dir", str(state), "--model", model, "--json"],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        check=True,
    )
    summary = json.loads(out.stdout)
    summary["wall_s"] = round(time.perf_counter() - t, 1)
    port = free_port()
    log = open(state.with_suffix(".log"), "w")
    server = subprocess.Popen(
        [*SIMD, "serve", str(library), "--state-dir", str(state), "--model", model, "--port", str(port)],
        env=env,
        cwd=cwd,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        result_file = state.with_suffix(".json")
        subprocess.run(
            [
                sys.executable,
                str(EVAL / "score.py"),
                str(kit),
                "--task",
                task,
                "--url",
                f"http://127.0.0.1:{port}",
                "--json",
                str(result_file),
                "--timeout",
                "900",
            ],
            check=True,
        )
        result = json.loads(result_file.read_text())
    finally:
        server.terminate()
        server.wait(30)
        log.close()
    result["index"] = summary
    return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kit", type=Path, default=Path("/tmp/simd-eval"))
    ap.add_argument("--model", default="efficientnet-lite0")
    ap.add_argument("--descriptors", default="seed,default")
    ap.add_argument("--out", type=Path, help="write all results as JSON here")
    ap.add_argument("--keep", type=Path, help="keep the state dirs (indexes) here, e.g. for calibrate.py")
    a = ap.parse_args()
    if not (a.kit / "neardup.csv").exists():
        subprocess.run([sys.executable, str(EVAL / "build.py"), str(a.kit)], check=True)
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="simd-eval-") as tmp:
        work = a.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        for d in a.descriptors.split(","):
            results[d] = {task: run_task(a.kit, task, d, a.model, work) for task in ("neardup", "category")}
    if a.out:
        a.out.write_text(json.dumps(results, indent=1))
    names = list(results)
    print(f"\n| {a.model} | " + " | ".join(names) + " |\n|---|" + "---|" * len(names))
    first = results[names[0]]
    rows = [("near-duplicate recall@10", lambda r: r["neardup"]["recall"])]
    rows += [(f"  {k}", lambda r, k=k: r["neardup"]["per_kind"][k]) for k in first["neardup"]["per_kind"]]
    rows += [("category precision@10", lambda r: r["category"]["precision"])]
    rows += [(f"  {k}", lambda r, k=k: r["category"]["per_label"][k]) for k in first["category"]["per_label"]]
    for label, get in rows:
        print(f"| {label} | " + " | ".join(f"{get(results[n]):.3f}" for n in names) + " |")
    for task in ("neardup", "category"):
        print(
            f"| indexing {task}, images/s (model calls/s) | "
            + " | ".join(f"{results[n][task]['index']['images_per_s']:.1f}" for n in names)
            + " |"
        )
    print(
        "| query latency p50 ms (category) | "
        + " | ".join(f"{results[n]['category']['latency_ms_p50']}" for n in names)
        + " |"
    )


if __name__ == "__main__":
    main()
