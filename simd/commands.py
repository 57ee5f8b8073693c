"""What each `simd` subcommand does; `cli.py` parses arguments and converts errors."""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from simd import config as cfg
from simd import dupindex
from simd.client import ask_similar, live_status
from simd.embedder import Embedder
from simd.errors import NotFound, SimdError
from simd.ignore import IgnoreRules
from simd.paths import display_path
from simd.progress import ProgressBar
from simd.search import SearchService, load_index
from simd.statedir import StateDir, db_path, find_state_dir
from simd.store import Store
from simd.storehealth import is_damage, note_damage, write_failure

log = logging.getLogger(__name__)


# -- serve / index
def cmd_serve(config: cfg.Config, args) -> int:
    from simd.daemon import Daemon

    return Daemon(config).run()


def cmd_index(config: cfg.Config, args) -> int:
    from simd.indexer import Reconciler

    with StateDir.claim(config, "index") as state_dir:
        embedder = Embedder.from_config(config)
        bar = ProgressBar()
        with Store(state_dir.db) as store, _storage_errors(state_dir.db):
            try:
                with store.batch():
                    store.set_meta("model", embedder.model_id)
                # Pairs of copies already built (a daemon served this index): kept fresh here too,
                # which needs the matrix in RAM; else the daemon's next start builds them all.
                vectors = dup = None
                if dupindex.is_built(store, embedder.model_id):
                    vectors = load_index(store, embedder.model_id, embedder.dim)
                    dup = dupindex.DupIndex(embedder.model_id, vectors, state_dir.root)
                reconciler = Reconciler(
                    state_dir.root,
                    store,
                    embedder,
                    vectors,
                    IgnoreRules(config.ignore),
                    follow_symlinks=config.follow_symlinks,
                    on_progress=bar.update,
                    duplicates=dup,
                )
                summary = reconciler.run(allow_mass_delete=getattr(args, "allow_mass_delete", False))
            finally:
                bar.close()
    result = summary.as_dict()
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"{display_path(str(state_dir.root))}: {summary.describe()}; "
            f"{result['seconds']:.1f} s, {result['images_per_s']:.1f} images/s"
        )
    return 0


@contextlib.contextmanager
def _storage_errors(db: Path) -> Iterator[None]:
    """A write the disk refused, or damage met while indexing: one line (the chunk in flight was
    rolled back; every chunk before it is kept)."""
    try:
        yield
    except sqlite3.Error as e:
        if (reason := write_failure(e)) is not None:
            raise SimdError(f"cannot write the index {db}: {reason}; run `simd index` again when it can be") from None
        if is_damage(e):
            note_damage(db, str(e))
            raise SimdError(
                f"the index {db} is damaged ({e}); run `simd index` again: it is moved aside and rebuilt"
            ) from None
        raise


# -- read-only commands: find the index first
def cmd_query(config: cfg.Config, args) -> int:
    from simd.search import parse_k

    k = parse_k(args.k)
    image = Path(args.image).expanduser()
    if not image.exists():
        raise NotFound(f"{image}: no such file")
    state_dir = find_state_dir(config, getattr(args, "library", None), image)
    service = SearchService.open(state_dir)
    rel = service.indexed_rel(image)
    if rel is not None:
        result = service.similar(path=rel, k=k)
    else:
        data = _read_query_image(image)  # refuse a bad file before loading a model, and say why
        answer = ask_similar(config, state_dir, data, image.name, k)
        if answer is not None:
            result = answer
        else:
            model = service.runtime.model or ""
            # "<backbone>[+<descriptor>][+int8]": int8 is calibrated on the index's library
            backbone, _, descriptor = model.removesuffix("+int8").partition("+")
            precision = "int8" if model.endswith("+int8") else "fp32"
            config = config.replace(precision=precision, library=str(service.library_root))
            embedder = Embedder.from_config(config, model=backbone, descriptor=descriptor or "default")
            if embedder.model_id != model:
                raise SimdError(f"the index was built with {model}, which this simd cannot reproduce")
            service.set_embedder(embedder)
            result = service.similar(data=data, name=str(image), k=k)
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{len(result['results'])} most similar to {display_path(str(image))} ({result['model']}):")
    for rank, hit in enumerate(result["results"], 1):
        print(f"{rank:>3}. {hit['score']:.4f}  {display_path(hit['path'], controls=True)}")
    return 0


def _read_query_image(image: Path) -> bytes:
    from simd import imaging

    try:
        data = image.read_bytes()
    except OSError as e:
        raise SimdError(f"{image}: cannot read: {e.strerror or e}") from None
    imaging.open_image(data, name=str(image), draft_size=(256, 256))  # ImageError: what is wrong with it
    return data


def cmd_status(config: cfg.Config, args) -> int:
    state_dir = find_state_dir(config, getattr(args, "library", None))
    live = live_status(config, state_dir)
    status = live if live is not None and not live.get("needs_token") else _stored_status(state_dir, live)
    if args.json:
        print(json.dumps(status))
        return 0
    if status.get("needs_token"):
        note = (
            f" (a simd daemon runs at {status['url']}, but it needs its token for live figures: set "
            "SIMD_TOKEN; these are the stored ones)"
        )
    elif not status["daemon"]:
        note = " (no simd daemon is running for it)"
    else:
        note = ""
    print(
        f"library  {status['library']}\nstate    {status['state']}{note}\n"
        f"indexed  {status['indexed']}\npending  {status['pending']}\nfailed   {status['failed']}\n"
        f"model    {status['model'] or '-'}\nindex    {db_path(state_dir)}"
    )
    return 0


def _stored_status(state_dir: Path, live: dict | None) -> dict:
    """The status as the store has it (no daemon, or one we may not ask); `live`: a daemon that
    answered 401 ({"daemon": True, "needs_token": True, "url": ...})."""
    with Store(db_path(state_dir), readonly=True) as store:
        model, root = store.get_meta("model"), store.get_meta("library_root") or ""
        counts, dim = store.counts(model), store.model_dim(model)
    # (with a daemon we may not ask, its phase is unknown: the human output says so, and --json keeps
    # the documented states)
    return {
        "state": "idle" if root and Path(root).is_dir() else "offline",
        "indexed": counts["indexed"],
        "pending": counts.get("stale", 0),
        "failed": counts["failed"],
        "model": model or "",
        "dim": dim,
        "library": root,
        "total": counts["total"],
        "revision": counts["revision"],
        "daemon": False,
        **(live or {}),
    }


def cmd_errors(config: cfg.Config, args) -> int:
    state_dir = find_state_dir(config, getattr(args, "library", None))
    with Store(db_path(state_dir), readonly=True) as store:
        rows = store.errors()
    if args.json:
        items = [
            {
                "id": r["id"],
                "path": display_path(r["path"]),
                "error": r["error"],
                "size": r["size"],
                "mtime": r["mtime_ns"] / 1e9,
            }
            for r in rows
        ]
        print(json.dumps({"errors": items, "total": len(items)}))
        return 0
    if not rows:
        print("no errors")
    for r in rows:
        print(f"{display_path(r['path'], controls=True)}: {r['error']}")
    return 0


def cmd_duplicates(config: cfg.Config, args) -> int:
    """The groups of copies, read from the state dir (no daemon needed); simd itself never deletes."""
    import os
    import sys

    from simd.dupservice import DuplicatesService
    from simd.errors import BadRequest, ConfigError
    from simd.runtime import Runtime

    state_dir = find_state_dir(config, getattr(args, "library", None))
    with Store(db_path(state_dir), readonly=True) as store:
        model, root = store.get_meta("model"), store.get_meta("library_root") or ""
    if not model:
        raise NotFound(f"the index in {state_dir} is empty; run `simd index` or `simd serve` first")
    service = DuplicatesService(
        db_path(state_dir), Path(root), Runtime("idle", model=model), keep_rules=config.keep_rules
    )
    try:
        out = service.listing(threshold=args.threshold, limit=1)
    except BadRequest as e:
        raise ConfigError(f"--threshold: {e.message}") from None
    out["groups"] = _all_groups(service, args.threshold, out["total"])
    out["limit"] = out["total"]
    if not out["complete"]:
        print(
            "simd: the pairs of near-duplicates of this index are not built yet (a running `simd serve` builds "
            "them); only what is stored is listed",
            file=sys.stderr,
        )
    waiting = (out.get("verification") or {}).get("pending", 0)
    if waiting:
        print(
            f"simd: {waiting} pairs of possible copies are not verified by their pixels yet (a running "
            "`simd serve` verifies them); until then they are not grouped",
            file=sys.stderr,
        )
    if args.print0:
        store = service.store()
        for group in out["groups"]:
            for image in group["images"]:
                if not image["keep"]:
                    row = store.get(image["id"])  # the exact name, not the shown one
                    if row is not None:
                        sys.stdout.buffer.write(os.fsencode(service.absolute_path(row["path"])) + b"\0")
        sys.stdout.buffer.flush()
        return 0
    if args.json:
        print(json.dumps(out))
        return 0
    print(
        f"{out['total']} group{'' if out['total'] == 1 else 's'} of copies ({out['model']}, threshold "
        f"{out['threshold']:g}{'' if out['calibrated'] else ', not calibrated'}): {out['total_images']} images, "
        f"{_mb(out['reclaimable_bytes'])} in the copies not kept"
    )
    for group in out["groups"]:
        low, high = f"{group['min_score']:.2f}", f"{group['max_score']:.2f}"
        scores = (
            "same bytes" if group["tier"] == "identical" else f"score {low}" if low == high else f"scores {low}-{high}"
        )
        print(f"\n{group['tier']} ({scores}), {_mb(group['reclaimable_bytes'])} to reclaim:")
        for image in group["images"]:
            size = f"{image['width']}x{image['height']}" if image["width"] else "size unknown"
            mark = "keep" if image["keep"] else f"{image['score']:.2f}"
            print(f"  {mark:>5}  {display_path(image['path'], controls=True)}  ({size}, {_mb(image['bytes'])})")
    return 0


def _mb(n: int) -> str:
    # 1024 to the KB, as the keep rules' reasons and the page count (3.7 MB there is 3.7 MB here)
    return f"{n / (1 << 20):.1f} MB" if n >= 100 << 10 else f"{n / (1 << 10):.0f} KB"


def _all_groups(service, threshold, total: int) -> list[dict]:
    groups: list[dict] = []
    while len(groups) < total:
        page = service.listing(threshold=threshold, offset=len(groups), limit=500)["groups"]
        if not page:
            break
        groups += page
    return groups
