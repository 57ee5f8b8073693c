"""Libraries as they really are: names that are not UTF-8, 255-byte names, newlines in names, paths
past PATH_MAX, folders that cannot be listed, files that never load (docs/RELIABILITY.md, findings 1,
6 and 10); a library that mostly vanished at once (an unmounted disk with a stray file); symlink loops.

Real files in real folders (pytest's tmp_path), a real SQLite store, the pixel embedder; one test runs
a real `simd serve` with EfficientNet-Lite0 and a 12 MP photo under a name that is not UTF-8.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from simd import cli, commands
from simd.errors import LibraryOffline
from simd.ignore import IgnoreRules
from simd.indexer import MASS_DELETE_MIN, MassDeletion, Reconciler
from simd.paths import display_path, from_display
from simd.runtime import Runtime
from simd.scanner import PATH_MAX, walk
from simd.store import Store
from simd.storeschema import SCHEMA_VERSION
from simd.vectors import VectorIndex
from simd.watcher import Watcher
from simd.worker import IndexWorker
from tests.fakes import PixelEmbedder

REPO = Path(__file__).resolve().parents[1]
NOT_UTF8 = os.fsdecode(b"caf\xe9.png")  # Latin-1 from an old camera or a zip: legal on Linux
NOT_UTF8_DIR = os.fsdecode(b"\xff\xfe dir")
# A JPEG that announces itself and then holds nothing but zeros: it never loads.
NEVER_LOADS = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00" + bytes(40_000)
pytestmark = pytest.mark.filterwarnings(r"ignore:Callback with id '\d+' already exists:RuntimeWarning")


def png(seed: int, size: tuple[int, int] = (64, 48)) -> bytes:
    blocks = np.random.default_rng(seed).integers(0, 256, (6, 8, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(blocks).resize(size, Image.NEAREST).save(out, "PNG")
    return out.getvalue()


def write(root: Path, rel: str, data: bytes) -> None:
    """Write through bytes paths, as a camera or an unzip would name the file."""
    path = os.path.join(os.fsencode(root), os.fsencode(rel))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def make_deep_file(root: Path, data: bytes, name: str = "deep.png") -> str:
    """A file whose full path is longer than PATH_MAX (made one folder at a time, by descriptor, as
    no call taking a path can); returns its path relative to `root`."""
    part = "d" * 200
    levels = (PATH_MAX - len(os.fsencode(str(root)))) // (len(part) + 1) + 2
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(levels):
            os.mkdir(part, dir_fd=fd)
            nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = nxt
        out = os.open(name, os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
        with os.fdopen(out, "wb") as f:
            f.write(data)
    finally:
        os.close(fd)
    rel = "/".join([part] * levels + [name])
    assert len(os.fsencode(os.path.join(root, rel))) > PATH_MAX
    return rel


@dataclass
class Hostile:
    root: Path
    good: dict[str, bytes] = field(default_factory=dict)  # rel -> bytes: must be indexed
    bad: dict[str, str] = field(default_factory=dict)  # rel -> words the failure must say


def fill_hostile(root: Path, *, seed: int = 0) -> Hostile:
    lib = Hostile(root)
    names = [
        "plain.png",
        "sub/inner.png",
        NOT_UTF8,
        f"{NOT_UTF8_DIR}/photo.png",
        "n" * 251 + ".png",  # 255 bytes, the longest name Linux allows
        "new\nline.png",
        "été/ça.png",  # valid UTF-8 stays as it always was
    ]
    for i, rel in enumerate(names):
        lib.good[rel] = png(seed + i)
        write(root, rel, lib.good[rel])
    write(root, "never.jpg", NEVER_LOADS)
    lib.bad["never.jpg"] = ""
    lib.bad[make_deep_file(root, png(seed + 99))] = "path too long"
    return lib


@pytest.fixture
def hostile(library) -> Hostile:
    return fill_hostile(library)


@pytest.fixture
def env(library, state_dir):
    store = Store(state_dir / "index.db")
    embedder = PixelEmbedder()
    vectors = VectorIndex(embedder.dim)
    yield store, embedder, vectors, Reconciler(library, store, embedder, vectors, IgnoreRules(), chunk_size=3)
    store.close()


def assert_indexed_and_searchable(store: Store, vectors: VectorIndex, lib: Hostile, model: str) -> None:
    records = store.records()
    for rel in lib.good:
        assert records[rel].state == "ok", (display_path(rel), records[rel])
        vec = store.vector_of(records[rel].id, model)
        assert vec is not None
        top = vectors.search(vec / np.linalg.norm(vec), 1)
        assert top[0][0] == records[rel].id  # found by its own picture
    errors = {r["path"]: r["error"] for r in store.errors()}
    assert set(errors) == set(lib.bad), sorted(map(display_path, errors))
    for rel, words in lib.bad.items():
        assert errors[rel] and words in errors[rel], errors[rel]


# -- finding 1: names are bytes; a per-file error is that file's ------------------------------------


def test_reconcile_indexes_every_good_file_and_records_the_bad_ones(env, hostile):
    store, emb, vectors, rec = env
    s = rec.run()  # returns: nothing in this library may fail the run
    assert (s.new, s.failed, s.deleted) == (len(hostile.good), len(hostile.bad), 0), s
    assert_indexed_and_searchable(store, vectors, hostile, emb.model_id)
    again = rec.run()
    assert not again.did_something and again.unchanged == len(hostile.good) + len(hostile.bad)
    # The exact name comes back from the store and opens the file.
    row = store.get_by_path(NOT_UTF8)
    assert row is not None and row["path"] == NOT_UTF8
    assert Path(hostile.root, row["path"]).read_bytes() == hostile.good[NOT_UTF8]
    assert [r["path"] for r in store.list_images(0, 10, q="caf")[0]] == [NOT_UTF8]
    assert list(store.records(prefix=NOT_UTF8_DIR)) == [f"{NOT_UTF8_DIR}/photo.png"]
    # Renamed and deleted like any other file.
    os.rename(os.path.join(os.fsencode(hostile.root), b"caf\xe9.png"), hostile.root / "cafe.png")
    shutil.rmtree(os.path.join(os.fsencode(hostile.root), os.fsencode(NOT_UTF8_DIR)))
    s = rec.run()
    assert (s.moved, s.deleted, s.embedded) == (1, 1, 0), s
    assert NOT_UTF8 not in store.records() and store.get_by_path("cafe.png")["state"] == "ok"


def test_partial_runs_of_hostile_paths_never_fail_the_batch(env, hostile):
    store, emb, vectors, rec = env
    s = rec.run(set(hostile.good) | set(hostile.bad) | {"no/such/file.png"})
    assert (s.new, s.failed) == (len(hostile.good), len(hostile.bad)), s
    assert_indexed_and_searchable(store, vectors, hostile, emb.model_id)
    deep = next(rel for rel in hostile.bad if rel.endswith("deep.png"))
    s = rec.run({deep.split("/")[0], deep, NOT_UTF8_DIR})  # the folder above it, and the file itself
    assert not s.did_something, s


def test_a_watcher_batch_with_hostile_paths_indexes_the_good_files(library, state_dir):
    """The daemon's path: watcher -> settled paths -> the writer thread, on files made while watched."""
    emb, vectors, runtime = PixelEmbedder(), VectorIndex(PixelEmbedder.dim), Runtime("idle")
    db = state_dir / "index.db"
    Store(db).close()
    worker = IndexWorker(db, library, emb, vectors, IgnoreRules(), runtime, chunk_size=2)
    watcher = Watcher(library, worker.submit, settle_seconds=0.2, ignore=IgnoreRules())
    worker.start()
    watcher.start()
    try:
        lib = fill_hostile(library, seed=10)
        want = len(lib.good), len(lib.bad)
        deadline = time.monotonic() + 30
        with Store(db, readonly=True) as store:
            while (got := (store.counts(emb.model_id)["indexed"], store.counts(None)["failed"])) != want:
                assert time.monotonic() < deadline, (got, want, runtime.snapshot())
                time.sleep(0.1)
            assert_indexed_and_searchable(store, vectors, lib, emb.model_id)
        assert runtime.snapshot()["last_error"] is None  # no batch failed
    finally:
        assert watcher.stop(5) and worker.stop(10)


def test_a_folder_or_file_that_cannot_be_read_is_reported_and_keeps_its_rows():
    """chmod 000 on a folder: its files are kept as they were (not deleted), the folder is listed in
    the errors; readable again, it is as before. Root reads anything: then a child drops to nobody."""
    base = Path(tempfile.mkdtemp(prefix="simd-unreadable-"))
    try:
        base.chmod(0o755)
        for d in ("library/locked", "state"):
            (base / d).mkdir(parents=True)
        write(base / "library", "open.png", png(1))
        write(base / "library", "locked/inside.png", png(2))
        if os.geteuid() == 0:  # the child runs as nobody: its library and state dir are its own
            for p in [base / "library", base / "library/locked", base / "state", *base.glob("library/**/*.png")]:
                os.chown(p, 65534, 65534)
        code = UNREADABLE_CHILD.format(base=str(base))
        drop = "os.setgroups([]); os.setgid(65534); os.setuid(65534); " if os.geteuid() == 0 else ""
        child = subprocess.run(
            [sys.executable, "-c", code.replace("#DROP#", drop)],
            cwd=REPO,
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            timeout=120,
        )
        assert child.returncode == 0, child.stderr[-3000:]
        out = json.loads(child.stdout.strip().splitlines()[-1])
        if out.get("denied") is False:
            pytest.skip("chmod 000 does not deny reading here (root that cannot drop privileges)")
        first, second, third = out["runs"]
        assert first["new"] == 2 and first["failed"] == 0
        assert second["failed"] == 2 and second["deleted"] == 0, second  # the folder, and secret.png
        assert out["errors"] == {
            "locked": "cannot list this folder: Permission denied",
            "secret.png": "cannot read: Permission denied",
        }
        assert out["kept"] == "ok"  # locked/inside.png is still indexed while its folder is shut
        assert third["deleted"] == 1 and third["changed"] == 1, third  # the folder's row; secret.png, touched
        assert out["errors_after"] == {} and out["indexed"] == 3
    finally:
        for p in base.rglob("*"):
            if p.is_dir():
                p.chmod(0o755)
        shutil.rmtree(base)


UNREADABLE_CHILD = """
import json, os, sys
from pathlib import Path
from simd.ignore import IgnoreRules
from simd.indexer import Reconciler
from simd.store import Store
from simd.vectors import VectorIndex
from tests.fakes import PixelEmbedder
import simd.imaging, PIL.PngImagePlugin
base = Path({base!r})
#DROP#
lib, emb = base / "library", PixelEmbedder()
with Store(base / "state" / "index.db") as store:
    rec = Reconciler(lib, store, emb, VectorIndex(emb.dim), IgnoreRules())
    runs = [rec.run().as_dict()]
    (lib / "locked").chmod(0)
    (lib / "secret.png").write_bytes((lib / "open.png").read_bytes()[:-1] + b"x")
    (lib / "secret.png").chmod(0)
    try:
        os.listdir(lib / "locked")
        print(json.dumps({{"denied": False}}))
        sys.exit(0)
    except PermissionError:
        pass
    runs.append(rec.run().as_dict())
    errors = {{r["path"]: r["error"] for r in store.errors()}}
    kept = store.get_by_path("locked/inside.png")["state"]
    (lib / "locked").chmod(0o755)
    (lib / "secret.png").chmod(0o644)  # a failed file is retried once it changes: touch it
    os.utime(lib / "secret.png", ns=(0, (lib / "secret.png").stat().st_mtime_ns + 10**9))
    runs.append(rec.run().as_dict())
    after = {{r["path"]: r["error"] for r in store.errors()}}
    indexed = store.counts(emb.model_id)["indexed"]
print(json.dumps({{"runs": runs, "errors": errors, "kept": kept, "errors_after": after, "indexed": indexed}}))
"""


def test_store_keeps_names_exact_and_an_older_index_opens(state_dir):
    db = state_dir / "index.db"
    vec = np.ones(4, np.float32)
    with Store(db) as store, store.batch():
        store.put_ok("old.jpg", 1, 1, "h0", "m", vec)
        store.set_meta("schema_version", "1")  # an index written before names could be bytes
    with Store(db) as store:
        assert store.get_meta("schema_version") == str(SCHEMA_VERSION)
        assert store.get_by_path("old.jpg")["state"] == "ok"
        names = [NOT_UTF8, f"{NOT_UTF8_DIR}/x.jpg", os.fsdecode(b"a/\xe9/b.jpg"), "a/\xe9/b.jpg", "a/b.jpg"]
        with store.batch():
            ids = [store.put_ok(n, 1, 1, f"h{i}", "m", vec) for i, n in enumerate(names)]
            store.update_stat(NOT_UTF8, 7, 7)
        assert len(set(ids)) == len(names)  # b"\xe9" and "é" (b"\xc3\xa9") are two names
        assert set(store.records()) == {"old.jpg", *names}
        assert set(store.records(prefix="a")) == {os.fsdecode(b"a/\xe9/b.jpg"), "a/\xe9/b.jpg", "a/b.jpg"}
        assert set(store.records(prefix=os.fsdecode(b"a/\xe9"))) == {os.fsdecode(b"a/\xe9/b.jpg")}
        assert store.get(ids[0])["size"] == 7
        assert {r["path"] for r in store.list_images(0, 50, q="X.JPG")[0]} == {f"{NOT_UTF8_DIR}/x.jpg"}
        with store.batch():
            assert store.delete_paths([NOT_UTF8, os.fsdecode(b"a/\xe9/b.jpg")]) == [ids[0], ids[2]]
    with Store(db, readonly=True) as reader:
        assert len(reader.records()) == 4


def test_names_are_shown_readably_and_read_back():
    exact = os.fsdecode(b"2019/caf\xe9 \xff.jpg")
    shown = display_path(exact)
    assert shown == "2019/caf\\xe9 \\xff.jpg" and json.dumps(shown)
    assert from_display(shown) == exact and from_display("plain/é.jpg") == "plain/é.jpg"
    assert display_path("a\nb\t\x1b.jpg", controls=True) == "a\\nb\\t\\x1b.jpg"
    assert display_path("a\nb.jpg") == "a\nb.jpg"  # JSON escapes it itself


def test_api_lists_and_serves_a_name_that_is_not_utf8(tmp_path):
    from webfixtures import build_env, web_config

    from simd.web import create_app

    env = build_env(tmp_path, count=3)
    write(env.library, NOT_UTF8, png(5, (120, 90)))
    write(env.library, os.fsdecode(b"bad\xe9.jpg"), NEVER_LOADS)
    iid = env.add(NOT_UTF8)
    bad = env.add(os.fsdecode(b"bad\xe9.jpg"), failed="cannot identify image")
    app = create_app(web_config(), env.service)
    app.testing = True
    client = app.test_client()
    listed = {i["id"]: i for i in client.get("/api/images?limit=50").get_json()["images"]}
    assert listed[iid]["path"] == "caf\\xe9.png"
    with client.get(f"/api/images/{iid}/file") as r:
        assert r.status_code == 200 and r.data == Path(env.library, NOT_UTF8).read_bytes()
        assert "caf%EF%BF%BD.png" in r.headers["Content-Disposition"]
    with client.get(f"/api/images/{iid}/thumb") as r:
        assert r.status_code == 200 and r.mimetype == "image/jpeg"
    for q in ("caf\\xe9.png", "caf%5Cxe9.png"):  # as shown, raw or percent-encoded
        r = client.get(f"/api/similar?path={q}&k=2")
        assert r.status_code == 200 and r.get_json()["query"]["id"] == iid, r.get_data(as_text=True)
    errors = client.get("/api/errors").get_json()["errors"]
    assert [(e["id"], e["path"]) for e in errors] == [(bad, "bad\\xe9.jpg")]
    assert errors[0]["url"].startswith(f"/api/images/{bad}/file")  # it starts like a JPEG: the exact name opens


def test_simd_index_and_errors_commands_show_names_readably(hostile, state_dir, monkeypatch, capsys):
    monkeypatch.setattr(commands.Embedder, "from_config", staticmethod(lambda config, **kw: PixelEmbedder()))
    write(hostile.root, os.fsdecode(b"bad\n\xe9.jpg"), b"not an image at all")
    args = ["--state-dir", str(state_dir), "--log-level", "ERROR"]
    assert cli.main(["index", str(hostile.root), *args, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["new"], summary["failed"]) == (len(hostile.good), len(hostile.bad) + 1)
    assert cli.main(["errors", *args]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(hostile.bad) + 1  # one line per file, whatever its name holds
    assert any(line.startswith("bad\\n\\xe9.jpg: ") for line in lines), lines
    assert any(line.startswith("never.jpg: ") for line in lines) and any("path too long" in x for x in lines)
    assert cli.main(["errors", *args, "--json"]) == 0
    assert "bad\n\\xe9.jpg" in {e["path"] for e in json.loads(capsys.readouterr().out)["errors"]}
    assert cli.main(["query", str(hostile.root / NOT_UTF8), *args, "-k", "3"]) == 0  # searched by its own vector
    out = capsys.readouterr().out
    assert out.splitlines()[0].endswith("caf\\xe9.png (pixels):") and len(out.splitlines()) == 4, out


# -- finding 6: most of the library vanished at once --------------------------------------------


def fill(root: Path, n: int, folder: str = "photos", seed: int = 0) -> list[str]:
    rels = [f"{folder}/{i:03d}.png" for i in range(n)]
    for i, rel in enumerate(rels):
        write(root, rel, png(seed + i, (16, 12)))
    return rels


def test_an_unmounted_disk_with_a_stray_file_deletes_nothing(env, library, tmp_path):
    store, emb, vectors, rec = env
    fill(library, 80)
    assert rec.run().new == 80
    # Unmounted: the mount point holds only what was written into it while the disk was away.
    shutil.move(library / "photos", tmp_path / "disk")
    write(library, "stray.png", png(999))
    with pytest.raises(MassDeletion, match=r"80 of the 81 files .* --allow-mass-delete") as refused:
        rec.run()
    assert isinstance(refused.value, LibraryOffline)  # what the daemon already handles: offline, retried
    with pytest.raises(MassDeletion):
        rec.run()
    assert store.counts(emb.model_id)["indexed"] == 81 and len(vectors) == 81  # the stray file is indexed
    shutil.move(tmp_path / "disk", library / "photos")  # mounted again: nothing to redo
    s = rec.run()
    assert (s.new, s.deleted, s.embedded, s.unchanged) == (0, 0, 0, 81), s
    # Really deleted: confirmed, it goes.
    shutil.rmtree(library / "photos")
    assert rec.run(allow_mass_delete=True).deleted == 80
    assert set(store.records()) == {"stray.png"}


def test_ordinary_deletions_and_moves_are_never_blocked(env, library):
    store, emb, vectors, rec = env
    fill(library, 30, "trip")
    fill(library, 100, "home", seed=100)
    rec.run()
    shutil.rmtree(library / "trip")  # a folder of 30 photos, a third of the library
    assert rec.run().deleted == 30
    fill(library, 55, "more", seed=300)
    rec.run()
    shutil.rmtree(library / "more")  # 55 of 155: more than MASS_DELETE_MIN, not most of the library
    assert 55 > MASS_DELETE_MIN and rec.run().deleted == 55
    os.rename(library / "home", library / "Home 2024")  # the whole library moved: no deletion at all
    s = rec.run()
    assert (s.moved, s.deleted, s.embedded) == (100, 0, 0), s


def test_the_daemon_goes_offline_and_a_confirmed_rescan_deletes(library, state_dir, tmp_path):
    fill(library, 60)
    emb, vectors, runtime = PixelEmbedder(), VectorIndex(PixelEmbedder.dim), Runtime("idle")
    db = state_dir / "index.db"
    Store(db).close()
    worker = IndexWorker(db, library, emb, vectors, IgnoreRules(), runtime)
    worker.start()
    try:
        worker.request_full("startup")
        wait(lambda: worker.runs == 1 and len(vectors) == 60)
        shutil.move(library / "photos", tmp_path / "away")
        write(library, "stray.png", png(7))
        worker.request_full("periodic")
        wait(lambda: runtime.snapshot()["phase"] == "offline")
        assert "--allow-mass-delete" in runtime.snapshot()["last_error"] and len(vectors) == 61
        worker.request_full("rescan requested", confirm_deletions=True)
        wait(lambda: runtime.snapshot()["phase"] == "idle" and len(vectors) == 1)
    finally:
        assert worker.stop(10)


def test_rescan_takes_the_confirmation(tmp_path):
    from webfixtures import build_env, web_config

    from simd.web import create_app

    env = build_env(tmp_path, count=1)
    client = create_app(web_config(), env.service).test_client()
    assert client.post("/api/rescan").status_code == 202
    assert client.post("/api/rescan?confirm_deletions=1").status_code == 202
    r = client.post("/api/rescan?confirm_deletions=maybe")
    assert r.status_code == 400 and "confirm_deletions" in r.get_json()["error"]["message"]
    assert env.rescans == ["rescan", "rescan+confirm"]


def wait(predicate, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


# -- finding 10: symlink loops -----------------------------------------------------------------


def make_loops(root: Path, outside: Path) -> None:
    """Two loops (to the root, to a sibling folder), a link to a file inside, and a folder outside
    the library reached through two links and holding a link back into the library."""
    write(root, "a/one.png", png(1))
    write(root, "b/two.png", png(2))
    write(root, "top.png", png(3))
    os.symlink("..", root / "a" / "up")
    os.symlink("../a", root / "b" / "to-a")
    os.symlink("top.png", root / "same.png")
    write(outside, "ext.png", png(4))
    os.symlink(outside, root / "link1")
    os.symlink(outside, root / "link2")
    os.symlink(root, outside / "back")


def test_symlink_loops_are_walked_once_and_nothing_is_indexed_twice(env, library, tmp_path):
    store, emb, vectors, _ = env
    make_loops(library, tmp_path / "outside")
    started = time.monotonic()
    found = walk(library, IgnoreRules(), follow_symlinks=True)
    assert time.monotonic() - started < 5
    assert sorted(found) == ["a/one.png", "b/two.png", "link1/ext.png", "top.png"]
    assert sorted(walk(library, IgnoreRules())) == ["a/one.png", "b/two.png", "top.png"]
    rec = Reconciler(library, store, emb, vectors, IgnoreRules(), follow_symlinks=True)
    assert rec.run().new == 4
    # Paths a watcher reports through the links name what they reach, once.
    s = rec.run({"a/up/b/two.png", "b/to-a/one.png", "same.png", "link1/back/top.png", "b/to-a"})
    assert not s.did_something, s
    assert sorted(store.records()) == ["a/one.png", "b/two.png", "link1/ext.png", "top.png"]
    write(library, "a/new.png", png(5))
    assert rec.run({"b/to-a/new.png"}).new == 1 and "a/new.png" in store.records()


@pytest.mark.parametrize("observer", ["native", "polling"])
def test_the_watcher_starts_at_once_on_symlink_loops(library, tmp_path, observer):
    make_loops(library, tmp_path / "outside")
    for i in range(6):  # more loops: watchdog's own walk doubled its paths with each one
        os.symlink("..", library / "a" / f"up{i}")
    got: list[set[str]] = []
    w = Watcher(
        library,
        got.append,
        settle_seconds=0.2,
        ignore=IgnoreRules(),
        observer=observer,
        follow_symlinks=True,
        poll_interval=0.3,
    )
    started = time.monotonic()
    w.start()
    try:
        assert time.monotonic() - started < 5
        time.sleep(0.5)
        write(library, "a/fresh.png", png(6))
        write(tmp_path / "outside", "fresh-ext.png", png(7))
        wait(lambda: {"a/fresh.png", "link1/fresh-ext.png"} <= set().union(*got), 15)
    finally:
        assert w.stop(5)


# -- end to end: a real daemon, the real model, a 12 MP photo named in Latin-1 -------------------


def test_simd_serve_indexes_and_serves_a_hostile_library(tmp_path, phone_jpeg):
    from tests.serving import Served

    root = tmp_path / "library"
    root.mkdir()
    lib = fill_hostile(root)
    photo_name = os.fsdecode(b"Urlaub/K\xf6ln \xe9t\xe9.jpg")  # 12 MP, Latin-1 from an old camera's SD card
    write(root, photo_name, Path(phone_jpeg).read_bytes())
    lib.good[photo_name] = Path(phone_jpeg).read_bytes()
    make_loops(root, tmp_path / "outside")
    lib.good.update({"a/one.png": b"", "b/two.png": b"", "top.png": b"", "link1/ext.png": b""})
    served = Served(root, tmp_path / "state", extra_env={"SIMD_FOLLOW_SYMLINKS": "1"})
    try:
        status = served.wait_idle(indexed=len(lib.good), timeout=240)
        assert status["failed"] == len(lib.bad), served.get("/api/errors")
        listed = {i["path"]: i for i in served.get("/api/images?limit=100")["images"]}
        assert set(listed) == {display_path(rel) for rel in lib.good}  # each once, none through a loop
        photo = listed["Urlaub/K\\xf6ln \\xe9t\\xe9.jpg"]
        with urllib.request.urlopen(served.url + photo["url"], timeout=30) as r:
            assert r.read() == lib.good[photo_name]
        with urllib.request.urlopen(served.url + photo["thumb"], timeout=30) as r:
            assert Image.open(io.BytesIO(r.read())).size[0] <= 256
        query = urllib.parse.quote(photo["path"])
        assert served.get(f"/api/similar?path={query}&k=3")["query"]["id"] == photo["id"]
        errors = {e["path"]: e["error"] for e in served.get("/api/errors")["errors"]}
        assert "never.jpg" in errors and any("path too long" in e for e in errors.values())
        cmd = [sys.executable, "-m", "simd", "errors", "--state-dir", str(tmp_path / "state")]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=REPO)
        assert out.returncode == 0 and "never.jpg: " in out.stdout and "path too long" in out.stdout, out
        started = time.monotonic()
        assert served.stop(signal.SIGTERM, timeout=20) == 0
        assert time.monotonic() - started < 20
    finally:
        if served.proc.poll() is None:
            served.stop(signal.SIGKILL)
