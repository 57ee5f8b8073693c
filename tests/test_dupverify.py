"""Verification of pairs of copies by their pixels (`simd.dupverify`, `dupverdicts`, `dupverifier`).

Real photos (scikit-image's, as phone photos: tests/images.py) and the edits people make of them: a
160 px thumbnail, an off-centre 60 % crop, a copy turned a quarter (pixels and EXIF), a mirrored
copy all verify as the same photo; different photos, and two shots of one textured subject, do not.
Then on a real index (SQLite, the real Reconciler and its hook, the background verifier handing its
verdicts to a writer): pairs of the ambiguous band link only once verified, verdicts survive a rename
and a rescan, and a file that no longer decodes leaves its pair unverified with the reason while the
job goes on.
"""

from __future__ import annotations

import os
import queue
import time

import numpy as np
import pytest
from fakes import PixelEmbedder
from images import make_header_only_png, make_phone_photo, phone_photo
from PIL import Image

from simd import cli, dupindex, dupverdicts, dupverify
from simd.duplicates import DUPLICATE_THRESHOLDS, Thresholds
from simd.dupservice import DuplicatesService
from simd.dupverifier import PairsVerifier
from simd.errors import ImageError
from simd.ignore import IgnoreRules
from simd.indexer import Reconciler
from simd.runtime import Runtime
from simd.store import Store
from simd.vectors import VectorIndex

SIZE = (1600, 1200)  # a phone photo's aspect; 12 MP in the slow test


def edits(src: Image.Image, out, stem: str = "") -> dict[str, object]:
    """The copies people make of a photo, written next to it."""
    w, h = src.size
    paths = {}
    thumb = src.copy()
    thumb.thumbnail((160, 160))
    for name, img in (
        ("thumb160", thumb),
        ("crop60", src.crop((int(w * 0.35), int(h * 0.05), int(w * 0.95), int(h * 0.65)))),  # off-centre
        ("rot90", src.transpose(Image.Transpose.ROTATE_90)),
        ("mirror", src.transpose(Image.Transpose.FLIP_LEFT_RIGHT)),
    ):
        paths[name] = out / f"{stem}{name}.jpg"
        img.save(paths[name], quality=85)
    # stored sideways with EXIF Orientation 6, as a phone held upright writes it
    paths["exif_rot"] = make_phone_photo(
        out / f"{stem}exif_rot.jpg", img=src.transpose(Image.Transpose.ROTATE_90), orientation=6
    )
    return paths


def feats_of(arr: np.ndarray) -> dupverify.Features:
    gray = dupverify.working_image(Image.fromarray(arr).convert("RGB"))
    return dupverify.Features(gray, *dupverify._detect(gray))


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    out = tmp_path_factory.mktemp("verify")
    src = phone_photo(0, size=SIZE)  # chelsea
    make_phone_photo(out / "original.jpg", img=src)
    return out / "original.jpg", edits(src, out)


@pytest.mark.parametrize("edit", ["thumb160", "crop60", "rot90", "exif_rot", "mirror"])
def test_an_edited_copy_is_the_same_photo(photos, edit):
    original, copies = photos
    a, b = dupverify.features(original), dupverify.features(copies[edit])
    assert dupverify.inliers(a, b) >= dupverify.MIN_INLIERS
    assert dupverify.same_photo(b, a)  # either way round


def test_different_photos_are_not_the_same_photo(tmp_path):
    from skimage import data

    shots = [phone_photo(seed, size=(800, 600)) for seed in range(4)]  # chelsea, coffee, astronaut, rocket
    f = [feats_of(np.asarray(s)) for s in shots]
    for i in range(4):
        for j in range(i + 1, 4):
            assert dupverify.inliers(f[i], f[j]) < dupverify.MIN_INLIERS
    # two shots of one subject: two parts of a brick wall, of gravel, of a page of text (repeated
    # shapes, the hardest case for local features: the kit's solar panels, letter boards)
    for name in ("brick", "gravel", "text", "page"):
        img = getattr(data, name)()
        h, w = img.shape[:2]
        left, right = feats_of(img[:, : w // 2]), feats_of(img[:, w // 2 :])
        assert dupverify.inliers(left, right) < dupverify.MIN_INLIERS, name


def test_a_file_that_does_not_decode_is_an_image_error(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0" + os.urandom(5000))
    with pytest.raises(ImageError):
        dupverify.features(bad)
    # a hostile header (a 10 gigapixel PNG of a few bytes) is refused before any pixel is allocated
    bomb = make_header_only_png(tmp_path / "bomb.png", 100_000, 100_000)
    started = time.monotonic()
    with pytest.raises(ImageError, match="too many pixels"):
        dupverify.features(bomb)
    assert time.monotonic() - started < 5


def test_an_index_from_before_gains_the_verdict_columns_and_keeps_its_pairs(tmp_path):
    db = tmp_path / "index.db"
    with Store(db) as store:  # made current, then set back to schema 3 as an older simd left it
        with store.batch():
            store.execute("ALTER TABLE dup_pairs DROP COLUMN inliers", [])
            store.execute("ALTER TABLE dup_pairs DROP COLUMN verify_note", [])
            store.execute("INSERT INTO dup_pairs (model, hash_a, hash_b, score) VALUES ('m', 'a', 'b', 0.8)", [])
            store.set_meta("schema_version", "3")
    with Store(db) as store:
        assert store.get_meta("schema_version") == "4"
        assert store.execute("SELECT hash_a, hash_b, score, inliers, verify_note FROM dup_pairs", []) == [
            ("a", "b", 0.8, None, None)
        ]


# -- on a real index ------------------------------------------------------------------------------


@pytest.fixture
def band(monkeypatch):
    # PixelEmbedder's 8x8 vectors: every pair of these photos is a candidate (from 0.5), none sure (up to 1.01)
    monkeypatch.setitem(DUPLICATE_THRESHOLDS, "pixels", Thresholds(0.6, 0.3, 0.5, 1.01))


class Writer:
    """The writer's side: runs what the verifier hands over, in this (the test's) thread."""

    def __init__(self, library, state_dir):
        self.library = library
        self.db = state_dir / "index.db"
        self.store = Store(self.db)
        self.vectors = VectorIndex(PixelEmbedder.dim)
        self.rec = Reconciler(
            library,
            self.store,
            PixelEmbedder(),
            self.vectors,
            IgnoreRules(),
            duplicates=dupindex.DupIndex("pixels", self.vectors, library),
        )
        self.runtime = Runtime("idle", model="pixels")
        self.service = DuplicatesService(self.db, library, self.runtime)
        self.tasks: queue.Queue = queue.Queue()
        self.verifier: PairsVerifier | None = None

    def start_verifier(self):
        self.verifier = PairsVerifier(self.db, "pixels", self.runtime, self.tasks.put, root=self.library, poll=0.05)
        self.verifier.start()

    def settle(self, timeout=60.0, *, all_verified=True):
        """Run the verifier's hand-overs until it is idle and, with `all_verified`, nothing is pending."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                self.tasks.get(timeout=0.1)(self.store)
                continue
            except queue.Empty:
                pass
            state = (self.runtime.verification or {}).get("state")
            done = not all_verified or dupverdicts.counts(self.store, "pixels")["pending"] == 0
            if state == "idle" and done and self.tasks.empty():
                return
        raise AssertionError(f"verification did not settle: {self.runtime.verification}")

    def groups(self):
        return [{m["path"] for m in g["images"]} for g in self.service.listing(limit=500)["groups"]]

    def verdicts(self):
        return {
            (a, b): (n, note)
            for a, b, n, note in self.store.execute(
                "SELECT hash_a, hash_b, inliers, verify_note FROM dup_pairs WHERE model = 'pixels'", []
            )
        }

    def close(self):
        if self.verifier is not None:
            assert self.verifier.stop(10)
        self.store.close()


def test_the_band_links_only_verified_pairs_and_verdicts_survive_renames(tmp_path, library, band, capsys):
    src = phone_photo(0, size=SIZE)
    make_phone_photo(library / "DCIM" / "cat.jpg", img=src)
    copies = edits(src, library, stem="cat-")
    other = phone_photo(1, size=SIZE)  # coffee: a different photo
    make_phone_photo(library / "DCIM" / "coffee.jpg", img=other)
    w = Writer(library, tmp_path / "state")
    try:
        w.rec.run()
        listed = w.service.listing(limit=500)
        assert listed["verification"]["state"] == "off" and listed["verification"]["pending"] > 0
        assert w.groups() == []  # nothing in the band links before its verdict
        with w.store.batch():  # what `simd index` records, for `simd duplicates`
            w.store.set_meta("model", "pixels")
            w.store.set_meta("library_root", str(library))
        assert cli.main(["duplicates", "--state-dir", str(tmp_path / "state"), "--json"]) == 0
        assert "pairs of possible copies are not verified by their pixels yet" in capsys.readouterr().err
        w.start_verifier()
        w.settle()
        cat = {"DCIM/cat.jpg", *(f"cat-{k}.jpg" for k in copies)}
        assert w.groups() == [cat]  # the copies, and not the coffee
        summary = w.service.listing()["verification"]
        assert summary["state"] == "idle" and summary["pending"] == 0 and summary["verified"] >= 5
        assert w.service.state()["verification"]["verified"] == summary["verified"]
        before, done = w.verdicts(), w.verifier.verified
        assert all(n is not None and note is None for n, note in before.values())
        # a rename and a full rescan: the verdicts stay, nothing is verified again
        (library / "cat-crop60.jpg").rename(library / "DCIM" / "renamed.jpg")
        w.rec.run()
        w.settle()
        assert w.verdicts() == before and w.verifier.verified == done
        assert {"DCIM/renamed.jpg", "DCIM/cat.jpg"} <= next(iter(w.groups()))
    finally:
        w.close()


def test_a_file_that_fails_to_decode_leaves_its_pairs_unverified_and_the_job_goes_on(tmp_path, library, band):
    src = phone_photo(2, size=(800, 600))
    make_phone_photo(library / "a.jpg", img=src)
    copies = edits(src, library, stem="a-")
    w = Writer(library, tmp_path / "state")
    try:
        w.rec.run()
        # after indexing, the thumbnail's bytes go bad but keep its size and mtime (as a failing disk)
        thumb = copies["thumb160"]
        st = os.stat(thumb)
        thumb.write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * (st.st_size - 4))
        os.utime(thumb, ns=(st.st_atime_ns, st.st_mtime_ns))
        w.start_verifier()
        w.settle()
        bad_hash = w.store.get_by_path("a-thumb160.jpg")["hash"]
        notes = {k: v for k, v in w.verdicts().items() if bad_hash in k}
        assert notes and all(n is None and note and "a-thumb160.jpg" in note for n, note in notes.values())
        others = {k: v for k, v in w.verdicts().items() if bad_hash not in k}
        assert others and all(n is not None for n, _ in others.values())  # the job went on
        summary = w.service.listing()["verification"]
        assert summary["unverifiable"] == len(notes) and summary["pending"] == 0
        grouped = w.groups()
        assert len(grouped) == 1 and "a-thumb160.jpg" not in grouped[0] and "a.jpg" in grouped[0]
    finally:
        w.close()


def test_a_file_moved_before_the_index_caught_up_is_verified_after_it_not_noted(tmp_path, library, band):
    """A file the verifier does not find as indexed (moved, being rewritten) is a passing state, not a
    bad image: its pairs get no note (a note would keep them unlinked until the next start) and are
    verified once the index has caught up."""
    src = phone_photo(3, size=(800, 600))
    make_phone_photo(library / "b.jpg", img=src)
    copies = edits(src, library, stem="b-")
    w = Writer(library, tmp_path / "state")
    try:
        w.rec.run()
        (library / "sub").mkdir()
        copies["crop60"].rename(library / "sub" / "b-crop60.jpg")  # the watcher has not told the index yet
        moved = w.store.get_by_path("b-crop60.jpg")["hash"]
        w.start_verifier()
        w.settle(all_verified=False)  # all the verifier can do: the moved file's pairs wait
        waiting = {k: v for k, v in w.verdicts().items() if moved in k}
        assert waiting and all(v == (None, None) for v in waiting.values())  # no verdict, no note
        assert all(n is not None for k, (n, _) in w.verdicts().items() if moved not in k)
        assert w.service.listing()["verification"]["pending"] == len(waiting)
        w.rec.run()  # the index catches up with the move
        w.settle()
        assert all(n is not None and note is None for n, note in w.verdicts().values())
        assert any("sub/b-crop60.jpg" in g and "b.jpg" in g for g in w.groups())
    finally:
        w.close()


def test_a_strip_too_thin_for_features_has_none_and_matches_nothing():
    """A 16000x2 panorama strip is 512x1 at the working size: no features, no OpenCV error."""
    strip = Image.fromarray(np.random.default_rng(0).integers(0, 255, (2, 16000), dtype=np.uint8))
    gray = dupverify.working_image(strip)
    assert min(gray.shape) < dupverify.MIN_SIDE
    thin = dupverify.Features(gray, *dupverify._detect(gray))
    assert len(thin.points) == 0
    photo = feats_of(np.asarray(phone_photo(4, size=(800, 600)).convert("L")))
    assert dupverify.inliers(thin, photo) == 0 and dupverify.inliers(photo, thin) == 0


def test_a_refusal_leaves_the_groups_cached_and_a_new_recipe_verifies_anew(tmp_path, band):
    """Only a verdict that links changes groups: refusals (most of a large library's band) must not
    make every listing regroup the library. A verdict of another recipe is not trusted: at start the
    pairs are verified again."""
    pairs = [("a" * 32, "b" * 32), ("a" * 32, "c" * 32), ("b" * 32, "c" * 32)]
    with Store(tmp_path / "index.db") as store:
        with store.batch():
            for a, b in pairs:
                store.execute(
                    "INSERT INTO dup_pairs (model, hash_a, hash_b, score) VALUES ('pixels', ?, ?, 0.8)", [a, b]
                )
        v0, c0 = dupindex.version(store), dupverdicts.counts(store, "pixels")
        assert c0["pending"] == 3
        with store.batch():
            dupverdicts.put(store, "pixels", [(*pairs[0], 3, None)])  # refused: 3 inliers
        assert dupindex.version(store) == v0
        assert dupverdicts.counts(store, "pixels") == {"verified": 1, "pending": 2, "unverifiable": 0}
        with store.batch():
            dupverdicts.put(store, "pixels", [(*pairs[1], dupverify.MIN_INLIERS + 5, None)])  # a link
        v1 = dupindex.version(store)
        assert v1 != v0
        verifier = PairsVerifier(tmp_path / "index.db", "pixels", Runtime("idle", model="pixels"), print, root=tmp_path)
        verifier._clear_notes(store)  # the first start: no recipe recorded, the verdicts go
        assert dupverdicts.counts(store, "pixels")["pending"] == 3 and dupindex.version(store) != v1
        with store.batch():
            dupverdicts.put(store, "pixels", [(*pairs[1], dupverify.MIN_INLIERS + 5, None)])
        v2 = dupindex.version(store)
        verifier._clear_notes(store)  # the same recipe, no notes: nothing changes, no regrouping
        assert dupindex.version(store) == v2 and dupverdicts.counts(store, "pixels")["verified"] == 1
