"""ResNet50 (Keras applications, ImageNet, no top): weight resolution, download, model and preprocessing.

Weights resolve in this order (``resolve_weights``), all without importing TensorFlow so that
``simd models`` stays fast:
  1. an explicit ``weights`` path (config ``weights = "/path/to/file.h5"``), used as given;
  2. Keras' cache ``$KERAS_HOME/models/<NOTOP_FILE>`` (KERAS_HOME defaults to ~/.keras), used only
     if its md5 matches the published one: a truncated or corrupt file is reported, never loaded;
  3. if allowed, a download through ``keras.utils.get_file`` (``download``).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import socket
import tempfile
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from simd.errors import WeightsUnavailable

log = logging.getLogger(__name__)

ID = "resnet50"
DIM = 2048
INPUT_SIZE = 224
NOTOP_FILE = "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
NOTOP_MD5 = "4d473c1dd8becc155b73f8504c6f6626"
ORIGIN = "https://storage.googleapis.com/tensorflow/keras-applications/resnet/" + NOTOP_FILE
# Keras' get_file (urlretrieve) has no timeout of its own: on a network that drops packets instead
# of refusing, a start with `model = auto` would wait for minutes, or for ever on a stalled transfer.
DOWNLOAD_TIMEOUT_S = 30.0  # per connect / read
_timeout_lock = threading.Lock()
HOW_TO_GET = (
    "run `simd weights fetch` on a machine with network access (it fills the Keras cache "
    f"$KERAS_HOME/models, default ~/.keras/models), or download {NOTOP_FILE} and set "
    '`weights = "/path/to/file.h5"` in the config file'
)


@dataclass(frozen=True)
class WeightsStatus:
    """Where ResNet50 weights would come from. ``path`` is None when none are usable on disk."""

    path: Path | None
    source: str  # human-readable, for `simd models` and log messages
    problem: str | None = None  # why the cache/path is unusable, if it is


def keras_home() -> Path:
    """KERAS_HOME as Keras resolves it, but read at call time (Keras reads it once, at import)."""
    if os.environ.get("KERAS_HOME"):
        return Path(os.environ["KERAS_HOME"]).expanduser()
    base = Path.home()
    if not os.access(base, os.W_OK):
        base = Path("/tmp")
    return base / ".keras"


def cache_path() -> Path:
    return keras_home() / "models" / NOTOP_FILE


_md5_cache: dict[tuple[str, int, int], str] = {}
_md5_lock = threading.Lock()


def file_md5(path: Path) -> str:
    """md5 of a file, memoised on (path, size, mtime) since `simd models` and `auto` both ask."""
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    with _md5_lock:
        if key in _md5_cache:
            return _md5_cache[key]
    h = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    digest = h.hexdigest()
    with _md5_lock:
        _md5_cache[key] = digest
    return digest


def resolve_weights(weights: str | os.PathLike | None = None) -> WeightsStatus:
    """Find usable weights on disk (explicit path, then Keras cache); never downloads."""
    if weights:
        p = Path(weights).expanduser()
        if p.is_file():
            return WeightsStatus(p, f"file {p}")
        return WeightsStatus(None, f"file {p}", f"weights file {p} does not exist")
    p = cache_path()
    if not p.exists():
        return WeightsStatus(None, "none", f"no ResNet50 weights in the Keras cache ({p})")
    try:
        digest = file_md5(p)
    except OSError as e:
        return WeightsStatus(None, f"keras cache {p}", f"cannot read {p}: {e}")
    if digest != NOTOP_MD5:
        return WeightsStatus(
            None, f"keras cache {p}", f"{p} is corrupt or incomplete (md5 {digest}, expected {NOTOP_MD5}); delete it"
        )
    return WeightsStatus(p, f"keras cache {p}")


def find_weights(weights: str | os.PathLike | None = None, *, allow_download: bool = True) -> Path:
    """A usable weights file, downloading it if allowed; ``WeightsUnavailable`` says how to get one."""
    status = resolve_weights(weights)
    if status.path is not None:
        return status.path
    if weights:  # an explicit path that is wrong is a config error: do not silently download
        raise WeightsUnavailable(f"ResNet50: {status.problem}; {HOW_TO_GET}")
    if not allow_download:
        raise WeightsUnavailable(f"ResNet50 weights unavailable ({status.problem}; download disabled); {HOW_TO_GET}")
    try:
        return download()
    except WeightsUnavailable as e:
        raise WeightsUnavailable(f"ResNet50 weights unavailable ({status.problem}); {e.message}") from None


# After a failed download, `auto` does not try again for a day: a machine without network access
# would otherwise wait for it and log it on every start.
RETRY_AFTER_S = 24 * 3600
_FAILED_MARK = ".simd-resnet50-download-failed"


def _failed_mark() -> Path:
    return cache_path().parent / _FAILED_MARK


def recent_download_failure() -> str | None:
    """Why the last download failed, if that was less than RETRY_AFTER_S ago; else None."""
    import time

    try:
        mark = _failed_mark()
        if time.time() - mark.stat().st_mtime < RETRY_AFTER_S:
            return mark.read_text(errors="replace").strip() or "download failed"
    except OSError:
        pass
    return None


def _note_download(failure: str | None) -> None:
    try:
        if failure is None:
            _failed_mark().unlink(missing_ok=True)
        else:
            _failed_mark().parent.mkdir(parents=True, exist_ok=True)
            _failed_mark().write_text(failure[:500] + "\n")
    except OSError:  # a read-only cache: we will just try again next time
        pass


def download() -> Path:
    """Fetch the notop weights into Keras' cache via ``keras.utils.get_file`` (md5-checked).

    The file is downloaded into a temporary directory next to the cache and moved in only once
    complete and verified, so a failed download never leaves (or deletes) a file in the cache.
    """
    from simd.backbones.tfruntime import import_tf

    import_tf()
    import keras

    dest = cache_path()
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".simd-download-", dir=dest.parent))
    except OSError as e:
        raise WeightsUnavailable(f"cannot write to the Keras cache {dest.parent}: {e}; {HOW_TO_GET}") from None
    try:
        log.info("downloading ResNet50 weights (%s)", NOTOP_FILE)
        with _timeout_lock:  # the only way to give urlretrieve a timeout; restored at once
            previous = socket.getdefaulttimeout()
            socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
            interactive = keras.config.is_interactive_logging_enabled()
            keras.config.disable_interactive_logging()  # its "Downloading data from" print: we log
            try:
                got = keras.utils.get_file(
                    NOTOP_FILE, ORIGIN, file_hash=NOTOP_MD5, hash_algorithm="md5", cache_subdir=".", cache_dir=str(tmp)
                )
            finally:
                socket.setdefaulttimeout(previous)
                if interactive:
                    keras.config.enable_interactive_logging()
        os.replace(got, dest)
    except Exception as e:  # network, HTTP, md5 mismatch, disk: all mean "no weights"
        _note_download(_short(e))
        raise WeightsUnavailable(f"download of ResNet50 weights failed ({_short(e)}); {HOW_TO_GET}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _note_download(None)
    log.info("ResNet50 weights saved to %s", dest)
    return dest


def _short(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:200] if text else type(e).__name__


def build(weights_path: str | os.PathLike | None, *, input_shape: tuple = (None, None, 3)) -> Any:
    """The feature model: preprocessed (n, H, W, 3) -> (n, H/32, W/32, 2048), no pooling.

    Pooling is left to the embedder (GAP or GeM). ``weights_path=None`` gives random weights and is
    only for tests and benchmarks. The spatial input size is left open so multi-scale descriptors
    can reuse the same model; the embedder's tf.function fixes the shape per call signature.
    """
    from simd.backbones.tfruntime import import_tf

    import_tf()
    import keras

    try:
        # A mismatched .weights.h5 makes Keras warn once per layer (~100 warnings) before it raises;
        # the exception below says it all. Startup-time only, so catch_warnings' global state is fine.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=UserWarning, module="keras")
            return keras.applications.ResNet50(
                include_top=False,
                weights=str(weights_path) if weights_path else None,
                input_shape=input_shape,
                pooling=None,
            )
    except (OSError, ValueError) as e:  # not an HDF5 file, wrong layer count/shapes, ...
        raise WeightsUnavailable(
            f"cannot load ResNet50 weights from {weights_path}: {_short(e)}; {HOW_TO_GET}"
        ) from None


def preprocess(x: Any, mode: str = "default") -> Any:
    """Both modes are ResNet50's own caffe preprocessing (RGB->BGR, ImageNet mean subtraction)."""
    if mode not in ("default", "seed"):
        raise ValueError(f"unknown preprocessing mode {mode!r}")
    import keras
    import tensorflow as tf

    # A tensor, never a numpy array: Keras' numpy path subtracts the mean in place.
    return keras.applications.resnet50.preprocess_input(tf.cast(x, tf.float32))
