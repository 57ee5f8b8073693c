"""The store: schema and migrations, upserts that keep ids, subtree reads, exact vector bytes,
transactions that roll back whole, and a read-only reader beside the writer (WAL)."""

from __future__ import annotations

import sqlite3
import stat
import threading
import time

import numpy as np
import pytest

from simd.errors import NotFound, SimdError
from simd.store import FileRecord, Store
from simd.storehealth import integrity_problem, invalid_vectors
from simd.storeschema import SCHEMA_VERSION

M = "resnet50/default"


def vec(seed: int, dim: int = 8) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
    return v / np.linalg.norm(v)


@pytest.fixture
def db_path(tmp_path):
    return tmp_path / "state" / "index.db"


@pytest.fixture
def store(db_path):
    s = Store(db_path)
    yield s
    s.close()


def put(store, path, seed=0, model=M, size=10, mtime_ns=1, hash=None):
    return store.put_ok(path, size, mtime_ns, hash or f"h{seed}", model, vec(seed))


def test_schema_created_version_recorded_and_reopen_is_idempotent(db_path):
    with Store(db_path) as s:
        assert s.get_meta("schema_version") == str(SCHEMA_VERSION)
        with s.batch():
            first = put(s, "a.jpg")
        tables = {r[0] for r in s.db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert {"images", "meta"} <= tables
        assert s.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert s.db.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
        assert s.db.execute("PRAGMA busy_timeout").fetchone()[0] >= 5000
        assert s.db.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        indexes = {r[0] for r in s.db.execute("SELECT sql FROM sqlite_master WHERE type='index'") if r[0]}
        assert any("(hash)" in i for i in indexes) and any("(model, state)" in i for i in indexes)
    mode = stat.S_IMODE(db_path.parent.stat().st_mode)
    assert mode == 0o700
    with Store(db_path) as s:  # reopening migrates nothing and loses nothing
        assert s.get_meta("schema_version") == str(SCHEMA_VERSION)
        assert s.get_by_path("a.jpg")["id"] == first


def test_newer_schema_version_refuses(db_path):
    with Store(db_path) as s:
        s.set_meta("schema_version", str(SCHEMA_VERSION + 1))
    for readonly in (False, True):
        with pytest.raises(SimdError, match="newer than this simd"):
            Store(db_path, readonly=readonly)


def test_readonly_on_missing_db_is_not_found(tmp_path):
    with pytest.raises(NotFound, match="no simd index"):
        Store(tmp_path / "nope.db", readonly=True)
    assert not (tmp_path / "nope.db").exists()


def test_not_a_database_is_a_clear_error(tmp_path):
    p = tmp_path / "junk.db"
    p.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(SimdError, match="junk.db"):
        Store(p)


def test_put_get_update_and_delete(store):
    with store.batch():
        a = put(store, "dir/a.jpg", seed=1, size=100, mtime_ns=5)
        b = store.put_failed("dir/b.jpg", 7, 8, None, "truncated file")
    row = store.get(a)
    assert row["path"] == "dir/a.jpg" and row["state"] == "ok" and row["model"] == M and row["dim"] == 8
    assert row["size"] == 100 and row["mtime_ns"] == 5 and row["hash"] == "h1" and "vector" not in row
    assert row["created_at"] <= row["updated_at"]
    assert store.get_by_path("dir/b.jpg")["id"] == b and store.get(b)["error"] == "truncated file"
    assert store.get(999) is None and store.get_by_path("nope") is None
    assert store.records() == {
        "dir/a.jpg": FileRecord(a, "dir/a.jpg", 100, 5, "h1", "ok", M),
        "dir/b.jpg": FileRecord(b, "dir/b.jpg", 7, 8, None, "failed", None),
    }
    assert [e["path"] for e in store.errors()] == ["dir/b.jpg"]
    assert set(store.errors()[0]) == {"id", "path", "error", "size", "mtime_ns", "updated_at"}
    with store.batch():
        store.update_stat("dir/a.jpg", 101, 6)
    assert (store.get(a)["size"], store.get(a)["mtime_ns"]) == (101, 6)
    assert np.array_equal(store.vector_of(a, M), vec(1))  # a stat update keeps the vector
    with store.batch():
        assert store.delete_paths(["dir/a.jpg", "not/there.jpg"]) == [a]
    assert store.get(a) is None and list(store.records()) == ["dir/b.jpg"]


def test_upsert_preserves_id_and_replaces_content(store):
    with store.batch():
        a = put(store, "a.jpg", seed=1)
        b = put(store, "b.jpg", seed=2)
    created = store.get(a)["created_at"]
    with store.batch():
        assert put(store, "a.jpg", seed=3, size=55) == a
    assert store.get(a)["size"] == 55 and store.get(a)["created_at"] == created
    assert np.array_equal(store.vector_of(a, M), vec(3))
    with store.batch():  # ok -> failed -> ok keeps the id, and failing drops the vector
        assert store.put_failed("a.jpg", 1, 2, "hx", "decode error") == a
        assert store.vector_of(a, M) is None and store.get(a)["model"] is None
        assert put(store, "a.jpg", seed=4) == a
    assert store.get(b)["id"] == b


def test_ids_are_never_reused(store):
    with store.batch():
        a = put(store, "a.jpg")
        b = put(store, "b.jpg")
    with store.batch():
        store.delete_paths(["b.jpg"])
        c = put(store, "c.jpg")
    assert c not in (a, b)


def test_prefix_records_do_not_include_siblings(store):
    paths = ["a/b", "a/b/x.jpg", "a/b/c/y.jpg", "a/bc/z.jpg", "a/b.jpg", "a/b0.jpg", "a/B/x.jpg", "ab/x.jpg"]
    with store.batch():
        ids = {p: put(store, p, seed=i) for i, p in enumerate(paths)}
    subtree = store.records("a/b")
    assert set(subtree) == {"a/b", "a/b/x.jpg", "a/b/c/y.jpg"}
    assert {p: r.id for p, r in subtree.items()} == {p: ids[p] for p in subtree}
    assert store.records("a/b/") == store.records("/a/b") == subtree
    assert set(store.records("")) == set(store.records("/")) == set(store.records()) == set(paths)


@pytest.mark.parametrize("prefix", ["50%", "a_b", "x\\y"])
def test_like_wildcards_in_names_are_literal(store, prefix):
    others = {
        "50%": ["500/x.jpg", "50 off/x.jpg"],
        "a_b": ["axb/x.jpg", "a_bc/x.jpg"],
        "x\\y": ["xy/x.jpg", "x\\\\y/x.jpg"],
    }[prefix]
    with store.batch():
        put(store, f"{prefix}/in.jpg", seed=1)
        for i, p in enumerate(others):
            put(store, p, seed=10 + i)
    assert set(store.records(prefix)) == {f"{prefix}/in.jpg"}
    rows, total = store.list_images(0, 10, q=prefix)
    assert total == 1 + sum(prefix in p for p in others)
    assert all(prefix in r["path"] for r in rows)


def test_list_images_pages_filters_and_counts(store):
    names = [f"Trip/IMG_{i:03d}.JPG" for i in range(25)] + ["other/Été.png", "other/cat.png"]
    with store.batch():
        for i, p in enumerate(names):
            put(store, p, seed=i)
    rows, total = store.list_images(0, 10)
    assert total == 27 and [r["path"] for r in rows] == sorted(names)[:10]
    rows, total = store.list_images(20, 10, q="img_")
    assert total == 25 and [r["path"] for r in rows] == [f"Trip/IMG_{i:03d}.JPG" for i in range(20, 25)]
    assert "vector" not in rows[0] and rows[0]["state"] == "ok"
    assert store.list_images(0, 10, q="ÉTÉ")[1] == 1  # case-insensitive beyond ASCII too
    assert store.list_images(0, 10, q="%")[1] == 0
    assert store.list_images(100, 10) == ([], 27)


def test_vectors_round_trip_bit_exactly_as_little_endian_float32(store):
    rng = np.random.default_rng(7)
    v = rng.standard_normal(2048).astype(np.float32)
    v[:4] = [np.float32(1e-38), -0.0, np.float32(3.4e38), np.nextafter(np.float32(1), np.float32(2))]
    with store.batch():
        a = store.put_ok("a.jpg", 1, 1, "hash-a", M, v)
    blob = store.db.execute("SELECT vector FROM images WHERE id = ?", [a]).fetchone()[0]
    assert blob == v.astype("<f4").tobytes() and len(blob) == 4 * 2048
    for got in (store.vector_of(a, M), store.vector_for_hash("hash-a", M)):
        assert got.dtype == np.float32 and got.tobytes() == v.tobytes()
    # 3.4e38 squared overflows float32: no search can use it, so loading leaves it out (with a warning)
    assert store.load_vectors(M)[0].size == 0 and invalid_vectors(store.db) == [(a, "values too large")]
    v[2] = 1.0
    with store.batch():
        store.put_ok("a.jpg", 1, 1, "hash-a", M, v)
    assert store.load_vectors(M)[1][0].tobytes() == v.tobytes()
    with store.batch():  # float64 input is stored as float32
        store.put_ok("b.jpg", 1, 1, "hash-b", M, v.astype(np.float64))
    assert store.vector_for_hash("hash-b", M).tobytes() == v.tobytes()
    with store.batch(), pytest.raises(ValueError):
        store.put_ok("c.jpg", 1, 1, "h", M, np.array([1.0, np.nan], np.float32))


def test_vector_lookups_are_per_model_and_ok_only(store):
    with store.batch():
        a = put(store, "a.jpg", seed=1, hash="same")
        store.put_failed("b.jpg", 1, 1, "bad", "corrupt")
    assert store.vector_of(a, "other-model") is None
    assert store.vector_for_hash("same", "other-model") is None
    assert store.vector_for_hash("bad", M) is None and store.vector_for_hash("missing", M) is None
    assert np.array_equal(store.vector_for_hash("same", M), vec(1))


def test_load_vectors_only_returns_the_models_ok_rows(store):
    with store.batch():
        a = put(store, "a.jpg", seed=1)
        put(store, "b.jpg", seed=2, model="other")
        store.put_failed("c.jpg", 1, 1, None, "bad")
        d = put(store, "d.jpg", seed=4)
    ids, mat = store.load_vectors(M)
    assert ids.dtype == np.int64 and mat.dtype == np.float32 and mat.shape == (2, 8)
    assert list(ids) == [a, d]
    assert np.array_equal(mat, np.stack([vec(1), vec(4)]))
    ids, mat = store.load_vectors("no-such-model")
    assert ids.shape == (0,) and mat.shape[0] == 0
    counts = store.counts(M)
    assert counts.pop("revision") == store.counts(None).pop("revision")
    assert counts == {"indexed": 2, "failed": 1, "total": 4, "stale": 1}
    assert {k: v for k, v in store.counts(None).items() if k != "revision"} == {
        "indexed": 3,
        "failed": 1,
        "total": 4,
        "stale": 0,
    }
    assert store.model_dim(M) == 8 and store.model_dim("no-such-model") == 0


def test_a_batch_that_raises_rolls_back_entirely(store):
    with store.batch():
        a = put(store, "keep.jpg", seed=1)
    with pytest.raises(KeyError), store.batch():
        put(store, "new.jpg", seed=2)
        store.delete_paths(["keep.jpg"])
        store.set_meta("model", "half-done")
        raise KeyError("boom")
    assert set(store.records()) == {"keep.jpg"} and store.get(a) is not None
    assert store.get_meta("model") is None
    with store.batch():  # the store is usable afterwards
        put(store, "new.jpg", seed=2)
    assert set(store.records()) == {"keep.jpg", "new.jpg"}


def test_nested_batch_joins_the_outer_one(store):
    with pytest.raises(RuntimeError, match="outer"), store.batch():
        with store.batch():
            put(store, "a.jpg")
        raise RuntimeError("outer")
    assert store.records() == {}


def test_writes_outside_a_batch_raise(store):
    for write in (
        lambda: put(store, "a.jpg"),
        lambda: store.put_failed("a.jpg", 1, 1, None, "x"),
        lambda: store.update_stat("a.jpg", 1, 1),
        lambda: store.delete_paths(["a.jpg"]),
        lambda: store.delete_paths([]),
    ):
        with pytest.raises(RuntimeError, match="batch"):
            write()
    store.set_meta("library_root", "/lib")  # meta may be set on its own
    assert store.get_meta("library_root") == "/lib" and store.get_meta("nope", "dflt") == "dflt"


def test_readonly_store_cannot_write_and_sees_committed_data(db_path):
    writer = Store(db_path)
    reader = Store(db_path, readonly=True)
    try:
        with pytest.raises(RuntimeError, match="read-only"), reader.batch():
            pass
        with pytest.raises(RuntimeError, match="read-only"):
            reader.set_meta("k", "v")
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            reader.db.execute("INSERT INTO meta (key, value) VALUES ('k', 'v')")
        with writer.batch():
            a = put(writer, "a.jpg", seed=1)
            assert reader.get(a) is None  # uncommitted: invisible
        assert reader.get(a)["path"] == "a.jpg"
        assert np.array_equal(reader.load_vectors(M)[1][0], vec(1))
        assert integrity_problem(reader.db, quick=False) is None
    finally:
        reader.close()
        writer.close()
    with Store(db_path, readonly=True) as again:  # after the writer closed (no -wal/-shm left)
        assert list(again.records()) == ["a.jpg"]


def test_reader_in_another_thread_works_while_a_write_batch_is_open(db_path):
    writer = Store(db_path)
    with writer.batch():
        put(writer, "committed.jpg", seed=1)
    in_batch, reader_done = threading.Event(), threading.Event()
    seen, errors = {}, []

    def read():
        try:
            in_batch.wait(10)
            with Store(db_path, readonly=True) as reader:
                seen["records"] = set(reader.records())
                seen["vectors"] = len(reader.load_vectors(M)[0])
                seen["counts"] = {k: v for k, v in reader.counts(M).items() if k != "revision"}
        except Exception as e:  # reported below
            errors.append(e)
        finally:
            reader_done.set()

    t = threading.Thread(target=read)
    t.start()
    try:
        with writer.batch():
            put(writer, "pending.jpg", seed=2)
            writer.delete_paths(["committed.jpg"])
            in_batch.set()
            assert reader_done.wait(10)
    finally:
        t.join(10)
        writer.close()
    assert not errors
    assert seen == {
        "records": {"committed.jpg"},
        "vectors": 1,
        "counts": {"indexed": 1, "failed": 0, "total": 1, "stale": 0},
    }


def test_a_store_shared_between_threads_is_serialised(store):
    errors = []

    def work(t):
        try:
            for i in range(20):
                with store.batch():
                    put(store, f"t{t}/{i}.jpg", seed=i)
                store.records()
        except Exception as e:
            errors.append(e)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors and len(store.records()) == 60


def test_integrity_problem(db_path):
    with Store(db_path) as s:
        with s.batch():
            for i in range(500):
                s.put_ok(f"p{i}.jpg", 1, 1, f"h{i}", M, vec(i, dim=64))
        assert integrity_problem(s.db, quick=False) is None
    with open(db_path, "r+b") as f:  # overwrite pages in the middle of the file
        f.seek(4096 * 20)
        f.write(np.random.default_rng(0).bytes(4096 * 3))
    with Store(db_path) as s:
        assert integrity_problem(s.db, quick=False) and integrity_problem(s.db, quick=True)


def test_name_filter_folds_case_accents_and_unicode_forms(tmp_path):
    import unicodedata

    store = Store(tmp_path / "i.db")
    names = ["a/Café.jpg", unicodedata.normalize("NFD", "more/résumé.jpg"), "x/plain.jpg", "y/50%_off.jpg"]
    with store.batch():
        for p in names:
            store.put_failed(p, 1, 1, None, "x")
    found = {q: [r["path"] for r in store.list_images(0, 10, q)[0]] for q in ("cafe", "CAFÉ", "resume", "%")}
    assert found == {"cafe": ["a/Café.jpg"], "CAFÉ": ["a/Café.jpg"], "resume": [names[1]], "%": ["y/50%_off.jpg"]}
    store.close()


def test_revision_changes_with_every_addition_removal_and_rewrite(store):
    """The page reloads its library grid when `revision` changes: one file added while another is
    deleted keeps the count, a rename is a new row, a re-embed rewrites one; a read changes nothing."""
    seen = [store.counts(M)["revision"]]

    def changed():
        rev = store.counts(M)["revision"]
        assert rev not in seen, seen
        seen.append(rev)

    with store.batch():
        put(store, "a.jpg", seed=1)
        put(store, "b.jpg", seed=2)
    changed()
    with store.batch():  # add one, delete one: the same count
        put(store, "c.jpg", seed=3)
        store.delete_paths(["a.jpg"])
    changed()
    time.sleep(0.01)
    with store.batch():  # b.jpg's content changed: rewritten in place, same id
        put(store, "b.jpg", seed=9)
    changed()
    with store.batch():
        store.delete_paths(["c.jpg"])
    changed()
    store.records(), store.load_vectors(M), store.list_images(0, 10)
    assert store.counts(M)["revision"] == seen[-1]
