"""What simd does when its files fail it (docs/RELIABILITY.md): a file that would hold the only
indexer, a damaged index, a full disk, an unusable state dir.

Real SQLite files, real file systems (a small tmpfs for the full disk and the read-only state dir,
when this machine lets the tests mount one: they are skipped otherwise) and a real `simd serve`
subprocess with EfficientNet-Lite0 for the end-to-end stories.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from images import make_photo

from simd import config as cfg
from simd import indexer, worker
from simd.budget import Budget, BudgetReader, OverBudget, Stopped
from simd.errors import ImageError
from simd.ignore import IgnoreRules
from simd.imaging import check_file_size, open_image
from simd.indexer import Reconciler
from simd.runtime import Runtime
from simd.scanner import file_hash
from simd.statedir import StateDir
from simd.store import Store
from simd.storehealth import integrity_problem, invalid_vectors
from simd.vectors import VectorIndex
from simd.worker import IndexWorker
from tests.fakes import PixelEmbedder
from tests.serving import Served

REPO = Path(__file__).resolve().parents[1]


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


def test_large_real_images_are_within_their_budget(tmp_path):
    """20 MB of noise as PNG and as lossless WebP (whose decoder reads the whole file before it tells
    the size): both over the 16 MB header allowance, both decode."""
    from PIL import Image

    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (2600, 2600, 3), dtype=np.uint8))
    for name, kw in (("noise.png", {"compress_level": 1}), ("noise.webp", {"lossless": True, "method": 0})):
        path = tmp_path / name
        noise.save(path, **kw)
        assert path.stat().st_size > 16 << 20
        check_file_size(path)
        assert open_image(path).size == (2600, 2600)


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


def reconciler(library: Path, store: Store, embedder=None, stop: threading.Event | None = None) -> Reconciler:
    embedder = embedder or PixelEmbedder()
    return Reconciler(library, store, embedder, VectorIndex(embedder.dim), IgnoreRules([]), stop=stop)


def test_files_over_budget_fail_with_the_reason_and_are_retried_when_they_change(
    library, state_dir, phone_jpeg, monkeypatch
):
    for i in range(3):
        make_photo(library / f"good{i}.jpg", seed=i)
    zeros_after_header(phone_jpeg, library / "junk.jpg", 300 << 20)
    zeros_after_header(phone_jpeg, library / "huge.jpg", 1 << 30, cut="after_scan")
    (library / "video.mp4").write_bytes(b"\0\0\0\x18ftypmp42")
    with open(library / "video.mp4", "r+b") as f:
        f.truncate(2 << 30)  # hashing 2 GB would take seconds: refused from its first bytes
    with Store(state_dir / "index.db") as store:
        started = time.monotonic()
        summary = reconciler(library, store).run()
        took = time.monotonic() - started
        errors = {r["path"]: r["error"] for r in store.errors()}
        assert summary.new == 3 and summary.failed == 3, summary
        assert errors["junk.jpg"].startswith("no picture: over 256 KB of filler")
        assert errors["huge.jpg"].startswith("too large for its pixel size: 1,024 MB for a 4000x3000 image")
        assert "MP4" in errors["video.mp4"] or "video" in errors["video.mp4"].lower(), errors["video.mp4"]
        assert took < 15, f"{took:.1f} s"  # unbounded: about a minute for junk.jpg alone

        # a time budget spent: "timed out", and the file stays failed until it changes
        monkeypatch.setattr(indexer, "HASH_SECONDS", 0.0)
        make_photo(library / "late.jpg", seed=7)
        reconciler(library, store).run()
        assert store.get_by_path("late.jpg")["error"].startswith("timed out: hashing took longer than 0 s")
        monkeypatch.undo()
        assert reconciler(library, store).run().new == 0  # not retried while unchanged
        make_photo(library / "late.jpg", seed=8)
        os.utime(library / "late.jpg", ns=(0, time.time_ns() + 10**9))
        (library / "junk.jpg").unlink()
        shutil.copyfile(phone_jpeg, library / "junk.jpg")  # fixed: a real photo now
        summary = reconciler(library, store).run()
        assert summary.changed == 2 and store.get_by_path("junk.jpg")["state"] == "ok"
        assert store.get_by_path("late.jpg")["state"] == "ok"


def test_a_stop_while_a_huge_file_is_hashed_ends_the_run_in_a_moment(library, state_dir, phone_jpeg):
    """A JPEG header declaring 120 MP may be followed by 7.7 GB: a 6 GB file is hashed (sparse:
    no disk), and a stop during that read ends the run within a chunk, writing nothing of it."""
    data = bytearray(phone_jpeg.read_bytes())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = (10_000).to_bytes(2, "big") + (12_000).to_bytes(2, "big")
    sos = data.index(b"\xff\xda")
    big = library / "big.jpg"
    big.write_bytes(bytes(data[: sos + 2 + int.from_bytes(data[sos + 2 : sos + 4], "big")]))
    with open(big, "r+b") as f:
        f.truncate(6 << 30)
    check_file_size(big)  # within 64 bytes a pixel: it must be read
    stop = threading.Event()
    with Store(state_dir / "index.db") as store:
        threading.Timer(1.0, stop.set).start()
        started = time.monotonic()
        summary = reconciler(library, store, stop=stop).run()
        assert summary.interrupted and time.monotonic() - started < 3
        assert store.records() == {}


# -- a damaged index ---------------------------------------------------------------------------


def claim(library: Path, state: Path) -> StateDir:
    return StateDir.claim(cfg.load(None, {"library": str(library), "state_dir": str(state)}, environ={}), "index")


def indexed_library(library: Path, state: Path, n: int = 6) -> None:
    for i in range(n):
        make_photo(library / f"p{i}.jpg", seed=i)
    with claim(library, state), Store(state / "index.db") as store:
        store.set_meta("model", PixelEmbedder().model_id)
        assert reconciler(library, store).run().new == n


def damage_pages(db: Path) -> None:
    """Random bytes over pages in the middle of the file (the b-tree, not only data)."""
    pages = db.stat().st_size // 4096
    with open(db, "r+b") as f:
        f.seek(4096 * (pages // 2 - 1))
        f.write(np.random.default_rng(0).bytes(4096 * 3))


def damaged_copies(state: Path) -> list[Path]:
    """The damaged index files moved aside (not their -wal, -shm or note)."""
    return [p for p in state.glob("index.db.damaged-*") if not p.name.endswith(("-wal", "-shm", ".suspect"))]


def quick_check(db: Path) -> str:
    con = sqlite3.connect(db)
    try:
        return con.execute("PRAGMA quick_check").fetchone()[0]
    except sqlite3.DatabaseError as e:
        return str(e)
    finally:
        con.close()


def test_a_damaged_index_is_moved_aside_and_a_new_one_built(library, state_dir, caplog):
    indexed_library(library, state_dir)
    db = state_dir / "index.db"
    damage_pages(db)
    assert quick_check(db) != "ok"
    with caplog.at_level(logging.INFO, logger="simd"), claim(library, state_dir):
        pass
    [moved] = damaged_copies(state_dir)
    assert f"the index {db} is damaged" in caplog.text and f"moved it aside to {moved.name}" in caplog.text
    assert "created a new, empty index" in caplog.text
    with Store(db) as store:
        assert integrity_problem(store.db, quick=False) is None and store.records() == {}
        assert store.get_meta("library_root") == str(library)
        assert reconciler(library, store).run().new == 6
    assert quick_check(moved) != "ok"  # kept as it was, for whoever wants to look

    # not a database at all
    db.unlink()
    db.write_bytes(b"these are not the pages you are looking for" * 100)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="simd"), claim(library, state_dir):
        pass
    assert "file is not a database" in caplog.text and len(damaged_copies(state_dir)) == 2


def test_invalid_vectors_are_re_embedded_and_the_rest_is_kept(library, state_dir, caplog):
    indexed_library(library, state_dir)
    db = state_dir / "index.db"
    with sqlite3.connect(db) as con:
        rows = dict(con.execute("SELECT path, id FROM images").fetchall())
        con.execute("UPDATE images SET vector = ? WHERE path = 'p1.jpg'", [b"\xff" * (4 * 192)])  # NaN
        con.execute("UPDATE images SET vector = zeroblob(768) WHERE path = 'p2.jpg'")
        con.execute("UPDATE images SET vector = substr(vector, 1, 100) WHERE path = 'p3.jpg'")
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    with Store(db, readonly=True) as reader:  # a reader leaves them out instead of failing
        assert len(reader.load_vectors(PixelEmbedder().model_id)[0]) == 3
    with caplog.at_level(logging.INFO, logger="simd"), claim(library, state_dir):
        pass
    assert f"the index {db} held 3 invalid vectors (id {rows['p1.jpg']}: NaN or infinite values" in caplog.text
    with Store(db) as store:
        embedder = PixelEmbedder()
        summary = reconciler(library, store, embedder).run()
        assert (summary.reembedded, summary.embedded, embedder.images_embedded) == (3, 3, 3)
        assert invalid_vectors(store.db) == [] and len(store.load_vectors(embedder.model_id)[0]) == 6
        assert {r["path"]: r["id"] for r in store.list_images(0, 10)[0]} == rows  # the same ids
    assert not damaged_copies(state_dir)


# -- a write the storage refuses ----------------------------------------------------------------


def test_a_refused_write_is_rolled_back_shown_and_retried_until_it_works(library, state_dir, monkeypatch):
    """Injected at the store boundary (SQLite's own exception and words); the tmpfs story below
    fills a real disk."""
    for i in range(5):
        make_photo(library / f"p{i}.jpg", seed=i)
    full = threading.Event()
    full.set()
    put_ok = Store.put_ok

    def refusing_put_ok(self, *args, **kwargs):
        if full.is_set():
            raise sqlite3.OperationalError("database or disk is full")
        return put_ok(self, *args, **kwargs)

    monkeypatch.setattr(Store, "put_ok", refusing_put_ok)
    monkeypatch.setattr(worker, "RETRY_FIRST_SECONDS", 0.3)
    embedder = PixelEmbedder()
    runtime = Runtime(model=embedder.model_id)
    w = IndexWorker(state_dir / "index.db", library, embedder, VectorIndex(embedder.dim), IgnoreRules([]), runtime)
    w.start()
    try:
        w.request_full("start")
        deadline = time.monotonic() + 20
        while runtime.snapshot()["phase"] != "retrying":
            assert time.monotonic() < deadline, runtime.snapshot()
            time.sleep(0.05)
        snap = runtime.snapshot()
        assert snap["last_error"].startswith("cannot write the index: database or disk is full")
        assert snap["pending"] == 5
        with Store(state_dir / "index.db", readonly=True) as reader:
            assert reader.records() == {}  # rolled back
        make_photo(library / "p5.jpg", seed=5)
        w.submit({"p5.jpg"})  # held with the rest while the disk is full
        time.sleep(1.0)  # a retry or two, refused as well
        assert runtime.snapshot()["phase"] == "retrying" and runtime.snapshot()["pending"] >= 5
        full.clear()  # space again: it resumes by itself, no rescan asked
        while not (runtime.snapshot()["phase"] == "idle" and w.runs):
            assert time.monotonic() < deadline, runtime.snapshot()
            time.sleep(0.05)
        snap = runtime.snapshot()
        assert snap["last_error"] is None and snap["pending"] == 0
        with Store(state_dir / "index.db", readonly=True) as reader:
            assert len(reader.records()) == 6
    finally:
        assert w.stop()


def test_damage_met_while_running_stops_the_worker_and_the_next_start_rebuilds(library, state_dir, monkeypatch, caplog):
    """Injected: a read the running indexer makes fails as SQLite does on a damaged b-tree."""
    indexed_library(library, state_dir, n=2)
    db = state_dir / "index.db"

    def malformed(self, prefix=None):
        raise sqlite3.DatabaseError("database disk image is malformed")

    embedder = PixelEmbedder()
    runtime = Runtime(model=embedder.model_id)
    w = IndexWorker(db, library, embedder, VectorIndex(embedder.dim), IgnoreRules([]), runtime)
    with monkeypatch.context() as patch:
        patch.setattr(Store, "records", malformed)
        w.start()
        w.request_full("start")
        deadline = time.monotonic() + 20
        while w.is_alive():
            assert time.monotonic() < deadline
            time.sleep(0.05)
    assert w.damaged == "database disk image is malformed" and w.stop()
    assert runtime.snapshot()["last_error"] == "the index is damaged: database disk image is malformed"
    assert quick_check(db) == "ok"  # SQLite's own check may miss what a read met: the note tells
    with caplog.at_level(logging.INFO, logger="simd"), claim(library, state_dir):
        pass
    [kept] = damaged_copies(state_dir)
    assert "is damaged (database disk image is malformed); moved it aside" in caplog.text
    assert Path(f"{kept}.suspect").exists() and not Path(f"{db}.suspect").exists()


def test_simd_index_says_in_one_line_that_the_disk_refused(library, state_dir, monkeypatch, capsys):
    """`simd index` runs once: a refused write ends it with one line, exit 1, and what was written
    before is kept (injected at the store boundary, with the pixel embedder)."""
    from simd import cli
    from simd.embedder import Embedder

    for i in range(3):
        make_photo(library / f"p{i}.jpg", seed=i)
    monkeypatch.setattr(Embedder, "from_config", classmethod(lambda cls, config: PixelEmbedder()))

    def full(self, *args, **kwargs):
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(Store, "put_ok", full)
    code = cli.main(["index", str(library), "--state-dir", str(state_dir)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and err == [
        f"simd: cannot write the index {state_dir / 'index.db'}: database or disk is full; "
        "run `simd index` again when it can be"
    ], err
    monkeypatch.undo()
    monkeypatch.setattr(Embedder, "from_config", classmethod(lambda cls, config: PixelEmbedder()))
    assert cli.main(["index", str(library), "--state-dir", str(state_dir)]) == 0


def test_pending_counts_a_path_handed_in_again_once(library, state_dir):
    """A file written in bursts settles, changes and settles again: the watcher hands its path in
    each time. `pending` counts the files waiting, not the hand-ins (300 new files showed 346-511)."""
    for i in range(3):
        make_photo(library / f"p{i}.jpg", seed=i)
    embedder = PixelEmbedder()
    runtime = Runtime(model=embedder.model_id)
    w = IndexWorker(state_dir / "index.db", library, embedder, VectorIndex(embedder.dim), IgnoreRules([]), runtime)
    w.submit({"p0.jpg", "p1.jpg"})
    w.submit({"p1.jpg", "p2.jpg"})
    w.submit({"p0.jpg"})
    assert runtime.snapshot()["pending"] == 3
    w.start()
    try:
        deadline = time.monotonic() + 20
        while not (w.runs and runtime.snapshot()["phase"] == "idle"):
            assert time.monotonic() < deadline, runtime.snapshot()
            time.sleep(0.05)
        assert runtime.snapshot()["pending"] == 0
        w.submit({"p0.jpg"})  # taken by a run and handed in again: waiting again, once
        while not (w.runs >= 2 and runtime.snapshot()["phase"] == "idle"):
            assert time.monotonic() < deadline, runtime.snapshot()
            time.sleep(0.05)
        assert runtime.snapshot()["pending"] == 0
        with Store(state_dir / "index.db", readonly=True) as reader:
            assert sorted(reader.records()) == ["p0.jpg", "p1.jpg", "p2.jpg"]
    finally:
        assert w.stop()


def test_pending_counts_a_path_handed_in_again_during_its_run_once(library, state_dir, phone_jpeg):
    """The watcher hands a file in again while the run that has it in its plan is embedding it: it is
    counted once (the plan's), and waits again only once that run is over."""
    for i in range(3):
        shutil.copyfile(phone_jpeg, library / f"p{i}.jpg")
    entered, release = threading.Event(), threading.Event()

    class Gated(PixelEmbedder):
        def embed_files(self, paths, *, stop=None):
            entered.set()
            assert release.wait(30)
            return super().embed_files(paths, stop=stop)

    embedder = Gated()
    runtime = Runtime(model=embedder.model_id)
    w = IndexWorker(state_dir / "index.db", library, embedder, VectorIndex(embedder.dim), IgnoreRules([]), runtime)
    w.start()
    try:
        w.submit({"p0.jpg", "p1.jpg", "p2.jpg"})
        assert entered.wait(20)
        assert runtime.snapshot()["pending"] == 3  # the run's plan
        w.submit({"p0.jpg", "p1.jpg", "p2.jpg"})  # handed in again mid-run
        w.submit({"p1.jpg"})
        assert runtime.snapshot()["pending"] == 3, runtime.snapshot()
        release.set()
        deadline = time.monotonic() + 30
        while not (w.runs >= 2 and runtime.snapshot()["phase"] == "idle" and w._queue.empty()):
            assert time.monotonic() < deadline, runtime.snapshot()
            time.sleep(0.05)
        assert runtime.snapshot()["pending"] == 0
        with Store(state_dir / "index.db", readonly=True) as reader:
            assert sorted(reader.records()) == ["p0.jpg", "p1.jpg", "p2.jpg"]
    finally:
        release.set()
        assert w.stop()


def test_pending_counts_the_queued_paths_and_the_planned_work():
    runtime = Runtime(phase="indexing")
    runtime.update(pending=61)  # the current run: 61 files left of its plan
    runtime.add_pending(1683)  # the watcher handed more while it ran
    assert runtime.snapshot()["pending"] == 1744
    runtime.add_pending(-1683)  # the next run takes them: its plan counts them from now on
    runtime.update(pending=1683)
    assert runtime.snapshot()["pending"] == 1683


def test_a_clean_close_leaves_the_whole_index_in_the_file(state_dir, tmp_path):
    db = state_dir / "index.db"
    reader = Store(db)  # another connection stays open, as the daemon's readers do
    with Store(db) as store, store.batch():
        for i in range(200):
            store.put_ok(f"p{i}.jpg", 1, 1, f"h{i}", "m", np.ones(256, np.float32))
        assert Path(f"{db}-wal").stat().st_size > 0
    assert Path(f"{db}-wal").stat().st_size == 0  # checkpointed and emptied on close
    copy = tmp_path / "copy.db"
    shutil.copyfile(db, copy)  # the file alone, as a backup that forgets the -wal would be
    with sqlite3.connect(copy) as con:
        assert con.execute("SELECT count(*) FROM images").fetchone()[0] == 200
    reader.close()


# -- end to end: `simd serve` -------------------------------------------------------------------


@contextlib.contextmanager
def tmpfs(path: Path, options: str) -> Iterator[Path]:
    """A small tmpfs at `path` (skips the test where this machine does not let it mount one)."""
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def photo_library(library: Path, phone_jpeg: Path, n: int = 3) -> int:
    shutil.copyfile(phone_jpeg, library / "PXL_20260601_120000.jpg")  # 12 MP, from a phone
    for i in range(n):
        make_photo(library / f"p{i}.jpg", seed=i)
    return n + 1


def http(url: str, timeout: float = 10) -> tuple[int, dict | bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            body = r.read()
            return r.status, json.loads(body) if r.headers.get_content_type() == "application/json" else body
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def similar_works(served: Served, n: int) -> None:
    hits = served.get("/api/similar?path=PXL_20260601_120000.jpg&k=10")["results"]
    assert len(hits) == n - 1 and all(h["path"] != "PXL_20260601_120000.jpg" for h in hits)


def test_serve_rebuilds_an_index_damaged_while_stopped(tmp_path, library, phone_jpeg):
    """The bar: a database damaged while simd is stopped; it starts, logs the rebuild, serves."""
    n = photo_library(library, phone_jpeg)
    state = tmp_path / "state"
    db = state / "index.db"
    served = Served(library, state)
    try:
        served.wait_idle(indexed=n)
        assert served.stop() == 0
        assert not Path(f"{db}-wal").exists() or Path(f"{db}-wal").stat().st_size == 0  # all in index.db

        # 1. garbage bytes inside one stored vector: integrity_check still says "ok"
        with contextlib.closing(sqlite3.connect(db)) as con:
            blob = con.execute("SELECT vector FROM images WHERE path = 'PXL_20260601_120000.jpg'").fetchone()[0]
        data = db.read_bytes()
        at = data.index(blob[1000:1064])
        with open(db, "r+b") as f:
            f.seek(at)
            f.write(b"\xff" * 64)  # NaN
        assert quick_check(db) == "ok"
        served = Served(library, state)
        st = served.wait_idle(indexed=n)
        assert st["embedded"] == 1, st  # that photo alone is embedded again
        similar_works(served, n)
        assert "held 1 invalid vectors" in served.output() and "Traceback" not in served.output()
        assert served.stop() == 0

        # 2. b-tree damage: pages in the middle of the file overwritten
        damage_pages(db)
        assert quick_check(db) != "ok"
        served = Served(library, state)
        st = served.wait_idle(indexed=n)
        assert st["embedded"] == n
        similar_works(served, n)
        [kept] = damaged_copies(state)
        log = served.output()
        assert f"the index {db} is damaged (" in log and f"moved it aside to {kept.name}" in log, log
        assert "created a new, empty index" in log and "Traceback" not in log
        assert served.stop() == 0
    finally:
        served.stop()


def test_a_full_disk_rolls_back_shows_in_status_and_resumes_by_itself(tmp_path, library, phone_jpeg):
    """A real full disk: the state dir on an 8 MB tmpfs, filled up while the daemon runs."""
    n = photo_library(library, phone_jpeg)
    with tmpfs(tmp_path / "state", "size=8m,mode=0700") as state:  # the daemon's log stays outside
        small = state
        served = Served(library, state)
        try:
            served.wait_idle(indexed=n)
            with open(small / "filler", "wb", buffering=0) as f:  # take every byte left
                with contextlib.suppress(OSError):
                    while f.write(b"\0" * 65536):
                        pass
            for i in range(30):
                make_photo(library / "new" / f"n{i}.jpg", seed=100 + i)

            def refused():  # and every new file counted as waiting (the watcher hands them over in batches)
                st = served.get("/api/status")
                return st["state"] == "indexing" and st["retrying"] and st["pending"] >= 30 and st

            st = served.wait_until(refused, 60, "the write refused")
            assert "database or disk is full" in st["last_error"], st
            assert st["indexed"] == n  # rolled back: nothing of the refused run is in the index
            image_id = served.get("/api/images?limit=1")["images"][0]["id"]
            status, body = http(f"{served.url}/api/images/{image_id}/thumb")
            assert status == 503 and "No space left on device" in body["error"]["message"], body
            # stopped and started again on the full disk: it starts, serves, and waits for room
            assert served.stop() == 0
            log = served.log_path.read_text()
            assert "ERROR simd.worker: cannot write the index: database or disk is full" in log
            served = Served(library, state)
            st = served.wait_until(refused, 90, "the write refused again")
            assert st["indexed"] == n, st
            similar_works(served, n)
            (small / "filler").unlink()
            freed = time.monotonic()
            served.wait_idle(indexed=n + 30, timeout=120)  # no rescan asked
            resumed = time.monotonic() - freed
            assert http(f"{served.url}/api/images/{image_id}/thumb")[0] == 200
            log += served.output()
            assert "indexing resumed" in log and "Traceback" not in log
            print(f"resumed {resumed:.1f} s after the space returned")
            assert served.stop() == 0
        finally:
            served.stop()


def test_a_huge_file_does_not_hold_the_queue_and_a_stop_does_not_wait_for_it(tmp_path, library, phone_jpeg):
    n = photo_library(library, phone_jpeg)
    zeros_after_header(phone_jpeg, library / "a-junk.jpg", 300 << 20)  # sorted first: read first
    zeros_after_header(phone_jpeg, library / "a-huge.jpg", 1 << 30, cut="after_scan")
    served = Served(library, tmp_path / "state")
    try:
        served.wait_idle(indexed=n)
        errors = {e["path"]: e["error"] for e in served.get("/api/errors")["errors"]}
        assert errors["a-junk.jpg"].startswith("no picture") and errors["a-huge.jpg"].startswith("too large")
        [line] = [line for line in served.output().splitlines() if "reconcile: " in line]
        took = float(line.rsplit("(", 1)[1].split(" s)")[0])
        assert took < 30, took  # unbounded, a-junk.jpg alone held the queue about a minute

        # A 120 MP header may be followed by 7.7 GB: this 6 GB one is hashed. Stop while it is.
        data = bytearray(phone_jpeg.read_bytes())
        sof = data.index(b"\xff\xc0")
        data[sof + 5 : sof + 9] = (10_000).to_bytes(2, "big") + (12_000).to_bytes(2, "big")
        sos = data.index(b"\xff\xda")
        big = tmp_path / "big.jpg"
        big.write_bytes(bytes(data[: sos + 2 + int.from_bytes(data[sos + 2 : sos + 4], "big")]))
        with open(big, "r+b") as f:
            f.truncate(6 << 30)
        read_before = read_bytes(served.proc.pid)
        os.rename(big, library / "big.jpg")
        served.wait_until(lambda: read_bytes(served.proc.pid) > read_before + (1 << 30), 60, "hashing under way")
        served.proc.send_signal(15)
        started = time.monotonic()
        served.proc.wait(30)
        took = time.monotonic() - started
        assert served.proc.returncode == 0 and took < 10, f"{took:.1f} s"
        assert "did not" not in served.output()  # every thread stopped in time
        print(f"stopped {took:.1f} s after SIGTERM while a 6 GB file was being hashed")
    finally:
        served.stop()


def read_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/io") as f:
        return int(next(line for line in f if line.startswith("rchar:")).split()[1])


# -- an unusable state dir ----------------------------------------------------------------------


def simd_cli(*args: str, user: int | None = None) -> subprocess.CompletedProcess:
    """`simd ARGS` in a child; `user`: drop to that uid first (root writes anywhere)."""
    drop = f"os.setgroups([]); os.setgid({user}); os.setuid({user}); " if user is not None else ""
    # everything imported first: nobody may not read the interpreter's own directories
    code = (
        f"import os, sys, gettext, locale, simd.commands; from simd.cli import main; {drop}sys.exit(main(sys.argv[1:]))"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "SIMD_WEIGHTS_DOWNLOAD": "0"}
    return subprocess.run(
        [sys.executable, "-c", code, *args], cwd=REPO, capture_output=True, text=True, env=env, timeout=120
    )


def one_line_error(done: subprocess.CompletedProcess, expected: str) -> None:
    assert done.returncode == 1, (done.returncode, done.stderr)
    assert done.stderr.strip().splitlines() == [f"simd: {expected}"], done.stderr


def test_an_unusable_state_dir_is_one_line_and_exit_1(tmp_path, library):
    make_photo(library / "a.jpg", seed=1)
    state = tmp_path / "state"
    state.write_text("not a directory")
    for command in ("index", "serve"):
        done = simd_cli(command, str(library), "--state-dir", str(state), "--model", "efficientnet-lite0")
        one_line_error(done, f"state dir {state} is a file, not a directory; remove it or pass another --state-dir")

    with tmpfs(tmp_path / "noinodes", "size=1m,nr_inodes=1") as full:  # no room for one more entry
        done = simd_cli("index", str(library), "--state-dir", str(full / "state"))
        one_line_error(done, f"cannot create state dir {full / 'state'}: No space left on device")

    with tmpfs(tmp_path / "ro", "size=4m") as ro:
        claim(library, ro / "state").release()  # an index was made there, then the disk went read-only
        subprocess.run(["mount", "-o", "remount,ro", str(ro)], check=True)
        for command in ("index", "serve"):
            done = simd_cli(command, str(library), "--state-dir", str(ro / "state"))
            one_line_error(done, f"cannot write in state dir {ro / 'state'}: Read-only file system")

    if os.geteuid() == 0:  # root writes anywhere: the child drops to nobody
        shared = Path(tempfile.mkdtemp(prefix="simd-perm-"))
        try:
            shared.chmod(0o755)
            (shared / "library").mkdir(mode=0o755)
            make_photo(shared / "library" / "a.jpg", seed=1).chmod(0o644)
            (shared / "state").mkdir(mode=0o755)  # root's: nobody may not write in it
            done = simd_cli("index", str(shared / "library"), "--state-dir", str(shared / "state"), user=65534)
            if "No module named" in done.stderr or "Permission denied: '/work" in done.stderr:
                pytest.skip(f"nobody cannot run simd from this checkout: {done.stderr[-200:]}")
            one_line_error(done, f"cannot write in state dir {shared / 'state'}: Permission denied")
        finally:
            shutil.rmtree(shared)


# -- damage met by a read, while serving ---------------------------------------------------------


def damage_table_root(db: Path, table: str = "images") -> None:
    """Random bytes over the table's root page: every read of the table meets them."""
    with contextlib.closing(sqlite3.connect(db)) as con:
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        page_size = con.execute("PRAGMA page_size").fetchone()[0]
        root = con.execute("SELECT rootpage FROM sqlite_master WHERE name = ?", (table,)).fetchone()[0]
    with open(db, "r+b") as f:
        f.seek(page_size * (root - 1))
        f.write(np.random.default_rng(1).bytes(page_size))


def test_a_read_that_meets_damage_answers_503_and_notes_it_for_the_rebuild(tmp_path, phone_jpeg, caplog):
    """A real waitress server over a real SQLite file whose table pages are overwritten while it
    serves: the request gets 503 index_damaged (not a 500 and a traceback), the damage is noted
    beside the file as the writer notes it, so the daemon stops and its next start rebuilds."""
    from webfixtures import build_env, web_config

    from simd.web import create_app
    from simd.web.server import Server

    env = build_env(tmp_path, count=3, size=(320, 240))
    shutil.copyfile(phone_jpeg, env.path_of("PXL_20260601_120000.jpg"))
    iid = env.add("PXL_20260601_120000.jpg")
    server = Server(create_app(web_config(), env.service), "127.0.0.1", 0, threads=2).start()
    try:
        damage_table_root(env.db)
        with caplog.at_level(logging.ERROR, logger="simd"):
            for query in (f"/api/similar?id={iid}", "/api/status", "/api/similar?path=PXL_20260601_120000.jpg"):
                status, body = http(server.url + query)
                assert status == 503, (query, body)
                assert body["error"]["code"] == "index_damaged", body
                assert "restarts and rebuilds" in body["error"]["message"]
        assert env.service.damaged and "malformed" in env.service.damaged
        assert Path(f"{env.db}.suspect").read_text().strip() == env.service.damaged
        assert env.runtime.snapshot()["last_error"].startswith("the index is damaged")
        assert caplog.text.count("a read found the index") == 1  # once, not once per request
        assert "Traceback" not in caplog.text and "unexpected error" not in caplog.text
    finally:
        assert server.stop()


def test_the_daemon_stops_with_exit_1_when_a_read_found_damage(tmp_path, library):
    """The daemon's loop, with a real search service that a request found damaged (as above)."""
    from simd.daemon import Daemon
    from simd.search import SearchService

    config = cfg.load(None, {"library": str(library), "state_dir": str(tmp_path / "state")}, environ={})
    daemon = Daemon(config)
    daemon.service = SearchService(tmp_path / "index.db", library, tmp_path, daemon.runtime)
    daemon.service.report_damage("database disk image is malformed")
    finished = threading.Event()
    threading.Thread(target=lambda: (daemon._loop(), finished.set()), daemon=True).start()
    assert finished.wait(5), "the loop must end by itself"
    assert daemon.exit_code == 1 and Path(tmp_path / "index.db.suspect").exists()
