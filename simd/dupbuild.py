"""The background build of the pairs of copies for an index that has none yet (an index from before
duplicates existed, or one whose model changed): a thread of its own, stoppable, that never writes.

It copies the in-RAM matrix (`VectorIndex.snapshot`: searches and the indexer go on meanwhile, on
the live one), reads the snapshot's hashes, runs `duplicates.build_pairs` (blocked matrix products,
the upper triangle once; progress in tiles in `Runtime.duplicates`, which /api/status shows) and
hands the result to the writer (`worker.IndexWorker.submit_task`), the one thread that writes:
`dupindex.store_build` stores it and marks the model's pairs complete. Images indexed meanwhile are
the hook's (`dupindex.DupIndex.added` scores each new one against the whole live index), so nothing
is missed; pairs of contents deleted meanwhile are dropped when the result is stored.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from simd import dupindex
from simd.budget import Stopped
from simd.duplicates import build_pairs
from simd.runtime import Runtime
from simd.store import Store
from simd.vectors import VectorIndex

log = logging.getLogger(__name__)


class PairsBuilder:
    """`start()`, `stop(timeout) -> bool`, `is_alive()`; `deliver(task)` runs `task(store)` in the writer."""

    def __init__(
        self,
        db_path: Path,
        model: str,
        vectors: VectorIndex,
        runtime: Runtime,
        deliver: Callable[[Callable[[Store], object]], None],
        *,
        root: Path | None = None,
    ):
        self.db_path, self.model, self.vectors, self.runtime, self.deliver = (
            Path(db_path),
            model,
            vectors,
            runtime,
            deliver,
        )
        self.root = root  # the library: the sizes of the images with copies are read from their headers
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="simd-duplicates", daemon=True)

    def start(self) -> None:
        self.runtime.update(duplicates={"state": "building", "done": 0, "total": 0})
        self._thread.start()

    def stop(self, timeout: float = 8.0) -> bool:
        """Stop at the next tile (the build starts over at the next start); True if it did."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        return not self._thread.is_alive()

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def _progress(self, done: int, total: int) -> None:
        self.runtime.update(duplicates={"state": "building", "done": done, "total": total})

    def _run(self) -> None:
        started = time.perf_counter()
        try:
            ids, matrix = self.vectors.snapshot()
            with Store(self.db_path, readonly=True) as store:
                hash_of = dupindex.hashes_of(store, ids.tolist())
            lowest = dupindex.thresholds(self.model)[0].lowest
            pairs = build_pairs(ids, matrix, lowest, progress=self._progress, stop=self._stop)
            del matrix
            sizes = self._sizes(pairs)
        except Stopped:
            log.info("the build of the duplicates' pairs was stopped; it starts over at the next start")
            return
        except Exception as e:  # never the daemon's end: duplicates stay incomplete, search goes on
            log.exception("the build of the duplicates' pairs failed")
            self.runtime.update(duplicates={"state": "off", "done": 0, "total": 0, "error": str(e)})
            return
        seconds = time.perf_counter() - started
        done = dict(self.runtime.duplicates or {})

        def store_result(store: Store) -> None:
            try:
                n = dupindex.store_build(store, self.model, pairs, hash_of, sizes)
            except Exception as e:  # the writer retries a refused write; else say so, not "building"
                self.runtime.update(duplicates={"state": "off", "done": 0, "total": 0, "error": str(e)})
                raise
            self.runtime.update(
                duplicates={"state": "ready", "done": done.get("total", 0), "total": done.get("total", 0)}
            )
            log.info(
                "duplicates: %d pairs of images that may be copies among %d (%s, cosine >= %.2f) found in %.1f s",
                n,
                len(ids),
                self.model,
                lowest,
                seconds,
            )

        self.deliver(store_result)

    def _sizes(self, pairs) -> dict[int, tuple[int | None, int | None, str]]:
        """The sizes of the images with copies that an index from before lacks, from their headers."""
        if self.root is None:
            return {}
        with Store(self.db_path, readonly=True) as store:
            copies = dupindex.copies_by_hash(store, self.model)
            members = set(pairs.a.tolist()) | set(pairs.b.tolist()) | {i for ids in copies.values() for i in ids}
            todo = dupindex.without_size(store, members)
        sizes = {}
        for image_id, path in todo:
            if self._stop.is_set():
                raise Stopped()
            sizes[image_id] = dupindex.header_size(self.root / path)
        return sizes
