"""The embedding network on ONNX Runtime (fp32): converted once from the TensorFlow network with
tf2onnx, cached on disk, then loaded without importing TensorFlow.

A cached file is named by everything that shapes its graph (``cache_key``): the backbone, the
input size, the descriptor's graph knobs, the weights file's md5, the onnxruntime version and
``FORMAT``; the onnxruntime version also shows in the name, so that a conversion can remove the
files of other versions, which this install can no longer load (``_remove_stale``: ~95 MB each for
ResNet50). Random weights (tests) have no file and are converted in memory, never cached.
Nothing here raises for a runtime problem: a file that does not load is converted again, and a
conversion or session that fails returns None with one WARNING (the caller keeps TensorFlow).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from simd.backbones.quantize import CONVERT_HERE_ENV
from simd.backbones.quantize import ID_SUFFIX as int8_suffix
from simd.backbones.resnet import file_md5, keras_home

log = logging.getLogger(__name__)

NAME = "onnxruntime"
FORMAT = 1  # bump when the conversion changes in a way the other key parts do not show
OPSET = 17
CACHE_ENV = "SIMD_MODEL_CACHE"
_unavailable: str | None = None  # why onnxruntime cannot be imported, once that is known
# A cached file of another onnxruntime version is removed once it has not been written for this
# long: an upgrade frees the space at its first conversion, while two installs of different
# versions that share one cache do not remove each other's files at every start.
STALE_SECONDS = 7 * 86400
# cache_key's names (an older simd wrote them without the "-ort<version>" part)
_CACHED_NAME = re.compile(r"^[a-z0-9-]+-\d+-(?:ort(?P<version>[0-9][0-9A-Za-z.+-]*)-)?[0-9a-f]{20}\.onnx$")


def cache_dir(override: str | os.PathLike | None = None) -> Path:
    """Where converted models live: ``override``, else $SIMD_MODEL_CACHE, else beside ResNet50's
    weights in Keras' cache ($KERAS_HOME/models/simd-onnx)."""
    chosen = override or os.environ.get(CACHE_ENV)
    return Path(chosen).expanduser() if chosen else keras_home() / "models" / "simd-onnx"


def ort_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("onnxruntime")
    except PackageNotFoundError:
        return "missing"


def cache_key(backbone_id: str, classes: int, descriptor: Any, size: int, weights: Path, int8: Any = None) -> str:
    """The cached file's name (no suffix) for one input size of one backbone and descriptor;
    ``int8`` (a ``quantize.Calibration``): of its int8 model ("<backbone>-int8-<size>-...")."""
    d = descriptor
    knobs = {
        "format": FORMAT,
        "opset": OPSET,
        "onnxruntime": ort_version(),
        "backbone": backbone_id,
        "size": size,
        "weights_md5": file_md5(Path(weights)),
        "preprocess": d.preprocess,
        "pooling": d.pooling,
        "gem_p": float(d.gem_p) if d.pooling == "gem" else None,
        "flip": bool(d.flip),
        "logits": classes if d.logits else 0,
    }
    if d.logits and classes and getattr(d, "gap_weight", 0.0):  # the pooled features beside the logits
        knobs["with_features"] = True  # only when set: the keys of earlier descriptors stay as they were
    if int8 is not None:
        knobs["int8"] = int8.key()
        backbone_id += "-int8"
    digest = hashlib.sha256(json.dumps(knobs, sort_keys=True).encode()).hexdigest()[:20]
    return f"{backbone_id}-{size}-ort{ort_version()}-{digest}"


def _remove_stale(folder: Path, now: float | None = None) -> None:
    """Remove the cached models of other onnxruntime versions (and the unversioned names of older
    simd releases) not written for STALE_SECONDS, and temporary files a crash left over a day ago.
    Only files named as this module names them; nothing else in the folder is touched."""
    now = time.time() if now is None else now
    for path in folder.iterdir():
        name = path.name
        ours = _CACHED_NAME.match(name)
        if ours and ours["version"] != ort_version():
            age = STALE_SECONDS
        elif (
            name.startswith(".")
            and name.endswith(".tmp")
            and _CACHED_NAME.match(name[1:].partition(".onnx.")[0] + ".onnx")
        ):
            age = 86400  # _write_atomic's ".<name>.<random>.tmp", left by a crash
        else:
            continue
        try:
            st = path.stat()
            if now - st.st_mtime < age or not path.is_file():
                continue
            path.unlink()
            log.info("removed %s from the model cache (%d MB): this simd no longer uses it", name, st.st_size >> 20)
        except OSError as e:  # another process removed it, or the folder is shared read-only
            log.debug("cannot remove %s from the model cache: %s", path, e)


def convert_apart(config: Any, model: str, descriptor: str) -> bool:
    """Convert `model` into the cache in a process of its own (`Embedder.from_config` there, on
    the same settings): TensorFlow and the converter hold ~1-6 GB that a process never hands back,
    and a daemon that converted in itself kept them until it stopped. True when the child
    succeeded; False (one WARNING) when it failed, or when this process is that child."""
    if os.environ.get(CONVERT_HERE_ENV):
        return False
    what = model + (" (int8)" if config.precision == "int8" else "")
    if not _writable(cache_dir(config.model_cache)):
        # the child's file could not reach the daemon: converting there too would convert twice
        log.info("the model cache cannot be written; converting %s in this process", what)
        return False
    chosen = {"model": model, "descriptor": descriptor, "weights": config.weights, "model_cache": config.model_cache}
    settings = {
        "library": config.library or ".",  # int8 is calibrated on the library's photos
        "runtime": NAME,
        "precision": config.precision,
        "ignore": list(config.ignore),
        "weights_download": False,
        "tf_threads": config.tf_threads,
        **{k: str(v) for k, v in chosen.items() if v is not None},
    }
    code = (
        "import json, sys; from simd.config import Config; from simd.embedder import Embedder; "
        "Embedder.from_config(Config(json.loads(sys.argv[1])))"
    )
    env = {**os.environ, CONVERT_HERE_ENV: "1", "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")}
    log.info("converting %s for %s once, in a separate process (seconds to a minute)", what, NAME)
    started = time.monotonic()
    try:
        done = subprocess.run(
            [sys.executable, "-c", code, json.dumps(settings)], env=env, capture_output=True, text=True, timeout=3600
        )
    except (OSError, subprocess.SubprocessError) as e:
        log.warning("cannot convert %s in a separate process (%s); converting here", what, e)
        return False
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1][:300]
        log.warning("converting %s in a separate process failed (%s); converting here", what, last)
        return False
    log.info("converted %s in %.0f s", what, time.monotonic() - started)
    for line in done.stderr.splitlines():  # why the child made no int8 model (too few photos)
        if line.startswith("precision int8"):
            log.warning("%s", line)
    return True


class OrtNetwork:
    """``run(size, batch)``: uint8 (n, size, size, 3) -> float32 (n, dim), one session per size."""

    runtime = NAME

    def __init__(self, sessions: dict[int, Any], origin: str, id_suffix: str = ""):
        self._sessions = sessions
        self.id_suffix = id_suffix  # "+int8" for an int8 model: its vectors are another model id
        self._inputs = {size: s.get_inputs()[0].name for size, s in sessions.items()}
        self.origin = origin  # "cached <dir>", "converted, cached in <dir>", "converted in memory"

    def describe(self) -> str:
        return f"{NAME} {ort_version()}{' int8' if self.id_suffix else ''} ({self.origin})"

    def run(self, size: int, batch: np.ndarray) -> np.ndarray:
        out = self._sessions[size].run(None, {self._inputs[size]: np.ascontiguousarray(batch, np.uint8)})[0]
        return np.asarray(out, dtype=np.float32)


def open_network(
    backbone_id: str,
    classes: int,
    descriptor: Any,
    sizes: tuple[int, ...],
    weights: Path | None,
    *,
    convert_from: Any = None,
    cache: str | os.PathLike | None = None,
    threads: int = 0,
    int8: Any = None,
) -> OrtNetwork | None:
    """The ONNX Runtime network for these sizes: from the cache when every size is there (no
    TensorFlow imported); else, given ``convert_from`` (a ``TFNetwork``), converted and cached
    where the cache can be written. None when the cache lacks a size and there is nothing to
    convert from, or when conversion or ONNX Runtime fails (with one WARNING saying why).
    ``int8`` (a ``quantize.Calibration``): its int8 model, from the cache, else (given its
    ``decode``, in the conversion child or beside a TF conversion) quantized from the fp32 model
    (cached or converted first) and cached; the fp32 network when too few photos decode."""
    global _unavailable
    if _unavailable:
        return None
    int8 = int8 if weights is not None else None  # random weights are never cached: fp32 only
    folder = cache_dir(cache)
    sessions: dict[int, Any] = {}
    missing: list[tuple[int, Path | None]] = []
    try:
        for size in sizes:
            key = cache_key(backbone_id, classes, descriptor, size, weights, int8) if weights else None
            path = folder / f"{key}.onnx" if key else None
            session = _load_cached(path, threads) if path is not None else None
            if session is None:
                missing.append((size, path))
            else:
                sessions[size] = session
    except ImportError as e:  # said once: the caller asks again after building the TF network
        _unavailable = str(e)
        log.warning("onnxruntime cannot be used (%s); running on TensorFlow", e)
        return None
    if not missing:
        return OrtNetwork(sessions, f"cached in {folder}", "" if int8 is None else int8_suffix)
    if int8 is not None:
        if int8.decode is None or not (convert_from is not None or os.environ.get(CONVERT_HERE_ENV)):
            return None
        return _quantized(backbone_id, classes, descriptor, sizes, weights, int8, convert_from, cache, threads)
    if convert_from is None:
        return None
    unwritable = False
    for size, path in missing:
        try:
            data = _convert(convert_from, size)
            sessions[size] = _session(data, threads)
        except Exception as e:  # tf2onnx and ORT raise anything; the daemon must keep running
            log.warning(
                "cannot run %s on onnxruntime (%s: %s); running on TensorFlow", backbone_id, type(e).__name__, e
            )
            return None
        if path is not None and not _write_atomic(path, data):
            unwritable = True
    if unwritable or weights is None:
        return OrtNetwork(sessions, "converted in memory")
    return _finish(folder, sessions)


def _finish(folder: Path, sessions: dict[int, Any], suffix: str = "") -> OrtNetwork:
    try:
        _remove_stale(folder)
    except OSError as e:
        log.debug("cannot list the model cache %s: %s", folder, e)
    return OrtNetwork(sessions, f"{'quantized' if suffix else 'converted'}, cached in {folder}", suffix)


def _quantized(
    backbone_id: str, classes: int, descriptor: Any, sizes: tuple[int, ...], weights: Any, int8: Any, *args: Any
) -> OrtNetwork | None:
    """The int8 network of ``int8`` (with its decoder), quantized from the fp32 models (cached, or
    converted and cached first) and cached; the fp32 network when too few photos decode or the
    quantizer fails (one WARNING); None when there is no fp32 model in the cache."""
    convert_from, cache, threads = args
    fp32 = open_network(backbone_id, classes, descriptor, sizes, weights, convert_from=convert_from, cache=cache)
    folder = cache_dir(cache)
    keys = {size: cache_key(backbone_id, classes, descriptor, size, weights) for size in sizes}
    if fp32 is None or not all((folder / f"{k}.onnx").is_file() for k in keys.values()):
        return None
    images = int8.images(sizes)
    if images is None:
        return fp32
    started, sessions = time.monotonic(), {}
    for size in sizes:
        try:
            data = int8.quantize((folder / f"{keys[size]}.onnx").read_bytes(), images[size])
            sessions[size] = _session(data, threads)
        except Exception as e:  # the quantizer and ORT raise anything; fp32 still runs
            log.warning("cannot quantize %s to int8 (%s: %s); running fp32", backbone_id, type(e).__name__, e)
            return fp32
        path = folder / f"{cache_key(backbone_id, classes, descriptor, size, weights, int8)}.onnx"
        if not _write_atomic(path, data):
            return OrtNetwork(sessions, "quantized in memory", int8_suffix)
    n = len(images[sizes[0]])
    log.info("quantized %s to int8 on %d photos in %.0f s", backbone_id, n, time.monotonic() - started)
    return _finish(folder, sessions, int8_suffix)


def _session(model: str | bytes, threads: int) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only; what we cannot use is reported by us
    # Between its parallel sections ORT's threads spin by default, burning the cores the decode
    # pool needs (simd decodes the next batch while the network runs) and those of the rest of
    # the machine. A batch takes seconds, so waking the threads costs nothing measurable.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def _load_cached(path: Path, threads: int) -> Any:
    """The session of a cached file, or None when there is none or it does not load (then it is
    removed, with a WARNING, to be converted again)."""
    if not path.is_file():
        return None
    try:
        return _session(str(path), threads)
    except ImportError:
        raise
    except Exception as e:  # a truncated or damaged file: ORT raises its own error types
        log.warning("cached model %s cannot be loaded (%s); converting it again", path, str(e).splitlines()[0][:200])
        try:
            path.unlink()
        except OSError:
            pass
        return None


def _convert(network: Any, size: int) -> bytes:
    """The TF network's function for ``size`` as a serialised ONNX model (imports tf2onnx, hence TF)."""
    fn = network.function(size)
    tf2onnx_log = logging.getLogger("tf2onnx")
    level = tf2onnx_log.level
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tf2onnx and onnx warn about numpy and protobuf APIs
        import tf2onnx

        tf2onnx_log.setLevel(logging.WARNING)
        try:
            proto, _ = tf2onnx.convert.from_function(fn, input_signature=fn.input_signature, opset=OPSET)
        finally:
            tf2onnx_log.setLevel(level)
    log.info("converted %s at %d px to ONNX", getattr(network.backbone, "id", "the network"), size)
    return bytes(proto.SerializeToString())


def _writable(folder: Path) -> bool:
    """The cache folder exists, or can be made, and a file can be created in it."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


def _write_atomic(path: Path, data: bytes) -> bool:
    """tmp + fsync + rename in the cache dir; False (with a WARNING) when it cannot be written."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
        return True
    except OSError as e:
        log.warning("cannot cache the converted model in %s (%s); it is converted again at each start", path.parent, e)
        return False
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
