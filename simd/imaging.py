"""Safe image decoding: every file in a library is untrusted input.

`open_image` turns a path, bytes or a file object into a loaded RGB `PIL.Image.Image`, or raises
`ImageError(name, reason)`; it never lets a Pillow exception or warning escape and refuses
oversized images before any pixel buffer is allocated. `thumbnail` writes a JPEG thumbnail
atomically. Pillow's globals (`MAX_IMAGE_PIXELS`, `LOAD_TRUNCATED_IMAGES`) are left alone, so other
callers in the process keep Pillow's defaults.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import os
import stat
import tempfile
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, cast

import numpy as np
from PIL import Image, features

from simd.budget import (
    DECODE_SECONDS,
    WHOLE_FILE_BYTES,
    Budget,
    BudgetReader,
    OverBudget,
    Stopped,
    bytes_for_pixels,
    megabytes,
)
from simd.config import MAX_IMAGE_PIXELS
from simd.errors import ImageError
from simd.formats import (
    HEAD_BYTES,
    RAW_UNSUPPORTED,
    camera_raw_kind,
    describe_other,
    sniff_format,
    webp_declared_size,
)

log = logging.getLogger(__name__)

DEFAULT_MAX_PIXELS = MAX_IMAGE_PIXELS
_WHITE = (255, 255, 255)

# EXIF Orientation -> the transpose that makes the pixels upright (as ImageOps.exif_transpose).
_ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


@functools.cache
def _plugin_available(fmt: str) -> bool:
    """HEIF/AVIF need optional plugins, imported on first use only (keeps `import simd` light)."""
    try:
        if fmt == "heif":
            import pillow_heif

            pillow_heif.register_heif_opener()
        elif fmt == "avif" and not features.check_module("avif"):  # built into recent Pillow wheels
            import pillow_avif  # noqa: F401 - registers on import
    except ImportError:
        return False
    return True


def _check_pixels(name: str, size: tuple[int, int], max_pixels: int) -> None:
    width, height = size
    if width <= 0 or height <= 0:
        raise ImageError(name, f"corrupt image (size {width}x{height})")
    if width * height > max_pixels:
        raise ImageError(
            name,
            f"too many pixels: {width}x{height} = {width * height:,}, over the limit of {max_pixels:,} "
            "(refused before decoding as a possible decompression bomb)",
        )


# While decoding, Pillow warns instead of failing about things we handle ourselves: a
# DecompressionBombWarning above its global limit (below our default `max_pixels`, which we enforce
# ourselves) and UserWarnings such as "Corrupt EXIF data" (we then ignore the EXIF). Left alone they
# would print to stderr without a file name, and under `-W error` fail images that production
# accepts. They are silenced locally, without touching Pillow's globals. But catch_warnings() is
# process-wide and not thread-safe: overlapping decode threads would restore each other's filters.
# So one shared catch_warnings() stays entered while any decode runs (reference count under a lock).
# Pillow's DecompressionBombError (above twice its global limit) still raises and is converted.
_quiet_lock = threading.Lock()
_quiet_users = 0
_quiet_cm: warnings.catch_warnings | None = None


@contextlib.contextmanager
def _pillow_warnings_silenced() -> Iterator[None]:
    global _quiet_users, _quiet_cm
    with _quiet_lock:
        if _quiet_users == 0:
            _quiet_cm = warnings.catch_warnings()
            _quiet_cm.__enter__()
            # RuntimeWarning includes DecompressionBombWarning; DeprecationWarnings still show.
            warnings.filterwarnings("ignore", category=RuntimeWarning, module=r"PIL\.")
            warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")
        _quiet_users += 1
    try:
        yield
    finally:
        with _quiet_lock:
            _quiet_users -= 1
            if _quiet_users == 0 and _quiet_cm is not None:
                _quiet_cm.__exit__(None, None, None)
                _quiet_cm = None


@contextlib.contextmanager
def _open_source(
    source: str | os.PathLike | bytes | bytearray | memoryview | BinaryIO, name: str | None
) -> Iterator[tuple[BinaryIO, str]]:
    """Yield (seekable binary file at offset 0, name for messages). Paths are opened, not read:
    Pillow reads lazily, so a huge file costs nothing before the header checks."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        yield io.BytesIO(source), name or "upload"
        return
    if isinstance(source, (str, os.PathLike)):
        name = name or os.fspath(source)
        try:
            # O_NONBLOCK: opening a FIFO must not wait for a writer; fstat then refuses it.
            fd = os.open(source, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            raise ImageError(name, "file not found") from None
        except PermissionError:
            raise ImageError(name, "permission denied") from None
        except OSError as e:
            raise ImageError(name, f"cannot open file ({e.strerror or e})") from None
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):  # a device or FIFO could block or never end
            os.close(fd)
            raise ImageError(name, "is a directory, not a file" if stat.S_ISDIR(mode) else "not a regular file")
        with open(fd, "rb") as fp:  # closed after the pixels are loaded
            yield fp, name
        return
    file_name = getattr(source, "name", None)
    name = name or (os.fspath(file_name) if isinstance(file_name, (str, os.PathLike)) else "upload")
    try:
        source.seek(0)  # Pillow always reads an image from offset 0 of a file object
    except (AttributeError, OSError, io.UnsupportedOperation):
        # A stream (e.g. a socket): Pillow would buffer it whole anyway; its size is the caller's
        # business (the web layer caps uploads with 413).
        yield io.BytesIO(source.read()), name
        return
    yield source, name


def open_image(
    source: str | os.PathLike | bytes | bytearray | memoryview | BinaryIO,
    *,
    name: str | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    draft_size: tuple[int, int] | None = None,
    apply_exif: bool = True,
    budget: Budget | None = None,
) -> Image.Image:
    """Decode an allowed image into a loaded, upright RGB image, or raise ImageError.

    `draft_size=(w, h)` lets JPEGs decode at a reduced scale (1/2, 1/4 or 1/8) that is still at
    least w x h -- about 4x faster for a 12 MP photo when the caller only needs ~448 px.
    `budget` (default: `DECODE_SECONDS`, no stop event) bounds the time, and the bytes read are
    bounded by the declared pixel size (`simd.budget`): over either, ImageError ("timed out ...",
    "too large for its pixel size ..."); its stop event set, `budget.Stopped`.
    """
    with _open_source(source, name) as (fp, name):
        reader = BudgetReader(fp, budget or Budget(DECODE_SECONDS, what="decoding"))
        with _decoding(name, reader) as (fmt, head):
            if fmt == "webp" and (declared := webp_declared_size(head)):
                _check_pixels(name, declared, max_pixels)  # before Pillow allocates the canvas
            img = Image.open(cast(BinaryIO, reader), formats=[fmt.upper()])
            _check_pixels(name, img.size, max_pixels)
            width, height = img.size
            most = bytes_for_pixels(width, height)
            reader.allow(most, f"too large for its pixel size: over {megabytes(most)} for a {width}x{height} image")
            if draft_size and img.format in ("JPEG", "MPO"):
                w, h = draft_size
                if apply_exif and _orientation(img, name) in (5, 6, 7, 8):  # stored sideways: swap
                    w, h = h, w
                img.draft("RGB", (w, h))
            img.load()  # the first frame only, for GIF/TIFF/WebP animations
            # after load: PNG may keep EXIF after the pixels
            orientation = _orientation(img, name) if apply_exif else 1
            rgb = to_rgb(img)
    if orientation in _ORIENTATION:
        rgb = rgb.transpose(_ORIENTATION[orientation])
    return rgb


def check_file_size(path: str | os.PathLike, *, budget: Budget | None = None) -> None:
    """Refuse, before it is hashed or decoded, a file that is no image simd reads, or one far larger
    than the single picture its header declares (`budget.bytes_for_pixels`: a JPEG header followed
    by gigabytes of zeros). Reads the header only; animations and multi-page files are let through
    (their frames after the first are never decoded). Raises ImageError."""
    with _open_source(path, None) as (fp, name):
        size = os.fstat(fp.fileno()).st_size
        reader = BudgetReader(fp, budget or Budget(DECODE_SECONDS, what="reading the header"))
        with _decoding(name, reader) as (fmt, _):
            img = Image.open(cast(BinaryIO, reader), formats=[fmt.upper()])
            width, height = img.size
            most = bytes_for_pixels(width, height)
            if size > most and not getattr(img, "is_animated", False):
                raise ImageError(
                    name,
                    f"too large for its pixel size: {megabytes(size)} for a {width}x{height} image "
                    f"(a picture of that size holds at most {megabytes(most)}); not read",
                )


@contextlib.contextmanager
def _decoding(name: str, reader: BudgetReader) -> Iterator[tuple[str, bytes]]:
    """Sniff the allowed format of `reader`'s content, yield it and the head; every failure of the block
    becomes an ImageError naming the file (budget.Stopped passes through)."""
    try:
        head = reader.read(HEAD_BYTES)
        reader.seek(0)
    except OSError as e:
        raise ImageError(name, f"read error ({e.strerror or e})") from None
    except OverBudget as e:
        raise ImageError(name, e.reason) from None
    if not head:
        raise ImageError(name, "empty file")
    raw = camera_raw_kind(head, name)
    if raw is not None:
        raise ImageError(name, RAW_UNSUPPORTED.format(kind=raw))
    fmt = sniff_format(head)
    if fmt is None:
        raise ImageError(name, describe_other(head))
    if not _plugin_available(fmt):
        extra = "the pillow-heif plugin (pip install pillow-heif)" if fmt == "heif" else "AVIF support"
        raise ImageError(name, f"{fmt.upper()} image, but this installation lacks {extra}")
    if fmt in ("webp", "heif", "avif"):  # their decoders take the whole file before they say its size
        reader.allow(
            WHOLE_FILE_BYTES, f"a {fmt.upper()} file over {megabytes(WHOLE_FILE_BYTES)}: no picture needs that"
        )
    try:
        with _pillow_warnings_silenced():
            yield fmt, head
    except (ImageError, Stopped):
        raise
    except OverBudget as e:
        raise ImageError(name, e.reason) from None
    except Exception as e:  # Pillow's plugins raise many types on hostile input
        # a plugin that wrapped (or swallowed) the budget's exception: the budget's reason wins
        if reader.over is not None:
            raise ImageError(name, reader.over.reason) from None
        try:
            reader.budget.check(reader.done)  # Stopped passes through
        except OverBudget as over:
            raise ImageError(name, over.reason) from None
        raise ImageError(name, _decode_failure(e, fmt)) from e


def _orientation(img: Image.Image, name: str) -> int:
    """EXIF Orientation (1..8), or 1 when absent or unreadable: broken EXIF must not lose a photo."""
    try:
        value = img.getexif().get(0x0112, 1)
    except Exception as e:  # Pillow's EXIF parser fails in many ways on bad blocks
        log.debug("%s: ignoring unreadable EXIF (%s: %s)", name, type(e).__name__, e)
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _decode_failure(e: BaseException, fmt: str) -> str:
    """The `reason` of an ImageError for an exception raised while Pillow opened or decoded."""
    text = str(e)[:200] or type(e).__name__
    if isinstance(e, Image.UnidentifiedImageError):  # its text names only a file object
        return f"corrupt image data ({fmt.upper()} signature, but Pillow cannot read the header)"
    if isinstance(e, Image.DecompressionBombError):
        return f"too many pixels (possible decompression bomb): {text}"
    if isinstance(e, MemoryError):
        return "out of memory while decoding"
    if isinstance(e, OSError) and e.errno is not None:  # a real I/O error from the disk
        return f"read error ({e.strerror or text})"
    if isinstance(e, EOFError) or "truncated" in text.lower():
        # Pillow's own text ("image file is truncated (9 bytes not processed)") counts what was
        # left in its buffer, not what is missing from the file: it misleads, so it is not shown.
        return f"truncated: the {fmt.upper()} data ends before the image is complete (an interrupted copy or download?)"
    return f"corrupt image data ({type(e).__name__}: {text})"


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode -> RGB; transparency is composited on white, 16/32-bit and float data
    scaled to 8 bits (Pillow's own convert clips 16-bit values, turning most pixels white)."""
    if img.mode == "RGB" and "transparency" not in img.info:  # PNG tRNS can key out an RGB colour
        return img
    if img.mode in ("I", "F") or img.mode.startswith("I;16"):
        return Image.fromarray(_to_uint8(np.asarray(img)), "L").convert("RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        rgb = Image.new("RGB", img.size, _WHITE)
        rgb.paste(rgba, mask=rgba)  # the RGBA image as its own mask: its alpha channel
        return rgb
    return img.convert("RGB")


def _to_uint8(a: np.ndarray) -> np.ndarray:
    """Scale single-channel high-bit-depth pixels to 0..255.

    16-bit data uses its full range (65535 -> 255). Mode "I" (32-bit) and "F" say nothing about
    their range, so it is inferred: 0..1 or 0..255 when the values fit, else 16-bit.
    """
    if a.dtype.kind == "u" and a.dtype.itemsize == 2:
        return (a >> 8).astype(np.uint8)
    is_float = a.dtype.kind == "f"
    a = np.nan_to_num(a.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    top = float(a.max()) if a.size else 0.0
    if is_float and top <= 1.0:
        a *= 255.0
    elif top > 255.0:
        a /= 257.0
    return np.clip(a + 0.5, 0, 255).astype(np.uint8)


def thumbnail(
    src_path: str | os.PathLike, dest_path: str | os.PathLike, max_side: int = 256, max_pixels: int = DEFAULT_MAX_PIXELS
) -> tuple[int, int]:
    """Decode `src_path` (JPEG draft mode) and write an upright JPEG thumbnail whose long side is
    at most `max_side` to `dest_path`, atomically. Returns the thumbnail's size. Raises ImageError
    for a bad source; OSError from writing the destination propagates (it is not the image's fault)."""
    img = open_image(src_path, max_pixels=max_pixels, draft_size=(max_side, max_side))
    return write_thumbnail(img, dest_path, max_side)


def write_thumbnail(img: Image.Image, dest_path: str | os.PathLike, max_side: int = 256) -> tuple[int, int]:
    """Write an already decoded RGB image as a thumbnail (so an indexer can decode once for both
    the embedding and the thumbnail). `img` is not modified. Never upscales."""
    width, height = img.size
    if max(width, height) > max_side:
        scale = max_side / max(width, height)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        # reducing_gap: shrink by an integer factor first (fast box filter), then Lanczos.
        img = img.resize(size, Image.Resampling.LANCZOS, reducing_gap=2.0)
    dest = Path(dest_path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    # Temp file in the same directory, then os.replace: readers see the old thumbnail or the new
    # one, never a partial file. No fsync: thumbnails are a cache the indexer can regenerate.
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            img.save(f, "JPEG", quality=85)
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return img.size


@functools.cache
def _malloc_trim():
    import ctypes  # here, not at the top: only uploads need it, and `simd index` starts without it
    import ctypes.util

    libc = ctypes.util.find_library("c")
    try:
        return getattr(ctypes.CDLL(libc), "malloc_trim", None) if libc else None
    except OSError:
        return None


def release_free_memory() -> None:
    """Hand memory freed by a large decode back to the system: glibc keeps it otherwise (a
    10000x10000 PNG upload left the daemon 0.5 GB larger for good). No-op without glibc."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
