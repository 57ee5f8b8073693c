"""Reconcile behaviour on a real folder and a real SQLite file, with the pixel embedder."""

from __future__ import annotations

import os
import shutil
import threading

import numpy as np
import pytest
from PIL import Image

from simd.errors import LibraryOffline
from simd.ignore import IgnoreRules
from simd.indexer import Reconciler
from simd.store import Store
from simd.storehealth import integrity_problem
from simd.vectors import VectorIndex
from tests.fakes import PixelEmbedder


def write_image(path, seed: int, fmt: str = "PNG") -> None:
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(blocks).resize((64, 48), Image.NEAREST).save(path, fmt)


@pytest.fixture
def env(library, state_dir):
    store = Store(state_dir / "index.db")
    embedder = PixelEmbedder()
    vectors = VectorIndex(embedder.dim)
    rec = Reconciler(library, store, embedder, vectors, IgnoreRules([]), chunk_size=4)
    yield library, store, embedder, vectors, rec
    store.close()


def paths_in(store):
    return {p: (r.state, r.hash) for p, r in store.records().items()}


def test_new_files_indexed_then_nothing_to_do(env):
    root, store, emb, vectors, rec = env
    for i in range(10):
        write_image(root / f"d{i % 3}" / f"img{i}.png", i)
    s = rec.run()
    assert (s.new, s.embedded, s.failed, s.deleted) == (10, 10, 0, 0)
    assert len(vectors) == 10 and store.counts(emb.model_id)["indexed"] == 10
    s2 = rec.run()
    assert (s2.new, s2.embedded, s2.unchanged) == (0, 0, 10)
    assert emb.images_embedded == 10


def test_touch_same_bytes_updates_stat_without_model_call(env):
    root, store, emb, vectors, rec = env
    write_image(root / "a.png", 1)
    rec.run()
    st = os.stat(root / "a.png")
    os.utime(root / "a.png", ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    s = rec.run()
    assert (s.touched, s.embedded, s.changed) == (1, 0, 0)
    assert store.records()["a.png"].mtime_ns == st.st_mtime_ns + 5_000_000_000
    assert rec.run().unchanged == 1


def test_changed_content_is_reembedded(env):
    root, store, emb, vectors, rec = env
    write_image(root / "a.png", 1)
    rec.run()
    before = store.vector_of(store.get_by_path("a.png")["id"], emb.model_id)
    write_image(root / "a.png", 2)
    os.utime(root / "a.png", ns=(1, 10**18))
    s = rec.run()
    assert (s.changed, s.embedded) == (1, 1)
    after = store.vector_of(store.get_by_path("a.png")["id"], emb.model_id)
    assert not np.allclose(before, after)


def test_rename_and_directory_move_reuse_vectors_with_zero_model_calls(env):
    root, store, emb, vectors, rec = env
    for i in range(6):
        write_image(root / "trip" / f"p{i}.png", i)
    write_image(root / "solo.png", 99)
    rec.run()
    calls = emb.images_embedded
    old = {p: store.vector_of(store.get_by_path(p)["id"], emb.model_id) for p in store.records()}
    os.rename(root / "solo.png", root / "Solo-renamed.png")
    os.rename(root / "trip", root / "2024 trip")
    s = rec.run()
    assert emb.images_embedded == calls, "a rename or move must not call the model"
    assert (s.moved, s.deleted, s.new, s.embedded) == (7, 0, 0, 0)
    assert set(store.records()) == {"Solo-renamed.png"} | {f"2024 trip/p{i}.png" for i in range(6)}
    np.testing.assert_array_equal(
        store.vector_of(store.get_by_path("2024 trip/p3.png")["id"], emb.model_id), old["trip/p3.png"]
    )
    assert len(vectors) == 7


def test_move_in_two_partial_runs_still_reuses(env):
    """The watcher may report the source and destination of a move in separate batches."""
    root, store, emb, vectors, rec = env
    write_image(root / "a" / "x.png", 5)
    rec.run()
    calls = emb.images_embedded
    (root / "b").mkdir()
    os.rename(root / "a" / "x.png", root / "b" / "x.png")
    rec.run(paths={"a/x.png"})  # deletion first
    assert store.get_by_path("a/x.png") is None
    s = rec.run(paths={"b/x.png"})
    assert emb.images_embedded == calls and s.moved == 1


def test_copy_is_its_own_entry_without_model_call(env):
    root, store, emb, vectors, rec = env
    write_image(root / "a.png", 3)
    rec.run()
    shutil.copy(root / "a.png", root / "copy of a.png")
    s = rec.run()
    assert (s.copied, s.embedded, s.deleted) == (1, 0, 0)
    ids = [store.get_by_path(p)["id"] for p in ("a.png", "copy of a.png")]
    hits = vectors.search(vectors.get(ids[0]), 5, exclude_ids=[ids[0]])
    assert hits[0][0] == ids[1] and hits[0][1] == pytest.approx(1.0, abs=1e-5)


def test_deleted_files_leave_the_index(env):
    root, store, emb, vectors, rec = env
    deleted = []
    rec.on_deleted = deleted.extend
    write_image(root / "a.png", 1)
    write_image(root / "b.png", 2)
    rec.run()
    b_id = store.get_by_path("b.png")["id"]
    (root / "b.png").unlink()
    s = rec.run()
    assert s.deleted == 1 and set(store.records()) == {"a.png"} and len(vectors) == 1
    assert deleted == [b_id], "listeners (the thumbnail cache) learn which ids are gone"


@pytest.mark.parametrize("content", [b"", b"not an image at all", b"\x89PNG\r\n\x1a\n\x00\x00broken"])
def test_bad_file_recorded_once_and_not_retried_until_it_changes(env, content):
    root, store, emb, vectors, rec = env
    write_image(root / "good.png", 1)
    (root / "bad.jpg").write_bytes(content)
    s = rec.run()
    assert (s.new, s.failed) == (1, 1)
    [err] = store.errors()
    assert err["path"] == "bad.jpg" and err["error"]
    calls = emb.images_embedded
    assert rec.run().failed == 0 and emb.images_embedded == calls, "not retried while unchanged"
    write_image(root / "bad.jpg", 7, fmt="JPEG")
    s = rec.run()
    assert (s.changed, s.failed) == (1, 0) and store.errors() == []


def test_missing_root_deletes_nothing(env, tmp_path):
    root, store, emb, vectors, rec = env
    write_image(root / "a.png", 1)
    rec.run()
    shutil.rmtree(root)
    with pytest.raises(LibraryOffline, match="does not exist"):
        rec.run()
    root.mkdir()  # an empty mount point, as when a disk is unmounted
    with pytest.raises(LibraryOffline, match="empty"):
        rec.run()
    assert set(store.records()) == {"a.png"}


def test_ignored_and_hidden_files_and_symlinks_are_skipped(env, tmp_path):
    root, store, emb, vectors, rec = env
    write_image(root / "ok.png", 1)
    write_image(root / ".hidden.png", 2)
    write_image(root / ".cache" / "x.png", 3)
    write_image(root / "@eaDir" / "thumb.png", 4)
    write_image(root / "download.png.part", 5)
    write_image(tmp_path / "outside.png", 6)
    os.symlink(tmp_path / "outside.png", root / "link.png")
    rec.run()
    assert set(store.records()) == {"ok.png"}


def test_model_switch_reembeds_and_never_mixes_models(env):
    root, store, emb, vectors, rec = env
    for i in range(3):
        write_image(root / f"{i}.png", i)
    rec.run()
    other = PixelEmbedder("pixels-v2")
    rec2 = Reconciler(root, store, other, VectorIndex(other.dim), IgnoreRules([]))
    assert store.counts("pixels-v2")["stale"] == 3
    s = rec2.run()
    assert (s.reembedded, other.images_embedded) == (3, 3)
    ids, matrix = store.load_vectors("pixels-v2")
    assert len(ids) == 3 and store.load_vectors("pixels")[0].size == 0


def test_stop_event_interrupts_between_chunks_and_rerun_completes(library, state_dir):
    for i in range(12):
        write_image(library / f"{i:02}.png", i)
    store = Store(state_dir / "index.db")
    stop = threading.Event()
    emb = PixelEmbedder()
    calls = []

    def progress(phase, done, total):
        calls.append(done)
        if phase == "indexing" and done >= 4:
            stop.set()

    s = Reconciler(library, store, emb, None, IgnoreRules([]), chunk_size=4, on_progress=progress, stop=stop).run()
    assert s.interrupted and s.new == 4
    s2 = Reconciler(library, store, emb, None, IgnoreRules([]), chunk_size=4).run()
    assert s2.new == 8 and len(store.records()) == 12 and integrity_problem(store.db, quick=False) is None
    store.close()


def test_the_summary_adds_up_and_says_so(env, caplog):
    """new + changed + reembedded == embedded + reused, copies inside one chunk and across runs;
    `failed` is this run's failures, `failed_total` every failing file after it."""
    import logging

    root, store, emb, vectors, rec = env
    for i in range(6):
        write_image(root / f"img{i}.png", i)
    shutil.copy(root / "img0.png", root / "copy-in-the-same-run.png")
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    s = rec.run()
    assert (s.new, s.embedded, s.reused, s.copied, s.failed, s.failed_total) == (7, 6, 1, 1, 1, 1)
    assert s.new + s.changed + s.reembedded == s.embedded + s.reused
    assert (
        s.describe() == "7 new (6 embedded, 1 byte-identical to images already indexed), "
        "1 failed (1 failing in all: `simd errors`)"
    )
    shutil.copy(root / "img1.png", root / "later-copy.png")
    (root / "broken2.png").write_bytes(b"")
    with caplog.at_level(logging.INFO, logger="simd.indexer"):
        s = rec.run()
    assert (s.new, s.embedded, s.reused, s.failed, s.failed_total) == (1, 0, 1, 1, 2)
    assert "later-copy.png: byte-identical to an indexed image" in caplog.text
    s = rec.run()
    assert not s.did_something and s.describe() == "10 files, nothing to do" and s.failed_total == 2
