"""Decode time of a 12 MP JPEG with and without draft mode (not collected by pytest).

    .venv/bin/python tests/bench/bench_decode.py [--repeat 7] [--side 448]

Prints the median CPU time of `simd.imaging.open_image` for two 4000x3000 JPEGs (quality 90), in
full and with `draft_size=(side, side)`, plus the machine: the smooth photo-like image of
tests/images.py (~1 bit/pixel) and the same with strong grain (~4 bits/pixel, closer to a camera
photo; entropy decoding, which draft mode cannot skip, costs more there).
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[2]), str(Path(__file__).resolve().parents[1])]

import numpy as np  # noqa: E402
import PIL  # noqa: E402
from benchutil import machine_info  # noqa: E402
from images import photo  # noqa: E402
from PIL import Image  # noqa: E402

from simd.imaging import open_image, thumbnail  # noqa: E402


def machine() -> str:
    info = machine_info(Pillow=PIL.__version__)
    return (
        f"nproc {os.cpu_count()} ({info['nproc']} usable), {info['CPU']}, RAM {info['RAM']}, "
        f"Python {info['Python']}, Pillow {info['Pillow']} "
        f"load average {info['load average at start'].split()[0]}"
    )


def timed(fn, repeat: int) -> tuple[float, object]:
    """Median CPU time of this process per call: decoding is single-threaded, and on a shared
    machine CPU time is far steadier than wall time (which the load average also inflates)."""
    times, result = [], None
    for _ in range(repeat):
        start = time.process_time()
        result = fn()
        times.append(time.process_time() - start)
    return statistics.median(times), result


def fit(im: Image.Image, side: int) -> Image.Image:
    """What an embedder does next: shrink so that the short side is `side`."""
    scale = side / min(im.size)
    return im.resize((round(im.width * scale), round(im.height * scale)), Image.Resampling.BILINEAR, reducing_gap=2.0)


def bench(path: Path, side: int, repeat: int) -> None:
    open_image(path)  # warm the page cache and Pillow's plugin registry
    draft_size = (side, side)
    full, out = timed(lambda: open_image(path), repeat)
    print(f"  open_image full:               {full * 1000:7.1f} ms -> {out.size}")
    draft, out = timed(lambda: open_image(path, draft_size=draft_size), repeat)
    print(f"  open_image draft {draft_size}:   {draft * 1000:7.1f} ms -> {out.size}   ({full / draft:.1f}x faster)")
    full_fit, out = timed(lambda: fit(open_image(path), side), repeat)
    print(f"  full + resize to {out.size}:  {full_fit * 1000:7.1f} ms")
    draft_fit, _ = timed(lambda: fit(open_image(path, draft_size=draft_size), side), repeat)
    print(f"  draft + resize to {out.size}: {draft_fit * 1000:7.1f} ms   ({full_fit / draft_fit:.1f}x faster)")
    thumb, size = timed(lambda: thumbnail(path, path.with_suffix(".thumb.jpg")), repeat)
    print(f"  thumbnail(max_side=256):       {thumb * 1000:7.1f} ms -> {size}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--side", type=int, default=448)
    args = parser.parse_args()
    print(machine())
    base = photo((4000, 3000), seed=1)
    grain = np.random.default_rng(1).normal(0, 14, (3000, 4000, 3)).astype(np.float32)
    grainy = Image.fromarray(np.clip(np.asarray(base, np.float32) + grain, 0, 255).astype(np.uint8))
    with tempfile.TemporaryDirectory() as tmp:
        for label, img in (("smooth", base), ("grainy", grainy)):
            path = Path(tmp) / f"{label}.jpg"
            img.save(path, "JPEG", quality=90)
            print(f"\n{label}: {path.stat().st_size / 1e6:.1f} MB JPEG, 4000x3000, median of {args.repeat}")
            bench(path, args.side, args.repeat)


if __name__ == "__main__":
    main()
