"""Deterministic, photo-like test images for simd's tests (pytest puts tests/ on sys.path, so
`from images import make_photo` works in any test).

A "photo" is a smooth two-colour gradient, low-frequency shading, a few filled shapes, a slight
blur and sensor-like noise, all drawn from `numpy.random.default_rng(seed)`: the same seed gives
the same pixels on every machine, different seeds give clearly different pictures, and
`make_variants` gives near-duplicates (resized, recompressed, cropped, ...) that a similarity
model should rank close to their source.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter

VARIANT_KINDS = ("resized", "recompressed", "cropped", "brighter", "flipped", "blurred")
_FORMAT_BY_SUFFIX = {
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".png": "PNG",
    ".webp": "WEBP",
    ".gif": "GIF",
    ".bmp": "BMP",
    ".tif": "TIFF",
    ".tiff": "TIFF",
}


def photo(size: tuple[int, int] = (320, 240), seed: int = 0) -> Image.Image:
    """An RGB photo-like image of `size` (width, height), fully determined by `seed`."""
    width, height = size
    rng = np.random.default_rng(seed)
    x = np.arange(width, dtype=np.float32)[None, :]  # float32 and broadcasting: 12 MP in ~1 s
    y = np.arange(height, dtype=np.float32)[:, None]
    angle = rng.uniform(0, 2 * np.pi)
    t = x / max(width, 1) * np.cos(angle) + y / max(height, 1) * np.sin(angle)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    c0, c1 = rng.uniform(0, 255, 3).astype(np.float32), rng.uniform(0, 255, 3).astype(np.float32)
    pixels = c0 + (c1 - c0) * t[..., None]
    for channel in range(3):  # soft shading, like light falling across a scene
        fx, fy, phase = rng.uniform(0.5, 3, 2).tolist() + [rng.uniform(0, 2 * np.pi)]
        pixels[..., channel] += 25 * np.sin(2 * np.pi * (fx * x / width + fy * y / height) + phase)
    img = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(3, 7))):
        x0, x1 = sorted(rng.uniform(-0.1, 1.1, 2) * width)
        y0, y1 = sorted(rng.uniform(-0.1, 1.1, 2) * height)
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1 + 2, y1 + 2), fill=colour)
    img = img.filter(ImageFilter.GaussianBlur(radius=max(width, height) / 400))
    noisy = np.asarray(img, np.float32) + 3 * rng.standard_normal((height, width, 3), dtype=np.float32)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8), "RGB")


def _format_for(path: Path, fmt: str | None) -> str:
    if fmt:
        return fmt.upper()
    try:
        return _FORMAT_BY_SUFFIX[path.suffix.lower()]
    except KeyError:
        raise ValueError(f"{path}: give fmt= for a file without an image extension") from None


def make_photo(
    path: str | Path, size: tuple[int, int] = (320, 240), seed: int = 0, fmt: str | None = None, **save_kw
) -> Path:
    """Write `photo(size, seed)` to `path` in `fmt` (default: from the extension; JPEG quality 90).
    Extra keywords go to `Image.save` (e.g. `exif=`). Parent directories are created."""
    path = Path(path)
    fmt = _format_for(path, fmt)
    if fmt == "JPEG":
        save_kw.setdefault("quality", 90)
    path.parent.mkdir(parents=True, exist_ok=True)
    photo(size, seed).save(path, fmt, **save_kw)
    return path


def make_variants(src: str | Path, out_dir: str | Path, kinds: tuple[str, ...] = VARIANT_KINDS) -> dict[str, Path]:
    """Near-duplicates of the image at `src`, written as `<stem>_<kind>.jpg` in `out_dir`.
    Kinds: resized (half size), recompressed (JPEG q=40), cropped (central 85%), brighter (+25%),
    flipped (mirror image), blurred (Gaussian radius 2)."""
    src, out_dir = Path(src), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with Image.open(src) as opened:
        img = opened.convert("RGB")
    width, height = img.size
    made = {
        "resized": lambda: img.resize((max(1, width // 2), max(1, height // 2)), Image.Resampling.LANCZOS),
        "recompressed": lambda: img,
        "cropped": lambda: img.crop(
            (width * 15 // 200, height * 15 // 200, width - width * 15 // 200, height - height * 15 // 200)
        ),
        "brighter": lambda: ImageEnhance.Brightness(img).enhance(1.25),
        "flipped": lambda: img.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
        "blurred": lambda: img.filter(ImageFilter.GaussianBlur(2)),
    }
    paths = {}
    for kind in kinds:
        path = out_dir / f"{src.stem}_{kind}.jpg"
        made[kind]().save(path, "JPEG", quality=40 if kind == "recompressed" else 90)
        paths[kind] = path
    return paths


def make_library(
    root: str | Path, count: int, size: tuple[int, int] = (160, 120), seed: int = 0, per_dir: int = 10
) -> list[Path]:
    """`count` distinct JPEG photos under `root`, `per_dir` to a subdirectory (`d00/img0000.jpg`, ...),
    with seeds `seed`, `seed + 1`, ... Returns their paths in order."""
    root = Path(root)
    return [make_photo(root / f"d{i // per_dir:02d}" / f"img{i:04d}.jpg", size, seed + i) for i in range(count)]


def make_header_only_png(path: str | Path, width: int, height: int) -> Path:
    """A PNG whose header declares `width` x `height` RGB pixels but holds almost no pixel data:
    a decompression-bomb stand-in that costs a few bytes on disk. Decoding it fully would allocate
    width * height * 3 bytes (and then fail as truncated)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    path = Path(path)
    path.write_bytes(data)
    return path


# -- what people have: 12 MP phone photos of 3-6 MB ----------------------------------------------

PHONE_SIZE = (4000, 3000)  # 12 MP, a phone camera's default
_PHONE_SOURCES = ("chelsea", "coffee", "astronaut", "rocket")  # real photos that scikit-image ships


def phone_photo(seed: int = 0, size: tuple[int, int] = PHONE_SIZE, grain: float = 8.0) -> Image.Image:
    """A 12 MP picture made from a real photo (scikit-image's samples, chosen by `seed`), cropped to
    the camera's aspect, upscaled and given sensor grain: encoded as JPEG q=92 it weighs 3.5-5 MB,
    like a phone's. Deterministic for a seed; different seeds give different scenes or grain."""
    from skimage import data  # the test extra; only these helpers need it

    source = Image.fromarray(getattr(data, _PHONE_SOURCES[seed % len(_PHONE_SOURCES)])()).convert("RGB")
    width, height = source.size
    aspect = size[0] / size[1]
    if width / height > aspect:  # crop the sides
        cw = round(height * aspect)
        source = source.crop(((width - cw) // 2, 0, (width - cw) // 2 + cw, height))
    else:
        ch = round(width / aspect)
        source = source.crop((0, (height - ch) // 2, width, (height - ch) // 2 + ch))
    pixels = np.asarray(source.resize(size, Image.Resampling.BICUBIC), np.float32)
    rng = np.random.default_rng(seed)
    pixels += grain * rng.standard_normal(pixels.shape, dtype=np.float32)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def phone_exif(orientation: int = 1) -> Image.Exif:
    """EXIF as a phone writes it: make, model, date, and the Orientation tag."""
    exif = Image.Exif()
    exif[0x010F] = "Google"  # Make
    exif[0x0110] = "Pixel 8"  # Model
    exif[0x0132] = "2026:06:01 12:00:00"  # DateTime
    exif[0x0112] = orientation
    return exif


def make_phone_photo(
    path: str | Path, seed: int = 0, fmt: str | None = None, orientation: int = 1, img: Image.Image | None = None
) -> Path:
    """Write a phone photo (`phone_photo(seed)`, or `img`) to `path` with the EXIF Orientation
    `orientation`: as JPEG (q=92: 3.5-5 MB) or, for `.heic`, as HEIF with pillow-heif's encoder
    (1.5-2 MB like an iPhone's; the fastest x265 preset keeps it to ~3 s a photo)."""
    path = Path(path)
    fmt = (fmt or ("HEIF" if path.suffix.lower() in (".heic", ".heif") else _format_for(path, None))).upper()
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "HEIF":
        import pillow_heif

        pillow_heif.register_heif_opener()
        img = img if img is not None else phone_photo(seed, grain=3.0)
        img.save(path, "HEIF", quality=60, enc_params={"preset": "ultrafast"}, exif=phone_exif(orientation).tobytes())
        return path
    img = img if img is not None else phone_photo(seed)
    img.save(path, fmt, quality=92, exif=phone_exif(orientation).tobytes())
    return path
