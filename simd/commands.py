"""What each `simd` subcommand does; `cli.py` parses arguments and converts errors."""

from __future__ import annotations

import json
import logging
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlencode

from simd import config as cfg
from simd.errors import ConfigError, NotFound, SimdError
from simd.ignore import IgnoreRules
from simd.search import Runtime, SearchService
from simd.statelock import StateLock, holder
from simd.store import Store

DB_NAME = "index.db"
log = logging.getLogger(__name__)


def db_path(state_dir: Path) -> Path:
    return Path(state_dir) / DB_NAME


def prepare_state(config: cfg.Config, role: str) -> tuple[Path, Path, Path, StateLock]:
    """(library root, state dir, db path, the state dir's lock, held): creates the state dir (0700),
    checks it belongs to this library and that no other simd process uses it."""
    root = config.library_path
    if root.exists() and not root.is_dir():
        raise ConfigError(f"library {root} is not a directory")
    state = config.state_path
    real_state, real_root = os.path.realpath(state), os.path.realpath(root)
    if os.path.commonpath([real_state, real_root]) == real_root:
        raise ConfigError(f"state dir {state} is inside the library; simd never writes into the library")
    db = db_path(state)
    if not root.exists() and not db.exists():
        # A typo, not an unmounted disk: there is no index of it to keep.
        raise SimdError(f"library {root} does not exist")
    try:
        state.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as e:
        raise SimdError(f"cannot create state dir {state}: {e.strerror or e}") from None
    lock = StateLock(state).acquire(role=role, library=str(root))
    try:
        _claim(db, root, state)
    except BaseException:
        lock.release()
        raise
    return root, state, db, lock


def _claim(db: Path, root: Path, state: Path) -> None:
    store = Store(db)
    try:
        known = store.get_meta("library_root")
        if known and known != str(root):
            raise ConfigError(f"state dir {state} holds the index of {known}, not {root}; "
                              "pass another --state-dir")
        if not known:
            with store.batch():
                store.set_meta("library_root", str(root))
    finally:
        store.close()


def make_embedder(config: cfg.Config, model: str | None = None, descriptor: str | None = None):
    from simd.backbones import configure_tensorflow, load_backbone
    from simd.embedder import Embedder

    if config.tf_threads:
        configure_tensorflow(config.tf_threads)  # TensorFlow takes this only before its first model
    backbone = load_backbone(model or config.model, weights=config.weights,
                             allow_download=config.weights_download)
    return Embedder(backbone, descriptor=descriptor or config.descriptor, batch_size=config.batch_size,
                    max_pixels=config.max_image_pixels)


def ignore_rules(config: cfg.Config) -> IgnoreRules:
    return IgnoreRules(config.ignore)


# -- serve / index
def cmd_serve(config: cfg.Config, args) -> int:
    from simd.daemon import Daemon

    return Daemon(config).run()


def cmd_index(config: cfg.Config, args) -> int:
    from simd.indexer import Reconciler

    root, state, db, lock = prepare_state(config, "index")
    try:
        embedder = make_embedder(config)
    except BaseException:
        lock.release()
        raise
    store = Store(db)
    bar = _ProgressBar(enabled=sys.stderr.isatty())
    try:
        with store.batch():
            store.set_meta("model", embedder.model_id)
        reconciler = Reconciler(root, store, embedder, None, ignore_rules(config),
                                follow_symlinks=config.follow_symlinks, on_progress=bar.update)
        summary = reconciler.run()
    finally:
        bar.close()
        store.close()
        lock.release()
    result = summary.as_dict()
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{root}: {summary.describe()}; {result['seconds']:.1f} s, {result['images_per_s']:.1f} images/s")
    return 0


class _ProgressBar:
    def __init__(self, enabled: bool):
        self.enabled, self.bar = enabled, None

    def update(self, phase: str, done: int, total: int) -> None:
        if not self.enabled or phase != "indexing" or not total:
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="img", desc="indexing", file=sys.stderr)
        self.bar.n = done
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# -- read-only commands: find the index first
def find_state(config: cfg.Config, args, image: Path | None = None) -> Path:
    """The state dir to read: --state-dir, else --library/config library, else the one index there is."""
    if config.state_dir:
        return config.state_path
    library = getattr(args, "library", None) or config.library
    if library:
        return cfg.default_state_dir(Path(library))
    base = cfg.state_base()
    candidates = sorted(p.parent for p in base.glob(f"*/{DB_NAME}"))
    if image is not None:
        real = os.path.realpath(image)
        for cand in candidates:
            root = _meta(cand, "library_root")
            if root and os.path.commonpath([os.path.realpath(root), real]) == os.path.realpath(root):
                return cand
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise ConfigError(f"no index found under {base}; run `simd index LIBRARY` first or pass --state-dir")
    raise ConfigError("several indexes exist; pass --library or --state-dir: "
                      + ", ".join(str(_meta(c, "library_root") or c) for c in candidates))


def _meta(state: Path, key: str) -> str | None:
    try:
        store = Store(db_path(state), readonly=True)
    except SimdError:
        return None
    try:
        return store.get_meta(key)
    finally:
        store.close()


def open_service(state: Path, embedder=None) -> SearchService:
    from simd.vectors import VectorIndex

    store = Store(db_path(state), readonly=True)
    try:
        model, root = store.get_meta("model"), store.get_meta("library_root")
        if not model:
            raise NotFound(f"the index in {state} is empty; run `simd index` first")
        ids, matrix = store.load_vectors(model)
    finally:
        store.close()
    dim = matrix.shape[1] if matrix.ndim == 2 and matrix.shape[0] else (embedder.dim if embedder else 1)
    vectors = VectorIndex(dim)
    if len(ids):
        vectors.replace_all(ids, matrix)
    runtime = Runtime(state="idle", model=model, dim=dim, embedder=embedder)
    return SearchService(db_path(state), Path(root or "."), state, vectors, runtime)


def cmd_query(config: cfg.Config, args) -> int:
    from simd.search import parse_k

    k = parse_k(args.k)
    image = Path(args.image).expanduser()
    if not image.exists():
        raise NotFound(f"{image}: no such file")
    state = find_state(config, args, image)
    service = open_service(state)
    rel = _indexed_rel(service, image)
    if rel is not None:
        result = service.similar(path=rel, k=k)
    else:
        data = _read_query_image(image)  # refuse a bad file before loading a model, and say why
        result = _ask_daemon(config, state, data, image.name, k)
        if result is None:
            model = service.runtime.model
            backbone, _, descriptor = model.partition("+")
            embedder = make_embedder(config, model=backbone, descriptor=descriptor or "default")
            if embedder.model_id != model:
                raise SimdError(f"the index was built with {model}, which this simd cannot reproduce")
            service.runtime.update(embedder=embedder)
            result = service.similar(data=data, name=str(image), k=k)
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{len(result['results'])} most similar to {image} ({result['model']}):")
    for rank, hit in enumerate(result["results"], 1):
        print(f"{rank:>3}. {hit['score']:.4f}  {hit['path']}")
    return 0


def _read_query_image(image: Path) -> bytes:
    from simd import imaging

    try:
        data = image.read_bytes()
    except OSError as e:
        raise SimdError(f"{image}: cannot read: {e.strerror or e}") from None
    imaging.open_image(data, name=str(image), draft_size=(256, 256))  # ImageError: what is wrong with it
    return data


def _ask_daemon(config: cfg.Config, state: Path, data: bytes, name: str, k: int) -> dict | None:
    """The answer of the daemon serving this index to an upload of the image (its model is loaded
    already: ~0.1 s instead of seconds to load one here); None when none answers, or it is not ready."""
    req = _daemon_request(config, state, f"/api/similar?{urlencode({'k': k, 'name': name})}", data)
    if req is None:
        return None
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            result = json.load(resp)
    except urllib.error.HTTPError as e:
        try:
            message = json.load(e)["error"]["message"]
        except (OSError, ValueError, KeyError, TypeError):
            message = None
        if e.code == 503 or message is None:  # starting, or not simd's answer: embed here instead
            log.debug("the daemon at %s did not answer (%s); embedding here", req.full_url, e.code)
            return None
        raise SimdError(f"{name}: {message}") from None
    except (OSError, ValueError) as e:
        log.debug("the daemon at %s did not answer (%s); embedding here", req.full_url, e)
        return None
    log.debug("asked the daemon at %s", req.full_url)
    return result if isinstance(result, dict) and "results" in result else None


def _indexed_rel(service: SearchService, image: Path) -> str | None:
    """The library-relative path of IMAGE when it is indexed and unchanged since; else None."""
    root = os.path.realpath(service.library_root)
    real = os.path.realpath(image)
    if os.path.commonpath([root, real]) != root or real == root:
        return None
    rel = os.path.relpath(real, root).replace(os.sep, "/")
    row = service._store().get_by_path(rel)
    if row is None or row["state"] != "ok" or row["model"] != service.runtime.model:
        return None
    st = os.stat(real)
    return rel if (st.st_size, st.st_mtime_ns) == (row["size"], row["mtime_ns"]) else None


def cmd_status(config: cfg.Config, args) -> int:
    state = find_state(config, args)
    live = _live_status(config, state)
    status = live if live is not None and not live.get("needs_token") else _stored_status(state, live)
    if args.json:
        print(json.dumps(status))
        return 0
    if status.get("needs_token"):
        note = (f" (a simd daemon runs at {status['url']}, but it needs its token for live figures: set "
                "SIMD_TOKEN; these are the stored ones)")
    elif not status["daemon"]:
        note = " (no simd daemon is running for it)"
    else:
        note = ""
    print(f"library  {status['library']}\nstate    {status['state']}{note}\n"
          f"indexed  {status['indexed']}\npending  {status['pending']}\nfailed   {status['failed']}\n"
          f"model    {status['model'] or '-'}\nindex    {db_path(state)}")
    return 0


def _stored_status(state: Path, live: dict | None) -> dict:
    """The status as the store has it (no daemon, or one we may not ask); `live`: a daemon that
    answered 401 ({"daemon": True, "needs_token": True, "url": ...})."""
    store = Store(db_path(state), readonly=True)
    try:
        model, root = store.get_meta("model"), store.get_meta("library_root") or ""
        counts, dim = store.counts(model), store.model_dim(model)
    finally:
        store.close()
    # (with a daemon we may not ask, its phase is unknown: the human output says so, and --json keeps
    # the documented states)
    return {"state": "idle" if root and Path(root).is_dir() else "offline", "indexed": counts["indexed"],
            "pending": counts.get("stale", 0),
            "failed": counts["failed"], "model": model or "", "dim": dim, "library": root,
            "total": counts["total"], "revision": counts["revision"], "daemon": False, **(live or {})}


def _daemon_request(config: cfg.Config, state: Path, path: str, data: bytes | None = None):
    """A request to the daemon serving this index (it notes its URL in the state dir's lock), with
    the token when one is configured; None when no daemon serves it. With `data`: a raw-body POST."""
    info = holder(state) or {}
    if info.get("role") != "serve" or not info.get("url"):
        return None
    req = urllib.request.Request(info["url"] + path, data=data, method="POST" if data is not None else "GET")
    if data is not None:
        req.add_header("Content-Type", "application/octet-stream")
    if config.token:
        req.add_header("Authorization", f"Bearer {config.token}")
    return req


def _live_status(config: cfg.Config, state: Path) -> dict | None:
    """Ask the daemon serving this index, if one runs, for its status."""
    req = _daemon_request(config, state, "/api/status")
    if req is None:
        return None
    try:
        with urllib.request.urlopen(req, timeout=1.0) as resp:
            status = json.load(resp)
    except urllib.error.HTTPError as e:
        with e:
            if e.code == 401 and _is_simd_error(e):  # it runs, and wants the token we do not have
                return {"daemon": True, "needs_token": True, "url": req.full_url.removesuffix("/api/status")}
        return None
    except (OSError, ValueError):
        return None
    root = _meta(state, "library_root")
    if not isinstance(status, dict) or status.get("library") != root:
        return None
    status["daemon"] = True
    return status


def _is_simd_error(e: urllib.error.HTTPError) -> bool:
    try:
        return isinstance(json.load(e)["error"]["code"], str)
    except (OSError, ValueError, KeyError, TypeError):
        return False


def cmd_errors(config: cfg.Config, args) -> int:
    state = find_state(config, args)
    store = Store(db_path(state), readonly=True)
    try:
        rows = store.errors()
    finally:
        store.close()
    if args.json:
        items = [{"id": r["id"], "path": r["path"], "error": r["error"], "size": r["size"],
                  "mtime": r["mtime_ns"] / 1e9} for r in rows]
        print(json.dumps({"errors": items, "total": len(items)}))
        return 0
    if not rows:
        print("no errors")
    for r in rows:
        print(f"{r['path']}: {r['error']}")
    return 0
