"""What simd does when its files fail it (docs/RELIABILITY.md): a file that would hold the only
indexer, a damaged index, a full disk, an unusable state dir.

Real SQLite files, real file systems (a small tmpfs for the full disk and the read-only state dir,
when this machine lets the tests mount one: they are skipped otherwise) and a real `simd serve`
subprocess with EfficientNet-Lite0 for the end-to-end stories.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from simd.budget import Budget, BudgetReader, OverBudget, Stopped
from simd.errors import ImageError
from simd.imaging import check_file_size, open_image
from simd.scanner import file_hash


def zeros_after_header(source: Path, dest: Path, size: int, *, cut: str = "before_scan") -> Path:
    """`source`'s JPEG header, then zeros up to `size` bytes: a sparse file, so it costs no disk.
    cut="before_scan": the markers up to the start of scan (Pillow then hunts for a marker through
    the zeros, byte by byte: minutes per GB before simd bounded it); "after_scan": the header with
    its start-of-scan segment (libjpeg decodes zeros as a grey picture)."""
    data = source.read_bytes()
    sos = data.index(b"\xff\xda")
    end = sos if cut == "before_scan" else sos + 2 + int.from_bytes(data[sos + 2 : sos + 4], "big")
    with open(dest, "wb") as f:
        f.write(data[:end])
        f.truncate(size)
    return dest


# -- the per-file budget ------------------------------------------------------------------------


def test_a_header_followed_by_zeros_is_refused_in_a_moment(tmp_path, phone_jpeg):
    junk = zeros_after_header(phone_jpeg, tmp_path / "junk.jpg", 300 << 20)
    started = time.monotonic()
    with pytest.raises(ImageError, match="no picture: over 256 KB of filler"):
        open_image(junk, draft_size=(576, 576))
    with pytest.raises(ImageError, match="no picture: over 256 KB of filler"):
        check_file_size(junk)
    assert time.monotonic() - started < 5  # unbounded, Pillow took ~50 s per 256 MB here

    # 12 MP declare at most 16 MB + 64 bytes a pixel: a 1 GB file is refused from its header alone
    huge = zeros_after_header(phone_jpeg, tmp_path / "huge.jpg", 1 << 30, cut="after_scan")
    with pytest.raises(ImageError, match=r"too large for its pixel size: 1,024 MB for a 4000x3000 image"):
        check_file_size(huge)
    check_file_size(phone_jpeg)  # a real photo passes, and decodes
    assert open_image(phone_jpeg, draft_size=(576, 576)).size[0] >= 576


def test_reads_stop_at_the_deadline_and_at_the_stop_event(tmp_path, phone_jpeg):
    with pytest.raises(ImageError, match=r"timed out: decoding took longer than 0 s"):
        open_image(phone_jpeg, budget=Budget(0, what="decoding"))
    stop = threading.Event()
    stop.set()
    with pytest.raises(Stopped):
        open_image(phone_jpeg, budget=Budget(60, stop))
    with pytest.raises(Stopped):
        file_hash(phone_jpeg, Budget(60, stop))
    with pytest.raises(OverBudget, match="timed out: hashing took longer than 0 s"):
        file_hash(phone_jpeg, Budget(0, what="hashing"))
    assert file_hash(phone_jpeg, Budget(60)) == file_hash(phone_jpeg)

    # a stop set while a large file is hashed ends the read within a chunk
    big = tmp_path / "big.bin"
    with open(big, "wb") as f:
        f.truncate(8 << 30)
    stop = threading.Event()
    threading.Timer(0.3, stop.set).start()
    started = time.monotonic()
    with pytest.raises(Stopped):
        file_hash(big, Budget(60, stop))
    assert time.monotonic() - started < 2


def test_the_reader_refuses_to_read_past_its_limit(tmp_path):
    path = tmp_path / "data"
    path.write_bytes(b"x" * 1000)
    with open(path, "rb") as fp:
        reader = BudgetReader(fp, Budget(60), limit=100)
        assert reader.read(60) == b"x" * 60
        with pytest.raises(OverBudget):
            reader.read()  # never more than the limit + 1 byte is read
        assert reader.done == 101 and reader.over is not None
        reader.seek(0)
        reader.allow(2000, "too large")
        reader.done = 0
        assert len(reader.read()) == 1000
