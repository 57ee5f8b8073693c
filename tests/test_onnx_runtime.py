"""The network on ONNX Runtime: the same vectors as TensorFlow on real photos, a cache that a later
start loads without TensorFlow, keyed by what shapes the graph, and a daemon that keeps running
(on TensorFlow if need be) when the cache or the conversion fails.

Each backbone is converted once per module (ResNet50 ~20-40 s, Lite0 ~5-20 s) into a module cache;
the tests that damage a cache work on copies or on caches of their own.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import data

from simd import backbones as bb
from simd.backbones import onnx as ortnet
from simd.backbones.tfnet import TFNetwork
from simd.config import Config
from simd.embedder import Embedder, resolve_descriptor
from tests.images import make_phone_photo

REPO = Path(__file__).resolve().parents[1]
LITE0, RESNET = "efficientnet-lite0", "resnet50"


@pytest.fixture(scope="module")
def photos(tmp_path_factory, phone_jpeg) -> list[Path]:
    """A 12 MP phone JPEG and three of scikit-image's real photos, saved as a phone would."""
    d = tmp_path_factory.mktemp("ort-photos")
    samples = [
        make_phone_photo(d / f"{name}.jpg", img=Image.fromarray(getattr(data, name)()).convert("RGB"))
        for name in ("chelsea", "coffee", "astronaut")
    ]
    return [phone_jpeg, *samples]


def _random_resnet_h5(path: Path, seed: int) -> Path:
    import keras

    bb.import_tf()
    keras.utils.set_random_seed(seed)
    bb.random_resnet50().feature_model.save_weights(path)
    return path


@pytest.fixture(scope="module")
def resnet_h5(tmp_path_factory) -> Path:
    return _random_resnet_h5(tmp_path_factory.mktemp("resnet") / "seed0.weights.h5", 0)


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("model-cache")


def _config(cache: Path, model: str, weights: Path | None = None, **settings) -> Config:
    values = {"model": model, "weights_download": False, "model_cache": str(cache), **settings}
    if weights is not None:
        values["weights"] = str(weights)
    return Config(values).validate()


class _Embedders(dict):
    """(backbone, runtime) -> the embedder `from_config` gives, made on first use (the ORT ones
    are converted into the module's cache then)."""

    def __init__(self, cache: Path, resnet_h5: Path):
        super().__init__()
        self.cache, self.resnet_h5 = cache, resnet_h5

    def __missing__(self, key: tuple[str, str]) -> Embedder:
        model, runtime = key
        weights = self.resnet_h5 if model == RESNET else None
        self[key] = Embedder.from_config(_config(self.cache, model, weights, runtime=runtime))
        return self[key]


@pytest.fixture(scope="module")
def embedders(cache, resnet_h5) -> _Embedders:
    return _Embedders(cache, resnet_h5)


def _cosines(a: list, b: list) -> np.ndarray:
    x, y = np.stack(a), np.stack(b)
    return np.sum(x * y, axis=1) / (np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1))


@pytest.mark.parametrize("model", [LITE0, RESNET])
def test_onnxruntime_gives_tensorflows_vectors_on_real_photos(embedders, photos, model):
    ort, tf = embedders[model, "onnxruntime"], embedders[model, "tensorflow"]
    assert (ort.network.runtime, tf.network.runtime) == ("onnxruntime", "tensorflow")
    assert ort.model_id == tf.model_id and ort.model_id.split("+")[0] == model
    assert (ort.dim, ort.sizes) == (tf.dim, tf.sizes) == _shape(model)
    got, want = ort.embed_files(photos), tf.embed_files(photos)
    assert all(isinstance(v, np.ndarray) and v.shape == (ort.dim,) for v in got + want)
    cos = _cosines(got, want)
    assert cos.min() >= 0.9999, cos
    # and they still tell the photos apart: each is nearest to itself, not to another photo
    assert (np.argmax(np.stack(got) @ np.stack(want).T, axis=1) == np.arange(len(photos))).all()


def test_small_and_letterboxed_images_match_tensorflow_on_onnxruntime(embedders, tmp_path):
    """The default's other paths: a web-sized copy (under 200 px: the 224 px network) and a copy
    letterboxed on white (trimmed first) give TensorFlow's vectors on ONNX Runtime too."""
    photo = Image.fromarray(data.coffee())
    small = photo.resize((160, 107), Image.Resampling.LANCZOS)
    canvas = Image.new("RGB", (600, 600), "white")
    canvas.paste(photo, (0, 100))
    paths = []
    for name, img in (("small.jpg", small), ("padded.jpg", canvas)):
        img.save(tmp_path / name, "JPEG", quality=85)
        paths.append(tmp_path / name)
    ort, tf = embedders[LITE0, "onnxruntime"], embedders[LITE0, "tensorflow"]
    cos = _cosines(ort.embed_files(paths), tf.embed_files(paths))
    assert cos.min() >= 0.9999, cos


def _shape(model: str) -> tuple[int, tuple[int, ...]]:
    return (2280, (288,)) if model == LITE0 else (2048, (224,))


def test_the_cache_holds_one_file_per_model_named_by_its_key(embedders, cache, resnet_h5):
    embedders[LITE0, "onnxruntime"], embedders[RESNET, "onnxruntime"]
    files = sorted(p.name for p in cache.iterdir())
    lite0 = [  # 288 px, and 224 px for small images
        ortnet.cache_key(LITE0, 1000, resolve_descriptor("default", LITE0), size, bb.lite0.weights_file())
        for size in (288, 224)
    ]
    resnet_key = ortnet.cache_key(RESNET, 0, resolve_descriptor("default", RESNET), 224, resnet_h5)
    assert files == sorted([f"{lite0[0]}.onnx", f"{lite0[1]}.onnx", f"{resnet_key}.onnx"])
    assert "cached in" in embedders[LITE0, "onnxruntime"].network.describe()


_FRESH_START = """
import json, sys
import numpy as np
from simd.config import Config
from simd.embedder import Embedder
config = Config(json.loads(sys.argv[1])).validate()
emb = Embedder.from_config(config)
vector = emb.embed_files([sys.argv[2]])[0]
print(json.dumps({"tensorflow": "tensorflow" in sys.modules, "keras": "keras" in sys.modules,
                  "network": emb.network.describe(), "vector": np.asarray(vector).tolist()}))
"""


# VmHWM: this process's own peak (ru_maxrss would include the forking test process's, kept at exec)
_PEAK = """
hwm = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(int(hwm.split()[1]) / 1024)
"""


def _start_fresh(config: dict, photo: Path, timeout: float = 600, **env: str) -> tuple[dict, float, str]:
    """`Embedder.from_config(config)` and one photo embedded in a new process (converting, if it
    must, as a daemon would): what it said (_FRESH_START), its own peak RSS in MB, its stderr."""
    environ = {k: v for k, v in os.environ.items() if k != ortnet.CONVERT_HERE_ENV}
    r = subprocess.run(
        [sys.executable, "-c", _FRESH_START + _PEAK, json.dumps(config), str(photo)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**environ, **env},
    )
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    return json.loads(lines[-2]), float(lines[-1]), r.stderr


@pytest.mark.parametrize("model", [LITE0, RESNET])
def test_a_later_start_loads_the_cache_without_tensorflow(embedders, cache, resnet_h5, phone_jpeg, model):
    embedders[model, "onnxruntime"]  # converted and cached by this process
    config = _config(cache, model, resnet_h5 if model == RESNET else None).as_dict()
    out, _, _ = _start_fresh(config, phone_jpeg, timeout=300)
    assert (out["tensorflow"], out["keras"]) == (False, False)
    assert out["network"].startswith("onnxruntime ") and "(cached in" in out["network"]
    want = embedders[model, "tensorflow"].embed_files([phone_jpeg])[0]
    assert _cosines([np.array(out["vector"], np.float32)], [want])[0] >= 0.9999


def test_the_first_start_converts_in_a_process_of_its_own_and_never_imports_tensorflow(tmp_path, phone_jpeg):
    """An empty cache: the conversion runs in a child process, so the daemon's own process never
    holds TensorFlow and the converter (a daemon that converted in itself kept ~2 GB more until
    it stopped); it then loads the cached file like any later start."""
    config = _config(tmp_path / "cache", LITE0).as_dict()
    out, peak_mb, _ = _start_fresh(config, phone_jpeg)
    assert (out["tensorflow"], out["keras"]) == (False, False)
    assert out["network"].startswith("onnxruntime ") and "(cached in" in out["network"]
    assert len(list((tmp_path / "cache").glob(f"{LITE0}-*.onnx"))) == 2  # 288 px, and 224 px for small images
    assert peak_mb < 600, peak_mb  # ~125 MB measured; TensorFlow alone takes ~700


def test_model_auto_without_resnet50_weights_starts_on_lite0_without_tensorflow(tmp_path, phone_jpeg):
    """The default setting on a machine without ResNet50's weights (and no download to try): Lite0,
    converted apart, and the daemon's process never imports TensorFlow."""
    config = _config(tmp_path / "cache", "auto").as_dict()
    out, _, stderr = _start_fresh(config, phone_jpeg, KERAS_HOME=str(tmp_path / "keras"))  # no ResNet50 weights
    assert (out["tensorflow"], out["keras"]) == (False, False)
    assert out["network"].startswith("onnxruntime ") and len(out["vector"]) == 2280  # Lite0's r2 vector
    assert stderr.count("model auto: using efficientnet-lite0") == 1, stderr


def test_the_cache_key_follows_the_weights_file_and_the_descriptor(resnet_h5, tmp_path):
    default, seed = resolve_descriptor("default", RESNET), resolve_descriptor("seed", RESNET)
    key = ortnet.cache_key(RESNET, 0, default, 224, resnet_h5)
    assert ortnet.cache_key(RESNET, 0, default, 224, resnet_h5) == key  # stable
    other = _random_resnet_h5(tmp_path / "seed1.weights.h5", 1)
    assert ortnet.cache_key(RESNET, 0, default, 224, other) != key  # other weights
    assert ortnet.cache_key(RESNET, 0, seed, 224, resnet_h5) != key  # other preprocessing
    assert ortnet.cache_key(RESNET, 0, default, 256, resnet_h5) != key  # other input size
    lite0 = bb.lite0.weights_file()
    plain = resolve_descriptor("default", LITE0)
    assert ortnet.cache_key(LITE0, 1000, plain, 288, lite0) != ortnet.cache_key(LITE0, 0, plain, 288, lite0)
    logits_only = dataclasses.replace(plain, gap_weight=0.0)  # another graph output: another file
    assert ortnet.cache_key(LITE0, 1000, plain, 288, lite0) != ortnet.cache_key(LITE0, 1000, logits_only, 288, lite0)
    # the same path rewritten with other weights is another model
    copy = shutil.copy(resnet_h5, tmp_path / "weights.h5")
    before = ortnet.cache_key(RESNET, 0, default, 224, Path(copy))
    shutil.copy(other, copy)
    os.utime(copy, ns=(1, 1))
    assert ortnet.cache_key(RESNET, 0, default, 224, Path(copy)) != before


def test_a_truncated_cached_model_is_converted_again(embedders, cache, tmp_path, photos, caplog, monkeypatch):
    monkeypatch.setenv(ortnet.CONVERT_HERE_ENV, "1")  # what the converting child itself does
    embedders[LITE0, "onnxruntime"]
    damaged = tmp_path / "cache"
    shutil.copytree(cache, damaged)
    (onnx_file,) = damaged.glob(f"{LITE0}-288-*.onnx")
    size = onnx_file.stat().st_size
    with onnx_file.open("r+b") as f:
        f.truncate(size // 3)
    with caplog.at_level(logging.WARNING, logger="simd.backbones.onnx"):
        emb = Embedder.from_config(_config(damaged, LITE0))
    assert any("cannot be loaded" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)
    assert emb.network.runtime == "onnxruntime" and "converted, cached in" in emb.network.describe()
    assert onnx_file.stat().st_size > size * 0.99  # whole again (tf2onnx's node names vary a little)
    assert ortnet._load_cached(onnx_file, 0) is not None
    assert not [p for p in damaged.iterdir() if p.suffix != ".onnx"]  # no temporary file left behind
    cos = _cosines(emb.embed_files(photos[:2]), embedders[LITE0, "tensorflow"].embed_files(photos[:2]))
    assert cos.min() >= 0.9999


def test_a_cache_that_cannot_be_written_converts_in_memory(embedders, tmp_path, photos, caplog, monkeypatch):
    monkeypatch.setenv(ortnet.CONVERT_HERE_ENV, "1")  # what the converting child itself does
    blocked = tmp_path / "cache"
    blocked.write_text("a file where the cache directory should be\n")
    with caplog.at_level(logging.WARNING, logger="simd.backbones.onnx"):
        emb = Embedder.from_config(_config(blocked, LITE0))
    assert [r.levelno for r in caplog.records] == [logging.WARNING] * 2  # one per input size (288, 224)
    assert all("cannot cache the converted model" in r.getMessage() for r in caplog.records)
    assert emb.network.runtime == "onnxruntime" and "converted in memory" in emb.network.describe()
    cos = _cosines(emb.embed_files(photos[:2]), embedders[LITE0, "tensorflow"].embed_files(photos[:2]))
    assert cos.min() >= 0.9999


def test_a_cache_that_cannot_be_written_is_not_converted_apart_first(tmp_path, monkeypatch, caplog):
    """The child's file could never reach the daemon: converting there first would convert twice."""

    def no_child(*args, **kwargs):
        raise AssertionError("a converting process was started for an unwritable cache")

    monkeypatch.setattr(ortnet.subprocess, "run", no_child)  # asserts the child is never started
    blocked = tmp_path / "cache"
    blocked.write_text("a file where the cache directory should be\n")
    with caplog.at_level(logging.INFO, logger="simd.backbones.onnx"):
        assert ortnet.convert_apart(_config(blocked, LITE0), LITE0, "default") is False
    assert "cannot be written" in caplog.text


def test_a_conversion_removes_the_cached_files_of_other_onnxruntime_versions(tmp_path, monkeypatch, photos):
    """An onnxruntime upgrade leaves files this install can no longer load (~95 MB each for
    ResNet50): the next conversion removes those not written for a week, and nothing else."""
    monkeypatch.setenv(ortnet.CONVERT_HERE_ENV, "1")  # convert in this process
    cache = tmp_path / "cache"
    cache.mkdir()
    digest = "0123456789abcdef0123"
    month_ago = time.time() - 30 * 86400
    stale = [
        cache / f"resnet50-224-ort1.20.0-{digest}.onnx",  # another version, a month old
        cache / f"efficientnet-lite0-288-{digest}.onnx",  # an older simd's name, without the version
        cache / f".efficientnet-lite0-288-ort1.20.0-{digest}.onnx.k2j3.tmp",  # a crashed write
    ]
    kept = [
        cache / f"resnet50-224-ort1.20.0-{'f' * 20}.onnx",  # another version, written yesterday
        cache / "my-own-model.onnx",  # not a name simd gives
        cache / "notes.txt",
    ]
    for path in stale + kept:
        path.write_bytes(b"x" * 1000)
        os.utime(path, (month_ago, month_ago))
    yesterday = time.time() - 86400
    os.utime(kept[0], (yesterday, yesterday))
    emb = Embedder.from_config(_config(cache, LITE0))
    assert "converted, cached in" in emb.network.describe()
    names = {p.name for p in cache.iterdir()}
    assert not names & {p.name for p in stale}
    assert {p.name for p in kept} <= names
    (current,) = (n for n in names if n.startswith(f"{LITE0}-288-ort{ortnet.ort_version()}-"))
    assert ortnet._load_cached(cache / current, 0) is not None
    assert np.linalg.norm(emb.embed_files(photos[:1])[0]) > 0


def test_a_failed_conversion_keeps_tensorflow_with_one_warning(embedders, tmp_path, photos, caplog, monkeypatch):
    def broken(network, size):
        raise ValueError("tf2onnx could not map an op")

    monkeypatch.setattr(ortnet, "_convert", broken)
    monkeypatch.setenv(ortnet.CONVERT_HERE_ENV, "1")  # what the converting child itself does
    with caplog.at_level(logging.WARNING, logger="simd.backbones.onnx"):
        emb = Embedder.from_config(_config(tmp_path / "cache", LITE0))
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    assert "running on TensorFlow" in caplog.records[0].getMessage()
    assert isinstance(emb.network, TFNetwork)
    want = embedders[LITE0, "tensorflow"].embed_files(photos[:1])
    assert _cosines(emb.embed_files(photos[:1]), want)[0] >= 0.99999


def test_runtime_tensorflow_runs_the_tensorflow_network(embedders, cache):
    emb = embedders[LITE0, "tensorflow"]
    assert isinstance(emb.network, TFNetwork) and emb.network.describe().startswith("tensorflow ")
    assert Config({"runtime": "tensorflow"}).validate().runtime == "tensorflow"
    assert Config().runtime == "onnxruntime"


def test_runtime_is_a_validated_setting():
    from simd.errors import ConfigError

    with pytest.raises(ConfigError, match="runtime: 'tflite' is not one of onnxruntime, tensorflow"):
        Config({"runtime": "tflite"}).validate()


def test_a_network_without_a_weights_file_is_converted_in_memory_never_cached(tmp_path, photos):
    """Random weights (tests, benchmarks) have no file to key a cached model by."""
    backbone = bb.load_backbone(LITE0)
    emb = Embedder(backbone)
    net = ortnet.open_network(
        LITE0, backbone.classes, emb.descriptor, emb.sizes, None, convert_from=emb.network, cache=tmp_path
    )
    assert net is not None and "converted in memory" in net.describe()
    assert list(tmp_path.iterdir()) == []
    ort = Embedder(backbone, network=net)
    assert _cosines(ort.embed_files(photos[:1]), emb.embed_files(photos[:1]))[0] >= 0.9999
