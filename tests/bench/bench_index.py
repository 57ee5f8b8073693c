"""Indexing end to end: `simd index` on 12 MP phone photos and on sub-megapixel photos, against the
network alone and against the original method's loop, in one run (not collected by pytest).

    .venv/bin/python tests/bench/bench_index.py                       # N = 48 12 MP + 96 sub-MP
    .venv/bin/python tests/bench/bench_index.py --large 8 --small 16  # a quick look
    .venv/bin/python tests/bench/bench_index.py --runtime onnxruntime,onnxruntime-int8 --write

For each backbone (ResNet50 with seeded random weights saved to an .h5 and loaded through
`load_backbone("resnet50", weights=...)`, as `simd index` loads them; EfficientNet-Lite0 with its
real weights) and each folder it measures, every measurement in its own process:

(a) *original*: the seed notebook's loop, one image at a time: `keras.utils.load_img(path,
    target_size=(224, 224))`, `img_to_array`, the backbone's preprocessing, `model.predict`;
(b) *model-only*: the embedder's network call (`Embedder._run(size, batch)`, whichever runtime the
    embedder uses) on uint8 batches of 32 already prepared from the folder's photos: the ceiling;
    *onnxruntime-int8*: the int8 model (`precision = "int8"`), calibrated on the folder's photos
    as `simd index` calibrates on its library (made once, outside the timing, and cached);
(c) *simd index*: the real CLI (`python -m simd index LIB --json`) with a fresh state dir. Its
    summary's `seconds` is the run itself (scan, hash, decode, network, commits), without the
    interpreter start, TensorFlow's import and the model load; those are measured by a second
    `simd index` on the same state dir (nothing to do), whose CPU time is subtracted too.

img/s, CPU ms per image (the child's user + system time, `os.wait4`), peak RSS (the child's
ru_maxrss). Photos are generated once (deterministic) and cached in `--data` (default: a folder in
the system's temp dir). `--write` replaces the section in docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from benchutil import machine_info, write_section  # noqa: E402

HEADING = "## Indexing end to end"
BACKBONES = ("resnet50", "efficientnet-lite0")
BATCH = 32


# -- photos ---------------------------------------------------------------------------------------


def make_folder(folder: Path, count: int, kind: str) -> list[Path]:
    """`count` JPEGs in `folder`: "large" = 12 MP phone photos (tests/images.py, 3.7-3.9 MB with
    grain and phone EXIF), "small" = 800x600 photos of the same scenes (q=90, ~150 KB). Files
    already there (same name) are kept: the generation is deterministic."""
    from images import make_phone_photo, phone_exif, phone_photo

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"IMG_{i:04d}.jpg"
        if not path.exists():
            tmp = path.with_name(f".{path.name}.tmp")
            if kind == "large":
                make_phone_photo(tmp, seed=i, fmt="JPEG")
            else:
                img = phone_photo(seed=i, size=(800, 600), grain=4.0)
                img.save(tmp, "JPEG", quality=90, exif=phone_exif().tobytes())
            os.replace(tmp, path)
        paths.append(path)
    return paths


def resnet_weights(data: Path) -> Path:
    """Seeded random ResNet50 weights in an .h5 file (ImageNet's cannot be downloaded here)."""
    path = data / "resnet50-random-seed0.weights.h5"
    if not path.exists():
        import keras

        import simd.backbones as bb

        keras.utils.set_random_seed(0)
        backbone = bb.random_resnet50()
        tmp = path.with_name(".tmp." + path.name)
        backbone.feature_model.save_weights(tmp)
        os.replace(tmp, path)
    return path


# -- children: one measurement each ---------------------------------------------------------------


def _load(backbone: str, weights: str | None):
    import simd.backbones as bb

    bb.import_tf()
    return bb.load_backbone(backbone, weights=weights, allow_download=False)


def child_original(args) -> dict:
    """(a) the seed notebook's loop over the folder, one predict per image."""
    import keras
    import numpy as np

    backbone = _load(args.backbone, args.weights)
    paths = sorted(Path(args.folder).glob("*.jpg"))[: args.count]
    size = backbone.input_size

    def one(p):
        img = keras.utils.load_img(p, target_size=(size, size))
        x = keras.utils.img_to_array(img)[None]
        x = np.asarray(backbone.preprocess(x, "seed"))
        f = backbone.feature_model.predict(x, verbose=0)
        return f.mean(axis=(1, 2))

    one(paths[0])  # predict builds its function on the first call
    wall, cpu = time.perf_counter(), time.process_time()
    for p in paths:
        one(p)
    return {"n": len(paths), "wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu}


def child_model(args) -> dict:
    """(b) the embedder's network call alone on prepared uint8 batches of 32."""
    import numpy as np

    from simd.embedder import Embedder

    backbone = _load(args.backbone, args.weights)
    emb = Embedder(backbone, batch_size=BATCH)  # TensorFlow's tf.function
    if args.runtime.startswith("onnxruntime"):  # the same function converted (or taken from the cache)
        from simd.backbones.onnx import open_network
        from simd.backbones.quantize import calibration

        int8 = calibration(args.runtime.partition("-")[2] or "fp32", args.folder)
        network = open_network(
            backbone.id,
            backbone.classes,
            emb.descriptor,
            emb.sizes,
            backbone.weights_file,
            convert_from=emb.network,
            int8=int8 and int8.using(emb._decode_file),
        )
        if network is not None and int8 and not network.id_suffix:
            raise SystemExit("the int8 model could not be made")
        if network is None:
            raise SystemExit("ONNX Runtime could not run this network")
        emb.network = network
    paths = sorted(Path(args.folder).glob("*.jpg"))[:BATCH]
    prepared = [emb._decode_file(p) for p in paths]
    prepared = (prepared * BATCH)[:BATCH]  # a full batch even from a folder of fewer photos
    batches = [np.stack([p[s] for p in prepared]) for s in range(len(emb.sizes))]
    first = time.perf_counter()
    for size, batch in zip(emb.sizes, batches, strict=True):
        emb._run(size, batch)  # build (trace) and warm up, outside the timing
    first = time.perf_counter() - first
    rounds = max(2, math.ceil(args.count / BATCH))
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(rounds):
        for size, batch in zip(emb.sizes, batches, strict=True):
            emb._run(size, batch)
    wall = time.perf_counter() - wall
    # building the function: the first call's time beyond what a call takes once built
    build = max(0.0, first - wall / rounds)
    return {"n": rounds * BATCH, "wall": wall, "cpu": time.process_time() - cpu, "first_call": first, "build": build}


# -- the parent -----------------------------------------------------------------------------------


def run_measured(argv: list[str], env: dict | None = None) -> tuple[dict | str, float, float, float]:
    """Run a child process, reaped with os.wait4 so its own rusage is known; (its last stdout line
    parsed as JSON, or its stdout, wall s, CPU s (user + system), peak RSS MB)."""
    t = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=ROOT)
    # read both pipes without reaping: communicate() would wait() and lose the rusage
    import threading

    chunks: dict[str, bytes] = {}

    def drain(name, pipe):
        chunks[name] = pipe.read()

    readers = [threading.Thread(target=drain, args=(n, p)) for n, p in (("out", proc.stdout), ("err", proc.stderr))]
    for r in readers:
        r.start()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    proc.returncode = os.waitstatus_to_exitcode(status)
    for r in readers:
        r.join()
    out, err = chunks["out"].decode(errors="replace"), chunks["err"].decode(errors="replace")
    if proc.returncode != 0:
        sys.stderr.write(err[-4000:])
        raise SystemExit(f"exit {proc.returncode}: {' '.join(argv[1:6])}")
    lines = out.strip().splitlines()
    try:
        result: dict | str = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        result = out
    return result, wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def measure(args, backbone: str, weights: str | None, folder: Path, count: int, tmp: Path, runtime: str) -> dict:
    py = sys.executable
    me = str(Path(__file__).resolve())
    common = ["--backbone", backbone, "--folder", str(folder), "--count", str(count), "--runtime", runtime]
    if weights:
        common += ["--weights", weights]
    row: dict = {"backbone": backbone, "folder": folder.name, "n": count, "runtime": runtime}

    if not args.no_original and runtime == args.runtime.split(",")[0]:  # once per backbone and folder
        n_orig = min(count, args.original)
        res, _, cpu, rss = run_measured(
            [py, me, "--child", "original", *common[:4], "--count", str(n_orig), *common[6:]]
        )
        assert isinstance(res, dict)
        row["original"] = {"ips": res["n"] / res["wall"], "cpu_ms": 1000 * res["cpu"] / res["n"], "rss": rss}
        print(f"  (a) original loop: {row['original']['ips']:.2f} img/s", flush=True)

    res, _, cpu, rss = run_measured([py, me, "--child", "model", *common])
    assert isinstance(res, dict)
    row["model"] = {
        "ips": res["n"] / res["wall"],
        "cpu_ms": 1000 * res["cpu"] / res["n"],
        "rss": rss,
        "first_call": res["first_call"],
        "build": res["build"],
    }
    print(f"  (b) model-only: {row['model']['ips']:.2f} img/s", flush=True)

    # (c) the real CLI, a fresh state dir; then once more with nothing to do (start-up alone)
    state = tmp / f"state-{backbone}-{folder.name}-{time.monotonic_ns()}"
    config = tmp / f"config-{backbone}-{runtime}.toml"
    lines = [f'model = "{backbone}"', "weights_download = false"]
    if weights:
        lines.append(f'weights = "{weights}"')
    lines.append(f'runtime = "{runtime.partition("-")[0]}"')
    lines.append(f'precision = "{runtime.partition("-")[2] or "fp32"}"')
    config.write_text("\n".join(lines) + "\n")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop("SIMD_CONFIG", None)
    cli = [py, "-m", "simd", "index", str(folder), "--state-dir", str(state), "--config", str(config), "--json"]
    cli += ["--log-level", "WARNING"]
    res, wall, cpu, rss = run_measured(cli, env)
    assert isinstance(res, dict), res
    if res.get("embedded") != count:
        raise SystemExit(f"simd index embedded {res.get('embedded')} of {count}: {res}")
    idle, idle_wall, idle_cpu, _ = run_measured(cli, env)
    run_s = float(res["seconds"])
    row["index"] = {
        "ips": count / run_s,
        "cpu_ms": 1000 * max(cpu - idle_cpu, 0.0) / count,
        "rss": rss,
        "wall": wall,
        "run_s": run_s,
        "startup_s": idle_wall - float(idle["seconds"]) if isinstance(idle, dict) else idle_wall,
        "wall_ips": count / wall,
        # the run builds the network's function on its first batch, as (b) did outside its timing
        "ips_built": count / max(run_s - row["model"]["build"], 1e-3),
    }
    print(
        f"  (c) simd index: {row['index']['ips']:.2f} img/s in its run ({run_s:.1f} s; whole command "
        f"{wall:.1f} s, start-up {row['index']['startup_s']:.1f} s)",
        flush=True,
    )
    return row


def versions() -> dict[str, str]:
    out: dict[str, str] = {}  # Python: benchutil.machine_info
    for name, dist in (
        ("TensorFlow", "tensorflow-cpu"),
        ("TensorFlow ", "tensorflow"),
        ("Keras", "keras"),
        ("ONNX Runtime", "onnxruntime"),
        ("Pillow", "pillow"),
        ("NumPy", "numpy"),
    ):
        try:
            out.setdefault(name.strip(), importlib.metadata.version(dist))
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def render(args, rows: list[dict], info: dict, load_before, load_after, started: str, minutes: float) -> str:
    shown, skip = [], False
    for a in sys.argv[1:]:
        if not skip and a != "--write" and not a.startswith("--data"):
            shown.append(a)
        skip = a == "--data"
    cmd = "python tests/bench/bench_index.py " + " ".join(shown)
    lines = [
        HEADING,
        "",
        f"Measured {started} with `{cmd.strip()}` ({minutes:.0f} min, every measurement in its own process).",
        "",
        "Machine: "
        + "; ".join(f"{k}: {v}" for k, v in info.items())
        + f"; load average before: {' '.join(f'{x:.2f}' for x in load_before)}, "
        f"after: {' '.join(f'{x:.2f}' for x in load_after)}.",
        "",
        f"Photos: *12 MP*: {args.large} phone JPEGs 4000x3000 (`tests/images.py` `make_phone_photo`, 3.7-3.9 MB, "
        f"grain, phone EXIF); *800x600*: {args.small} JPEGs of the same scenes. ResNet50: seeded random "
        "weights from an .h5 (same speed as ImageNet's); EfficientNet-Lite0: its real weights. "
        f"Runtimes: {args.runtime}.",
        "",
        "*original*: `keras.utils.load_img(target_size=(224, 224))` + preprocess + `model.predict`, one "
        f"image at a time (first {args.original} photos). *model-only*: `Embedder._run` on prepared uint8 "
        "batches of 32 (after one untimed call that builds the function). *simd index*: the CLI's own run "
        "(`--json` `seconds`: scan, hash, decode, network, commits; it includes building the function "
        "on the first batch); *start-up* (interpreter, imports, model load) is apart. *built*: the same "
        "run less the function's build time measured in (b) (*build s*: the first call's time beyond a "
        "built call's), as in a long run where it is spread over many photos. CPU ms/img: the "
        "process's user + system time per image (for simd index: minus a second, idle `simd index`; "
        "it includes the build).",
        "",
        "| backbone | photos | runtime | original img/s | model-only img/s | simd index img/s | index / model | "
        "built: index / model | index / original | CPU ms/img original / model / index | "
        "peak RSS MB original / model / index | start-up s | build s |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---|---|---:|---:|",
    ]
    originals = {(r["backbone"], r["label"]): r["original"] for r in rows if r.get("original")}
    for r in rows:
        o, m, x = originals.get((r["backbone"], r["label"])), r["model"], r["index"]
        lines.append(
            f"| {r['backbone']} | {r['n']} x {r['label']} | {r['runtime']} | {o['ips']:.2f} | "
            if o
            else f"| {r['backbone']} | {r['n']} x {r['label']} | {r['runtime']} |  | "
        )
        lines[-1] += (
            f"{m['ips']:.2f} | {x['ips']:.2f} | {x['ips'] / m['ips']:.2f} | **{x['ips_built'] / m['ips']:.2f}** | "
            + (f"{x['ips'] / o['ips']:.1f}x | " if o else " | ")
            + (f"{o['cpu_ms']:.0f} / " if o else "- / ")
            + f"{m['cpu_ms']:.0f} / {x['cpu_ms']:.0f} | "
            + (f"{o['rss']:.0f} / " if o else "- / ")
            + f"{m['rss']:.0f} / {x['rss']:.0f} | {x['startup_s']:.1f} | {m['build']:.1f} |"
        )
    lines.append("")
    tf = {(r["backbone"], r["label"]): r["model"] for r in rows if r["runtime"] == "tensorflow"}
    for r in rows:
        base = tf.get((r["backbone"], r["label"]))
        if r["runtime"] != "tensorflow" and base:
            lines.append(
                f"- {r['backbone']}, {r['label']}: {r['runtime']} model-only is "
                f"**{r['model']['ips'] / base['ips']:.2f}x** TensorFlow's tf.function "
                f"(CPU ms/img {r['model']['cpu_ms']:.0f} against {base['cpu_ms']:.0f})."
            )
    fp32 = {(r["backbone"], r["label"]): r for r in rows if r["runtime"] == "onnxruntime"}
    for r in rows:
        base = fp32.get((r["backbone"], r["label"]))
        if r["runtime"] == "onnxruntime-int8" and base:
            lines.append(
                f"- {r['backbone']}, {r['label']}: int8 against onnxruntime fp32: model-only "
                f"**{r['model']['ips'] / base['model']['ips']:.2f}x**, simd index "
                f"{r['index']['ips'] / base['index']['ips']:.2f}x."
            )
    lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--large", type=int, default=48, help="12 MP JPEGs (default 48)")
    ap.add_argument("--small", type=int, default=96, help="800x600 JPEGs (default 96)")
    ap.add_argument("--original", type=int, default=16, help="photos for the original loop (default 16)")
    ap.add_argument("--no-original", action="store_true", help="skip (a)")
    ap.add_argument("--backbones", default=",".join(BACKBONES))
    ap.add_argument(
        "--runtime",
        default="tensorflow,onnxruntime,onnxruntime-int8",
        help="runtimes, comma-separated (default all three; onnxruntime-int8: precision int8)",
    )
    ap.add_argument("--data", default=str(Path(tempfile.gettempdir()) / "simd-bench-index"), help="photo cache")
    ap.add_argument("--write", action="store_true", help=f"replace '{HEADING}' in docs/BENCHMARKS.md")
    # one measurement in a child process
    ap.add_argument("--child", choices=("original", "model"), help=argparse.SUPPRESS)
    ap.add_argument("--backbone", help=argparse.SUPPRESS)
    ap.add_argument("--folder", help=argparse.SUPPRESS)
    ap.add_argument("--count", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--weights", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if args.child:
        result = child_original(args) if args.child == "original" else child_model(args)
        print(json.dumps(result))
        return 0

    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    t0 = time.perf_counter()
    data = Path(args.data)
    folders = []
    for kind, count, label in (("large", args.large, "12 MP"), ("small", args.small, "800x600")):
        if count:
            t = time.perf_counter()
            folder = data / f"{kind}-{count}"
            make_folder(folder, count, kind)
            mb = sum(p.stat().st_size for p in folder.glob("*.jpg")) / 1e6
            print(f"{count} {label} JPEGs in {folder} ({mb:.0f} MB; {time.perf_counter() - t:.0f} s)", flush=True)
            folders.append((folder, count, label))
    info = machine_info(**versions())
    load_before = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory(prefix="simd-bench-index-") as tmp:
        for backbone in args.backbones.split(","):
            weights = str(resnet_weights(data)) if backbone == "resnet50" else None
            for folder, count, label in folders:
                for runtime in args.runtime.split(","):
                    print(f"{backbone}, {count} x {label}, {runtime}:", flush=True)
                    row = measure(args, backbone, weights, folder, count, Path(tmp), runtime)
                    row["label"] = label
                    rows.append(row)
    load_after = os.getloadavg()
    text = render(args, rows, info, load_before, load_after, started, (time.perf_counter() - t0) / 60)
    print()
    print(text)
    if args.write:
        write_section(ROOT / "docs" / "BENCHMARKS.md", HEADING, text)
        print("wrote docs/BENCHMARKS.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
