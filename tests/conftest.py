"""Shared fixtures: an honest fake embedder for unit tests, and a guard against leaked threads.

Unit tests of the index pass a `PixelEmbedder` (DESIGN example 4: the model is passed in); it decodes
with the real `simd.imaging` and turns the pixels into a small vector, so equal pictures get equal
vectors and different ones differ. End-to-end tests load the real networks.
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from tests.fakes import PixelEmbedder

# Nothing in the tests may reach the network; Keras would try to download ImageNet weights.
os.environ.setdefault("SIMD_WEIGHTS_DOWNLOAD", "0")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.pop("NOTIFY_SOCKET", None)
# Converted (ONNX) models of this run, shared by every test and daemon it starts (Lite0 converts in
# ~5-25 s, once), never written into the user's ~/.keras.
if "SIMD_MODEL_CACHE" not in os.environ:
    os.environ["SIMD_MODEL_CACHE"] = tempfile.mkdtemp(prefix="simd-test-models-")
    atexit.register(shutil.rmtree, os.environ["SIMD_MODEL_CACHE"], True)


@pytest.fixture(scope="session")
def lite0_converted():
    """EfficientNet-Lite0 converted to ONNX into this run's model cache beforehand, so that a daemon
    started afterwards loads it in a second or two: for tests that time a daemon's work, which the
    one-time conversion (5-30 s) is not part of."""
    code = (
        "from simd.config import Config; from simd.embedder import Embedder; "
        "print(Embedder.from_config(Config({'library': '.', 'model': 'efficientnet-lite0', "
        "'weights_download': False})).network.describe())"
    )
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=900, env=env)
    assert done.returncode == 0 and "onnxruntime" in done.stdout, done.stderr[-3000:]


@pytest.fixture
def fake_embedder():
    return PixelEmbedder()


@pytest.fixture(autouse=True)
def no_thread_leaks():
    """Fail a test that leaves threads running (watchdog's tests/conftest.py does the same)."""
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 5.0
    while True:
        leaked = [t for t in threading.enumerate() if t not in before and t.is_alive() and not _tolerated(t)]
        if not leaked or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert not leaked, f"threads leaked: {[t.name for t in leaked]}"


def _tolerated(t: threading.Thread) -> bool:
    # Pools owned by libraries for the whole process (TensorFlow, the embedder's shared decode pool).
    return t.name.startswith(("ThreadPoolExecutor", "simd-decode", "tf_", "Dummy-"))


@pytest.fixture
def library(tmp_path) -> Path:
    root = tmp_path / "library"
    root.mkdir()
    return root


@pytest.fixture
def state_dir(tmp_path) -> Path:
    d = tmp_path / "state"
    d.mkdir()
    return d


# What users upload and keep: made once per test session (a 12 MP photo takes 1-3 s to make).
@pytest.fixture(scope="session")
def phone_jpeg(tmp_path_factory) -> Path:
    """A 12 MP (4000x3000) phone JPEG of 3.5-5 MB with phone EXIF; treat it as read-only."""
    from tests.images import make_phone_photo

    return make_phone_photo(tmp_path_factory.mktemp("phone") / "PXL_20260601_120000.jpg", seed=1)


@pytest.fixture(scope="session")
def phone_heic(tmp_path_factory) -> Path:
    """A 12 MP iPhone-like HEIC of ~1.5 MB, stored sideways (EXIF Orientation 6); read-only."""
    from tests.images import make_phone_photo

    return make_phone_photo(tmp_path_factory.mktemp("phone") / "IMG_0001.HEIC", seed=2, orientation=6)
