"""The background verification of pairs of copies by their pixels: a thread of its own that never writes.

The writer stores every pair of contents whose cosine reaches the model's lowest threshold, at
about one search's cost per new image (the incremental bar: <= 20 ms); decoding two images and
matching their features costs far more, so it is done here, after the fact. The thread polls the
index (`dupindex.version`, bumped by every write), takes the pairs of the ambiguous band that have
no verdict (`dupverdicts.pending`, a few dozen at a time, by hash so that one image's features serve
its pairs in a row), decodes one file of each content through simd's safe decode path within its
budget (`dupverify.features`: `imaging.open_image`, `DECODE_SECONDS`, the stop event), counts the
inliers and hands the verdicts to the writer (`worker.IndexWorker.submit_task`), the one thread that
writes. A file that fails to decode gives its pairs a note (`verify_note`) and the job goes on; the
pairs with a note are tried again once at the next start. A file moved, changed or unreadable since
it was indexed is a passing state: its pairs wait, without a note, until the index changes. Progress
is in `Runtime.verification` (/api/status's `duplicates`)."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

from simd import dupindex, dupverdicts, dupverify
from simd.budget import DECODE_SECONDS, Budget, Stopped
from simd.errors import ImageError
from simd.imaging import DEFAULT_MAX_PIXELS, check_file_size
from simd.runtime import Runtime
from simd.store import Store
from simd.storehealth import is_damage, write_failure

log = logging.getLogger(__name__)

BATCH = 32  # pairs per hand-over to the writer
POLL_SECONDS = 2.0  # how often the index is looked at for new pairs when there is nothing to do
_CACHE = 48  # images' features kept (~250 KB each)
_LATER = "\0later"  # a verdict's note for "not now": nothing stored, the pair waits for the next write
RETRY_FIRST, RETRY_MAX = 30.0, 600.0  # seconds before the loop runs again after an unexpected error


class _Unreadable(Exception):
    """No file of a content could be decoded: the note of its pairs. `passing`: every file was only
    moved, changed or unreadable for now (not a bad image): no note, tried again after the next write."""

    def __init__(self, why: str, passing: bool = False):
        super().__init__(why)
        self.passing = passing


class PairsVerifier:
    """`start()`, `stop(timeout) -> bool`, `is_alive()`; `deliver(task)` runs `task(store)` in the writer."""

    def __init__(
        self,
        db_path: Path,
        model: str,
        runtime: Runtime,
        deliver: Callable[[Callable[[Store], object]], None],
        *,
        root: Path,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        poll: float = POLL_SECONDS,
    ):
        self.db_path, self.model, self.runtime, self.deliver = Path(db_path), model, runtime, deliver
        self.root, self.max_pixels, self.poll = Path(root), max_pixels, poll
        self.verified = 0  # pairs verified by this thread (the status, tests)
        self.seconds = 0.0  # spent verifying them (decode, features, matching)
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._flight_lock = threading.Lock()
        self._in_flight: set[tuple[str, str]] = set()  # handed to the writer, not stored yet
        self._features: OrderedDict[str, dupverify.Features | _Unreadable] = OrderedDict()
        self._thread = threading.Thread(target=self._run, name="simd-verify", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 8.0) -> bool:
        """Stop at the next pair (a decode in progress stops at its next read); True if it did."""
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        return not self._thread.is_alive()

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def _status(self, state: str, counts: dict[str, int]) -> None:
        per_pair = self.seconds / self.verified if self.verified else None
        self.runtime.update(
            verification={
                "state": state,
                **counts,
                "ms_per_pair": round(per_pair * 1000, 1) if per_pair is not None else None,
            }
        )

    def _run(self) -> None:
        if dupverdicts.band(self.model) is None:
            return  # this model links by cosine alone
        try:
            dupverify._cv2()
        except ImportError as e:  # the pairs of the band then stay unlinked, and the status says why
            log.error("duplicates: pairs cannot be verified without OpenCV (%s); pip install opencv-python-headless", e)
            self.runtime.update(verification={"state": "off", "error": f"OpenCV is not installed: {e}"})
            return
        try:  # hours of decoding on a large library: behind search and indexing (Linux nices threads)
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
        except (OSError, AttributeError):
            pass
        self.deliver(self._clear_notes)  # the pairs that failed before are tried once more
        delay = RETRY_FIRST
        while not self._stop.is_set():
            try:
                self._loop()
                return
            except Stopped:
                return
            except Exception as e:  # never the daemon's end, nor the verification's: again in a while
                log.exception("the verification of duplicate pairs failed; trying again in %.0f s", delay)
                self.runtime.update(verification={"state": "off", "error": f"{e}; trying again in {delay:.0f} s"})
                self._stop.wait(delay)
                delay = min(delay * 2, RETRY_MAX)

    def _loop(self) -> None:
        with Store(self.db_path, readonly=True) as store:
            seen = None  # the index's version when the last look found nothing to do
            cursor: tuple[str, str] | None = None  # the last pair taken (pairs in key order)
            later: set[tuple[str, str]] = set()  # pairs whose files were not there as indexed
            later_at = dupindex.version(store)
            while not self._stop.is_set():
                version = dupindex.version(store)
                if version != later_at:  # the index changed: files moved or rewritten may be in it now
                    later, later_at = set(), version
                    for digest in [d for d, f in self._features.items() if isinstance(f, _Unreadable) and f.passing]:
                        del self._features[digest]
                with self._flight_lock:
                    flying = set(self._in_flight)
                retrying = self.runtime.snapshot()["phase"] == "retrying"  # the writer cannot store now
                if (version == seen and not flying) or retrying:  # nothing written since: nothing to verify
                    self._wake.wait(self.poll)
                    self._wake.clear()
                    continue
                todo = [] if len(flying) >= 4 * BATCH else self._next(store, flying | later, cursor)
                if not todo:
                    seen = version
                    self._status("verifying" if flying else "idle", dupverdicts.counts(store, self.model))
                    self._wake.wait(self.poll)
                    self._wake.clear()
                    continue
                seen, cursor = None, todo[-1][:2]
                self._status("verifying", dupverdicts.counts(store, self.model))
                verdicts = [self._verify(store, a, b) for a, b, _ in todo]
                later |= {(a, b) for a, b, _, note in verdicts if note == _LATER}
                verdicts = [v for v in verdicts if v[3] != _LATER]
                if verdicts:
                    with self._flight_lock:
                        self._in_flight |= {(a, b) for a, b, _, _ in verdicts}
                    self.deliver(self._storer(verdicts))

    def _next(self, store: Store, flying: set, cursor: tuple[str, str] | None) -> list[tuple[str, str, float]]:
        """The next pairs after the cursor; from the start again at the end (pairs stored meanwhile)."""
        todo = dupverdicts.pending(store, self.model, BATCH, flying, cursor)
        return todo if todo or cursor is None else dupverdicts.pending(store, self.model, BATCH, flying)

    def _clear_notes(self, store: Store) -> None:
        """At start: the notes go (tried once more); verdicts of another recipe go too (verified anew)."""
        key = f"dup_verify_recipe:{self.model}"
        with store.batch():
            changed = store.execute(
                "UPDATE dup_pairs SET verify_note = NULL WHERE model = ? AND verify_note IS NOT NULL RETURNING 1",
                [self.model],
            )
            if store.get_meta(key) != dupverify.VERSION:
                changed += store.execute(
                    "UPDATE dup_pairs SET inliers = NULL WHERE model = ? AND inliers IS NOT NULL RETURNING 1",
                    [self.model],
                )
                store.set_meta(key, dupverify.VERSION)
            if changed:
                dupindex.bump(store)

    def _storer(self, verdicts: list[dupverdicts.Verdict]) -> Callable[[Store], object]:
        def store_verdicts(store: Store) -> None:
            try:
                with store.batch():
                    dupverdicts.put(store, self.model, verdicts)
            except Exception as e:
                if write_failure(e) is not None or is_damage(e):
                    raise  # the writer holds this task and runs it again: the pairs stay in flight
                self._landed(verdicts)
                raise
            self._landed(verdicts)

        return store_verdicts

    def _landed(self, verdicts: list[dupverdicts.Verdict]) -> None:
        with self._flight_lock:
            self._in_flight -= {(a, b) for a, b, _, _ in verdicts}
        self._wake.set()

    def _verify(self, store: Store, a: str, b: str) -> dupverdicts.Verdict:
        if self._stop.is_set():
            raise Stopped()
        started = time.perf_counter()
        try:
            fa, fb = self._of(store, a), self._of(store, b)
            n = dupverify.inliers(fa, fb)
        except _Unreadable as e:
            if e.passing:  # moved, being rewritten, not readable right now: the index catches up first
                return a, b, None, _LATER
            log.info("a pair of possible copies is left unverified: %s", e)
            return a, b, None, str(e)
        except (Stopped, MemoryError):
            raise
        except Exception as e:  # one pair's trouble (OpenCV, a bad file) is that pair's note
            log.warning("verifying a pair of possible copies failed: %s", e)
            return a, b, None, f"verification failed: {e}"
        self.verified += 1
        self.seconds += time.perf_counter() - started
        return a, b, n, None

    def _of(self, store: Store, digest: str) -> dupverify.Features:
        hit = self._features.get(digest)
        if hit is None:
            hit = self._features[digest] = self._decode(store, digest)
            while len(self._features) > _CACHE:
                self._features.popitem(last=False)
        else:
            self._features.move_to_end(digest)
        if isinstance(hit, _Unreadable):
            raise hit
        return hit

    def _decode(self, store: Store, digest: str) -> dupverify.Features | _Unreadable:
        """The features of the first file of these bytes that is as indexed and decodes."""
        why, bad_image = [], False
        for rel, size, mtime_ns in dupverdicts.files_of(store, self.model, digest):
            path = self.root / rel
            try:
                st = os.stat(path)
                if (st.st_size, st.st_mtime_ns) != (size, mtime_ns):
                    why.append(f"{rel}: changed since it was indexed")
                    continue
                budget = Budget(DECODE_SECONDS, stop=self._stop, what="decoding")
                check_file_size(path, budget=budget)
                return dupverify.features(path, max_pixels=self.max_pixels, budget=budget)
            except ImageError as e:
                why.append(f"{rel}: {e.reason}")
                bad_image = True
            except OSError as e:
                why.append(f"{rel}: {e.strerror or e}")
        return _Unreadable("; ".join(why[:3]) or "no indexed file has these bytes any more", passing=not bad_image)
