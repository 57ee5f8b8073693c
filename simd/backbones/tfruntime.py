"""TensorFlow, imported only when a model is built or run, quietly, and its thread counts.

A leaf of `simd.backbones`: the backbone modules and the embedder import it; it imports nothing of
simd, so `import simd.backbones` stays cheap (no TensorFlow until `import_tf()` is called).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile
import threading
from collections.abc import Iterator
from typing import Any

log = logging.getLogger(__name__)

# What TensorFlow's native code prints while it is imported, whatever TF_CPP_MIN_LOG_LEVEL says
# (TF >= 2.20 logs through absl before absl's log level is set up): absl's notice, and native
# log lines "I0000 00:00:... file.cc:123] ..." (info) / "W0000 ..." (warning), one of which
# continues on a second line.
_ABSL_NOTICE = b"All log messages before absl::InitializeLog()"
_CONTINUATION = b"To enable the following instructions"
_NATIVE_LOG = re.compile(rb"^([IWEF])\d{4} \d\d:\d\d:[\d.]+ +\d+ [^ ]+:\d+\] ")
_import_lock = threading.Lock()
_tf_threads: int | None = None


def _is_noise(line: bytes, level: int) -> bool:
    if _ABSL_NOTICE in line or _CONTINUATION in line:
        return True
    m = _NATIVE_LOG.match(line)
    return m is not None and "IWEF".index(m.group(1).decode()) < level


def import_tf() -> Any:
    """Import TensorFlow quietly: C++ logs below ERROR and absl INFO/WARNING are dropped by default.

    Set TF_CPP_MIN_LOG_LEVEL=0 to see everything TensorFlow says.
    """
    if "tensorflow" in sys.modules and hasattr(sys.modules["tensorflow"], "function"):
        return sys.modules["tensorflow"]
    with _import_lock:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        try:
            level = int(os.environ["TF_CPP_MIN_LOG_LEVEL"])
        except ValueError:
            level = 0
        with _native_stderr_filtered(level):
            import tensorflow as tf
        try:
            import absl.logging

            absl.logging.set_verbosity(absl.logging.ERROR)
        except ImportError:  # absl ships with TensorFlow; tolerate its absence anyway
            pass
        return tf


@contextlib.contextmanager
def _native_stderr_filtered(level: int) -> Iterator[None]:
    """Send fd 2 to a temporary file for the block, then replay it minus native log lines below
    ``level`` (TF_CPP_MIN_LOG_LEVEL: 1 drops INFO, 2 also WARNING, 3 also ERROR).

    Native code writes to fd 2 directly, out of reach of Python's logging; nothing else is lost,
    only delayed until the block ends (a second or two for the TensorFlow import).
    """
    if level <= 0:
        yield
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no usable fd 2: nothing to filter
        yield
        return
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            with contextlib.suppress(OSError, ValueError):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            kept = [line for line in tmp.read().splitlines(keepends=True) if not _is_noise(line, level)]
            if kept:
                with contextlib.suppress(OSError):
                    os.write(2, b"".join(kept))


def configure_tensorflow(threads: int = 0) -> None:
    """Set TF intra/inter-op thread counts (0 = TensorFlow's default: all cores).

    TensorFlow accepts this only before its runtime starts (the first model build or op), so the
    daemon calls it before ``load_backbone``. A later call with a different value only logs a
    warning, since the model keeps working with the threads it has.
    """
    global _tf_threads
    tf = import_tf()
    if _tf_threads == threads:
        return
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(min(threads, 2) if threads else 0)
        _tf_threads = threads
    except RuntimeError:
        log.warning(
            "tf_threads=%d ignored: TensorFlow was already initialised "
            "(call configure_tensorflow() before loading a model)",
            threads,
        )
