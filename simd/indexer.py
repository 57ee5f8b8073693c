"""Apply a reconcile plan: hash what changed, reuse vectors by content, embed the rest, commit in batches.

`Reconciler.run()` is used synchronously by `simd index` and from the daemon's single writer
thread (`simd.worker.IndexWorker`). Each chunk of files is one `BEGIN IMMEDIATE` transaction, so
a kill -9 loses at most the chunk in flight, which the next run redoes; deletions come last, after
new paths had the chance to take over the vectors of the rows they replace (renames and moves).

A file that cannot be read (any OSError on stat, hash or decode; a path past PATH_MAX; a folder that
cannot be listed) becomes that file's (or folder's) failure row, shown by `simd errors`; it never
fails the run or the chunk. A name that is not UTF-8 is no error at all. Deletions are refused
(LibraryOffline, the index kept) when the library root is gone or empty, and when most of the library
vanished at once (`MassDeletion`, see MASS_DELETE_MIN) unless the run is told the deletion is
confirmed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from simd.budget import DECODE_SECONDS, HASH_SECONDS, HEADER_BYTES, Budget, OverBudget, Stopped
from simd.errors import ImageError, LibraryOffline
from simd.ignore import IgnoreRules
from simd.imaging import check_file_size
from simd.paths import display_path
from simd.scanner import DiskFile, Plan, check_root, file_hash, has_entries, make_plan, scan_path, walk
from simd.store import FileRecord, Store
from simd.vectors import VectorIndex

log = logging.getLogger(__name__)

RECENT_DELETED_MAX = 5000  # vectors of just-deleted rows kept for moves whose two halves arrive apart
RECENT_DELETED_SECONDS = 600.0
# A run that would delete more than MASS_DELETE_MIN rows and more than half of the index at once is
# refused (MassDeletion) unless confirmed: that is how an unmounted disk or an offline share looks,
# even when a stray file sits in the empty mount point. Deleting a folder of a few dozen photos, or
# a small part of a large library, never trips it.
MASS_DELETE_MIN = 50


class MassDeletion(LibraryOffline):
    """Most of the library vanished at once: the index is kept until the deletion is confirmed."""


@dataclass
class Summary:
    """What one run did, file by file. It adds up: every file indexed in this run (new + changed +
    reembedded) either went through the network (`embedded`) or reused the vector of identical
    bytes already known (`reused`; `copied` counts the new files among them)."""

    scanned: int = 0
    new: int = 0  # new paths now indexed (failures are counted in `failed` only)
    changed: int = 0
    moved: int = 0  # new paths whose bytes were just deleted elsewhere: a rename or move
    copied: int = 0
    deleted: int = 0
    failed: int = 0  # files that failed in this run; `failed_total` is every failing file after it
    embedded: int = 0
    reused: int = 0
    reembedded: int = 0  # stale rows (another model) brought to the active model
    touched: int = 0  # stat changed, same bytes: only the stat was updated
    unchanged: int = 0
    failed_total: int = 0
    interrupted: bool = False
    seconds: float = 0.0

    def as_dict(self) -> dict:
        d = asdict(self)
        d["seconds"] = round(self.seconds, 3)
        d["images_per_s"] = round(self.embedded / self.seconds, 2) if self.seconds > 0 else 0.0
        return d

    @property
    def did_something(self) -> bool:
        return any((self.new, self.changed, self.moved, self.deleted, self.failed, self.reembedded, self.touched))

    def describe(self) -> str:
        """One line for a person, e.g. '254 new (250 embedded, 4 copies of known images), 2 failed ...'."""
        if not self.did_something:
            return f"{self.scanned} files, nothing to do"
        parts = []
        indexed = self.new + self.changed + self.reembedded
        if self.new:
            parts.append(f"{self.new} new")
        if self.changed:
            parts.append(f"{self.changed} changed")
        if self.reembedded:
            parts.append(f"{self.reembedded} re-embedded for the current model")
        if indexed:
            how = [f"{self.embedded} embedded"] if self.embedded else []
            if self.reused:
                how.append(f"{self.reused} byte-identical to images already indexed")
            parts[-1] += f" ({', '.join(how)})"
        for count, what in (
            (self.moved, "moved or renamed"),
            (self.deleted, "deleted"),
            (self.touched, "touched (same bytes)"),
            (self.unchanged, "unchanged"),
        ):
            if count:
                parts.append(f"{count} {what}")
        if self.failed or self.failed_total:
            parts.append(f"{self.failed} failed ({self.failed_total} failing in all: `simd errors`)")
        return ", ".join(parts)


@dataclass(slots=True)
class Write:
    """One file's outcome in a chunk, queued for the chunk's one transaction. `outcome`: "ok" (store
    `vector`), "failed" (record `error`), "touched" (same bytes: update the stat) or "vanished"
    (gone since the scan: drop its row); `kind`: why it was in the plan (new, changed, stale, moved)."""

    outcome: str
    file: DiskFile
    kind: str
    digest: str | None = None
    vector: np.ndarray | None = None
    error: str | None = None


class Reconciler:
    """Owns the writer `Store`; must be used from one thread only."""

    def __init__(
        self,
        root: Path,
        store: Store,
        embedder,
        vectors: VectorIndex | None,
        ignore: IgnoreRules,
        *,
        follow_symlinks: bool = False,
        chunk_size: int = 128,
        on_progress: Callable[[str, int, int], None] | None = None,
        on_deleted: Callable[[list[int]], object] | None = None,
        stop: threading.Event | None = None,
        duplicates=None,
    ):
        self.root = Path(root)
        self.store = store
        self.embedder = embedder
        self.vectors = vectors
        self.ignore = ignore
        self.follow_symlinks = follow_symlinks
        self.chunk_size = chunk_size
        self.on_progress = on_progress or (lambda phase, done, total: None)
        self.on_deleted = on_deleted or (lambda ids: None)  # e.g. drop their cached thumbnails
        self.stop = stop or threading.Event()
        # `dupindex.DupIndex` (or None): keeps the pairs of copies in step, inside each batch
        self.duplicates = duplicates
        self._recent: OrderedDict[str, tuple[float, np.ndarray]] = OrderedDict()

    @property
    def model(self) -> str:
        return self.embedder.model_id

    # -- planning
    def plan(
        self, paths: Iterable[str] | None = None, *, allow_mass_delete: bool = False
    ) -> tuple[Plan, dict[str, FileRecord]]:
        """What is to be done for these paths (None or "": the whole library). Nothing on disk
        raises here; what cannot be read is in the plan as a failure of that file or folder."""
        check_root(self.root)
        self.on_progress("scanning", 0, 0)
        if paths is None or "" in (paths := {p.strip("/") for p in paths}):
            disk = walk(self.root, self.ignore, follow_symlinks=self.follow_symlinks)
            records = self.store.records()
            if not disk and records and not allow_mass_delete:
                raise LibraryOffline(
                    f"library root {self.root} is empty but the index holds {len(records)} "
                    "images; refusing to delete them (is a disk unmounted?)"
                )
        else:
            disk, records = {}, {}
            for rel in sorted(paths):
                # A path reached through a symlink is compared under the name a full walk gives it.
                name, found = scan_path(self.root, rel, self.ignore, follow_symlinks=self.follow_symlinks)
                disk.update(found)
                for prefix in {rel, name} - {None}:
                    records.update(self.store.records(prefix=prefix))
        return make_plan(disk, records, self.model), records

    # -- applying
    def run(self, paths: Iterable[str] | None = None, *, allow_mass_delete: bool = False) -> Summary:
        """Bring the index in line with these paths (None: the whole library). A file that cannot be
        read is recorded as failed and the run goes on; LibraryOffline (MassDeletion among them)
        when the library looks offline: then nothing is deleted. `allow_mass_delete`: the user
        confirmed that most of the library is really gone."""
        started = time.perf_counter()
        plan, records = self.plan(paths, allow_mass_delete=allow_mass_delete)
        summary = Summary(scanned=plan.scanned, unchanged=plan.unchanged)
        gone_hashes = {rec.hash for rec in plan.gone if rec.hash and rec.state == "ok"}
        moved_hashes: set[str] = set()
        work = (
            [("new", f) for f in plan.new] + [("changed", f) for f in plan.changed] + [("stale", f) for f in plan.stale]
        )
        total, done = len(work), 0
        self.on_progress("indexing", 0, total)
        for start in range(0, total, self.chunk_size):
            if self.stop.is_set():
                summary.interrupted = True
                break
            chunk = work[start : start + self.chunk_size]
            try:
                self._apply_chunk(chunk, records, gone_hashes, moved_hashes, summary)
            except Stopped:  # a stop while a file was read: the chunk is dropped, the next run redoes it
                summary.interrupted = True
                break
            done += len(chunk)
            self.on_progress("indexing", done, total)
        if not summary.interrupted and plan.gone:
            summary.deleted = self._delete(plan.gone, moved_hashes, allow_mass_delete)
        summary.failed_total = self.store.counts(self.model)["failed"]
        summary.seconds = time.perf_counter() - started
        self.on_progress("done", total, total)
        return summary

    def _apply_chunk(
        self,
        chunk: list[tuple[str, DiskFile]],
        records: dict[str, FileRecord],
        gone_hashes: set[str],
        moved_hashes: set[str],
        summary: Summary,
    ) -> None:
        writes: list[Write] = []
        to_embed: dict[str, list[tuple[str, DiskFile]]] = {}  # hash -> files with that new content
        for kind, f in chunk:
            if f.error is not None:  # found unreadable by the walk (a folder, a path too long, ...)
                writes.append(Write("failed", f, kind, error=f.error))
                continue
            abs_path = self.root / f.path
            try:
                digest = self._hash(abs_path, f)
            except FileNotFoundError:
                writes.append(Write("vanished", f, kind))
                continue
            except OSError as e:
                writes.append(Write("failed", f, kind, error=f"cannot read: {e.strerror or e}"))
                continue
            except (ImageError, OverBudget) as e:
                if not abs_path.exists():
                    writes.append(Write("vanished", f, kind))
                else:
                    writes.append(Write("failed", f, kind, error=e.reason))
                continue
            rec = records.get(f.path)
            if kind == "changed" and rec and rec.hash == digest and rec.state == "ok" and rec.model == self.model:
                writes.append(Write("touched", f, kind, digest))
                continue
            vec = self._reusable(digest)
            if vec is not None:
                if kind == "new" and (digest in gone_hashes or digest in self._recent):
                    moved_hashes.add(digest)
                    summary.moved += 1
                    kind = "moved"  # counted as moved, not as new
                else:
                    self._note_reuse(kind, f, summary)
                writes.append(Write("ok", f, kind, digest, vector=vec))
                continue
            to_embed.setdefault(digest, []).append((kind, f))
        if to_embed:
            # One model call per distinct content: copies inside the chunk share the result.
            firsts = [files[0][1] for files in to_embed.values()]
            results = self.embedder.embed_files([self.root / f.path for f in firsts], stop=self.stop)
            summary.embedded += sum(1 for r in results if not isinstance(r, ImageError))
            for (digest, files), result in zip(to_embed.items(), results, strict=True):
                for i, (kind, f) in enumerate(files):
                    if isinstance(result, ImageError):
                        writes.append(Write("failed", f, kind, digest, error=result.reason))
                    elif not np.isfinite(result).all():  # stored, it would fail the chunk's commit
                        writes.append(Write("failed", f, kind, digest, error="the model gave no usable vector"))
                    else:
                        if i:
                            self._note_reuse(kind, f, summary, files[0][1].path)
                        writes.append(Write("ok", f, kind, digest, vector=np.asarray(result, dtype=np.float32)))
        self._commit(writes, summary, {rec.hash for kind, f in chunk if (rec := records.get(f.path)) and rec.hash})

    def _hash(self, path: Path, f: DiskFile) -> str:
        """The file's hash, within its budget (`simd.budget`). A file over 16 MB is first checked
        to be an image no larger than the pixel size its header declares (ImageError), so a header
        followed by gigabytes of zeros, or a video, is refused before it is read."""
        if f.size > HEADER_BYTES:
            check_file_size(path, budget=Budget(DECODE_SECONDS, self.stop, "reading the header"))
        return file_hash(path, Budget(HASH_SECONDS, self.stop, "hashing"))

    @staticmethod
    def _note_reuse(kind: str, f: DiskFile, summary: Summary, twin: str | None = None) -> None:
        summary.reused += 1
        if kind == "new":
            summary.copied += 1
        log.info("%s: byte-identical to %s; its vector is reused", f.path, twin or "an indexed image")

    def _commit(self, writes: list[Write], summary: Summary, replaced: Iterable[str] = ()) -> None:
        """`replaced`: the hashes the chunk's paths had before (their pairs may be orphaned now)."""
        upserts: list[tuple[int, np.ndarray]] = []
        removed: list[int] = []
        vanished: list[int] = []
        hashes: dict[int, tuple[str | None, str]] = {}
        with self.store.batch():
            dup = self.duplicates
            known = (
                dup.known(self.store, {w.digest for w in writes if w.outcome == "ok" and w.digest}) if dup else set()
            )
            for w in writes:
                f = w.file
                if w.outcome == "ok" and w.vector is not None:
                    image_id = self.store.put_ok(f.path, f.size, f.mtime_ns, w.digest, self.model, w.vector)
                    upserts.append((image_id, w.vector))
                    hashes[image_id] = (w.digest, f.path)
                    if w.kind == "new":
                        summary.new += 1
                    elif w.kind == "changed":
                        summary.changed += 1
                    elif w.kind == "stale":
                        summary.reembedded += 1
                elif w.outcome == "failed":
                    image_id = self.store.put_failed(f.path, f.size, f.mtime_ns, w.digest, w.error or "failed")
                    removed.append(image_id)
                    summary.failed += 1
                    log.warning("skipping %s: %s", display_path(f.path, controls=True), w.error)
                elif w.outcome == "touched":
                    self.store.update_stat(f.path, f.size, f.mtime_ns)
                    summary.touched += 1
                elif w.outcome == "vanished":
                    vanished.extend(self.store.delete_paths([f.path]))
            if dup is not None:  # before `vectors` takes the rows: the new images against the index
                dup.added(self.store, [(i, hashes[i][0], v, hashes[i][1]) for i, v in upserts], known)
                dup.removed(self.store, replaced)
        removed += vanished
        if self.vectors is not None:
            if upserts:
                self.vectors.upsert([i for i, _ in upserts], np.stack([v for _, v in upserts]))
            if removed:
                self.vectors.remove(removed)
        if vanished:
            self.on_deleted(vanished)

    def _delete(self, gone: list[FileRecord], moved_hashes: set[str], allow_mass_delete: bool = False) -> int:
        # The root may have vanished while we embedded: deleting now would empty the index.
        check_root(self.root)
        if not allow_mass_delete:
            if not has_entries(self.root):
                raise LibraryOffline(f"library root {self.root} became empty; keeping the index")
            self._check_mass_deletion(sum(1 for rec in gone if rec.hash not in moved_hashes))
        for rec in gone:
            if rec.hash and rec.state == "ok" and rec.model == self.model and rec.hash not in moved_hashes:
                vec = self.store.vector_of(rec.id, self.model)  # the raw descriptor, not the index's copy
                if vec is not None:
                    self._remember(rec.hash, vec)
        with self.store.batch():
            ids = self.store.delete_paths([rec.path for rec in gone])
            if self.duplicates is not None:
                self.duplicates.removed(self.store, {rec.hash for rec in gone if rec.hash})
        if self.vectors is not None:
            self.vectors.remove(ids)
        self.on_deleted(ids)
        return sum(1 for rec in gone if rec.hash not in moved_hashes)

    def _check_mass_deletion(self, n: int) -> None:
        """Refuse to delete `n` rows (moves not counted) when that is most of the index at once."""
        if n <= MASS_DELETE_MIN:
            return
        total = self.store.counts(None)["total"]
        if n > total / 2:
            raise MassDeletion(
                f"{n} of the {total} files in the index are missing from {self.root} at once; the index "
                "is kept (is a disk unmounted or a share offline?). If they were deleted, confirm: "
                "`simd index --allow-mass-delete`, or POST /api/rescan?confirm_deletions=1 to the daemon"
            )

    # -- content reuse
    def _reusable(self, digest: str) -> np.ndarray | None:
        hit = self._recent.get(digest)
        if hit is not None and time.monotonic() - hit[0] < RECENT_DELETED_SECONDS:
            return hit[1]
        return self.store.vector_for_hash(digest, self.model)

    def _remember(self, digest: str, vec: np.ndarray) -> None:
        self._recent[digest] = (time.monotonic(), np.array(vec, dtype=np.float32))
        self._recent.move_to_end(digest)
        while len(self._recent) > RECENT_DELETED_MAX:
            self._recent.popitem(last=False)
