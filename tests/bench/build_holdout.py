"""Build a holdout near-duplicate library: photos the public kit does not hold, edits it does not make.

    python ../shared/eval/build.py HELDOUT --split heldout      # the kit's other photos (180 groups)
    python tests/bench/build_holdout.py HELDOUT OUT [--seed 7]

The photos are the evaluation kit's ``heldout`` split (the same packages, other photos: none of them
is in the public kit). Each original gets the copies real libraries hold and the kit does not make:
thumbnails with long side 96/128/200/256 px saved with different resamplers and JPEG qualities,
off-centre crops of 45-70 %, letterboxed copies (white 1:1, black 9:16, blurred 1:1, as chat apps
and Instagram pad), a screenshot-like copy (scaled into a larger canvas under a UI bar) and a
re-save at 1280 px, quality 70. The heldout split's distractors stay in, alone.

Writes OUT/neardup/... and OUT/neardup.csv (the kit's format: path,kind,group,source), so
tune_descriptor.py and the kit's score.py read it as they read the kit. Deterministic for a seed.
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import shutil
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter

R = Image.Resampling


def thumb(im: Image.Image, side: int, resample: int) -> Image.Image:
    t = im.copy()
    t.thumbnail((side, side), resample)
    return t


def off_centre_crop(im: Image.Image, rng: random.Random, lo: float, hi: float) -> Image.Image:
    """A crop of lo..hi of each side, pushed towards a random corner (not centred)."""
    w, h = im.size
    s = rng.uniform(lo, hi)
    cw, ch = max(1, int(w * s)), max(1, int(h * s))
    fx, fy = rng.choice([0.1, 0.9]), rng.uniform(0.0, 1.0)
    x0, y0 = int((w - cw) * fx), int((h - ch) * fy)
    return im.crop((x0, y0, x0 + cw, y0 + ch))


def letterbox(im: Image.Image, aspect: float, fill: str, side: int) -> Image.Image:
    """``im`` fitted inside a canvas of width/height ``aspect`` whose long side is ``side``."""
    cw, ch = (side, round(side / aspect)) if aspect >= 1 else (round(side * aspect), side)
    scale = min(cw / im.width, ch / im.height)
    inner = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), R.LANCZOS)
    if fill == "blur":
        canvas = im.resize((cw, ch), R.BILINEAR).filter(ImageFilter.GaussianBlur(max(cw, ch) / 20))
    else:
        canvas = Image.new("RGB", (cw, ch), fill)
    canvas.paste(inner, ((cw - inner.width) // 2, (ch - inner.height) // 2))
    return canvas


def screenshot(im: Image.Image, rng: random.Random) -> Image.Image:
    """A phone screenshot of the photo: 1080x1920 canvas, status and tool bars, the photo fitted between."""
    W, H, top, bottom = 1080, 1920, 96, 160
    canvas = Image.new("RGB", (W, H), rng.choice(["#000000", "#ffffff", "#202124"]))
    draw = ImageDraw.Draw(canvas)
    draw.rectangle((0, 0, W, top), fill="#3c4043")
    draw.text((40, 30), "12:41", fill="white")
    draw.rectangle((0, H - bottom, W, H), fill="#f1f3f4")
    for i in range(4):
        draw.ellipse((120 + i * 240, H - 120, 200 + i * 240, H - 40), fill="#5f6368")
    scale = min(W / im.width, (H - top - bottom) / im.height)
    inner = im.resize((round(im.width * scale), round(im.height * scale)), R.BICUBIC)
    canvas.paste(inner, ((W - inner.width) // 2, top + (H - top - bottom - inner.height) // 2))
    return canvas


def variants(im: Image.Image, rng: random.Random) -> dict[str, tuple[Image.Image, int]]:
    """name -> (image, JPEG quality)."""
    return {
        "thumb96": (thumb(im, 96, R.LANCZOS), 75),
        "thumb128": (thumb(im, 128, R.BILINEAR), 85),
        "thumb200": (thumb(im, 200, R.BICUBIC), 70),
        "thumb256": (thumb(im, 256, R.BOX), 60),
        "crop45": (off_centre_crop(im, rng, 0.45, 0.55), 90),
        "crop70": (off_centre_crop(im, rng, 0.60, 0.70), 90),
        "pad_white_1x1": (letterbox(im, 1.0, "white", 1080), 85),
        "pad_black_9x16": (letterbox(im, 9 / 16, "black", 1280), 85),
        "pad_blur_1x1": (letterbox(im, 1.0, "blur", 1080), 85),
        "screenshot": (screenshot(im, rng), 90),
        "resave1280": (thumb(im, 1280, R.LANCZOS), 70),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("heldout", type=Path, help="the kit built with --split heldout")
    ap.add_argument("out", type=Path)
    ap.add_argument("--seed", type=int, default=7)
    a = ap.parse_args()
    rng = random.Random(a.seed)
    src, lib = a.heldout / "neardup", a.out / "neardup"
    with open(a.heldout / "neardup.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["kind"] in ("original", "distractor")]
    out_rows = []
    for r in sorted(rows, key=lambda r: r["path"]):
        dst = lib / r["path"]
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src / r["path"], dst)
        out_rows.append(r)
        if r["kind"] != "original":
            continue
        with Image.open(src / r["path"]) as im:
            im = im.convert("RGB")
            for name, (img, quality) in variants(im, rng).items():
                rel = f"{os.path.dirname(r['path'])}/{name}.jpg"
                img.save(lib / rel, "JPEG", quality=quality)
                out_rows.append({"path": rel, "kind": f"variant:{name}", "group": r["group"], "source": r["source"]})
    with open(a.out / "neardup.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["path", "kind", "group", "source"])
        w.writeheader()
        w.writerows(out_rows)
    if (a.heldout / "category").is_dir() and not (a.out / "category").exists():
        shutil.copytree(a.heldout / "category", a.out / "category")
        shutil.copyfile(a.heldout / "category.csv", a.out / "category.csv")
    groups = sum(r["kind"] == "original" for r in out_rows)
    print(f"holdout: {len(out_rows)} files, {groups} groups, {len(out_rows) - groups * 12} distractors -> {a.out}")


if __name__ == "__main__":
    main()
