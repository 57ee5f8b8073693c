"""The stored pairs of copies and the listing, on a real SQLite index written by the real Reconciler
(small photos; `PixelEmbedder` vectors, with thresholds set for them): the hook keeps pairs in step
with additions, moves, changes and deletions; the background build stores the same pairs; the
listing's cache follows every change; dismissals and uncalibrated models behave as documented."""

from __future__ import annotations

import os
import shutil
import threading
import time

import numpy as np
import pytest
from fakes import PixelEmbedder
from images import make_photo
from PIL import Image

from simd import dupindex, duptrash, dupverdicts
from simd.dupbuild import PairsBuilder
from simd.duplicates import DUPLICATE_THRESHOLDS, Thresholds
from simd.dupservice import DuplicatesService
from simd.errors import BadRequest, NotFound
from simd.ignore import IgnoreRules
from simd.indexer import Reconciler
from simd.runtime import Runtime
from simd.store import Store
from simd.vectors import VectorIndex


@pytest.fixture
def calibrated(monkeypatch):
    # 8x8 pixel vectors of different photos score ~0.9: copies are above 0.995
    monkeypatch.setitem(DUPLICATE_THRESHOLDS, "pixels", Thresholds(0.995, 0.99, 0.99))


def resized(src, dest, scale=0.5):
    dest.parent.mkdir(parents=True, exist_ok=True)
    with Image.open(src) as img:
        img.resize((int(img.width * scale), int(img.height * scale)), Image.Resampling.LANCZOS).save(dest, quality=85)


class Index:
    def __init__(self, library, state_dir, *, hook=True):
        self.library = library
        self.db = state_dir / "index.db"
        self.store = Store(self.db)
        self.embedder = PixelEmbedder()
        self.vectors = VectorIndex(self.embedder.dim)
        self.dup = dupindex.DupIndex("pixels", self.vectors, library) if hook else None
        self.rec = Reconciler(library, self.store, self.embedder, self.vectors, IgnoreRules(), duplicates=self.dup)
        self.runtime = Runtime("idle", model="pixels")
        self.service = DuplicatesService(self.db, library, self.runtime)

    def run(self):
        return self.rec.run()

    def pairs(self):
        return {(a, b) for a, b, _ in dupindex.load_pairs(self.store, "pixels")}

    def groups(self, **kw):
        return [{m["path"] for m in g["images"]} for g in self.service.listing(limit=500, **kw)["groups"]]

    def close(self):
        self.store.close()


@pytest.fixture
def index(tmp_path, library, calibrated):
    make_photo(library / "a.jpg", (320, 240), seed=1)
    make_photo(library / "b.jpg", (320, 240), seed=2)
    make_photo(library / "c.png", (320, 240), seed=3)
    idx = Index(library, tmp_path / "state")
    yield idx
    idx.close()


def test_the_hook_keeps_pairs_in_step_and_a_move_costs_nothing(index, library):
    index.run()
    assert index.pairs() == set() and index.groups() == []
    shutil.copy(library / "a.jpg", library / "a copy.jpg")
    resized(library / "a.jpg", library / "small" / "a.jpg")
    index.run()
    assert len(index.pairs()) == 1  # a and its resized copy; the identical copy needs no pair
    assert index.groups() == [{"a.jpg", "a copy.jpg", "small/a.jpg"}]
    scored = index.dup.scored
    (library / "small").rename(library / "moved")
    index.run()
    assert index.dup.scored == scored, "a move reuses the vector and the pairs"
    assert index.groups() == [{"a.jpg", "a copy.jpg", "moved/a.jpg"}]
    make_photo(library / "moved" / "a.jpg", (320, 240), seed=9)  # new content at the same path
    index.run()
    assert index.pairs() == set(), "the old content's pair went with it"
    assert index.groups() == [{"a.jpg", "a copy.jpg"}]
    (library / "a copy.jpg").unlink()
    index.run()
    assert index.groups() == []


def test_the_background_build_stores_what_the_hook_would(tmp_path, library, calibrated):
    for i in range(6):
        make_photo(library / f"p{i}.jpg", (160, 120), seed=i)
        resized(library / f"p{i}.jpg", library / "copies" / f"p{i}.jpg", 0.8)
    with_hook = Index(library, tmp_path / "hook")
    with_hook.run()
    without = Index(library, tmp_path / "nohook", hook=False)
    without.run()
    try:
        assert without.pairs() == set() and not dupindex.is_built(without.store, "pixels")
        assert without.service.listing()["complete"] is False
        tasks = []
        builder = PairsBuilder(without.db, "pixels", without.vectors, without.runtime, tasks.append, root=library)
        builder.start()
        deadline = time.monotonic() + 30
        while builder.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not builder.is_alive() and len(tasks) == 1  # ran to the end, handed its result over
        tasks[0](without.store)  # what the writer does with it
        assert without.runtime.duplicates["state"] == "ready"
        assert without.runtime.duplicates["done"] == without.runtime.duplicates["total"] >= 1
        assert without.pairs() == with_hook.pairs() and len(without.pairs()) == 6
        listed = without.service.listing()
        assert listed["complete"] is True and listed["total"] == 6
    finally:
        with_hook.close()
        without.close()


def test_a_stopped_build_stores_nothing(tmp_path, library, calibrated):
    for i in range(3):
        make_photo(library / f"{i}.jpg", seed=i)
    idx = Index(library, tmp_path / "s", hook=False)
    idx.run()
    tasks = []
    stop_now = threading.Event()
    builder = PairsBuilder(idx.db, "pixels", idx.vectors, idx.runtime, tasks.append)
    builder._stop = stop_now
    stop_now.set()
    builder.start()
    assert builder.stop(10) and tasks == []
    idx.close()


def test_listing_is_cached_until_something_changes(index, library):
    shutil.copy(library / "a.jpg", library / "a2.jpg")
    index.run()
    svc = index.service
    first = svc.listing()
    assert svc.listing() == first and svc.computed == 1
    assert svc.listing(tier="near-duplicate")["total"] == 0 and svc.computed == 1  # a filter of the same grouping
    resized(library / "b.jpg", library / "b-small.jpg")
    index.run()
    assert svc.listing()["total"] == 2 and svc.computed == 2
    ids = [m["id"] for m in first["groups"][0]["images"]]
    assert svc.dismiss({"images": ids}) == {"dismissed_pairs": 1}
    assert [len(g["images"]) for g in svc.listing()["groups"]] == [2] and svc.computed == 3
    assert index.groups() == [{"b.jpg", "b-small.jpg"}]
    # identical copies dismissed as 2: a third copy shows the group again
    shutil.copy(library / "a.jpg", library / "a3.jpg")
    index.run()
    assert {"a.jpg", "a2.jpg", "a3.jpg"} in index.groups()


def test_keeper_and_fields(index, library):
    resized(library / "a.jpg", library / "deep" / "folder" / "a-small.jpg")
    index.run()
    (group,) = index.service.listing()["groups"]
    keeper, other = group["images"]
    assert keeper["path"] == "a.jpg" and (keeper["width"], keeper["height"]) == (320, 240)
    assert (other["width"], other["height"]) == (160, 120) and other["format"] == "jpeg"
    assert group["keep"]["decided_by"] == "most_pixels" and "320x240" in group["keep"]["steps"][0]["reason"]
    assert group["reclaimable_bytes"] == other["bytes"] == (library / "deep/folder/a-small.jpg").stat().st_size
    assert keeper["thumb"].startswith(f"/api/images/{keeper['id']}/thumb?v=")


def test_an_uncalibrated_model_lists_identical_files_unless_given_a_threshold(tmp_path, library):
    make_photo(library / "a.jpg", seed=1)
    shutil.copy(library / "a.jpg", library / "a2.jpg")
    resized(library / "a.jpg", library / "a-small.jpg")
    idx = Index(library, tmp_path / "u")  # "pixels" has no thresholds here
    try:
        idx.run()
        out = idx.service.listing()
        assert out["calibrated"] is False and out["threshold"] == 1.0 and out["lowest"] == dupindex.UNCALIBRATED_LOWEST
        assert [g["tier"] for g in out["groups"]] == ["identical"]
        assert idx.groups(threshold="0.95") == [{"a.jpg", "a2.jpg", "a-small.jpg"}]
        with pytest.raises(BadRequest, match="threshold must be from 0.9"):
            idx.service.listing(threshold="0.5")
    finally:
        idx.close()


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (None, BadRequest),
        ([1, 2], BadRequest),
        ({"images": [1]}, BadRequest),
        ({"images": ["1", "2"]}, BadRequest),
        ({"images": [1, 987654]}, NotFound),
        ({"images": [1, -5]}, NotFound),
        ({"images": list(range(20000))}, BadRequest),
    ],
)
def test_dismiss_refuses_bad_bodies(index, body, error):
    index.run()
    with pytest.raises(error):
        index.service.dismiss(body)


def test_trash_is_refused_when_disabled_and_when_the_library_is_read_only(index, library, monkeypatch):
    shutil.copy(library / "a.jpg", library / "a2.jpg")
    index.run()
    ids = [m["id"] for m in index.service.listing()["groups"][0]["images"]]
    with pytest.raises(duptrash.TrashDisabled, match="allow_trash = true"):
        index.service.trash({"images": ids[1:]})
    index.service.allow_trash = True
    with pytest.raises(duptrash.WouldTrashAll):
        index.service.trash({"images": ids})
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if mode == os.W_OK else real_access(p, mode))
    with pytest.raises(duptrash.LibraryReadOnly, match="ProtectHome=read-only.*ReadWritePaths=") as e:
        index.service.trash({"images": ids[1:]})
    assert e.value.http_status == 409 and e.value.code == "library_read_only"
    assert (library / "a2.jpg").is_file()


def test_pairs_for_the_hook_match_a_full_product(index, library):
    """The hook's pairs are exactly those a naive full product finds (every pair of contents >= lowest)."""
    for i in range(4):
        resized(library / "a.jpg", library / f"v{i}.jpg", 0.9 - 0.1 * i)
    index.run()
    ids, matrix = index.vectors.snapshot()
    s = matrix.astype(np.float64) @ matrix.astype(np.float64).T
    hash_of = dupindex.hashes_of(index.store, ids.tolist())
    want = set()
    for i, j in zip(*np.nonzero(np.triu(s >= index.dup.lowest, 1)), strict=True):
        a, b = hash_of[int(ids[i])], hash_of[int(ids[j])]
        if a != b:
            want.add((min(a, b), max(a, b)))
    assert index.pairs() == want and len(want) >= 10


def test_the_api_refuses_bad_bodies_with_the_error_shape(tmp_path):
    from webfixtures import build_env, web_config

    from simd.web import create_app

    env = build_env(tmp_path, count=3, size=(64, 48))
    client = create_app(web_config(), env.service).test_client()
    for body, status in [
        (b"[" * 100_000 + b"]" * 100_000, 400),  # past the JSON parser's recursion limit
        (b"\xff\xfe", 400),
        (b'{"images": [1e400, 2]}', 400),
        (b" " * (2 << 20), 413),
    ]:
        r = client.post("/api/duplicates/dismiss", data=body, content_type="application/json")
        assert r.status_code == status and set(r.get_json()["error"]) == {"code", "message"}, r.get_data()[:200]
    assert client.get("/api/duplicates?limit=501").status_code == 400


def test_a_bad_keep_rule_is_a_usage_error(tmp_path, monkeypatch, capsys):
    from simd.cli import main

    monkeypatch.setenv("SIMD_KEEP_RULES", "most_pixels,biggest")
    assert main(["status", "--state-dir", str(tmp_path)]) == 2
    assert "keep_rules: unknown keep rule 'biggest'" in capsys.readouterr().err


def test_simd_index_keeps_built_pairs_fresh(tmp_path, library, calibrated, monkeypatch, capsys):
    """`simd index` (no daemon) on an index whose pairs a daemon built: new copies get their pairs."""
    import argparse

    from simd import commands
    from simd.config import Config

    monkeypatch.setattr(commands.Embedder, "from_config", staticmethod(lambda config, **kw: PixelEmbedder()))
    make_photo(library / "a.jpg", (320, 240), seed=1)
    config = Config({"library": str(library), "state_dir": str(tmp_path / "state")})
    args = argparse.Namespace(json=True, allow_mass_delete=False)
    assert commands.cmd_index(config, args) == 0
    with Store(config.state_path / "index.db") as store:
        assert not dupindex.is_built(store, "pixels")
        dupindex.store_build(
            store, "pixels", dupindex.pairs_for([], np.empty((0, 192)), np.empty((0, 192)), [], 0.9), {}
        )
    resized(library / "a.jpg", library / "b" / "a-small.jpg")
    assert commands.cmd_index(config, args) == 0
    with Store(config.state_path / "index.db") as store:
        assert len(dupindex.load_pairs(store, "pixels")) == 1
        image_id = store.get_by_path("b/a-small.jpg")["id"]
        # its size recorded as it was indexed
        assert store.execute("SELECT width, height, format FROM images WHERE id = ?", [image_id]) == [
            (160, 120, "jpeg")
        ]
    capsys.readouterr()


def test_trash_never_empties_a_group_the_index_has_not_caught_up_with(index, library, tmp_path, monkeypatch):
    """The listing lags the disk (the watcher's settle delay, no inotify on NFS): a copy trashed a
    moment ago, or a keeper gone from disk, must not count as the copy that stays."""
    (tmp_path / "home").mkdir()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    shutil.copy(library / "a.jpg", library / "a copy.jpg")
    resized(library / "a.jpg", library / "small" / "a.jpg")
    index.run()
    service = DuplicatesService(index.db, library, index.runtime, allow_trash=True)
    a, copy, small = (index.store.get_by_path(p)["id"] for p in ("a.jpg", "a copy.jpg", "small/a.jpg"))
    assert service.trash({"images": [copy]}) == {"trashed": ["a copy.jpg"], "failed": []}
    # the index still lists "a copy.jpg": without the check, these two were "not every member"
    with pytest.raises(duptrash.WouldTrashAll):
        service.trash({"images": [a, small]})
    assert (library / "a.jpg").is_file() and (library / "small" / "a.jpg").is_file()
    (library / "a.jpg").unlink()  # the keeper deleted by hand; the index does not know yet
    with pytest.raises(duptrash.WouldTrashAll, match="leave at least one"):
        service.trash({"images": [small]})
    assert (library / "small" / "a.jpg").is_file()
    index.run()  # the index catches up: a and its copy are gone, no group is left to trash from
    with pytest.raises(duptrash.NotADuplicate):
        service.trash({"images": [small]})


def test_trash_skips_a_file_changed_since_it_was_indexed(index, library, tmp_path, monkeypatch):
    (tmp_path / "home").mkdir()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    resized(library / "a.jpg", library / "small" / "a.jpg")
    index.run()
    service = DuplicatesService(index.db, library, index.runtime, allow_trash=True)
    small = index.store.get_by_path("small/a.jpg")["id"]
    make_photo(library / "small" / "a.jpg", (320, 240), seed=7)  # other content, not indexed yet
    out = service.trash({"images": [small]})
    assert out["trashed"] == [] and out["failed"][0]["path"] == "small/a.jpg"
    assert "changed or gone since it was indexed" in out["failed"][0]["error"]
    assert (library / "small" / "a.jpg").is_file()


def test_a_file_changed_to_known_bytes_lends_its_old_likeness_to_no_pair(index, library, tmp_path):
    """In one chunk: a.jpg is overwritten with a copy of b.jpg, and new.jpg (a resized a.jpg, from
    before) arrives. Until the chunk is applied the matrix holds a.jpg's old vector: new.jpg must
    not be paired with b's content for a likeness that was a.jpg's."""
    index.run()
    resized(library / "a.jpg", tmp_path / "a-small.jpg", 0.8)  # the old picture, kept outside
    shutil.copy(library / "b.jpg", library / "a.jpg")
    shutil.copy(tmp_path / "a-small.jpg", library / "new.jpg")
    index.run()
    assert index.groups() == [{"a.jpg", "b.jpg"}]
    assert index.pairs() == set()


def test_a_dismissal_names_at_most_500_images(index):
    """Every pair of their contents is stored: 10,000 ids would be ~50M rows in one transaction."""
    index.run()
    with pytest.raises(BadRequest, match="from 2 to 500 distinct ids, got 501"):
        index.service.dismiss({"images": list(range(1, 502))})


def test_lookups_by_content_use_the_hash_index_not_a_scan_of_the_model(tmp_path):
    """The writer asks "which of these contents are known?" for every chunk, and the indexer "is there
    a vector of these bytes?" for every new file: each must be a lookup by hash. Without statistics,
    SQLite prefers the two-column (model, state) index, a scan of every row of the model (24 ms a
    call at 30k images, found by the duplicates benchmark)."""
    dim, n = 8, 300
    rng = np.random.default_rng(0)
    with Store(tmp_path / "index.db") as store:
        with store.batch():
            for i in range(n):
                store.put_ok(f"a/{i}.jpg", 1000, 0, f"{i:032x}", "m", rng.standard_normal(dim).astype(np.float32))
        conn = store.db.conn
        seen: list[str] = []
        conn.set_trace_callback(seen.append)
        try:
            asked = [f"{i:032x}" for i in (3, 7)] + ["f" * 32]
            assert dupindex.known_hashes(store, "m", asked) == set(asked[:2])
            assert store.vector_for_hash(asked[0], "m") is not None
            assert store.vector_for_hash("f" * 32, "m") is None
            assert set(dupindex.ids_by_hash(store, "m", asked)) == set(asked[:2])
            assert [p for p, _, _ in dupverdicts.files_of(store, "m", asked[1])] == ["a/7.jpg"]
            with store.batch():
                dupindex.prune(store, "m", ["f" * 32])
        finally:
            conn.set_trace_callback(None)
        lookups = [s for s in seen if s.lstrip().upper().startswith(("SELECT", "DELETE")) and "hash" in s]
        assert len(lookups) >= 5, seen
        for sql in lookups:
            plan = " ".join(str(row[-1]) for row in conn.execute("EXPLAIN QUERY PLAN " + sql))
            assert "images_model_state" not in plan and " SCAN " not in f" {plan} ", (sql, plan)
