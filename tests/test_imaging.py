"""simd.imaging: safe decoding of untrusted files into upright RGB images, and thumbnails."""

import io
import os
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from images import make_header_only_png, make_photo, photo
from PIL import Image, ImageCms, features

from simd.errors import ImageError
from simd.formats import CONTENT_TYPES, sniff_format
from simd.imaging import open_image, thumbnail, write_thumbnail

REPO = Path(__file__).resolve().parents[1]
RED, WHITE, BLACK = (255, 0, 0), (255, 255, 255), (0, 0, 0)


def save(path, img, fmt, **kw):
    img.save(path, fmt, **kw)
    return path


# Mean absolute difference below which two renderings are "the same picture": lossy re-encoding of
# tests/images.py photos stays under ~9, a mirrored or rotated picture is ~50.
SAME = 10
JPEG_HQ = {"quality": 95, "subsampling": 0}


def mean_abs_diff(a, b):
    return float(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32)).mean())


def assert_colour(img, expected, tol=0):
    assert img.mode == "RGB"
    px = np.asarray(img).reshape(-1, 3)
    assert np.abs(px.astype(int) - expected).max() <= tol, (px[0].tolist(), expected)


def exif_bytes(orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


# --- every mode to RGB --------------------------------------------------------------------------


def _p_transparent():
    img = Image.new("P", (8, 8), 0)
    img.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    img.info["transparency"] = 0
    return img


def _pa_transparent():
    img = Image.new("PA", (8, 8), (0, 0))
    img.putpalette([255, 0, 0] + [0] * 765)
    return img


def _lab_red():
    srgb_to_lab = ImageCms.buildTransform(ImageCms.createProfile("sRGB"), ImageCms.createProfile("LAB"), "RGB", "LAB")
    return ImageCms.applyTransform(Image.new("RGB", (8, 8), RED), srgb_to_lab)


MODE_CASES = [
    # id, image factory, format, expected RGB, tolerance
    ("1-white", lambda: Image.new("1", (8, 8), 1), "PNG", WHITE, 0),
    ("1-black-bmp", lambda: Image.new("1", (8, 8), 0), "BMP", BLACK, 0),
    ("L", lambda: Image.new("L", (8, 8), 100), "PNG", (100, 100, 100), 0),
    ("L-jpeg", lambda: Image.new("L", (8, 8), 100), "JPEG", (100, 100, 100), 2),
    ("L-with-tRNS", lambda: _with_info(Image.new("L", (8, 8), 7), transparency=7), "PNG", WHITE, 0),
    ("LA-transparent", lambda: Image.new("LA", (8, 8), (30, 0)), "PNG", WHITE, 0),
    ("LA-opaque", lambda: Image.new("LA", (8, 8), (30, 255)), "PNG", (30, 30, 30), 0),
    ("P", lambda: Image.new("RGB", (8, 8), RED).convert("P"), "PNG", RED, 0),
    ("P-transparent-png", _p_transparent, "PNG", WHITE, 0),
    ("P-transparent-gif", _p_transparent, "GIF", WHITE, 0),
    ("PA-transparent-tiff", _pa_transparent, "TIFF", WHITE, 0),
    ("RGB-with-tRNS", lambda: _with_info(Image.new("RGB", (8, 8), RED), transparency=RED), "PNG", WHITE, 0),
    ("RGBA-alpha0", lambda: Image.new("RGBA", (8, 8), (255, 0, 0, 0)), "PNG", WHITE, 0),
    ("RGBA-opaque", lambda: Image.new("RGBA", (8, 8), (255, 0, 0, 255)), "PNG", RED, 0),
    ("RGBA-half", lambda: Image.new("RGBA", (8, 8), (255, 0, 0, 128)), "PNG", (255, 127, 127), 1),
    ("RGBA-alpha0-webp", lambda: Image.new("RGBA", (8, 8), (255, 0, 0, 0)), "WEBP", WHITE, 0),
    ("RGBA-alpha0-tiff", lambda: Image.new("RGBA", (8, 8), (255, 0, 0, 0)), "TIFF", WHITE, 0),
    ("CMYK-jpeg", lambda: Image.new("CMYK", (8, 8), (0, 255, 255, 0)), "JPEG", RED, 6),
    ("CMYK-tiff", lambda: Image.new("CMYK", (8, 8), (0, 255, 255, 0)), "TIFF", RED, 0),
    ("YCbCr-tiff", lambda: Image.new("RGB", (8, 8), RED).convert("YCbCr"), "TIFF", RED, 3),
    ("LAB-tiff", _lab_red, "TIFF", RED, 8),
    ("I;16-mid-png", lambda: _gray16(32768), "PNG", (128, 128, 128), 1),
    ("I;16-max-png", lambda: _gray16(65535), "PNG", WHITE, 0),
    ("I;16-dark-png", lambda: _gray16(2570), "PNG", (10, 10, 10), 1),
    (
        "I;16B-mid-tiff",
        lambda: Image.frombytes("I;16B", (8, 8), np.full(64, 32768, ">u2").tobytes()),
        "TIFF",
        (128, 128, 128),
        1,
    ),
    ("I-16bit-range-tiff", lambda: Image.fromarray(np.full((8, 8), 32768, np.int32)), "TIFF", (128, 128, 128), 1),
    ("I-8bit-range-tiff", lambda: Image.fromarray(np.full((8, 8), 100, np.int32)), "TIFF", (100, 100, 100), 0),
    ("F-unit-range-tiff", lambda: Image.fromarray(np.full((8, 8), 0.5, np.float32)), "TIFF", (128, 128, 128), 1),
    ("F-8bit-range-tiff", lambda: Image.fromarray(np.full((8, 8), 100.0, np.float32)), "TIFF", (100, 100, 100), 0),
]


def _with_info(img, **info):
    img.info.update(info)
    return img


def _gray16(value):
    return Image.fromarray(np.full((8, 8), value, np.uint16))


@pytest.mark.parametrize(
    ("factory", "fmt", "expected", "tol"), [c[1:] for c in MODE_CASES], ids=[c[0] for c in MODE_CASES]
)
def test_every_mode_becomes_rgb_with_the_right_colour(tmp_path, factory, fmt, expected, tol):
    source = factory()
    kw = {"transparency": source.info["transparency"]} if "transparency" in source.info else {}
    if fmt == "WEBP":
        kw["lossless"] = True
    path = save(tmp_path / f"img.{fmt.lower()}", source, fmt, **kw)
    img = open_image(path)
    assert img.size == (8, 8)
    assert_colour(img, expected, tol)


def test_sixteen_bit_gradient_keeps_its_range_and_order(tmp_path):
    ramp = np.tile(np.linspace(0, 65535, 256).astype(np.uint16), (4, 1))
    path = save(tmp_path / "ramp.png", Image.fromarray(ramp), "PNG")
    grey = np.asarray(open_image(path))[0, :, 0].astype(int)
    assert grey[0] == 0 and grey[-1] == 255
    assert np.all(np.diff(grey) >= 0) and len(set(grey.tolist())) > 200  # not clipped to white


# --- EXIF orientation ---------------------------------------------------------------------------

# What a camera stores for each EXIF orientation, given the upright scene (the EXIF spec's table;
# Pillow's ROTATE_90 turns counter-clockwise).
STORED = {
    1: lambda im: im,
    2: lambda im: im.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
    3: lambda im: im.transpose(Image.Transpose.ROTATE_180),
    4: lambda im: im.transpose(Image.Transpose.FLIP_TOP_BOTTOM),
    5: lambda im: im.transpose(Image.Transpose.TRANSPOSE),
    6: lambda im: im.transpose(Image.Transpose.ROTATE_90),
    7: lambda im: im.transpose(Image.Transpose.TRANSVERSE),
    8: lambda im: im.transpose(Image.Transpose.ROTATE_270),
}


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "TIFF"])
def test_exif_orientation_gives_upright_pixels(tmp_path, orientation, fmt):
    upright = photo((96, 64), seed=3)
    kw = JPEG_HQ if fmt == "JPEG" else {"lossless": True} if fmt == "WEBP" else {}
    path = save(tmp_path / "o.img", STORED[orientation](upright), fmt, exif=exif_bytes(orientation), **kw)
    img = open_image(path)
    assert img.size == upright.size
    assert mean_abs_diff(img, upright) < SAME


@pytest.mark.parametrize(
    "exif",
    [
        b"Exif\x00\x00" + b"\xff" * 40,  # no TIFF header
        b"Exif\x00\x00II*\x00\x08\x00\x00\x00\xff\xff",  # claims 65535 entries, has none
        b"Exif\x00\x00II*\x00\x08\x00\x00\x00\x01\x00\x12\x01\x03\x00\x05\x00\x00\x00\xf0\xff\x00\x00",  # bad offset
        b"Exif\x00\x00II*\x00\x08\x00\x00\x00\x01\x00\x12\x01\x03\x00\x01\x00\x00\x00\x09\x00\x00\x00",  # orientation 9
    ],
    ids=["garbage", "entry-count", "bad-offset", "orientation-9"],
)
def test_broken_exif_does_not_fail_the_image(tmp_path, exif):
    upright = photo((48, 32), seed=4)
    path = save(tmp_path / "broken_exif.jpg", upright, "JPEG", exif=exif, **JPEG_HQ)
    img = open_image(path)
    assert img.size == upright.size
    assert mean_abs_diff(img, upright) < SAME


# --- by content, not by extension ---------------------------------------------------------------

FORMAT_CASES = [
    # format, misleading file name, save options, sniffed name, max mean difference
    ("JPEG", "no_extension", JPEG_HQ, "jpeg", SAME),
    ("PNG", "really_png.jpg", {}, "png", 0),
    ("WEBP", "webp.png", {"quality": 95}, "webp", SAME),
    ("GIF", "gif.bmp", {}, "gif", SAME),
    ("BMP", "bmp.gif", {}, "bmp", 0),
    ("TIFF", "tiff.txt", {}, "tiff", 0),
    pytest.param(
        "AVIF",
        "avif.jpg",
        {"quality": 95},
        "avif",
        SAME,
        marks=pytest.mark.skipif(not features.check("avif"), reason="Pillow built without AVIF"),
    ),
]


@pytest.mark.parametrize(("fmt", "filename", "kw", "sniffed", "tol"), FORMAT_CASES)
def test_allowed_formats_decode_by_content_whatever_the_extension(tmp_path, fmt, filename, kw, sniffed, tol):
    original = photo((80, 60), seed=5)
    path = save(tmp_path / filename, original, fmt, **kw)
    assert sniff_format(path.read_bytes()[:64]) == sniffed
    assert sniffed in CONTENT_TYPES
    img = open_image(path)
    assert (img.mode, img.size) == ("RGB", original.size)
    assert mean_abs_diff(img, original) <= tol


def test_gif_gives_the_first_frame(tmp_path):
    frames = [Image.new("RGB", (16, 16), c) for c in (RED, (0, 0, 255), (0, 255, 0))]
    path = save(tmp_path / "anim.gif", frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50)
    assert_colour(open_image(path), RED, 0)


def test_animated_webp_gives_the_first_frame(tmp_path):
    frames = [Image.new("RGB", (16, 16), c) for c in (RED, (0, 0, 255))]
    path = save(tmp_path / "anim.webp", frames[0], "WEBP", save_all=True, append_images=frames[1:], lossless=True)
    assert_colour(open_image(path), RED, 0)


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (b"\xff\xd8\xff\xe0\x00\x10JFIF", "jpeg"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "png"),
        (b"GIF87a\x01\x00", "gif"),
        (b"RIFF\x00\x00\x00\x00WEBPVP8 ", "webp"),
        (b"MM\x00*\x00\x00\x00\x08", "tiff"),
        (b"II+\x00\x08\x00\x00\x00", "tiff"),  # BigTIFF
        (b"BM" + b"\x00" * 12 + b"\x28\x00\x00\x00", "bmp"),
        (b"BMW is a car, not a bitmap header at all", None),
        (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic", "heif"),
        (b"\x00\x00\x00\x18ftypmif1\x00\x00\x00\x00mif1heic", "heif"),
        (b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00avifmif1miaf", "avif"),
        (b"\x00\x00\x00\x1cftypmif1\x00\x00\x00\x00mif1avifmiaf", "avif"),
        (b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2", None),  # an MP4 video
        (b"%PDF-1.7\n", None),
        (b"", None),
    ],
)
def test_sniff_format(head, expected):
    assert sniff_format(head) == expected


# --- refusals: one typed error naming the file and the cause ------------------------------------


def _truncated(tmp_path, fmt):
    data = io.BytesIO()
    photo((200, 150), seed=6).save(data, fmt)
    path = tmp_path / f"truncated.{fmt.lower()}"
    path.write_bytes(data.getvalue()[: len(data.getvalue()) // 2])
    return path


def _corrupt_png(tmp_path):
    buf = io.BytesIO()
    photo((64, 48), seed=7).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    data[60] ^= 0xFF  # inside the IDAT chunk: its CRC no longer matches
    path = tmp_path / "corrupt.png"
    path.write_bytes(bytes(data))
    return path


def _file(tmp_path, filename, data):
    path = tmp_path / filename
    path.write_bytes(data)
    return path


BAD_FILES = [
    ("text-named-jpg", lambda p: _file(p, "notes.jpg", b"just some notes, not a picture\n" * 4), "text"),
    ("empty", lambda p: _file(p, "empty.jpg", b""), "empty"),
    ("truncated-jpeg", lambda p: _truncated(p, "JPEG"), "truncated"),
    ("truncated-png", lambda p: _truncated(p, "PNG"), "truncated"),
    ("corrupt-png", _corrupt_png, "corrupt"),
    ("random-bytes", lambda p: _file(p, "random.png", np.random.default_rng(0).bytes(4096)), "not an image"),
    ("svg", lambda p: _file(p, "drawing.png", b'<svg xmlns="http://www.w3.org/2000/svg"></svg>'), "SVG"),
    ("xml-svg", lambda p: _file(p, "drawing.jpg", b'\xef\xbb\xbf<?xml version="1.0"?><svg/>'), "SVG"),
    ("pdf", lambda p: _file(p, "scan.jpg", b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj"), "PDF"),
    ("gif-header-only", lambda p: _file(p, "stub.gif", b"GIF89a\x10\x00"), "corrupt"),
    ("jpeg-header-only", lambda p: _file(p, "stub.jpg", b"\xff\xd8\xff"), "corrupt"),
    ("directory", lambda p: (p / "album.jpg").mkdir() or p / "album.jpg", "directory"),
    ("missing", lambda p: p / "gone.jpg", "not found"),
]


@pytest.mark.parametrize(("make", "cause"), [c[1:] for c in BAD_FILES], ids=[c[0] for c in BAD_FILES])
def test_bad_files_raise_image_error_naming_file_and_cause(tmp_path, make, cause):
    path = make(tmp_path)
    with pytest.raises(ImageError) as info:
        open_image(path)
    message = str(info.value)
    assert path.name in message and info.value.name == str(path)
    assert cause.lower() in info.value.reason.lower(), message


@pytest.mark.timeout(20)
def test_fifo_and_devices_are_refused_without_blocking(tmp_path):
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)  # opening it for reading would wait for a writer forever
    with pytest.raises(ImageError, match="pipe.jpg: not a regular file"):
        open_image(fifo)
    with pytest.raises(ImageError, match="/dev/zero: not a regular file"):
        open_image("/dev/zero")


def test_mpo_gives_the_first_picture(tmp_path):
    frames = [Image.new("RGB", (16, 16), c) for c in (RED, (0, 0, 255))]
    path = save(tmp_path / "stereo.mpo", frames[0], "MPO", save_all=True, append_images=frames[1:])
    assert sniff_format(path.read_bytes()) == "jpeg"
    assert_colour(open_image(path, draft_size=(8, 8)), RED, 4)


def test_heif_without_plugin_names_the_missing_plugin(tmp_path):
    path = _file(tmp_path, "phone.heic", b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 64)
    with pytest.raises(ImageError) as info:
        open_image(path)
    assert "phone.heic" in str(info.value)
    try:
        import pillow_heif  # noqa: F401
    except ImportError:
        assert "pillow-heif" in info.value.reason


def test_unreadable_file_raises_image_error(tmp_path):
    path = make_photo(tmp_path / "secret.jpg", seed=1)
    path.chmod(0)
    if os.geteuid() != 0:
        with pytest.raises(ImageError, match="secret.jpg: permission denied"):
            open_image(path)
        return
    # root reads anything: a child drops to nobody (after its imports) and then opens the file
    code = (
        "import os, sys; from simd.imaging import open_image; os.setgroups([]); os.setgid(65534); "
        "os.setuid(65534); print('dropped', flush=True); open_image(sys.argv[1])"
    )
    child = subprocess.run(
        [sys.executable, "-c", code, str(path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=120,
    )
    if "dropped" not in child.stdout:
        pytest.skip(f"running as root and cannot drop privileges to provoke EACCES: {child.stderr[-200:]}")
    assert "ImageError" in child.stderr and "secret.jpg: permission denied" in child.stderr, child.stderr


# --- decompression bombs ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("width", "height"), [(30000, 30000), (11000, 11000)], ids=["over-pillow-limit", "between-pillow-warning-and-ours"]
)
def test_declared_bomb_is_refused_before_decoding(tmp_path, width, height):
    path = make_header_only_png(tmp_path / "bomb.png", width, height)
    start = time.perf_counter()
    with pytest.raises(ImageError) as info:
        open_image(path)
    # decoding would allocate width*height*3 bytes and then fail as "truncated"
    assert time.perf_counter() - start < 1.0
    assert "bomb.png" in str(info.value) and "pixels" in info.value.reason
    assert "truncated" not in info.value.reason


def test_webp_bomb_is_refused_before_the_canvas_is_allocated(tmp_path):
    # VP8X header declaring a 16384 x 16384 canvas (1 GiB of RGBA) and nothing else
    vp8x = b"VP8X" + (10).to_bytes(4, "little") + b"\x10\x00\x00\x00" + (16383).to_bytes(3, "little") * 2
    path = _file(tmp_path, "huge.webp", b"RIFF" + (4 + len(vp8x)).to_bytes(4, "little") + b"WEBP" + vp8x)
    start = time.perf_counter()
    with pytest.raises(ImageError, match="huge.webp: too many pixels: 16384x16384"):
        open_image(path)
    assert time.perf_counter() - start < 1.0


@pytest.mark.parametrize(
    ("fmt", "kw"),
    [
        ("PNG", {}),
        ("JPEG", {}),
        ("WEBP", {"lossless": False}),
        ("WEBP", {"lossless": True}),
        ("WEBP", {"exif": exif_bytes(1)}),
        ("GIF", {}),
    ],
)
def test_max_pixels_is_inclusive_and_enforced(tmp_path, fmt, kw):
    path = save(tmp_path / "img", photo((101, 75), seed=8), fmt, **kw)
    assert open_image(path, max_pixels=101 * 75).size == (101, 75)
    with pytest.raises(ImageError, match=r"img: too many pixels: 101x75"):
        open_image(path, max_pixels=101 * 75 - 1)


def test_our_limit_not_pillows_global_decides(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # warns above 1000, fails above 2000
    warns = save(tmp_path / "warns.png", photo((40, 40), seed=9), "PNG")
    assert open_image(warns, max_pixels=10_000).size == (40, 40)  # and no warning escapes
    fails = save(tmp_path / "fails.png", photo((50, 50), seed=9), "PNG")
    with pytest.raises(ImageError, match="fails.png: too many pixels"):
        open_image(fails, max_pixels=10_000)


def test_concurrent_decodes_leave_warning_filters_alone(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # every decode below triggers Pillow's warning
    path = save(tmp_path / "w.jpg", photo((40, 40), seed=10), "JPEG", exif=b"Exif\x00\x00II*\x00\x08\x00\x00\x00\xff")
    filters_before = list(warnings.filters)
    failures = []

    def work():
        for _ in range(25):
            try:
                open_image(path)
            except ImageError as e:
                failures.append(e)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not failures
    assert warnings.filters == filters_before


# --- draft mode, sources ------------------------------------------------------------------------


def test_draft_decodes_jpeg_at_a_reduced_size_no_smaller_than_asked(tmp_path):
    original = photo((800, 600), seed=11)
    path = save(tmp_path / "big.jpg", original, "JPEG", quality=92)
    img = open_image(path, draft_size=(100, 100))
    assert img.width >= 100 and img.height >= 100 and img.width < 800
    assert img.size == (200, 150)  # DCT scaling by 1/4: the largest that still covers 100x100
    assert mean_abs_diff(img, original.resize(img.size, Image.Resampling.BOX)) < SAME
    png = save(tmp_path / "big.png", original.resize((400, 300)), "PNG")
    assert open_image(png, draft_size=(100, 100)).size == (400, 300)  # draft applies to JPEG only


def test_draft_size_is_for_the_upright_image(tmp_path):
    upright = photo((600, 1600), seed=12)  # portrait, stored sideways with orientation 6
    path = save(tmp_path / "portrait.jpg", STORED[6](upright), "JPEG", exif=exif_bytes(6))
    img = open_image(path, draft_size=(150, 400))
    assert img.size == (150, 400)  # 1/4 scale; without the swap only 1/2 would cover the request


@pytest.mark.parametrize("kind", ["bytes", "bytearray", "memoryview", "bytesio", "file", "offset-file", "stream"])
def test_bytes_and_file_object_sources(tmp_path, kind):
    original = photo((64, 48), seed=13)
    path = save(tmp_path / "src.png", original, "PNG")
    data = path.read_bytes()

    class Stream(io.RawIOBase):  # a non-seekable socket-like reader
        def __init__(self):
            self._buf = io.BytesIO(data)

        def readable(self):
            return True

        def readinto(self, b):
            return self._buf.readinto(b)

    with open(path, "rb") as f:
        if kind == "offset-file":
            f.read(10)
        source = {
            "bytes": data,
            "bytearray": bytearray(data),
            "memoryview": memoryview(data),
            "bytesio": io.BytesIO(data),
            "file": f,
            "offset-file": f,
            "stream": Stream(),
        }[kind]
        img = open_image(source)
    assert mean_abs_diff(img, original) == 0


def test_names_in_messages_for_non_path_sources(tmp_path):
    with pytest.raises(ImageError, match=r"^upload: empty file$"):
        open_image(b"")
    with pytest.raises(ImageError, match=r"^holiday\.jpg: not an image"):
        open_image(io.BytesIO(b"\x00\x01garbage" * 10), name="holiday.jpg")
    path = _file(tmp_path, "named.jpg", b"hello world, plain text")
    with open(path, "rb") as f, pytest.raises(ImageError, match=r"named\.jpg: not an image"):
        open_image(f)


# --- thumbnails ---------------------------------------------------------------------------------


def test_thumbnail_is_upright_bounded_and_atomic(tmp_path):
    upright = photo((800, 600), seed=14)
    src = save(tmp_path / "photo.jpg", STORED[6](upright), "JPEG", exif=exif_bytes(6), **JPEG_HQ)
    dest = tmp_path / "thumbs" / "1.jpg"
    assert thumbnail(src, dest) == (256, 192)
    with Image.open(dest) as thumb:
        assert (thumb.format, thumb.mode, thumb.size) == ("JPEG", "RGB", (256, 192))
        assert mean_abs_diff(thumb, upright.resize((256, 192), Image.Resampling.LANCZOS)) < SAME
    assert thumbnail(src, dest, max_side=100) == (100, 75)  # replaces the old one
    assert sorted(p.name for p in dest.parent.iterdir()) == ["1.jpg"]  # no temp files left


def test_thumbnail_never_upscales_and_keeps_old_thumb_on_failure(tmp_path):
    small = save(tmp_path / "small.png", photo((100, 50), seed=15), "PNG")
    dest = tmp_path / "t.jpg"
    assert thumbnail(small, dest) == (100, 50)
    before = dest.read_bytes()
    with pytest.raises(ImageError, match="broken.jpg: truncated"):
        thumbnail(_truncated(tmp_path, "JPEG").rename(tmp_path / "broken.jpg"), dest)
    assert dest.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.jpg", "small.png", "t.jpg"]


def test_write_thumbnail_leaves_the_decoded_image_alone(tmp_path):
    img = photo((640, 480), seed=16)
    copy = img.copy()
    assert write_thumbnail(img, tmp_path / "t.jpg", max_side=64) == (64, 48)
    assert img.size == (640, 480) and mean_abs_diff(img, copy) == 0


# --- what phones save: HEIC (a core dependency), AVIF; camera RAW is refused by name ------------


def test_phone_heic_decodes_upright_and_thumbnails(phone_heic, tmp_path):
    from images import phone_photo

    # stored landscape with EXIF Orientation 6 (pillow-heif writes it as the HEIF rotation): shown portrait
    img = open_image(phone_heic)
    assert (img.mode, img.size) == ("RGB", (3000, 4000))
    upright = phone_photo(2, grain=3.0).transpose(Image.Transpose.ROTATE_270)
    assert mean_abs_diff(img.resize((300, 400)), upright.resize((300, 400))) < SAME
    assert thumbnail(phone_heic, tmp_path / "t.jpg") == (192, 256)
    with Image.open(tmp_path / "t.jpg") as t:
        assert mean_abs_diff(t.convert("RGB"), upright.resize((192, 256))) < 2 * SAME


def test_heic_upload_bytes_decode(phone_heic):
    img = open_image(phone_heic.read_bytes(), name="IMG_0001.HEIC", draft_size=(448, 448))
    assert img.size == (3000, 4000)


@pytest.mark.skipif(not features.check("avif"), reason="Pillow built without AVIF")
def test_avif_with_exif_orientation_is_upright(tmp_path):
    landscape = photo((400, 300), seed=8)
    path = save(tmp_path / "phone.avif", landscape, "AVIF", quality=90, exif=exif_bytes(6))
    assert sniff_format(path.read_bytes()[:64]) == "avif"
    img = open_image(path)
    assert img.size == (300, 400)
    assert mean_abs_diff(img, landscape.transpose(Image.Transpose.ROTATE_270)) < 2 * SAME


RAW_HEADS = [
    ("IMG_0001.CR2", b"II*\x00\x10\x00\x00\x00CR\x02\x00\x00\x00\x00\x00", "CR2"),
    ("IMG_0002.CR3", b"\x00\x00\x00\x18ftypcrx \x00\x00\x00\x01crx isom", "CR3"),
    ("DSCF0003.RAF", b"FUJIFILMCCD-RAW 0201FF383501", "RAF"),
    ("P0004.ORF", b"IIRO\x08\x00\x00\x00", "ORF"),
    ("P1000005.RW2", b"IIU\x00\x18\x00\x00\x00", "RW2"),
    ("DSC_0006.NEF", b"MM\x00*\x00\x00\x00\x08", "NEF"),  # TIFF inside: the camera's extension tells
    ("DSC07.ARW", b"II*\x00\x08\x00\x00\x00", "ARW"),
    ("PXL_08.dng", b"II*\x00\x08\x00\x00\x00", "DNG"),
]


@pytest.mark.parametrize(("name", "head", "kind"), RAW_HEADS)
def test_camera_raw_is_refused_as_such(tmp_path, name, head, kind):
    path = _file(tmp_path, name, head + bytes(range(256)) * 40)
    with pytest.raises(ImageError) as info:
        open_image(path)
    assert info.value.reason.startswith(f"camera RAW ({kind}): not supported;"), info.value.reason


def test_a_real_tiff_is_not_mistaken_for_raw(tmp_path):
    path = save(tmp_path / "scan.tif", photo((40, 30), seed=9), "TIFF")
    assert open_image(path).size == (40, 30)
