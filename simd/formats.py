"""What a file is, from its first bytes: the allow-list of image formats simd decodes, the formats it
recognises only to refuse them by name (PDF, SVG, camera RAW, ...), and header facts needed before
Pillow allocates anything. Pure functions of bytes; no Pillow.
"""

from __future__ import annotations

import os

HEAD_BYTES = 256  # enough for every signature below, including an ftyp box's brand list

# The allow-list, as sniff_format() names them; upper-cased, each is its Pillow format id. Nothing
# else is ever decoded, whatever the file is called (Pillow alone would also try PSD, EPS, ICO, ...).
FORMATS = ("jpeg", "png", "webp", "gif", "bmp", "tiff", "heif", "avif")
# For the web layer, to serve originals with a Content-Type taken from their bytes.
CONTENT_TYPES = {fmt: f"image/{fmt}" for fmt in FORMATS}
_BMP_HEADER_SIZES = (12, 40, 52, 56, 64, 108, 124)  # the DIB headers Pillow's BMP plugin reads
_HEIF_BRANDS = {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs"}
_AVIF_BRANDS = {b"avif", b"avis"}
_CONTAINER_BRANDS = {b"mif1", b"msf1", b"miaf"}
# Recognised but refused, so the message says what the file is (checked lower-cased).
_OTHER_FORMATS = [
    (b"%pdf", "a PDF document"),
    (b"<svg", "an SVG image"),
    (b"<?xml", "an XML/SVG document"),
    (b"<!doctype html", "an HTML page"),
    (b"<html", "an HTML page"),
    (b"pk\x03\x04", "a ZIP archive"),
    (b"\x1f\x8b", "a gzip file"),
    (b"8bps", "a Photoshop document"),
    (b"\x00\x00\x01\x00", "an ICO icon"),
    (b"\x00\x00\x00\x0cjp  ", "a JPEG 2000 image"),
    (b"\xffo\xffq", "a JPEG 2000 codestream"),
]
# Camera RAW is refused with a message that says so. Most RAW formats have their own signature;
# NEF, ARW, DNG, PEF, ... are TIFF containers whose first image is a small preview (or not one
# Pillow reads), so for TIFF content the camera's file extension is what tells them apart.
_RAW_SIGNATURES = [
    (lambda h: h[:4] in (b"II*\x00", b"MM\x00*") and h[8:10] == b"CR", "CR2"),
    (lambda h: h[4:12] == b"ftypcrx ", "CR3"),
    (lambda h: h.startswith(b"FUJIFILMCCD-RAW"), "RAF"),
    (lambda h: h[:4] in (b"IIRO", b"IIRS", b"MMOR"), "ORF"),
    (lambda h: h[:4] == b"IIU\x00", "RW2"),
    (lambda h: h[:4] == b"FOVb", "X3F"),
]
_RAW_TIFF_SUFFIXES = {
    ".nef",
    ".nrw",
    ".arw",
    ".srf",
    ".sr2",
    ".dng",
    ".cr2",
    ".pef",
    ".srw",
    ".erf",
    ".kdc",
    ".dcr",
    ".mos",
    ".3fr",
    ".iiq",
    ".rwl",
    ".raw",
    ".mef",
    ".mrw",
    ".orf",
    ".rw2",
    ".raf",
}
RAW_UNSUPPORTED = (
    "camera RAW ({kind}): not supported; export it as JPEG or HEIC (or keep the camera's JPEG "
    "beside it) to have it indexed"
)


def sniff_format(head: bytes) -> str | None:
    """The allowed image format of content starting with `head` (>= 32 bytes is best), else None."""
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):  # classic and BigTIFF
        return "tiff"
    # "BM" alone is two bytes any text may start with; also require a DIB header size Pillow reads.
    if head[:2] == b"BM" and int.from_bytes(head[14:18], "little") in _BMP_HEADER_SIZES:
        return "bmp"
    if head[4:8] == b"ftyp":  # ISO base media file: HEIF and AVIF are told apart by their brands
        box_end = min(int.from_bytes(head[:4], "big"), len(head))
        brands = {head[8:12]} | {head[i : i + 4] for i in range(16, box_end - 3, 4)}
        if brands & _AVIF_BRANDS:
            return "avif"
        if brands & _HEIF_BRANDS or head[8:12] in _CONTAINER_BRANDS:
            return "heif"
    return None


def camera_raw_kind(head: bytes, name: str | None = None) -> str | None:
    """The camera RAW format of content starting with `head` (e.g. "CR2", "NEF"), else None."""
    for test, kind in _RAW_SIGNATURES:
        if test(head):
            return kind
    suffix = os.path.splitext(name or "")[1].lower()
    if suffix in _RAW_TIFF_SUFFIXES and head[:4] in (b"II*\x00", b"MM\x00*"):
        return suffix[1:].upper()
    return None


def describe_other(head: bytes) -> str:
    """Why content that sniff_format() refused is refused, as specific as cheaply possible."""
    lowered = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    for magic, what in _OTHER_FORMATS:
        if lowered.startswith(magic):
            return f"not an allowed image format ({what})"
    if head[4:8] == b"ftyp":
        return "not an allowed image format (ISO media file, e.g. a video)"
    printable = sum(32 <= b < 127 or b in (9, 10, 13) or b >= 128 for b in head)
    if b"\x00" not in head and printable >= 0.95 * len(head):
        return "not an image (looks like a text file)"
    return "not an image (unrecognised content)"


def webp_declared_size(head: bytes) -> tuple[int, int] | None:
    """Canvas size from a WebP header. Pillow's WebP plugin allocates the canvas inside
    Image.open (checked only against its global limit), so simd's limit is applied before that."""
    chunk, data = head[12:16], head[20:30]
    if len(data) < 10:
        return None
    if chunk == b"VP8X":
        return 1 + int.from_bytes(data[4:7], "little"), 1 + int.from_bytes(data[7:10], "little")
    if chunk == b"VP8L" and data[0] == 0x2F:
        bits = int.from_bytes(data[1:5], "little")
        return 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
    if chunk == b"VP8 " and data[3:6] == b"\x9d\x01\x2a":
        return int.from_bytes(data[6:8], "little") & 0x3FFF, int.from_bytes(data[8:10], "little") & 0x3FFF
    return None
