"""Peak memory of `simd serve` answering uploads of real size (not collected by pytest).

    .venv/bin/python tests/bench/bench_upload.py [--model efficientnet-lite0] [--write]

Starts a real `simd serve` on a small library holding a 12 MP phone JPEG, then for each upload
(the 4 MB photo, the same padded to just under the 25 MB limit, as multipart and as raw body, and
a HEIC) resets the server's peak RSS (/proc/PID/clear_refs) and reports how far the peak rose above
the RSS it had before the request. `--write` records the table in docs/BENCHMARKS.md.
"""

import argparse
import io
import json
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[2]), str(Path(__file__).resolve().parents[1])]

import numpy as np  # noqa: E402
from benchutil import machine_info, write_section  # noqa: E402
from images import make_library, make_phone_photo  # noqa: E402
from serving import Served  # noqa: E402
from werkzeug.datastructures import FileStorage  # noqa: E402
from werkzeug.test import encode_multipart  # noqa: E402

MB = 1024 * 1024


def rss_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def post(url: str, body: bytes, content_type: str) -> int:
    req = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": content_type})
    with urllib.request.urlopen(req, timeout=300) as r:
        json.load(r)
        return r.status


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="efficientnet-lite0")
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        lib = tmp / "lib"
        make_library(lib, 8, size=(640, 480))
        photo = make_phone_photo(lib / "camera" / "PXL.jpg", seed=1)
        heic = make_phone_photo(tmp / "IMG.HEIC", seed=2, orientation=6)
        (tmp / "state").mkdir()
        served = Served(lib, tmp / "state", model=args.model)
        try:
            served.wait_idle(indexed=9, timeout=600)
            pid = served.proc.pid
            data = photo.read_bytes()
            big = data + np.random.default_rng(0).integers(0, 256, 25 * MB - 1 - len(data), np.uint8).tobytes()
            cases = []
            uploads = (
                ("12 MP JPEG, 3.8 MB", data, "p.jpg"),
                ("HEIC 12 MP", heic.read_bytes(), "p.heic"),
                ("JPEG padded to 25 MB - 1", big, "big.jpg"),
            )
            for label, payload, name in uploads:
                for how in ("multipart", "raw"):
                    if how == "multipart":
                        boundary, body = encode_multipart({"image": FileStorage(io.BytesIO(payload), name)})
                        ctype = f"multipart/form-data; boundary={boundary}"
                    else:
                        body, ctype = payload, "application/octet-stream"
                    post(served.url + "/api/similar", body, ctype)  # warm: first-use allocations
                    time.sleep(0.5)
                    before = rss_kb(pid, "VmRSS")
                    Path(f"/proc/{pid}/clear_refs").write_text("5")  # peak RSS := current RSS
                    t0 = time.perf_counter()
                    status = post(served.url + "/api/similar", body, ctype)
                    seconds = time.perf_counter() - t0
                    peak = rss_kb(pid, "VmHWM")
                    rise = (peak - before) / 1024
                    cases.append((label, how, len(payload) / MB, status, before / 1024, rise, seconds))
        finally:
            served.stop()
    info = machine_info()
    lines = [
        "## Uploads: peak memory",
        "",
        f"`python tests/bench/bench_upload.py --model {args.model}`: a real `simd serve`; each row resets the "
        "server's peak RSS, sends one upload (after one warm-up of the same), and reads the peak. "
        "Machine: " + ", ".join(f"{k} {v}" for k, v in info.items()) + ".",
        "",
        "| upload | as | MB | status | RSS before | peak rise | seconds |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, how, size, status, before, rise, seconds in cases:
        lines.append(f"| {label} | {how} | {size:.1f} | {status} | {before:.0f} MB | +{rise:.0f} MB | {seconds:.2f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.write:
        write_section(Path(__file__).resolve().parents[2] / "docs" / "BENCHMARKS.md", lines[0], text)


if __name__ == "__main__":
    main()
