"""precision = "int8": an int8 model calibrated on the library's photos gives vectors close to fp32's
under another model id, is cached and loaded later without TensorFlow, and a library with too few
photos stays fp32 with one log line. ResNet50 runs with seeded random weights (its ImageNet weights
cannot be fetched here), so these tests hold the mechanics, not the quality (docs/BENCHMARKS.md).

Each backbone is converted and quantized once per module into the module's cache.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import data

from simd.backbones import quantize
from simd.config import Config, load
from simd.descriptors import network_sizes
from simd.embedder import Embedder, resolve_descriptor
from simd.errors import ConfigError, ImageError
from simd.ignore import IgnoreRules
from simd.indexer import Reconciler
from simd.store import Store
from simd.vectors import VectorIndex
from tests.images import make_phone_photo
from tests.test_onnx_runtime import _config, _cosines, _random_resnet_h5, _start_fresh

REPO = Path(__file__).resolve().parents[1]
LITE0, RESNET = "efficientnet-lite0", "resnet50"
# The lowest cosine of an int8 vector to its fp32 vector over the test photos, a little under the
# lowest measured on this library (min / mean over the 7 photos): Lite0 (its ImageNet weights and
# logits) 0.936 / 0.974; ResNet50 with random weights 0.9998 / 0.9999 (random filters give smooth,
# low-contrast features that int8 keeps; this says nothing about ImageNet weights).
BOUND = {LITE0: 0.92, RESNET: 0.999}


def _real_photos(folder: Path, n: int = 18) -> list[Path]:
    """scikit-image's colour photos, whole and cropped, as phone JPEGs: real content to calibrate on."""
    folder.mkdir(parents=True, exist_ok=True)
    sources = [Image.fromarray(getattr(data, name)()).convert("RGB") for name in _PHOTOS]
    out = []
    for i in range(n):
        img = sources[i % len(sources)]
        w, h = img.size
        k = i // len(sources)
        crop = img if k == 0 else img.crop((k * w // 8, 0, w - (k - 1) * w // 8, h))
        out.append(make_phone_photo(folder / f"{i:02}-{_PHOTOS[i % len(_PHOTOS)]}.jpg", img=crop))
    return out


_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry")


def _lite0_id() -> str:
    """The fp32 model id of Lite0 with its default descriptor (backbone [+descriptor])."""
    d = resolve_descriptor("default", LITE0)
    return LITE0 if d.name == "default" else f"{LITE0}+{d.name}"


@pytest.fixture(scope="module")
def library(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("int8-library")
    _real_photos(root)
    return root


@pytest.fixture(scope="module")
def resnet_h5(tmp_path_factory) -> Path:
    return _random_resnet_h5(tmp_path_factory.mktemp("resnet") / "seed0.weights.h5", 0)


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("model-cache")


@pytest.fixture(scope="module")
def embedders(cache, resnet_h5, library):
    made: dict[tuple[str, str], Embedder] = {}

    def get(model: str, precision: str) -> Embedder:
        if (model, precision) not in made:
            weights = resnet_h5 if model == RESNET else None
            config = _config(cache, model, weights, library=str(library), precision=precision)
            made[model, precision] = Embedder.from_config(config)
        return made[model, precision]

    return get


# ResNet50: converted and quantized in ~1-4 min (random weights); Lite0 is the module's other tests' model
@pytest.mark.parametrize("model", [LITE0, pytest.param(RESNET, marks=pytest.mark.slow)])
def test_int8_vectors_are_unit_close_to_fp32_and_another_model_id(embedders, library, phone_jpeg, model):
    fp32, int8 = embedders(model, "fp32"), embedders(model, "int8")
    assert fp32.model_id.split("+")[0] == model and int8.model_id == f"{fp32.model_id}+int8"
    assert int8.network.describe().startswith("onnxruntime 1") and " int8 (" in int8.network.describe()
    assert (int8.network.id_suffix, fp32.network.id_suffix) == ("+int8", "")
    photos = [phone_jpeg, *sorted(library.iterdir())[:6]]
    got, want = int8.embed_files(photos), fp32.embed_files(photos)
    assert all(isinstance(v, np.ndarray) and v.shape == (fp32.dim,) for v in got)
    assert np.allclose(np.linalg.norm(np.stack(got), axis=1), 1, atol=1e-5)
    cos = _cosines(got, want)
    print(f"{model} int8 vs fp32 cosine: min {cos.min():.4f} mean {cos.mean():.4f}")
    assert cos.min() >= BOUND[model], cos
    # and they still tell the photos apart: each is nearest to its own fp32 vector
    assert (np.argmax(np.stack(got) @ np.stack(want).T, axis=1) == np.arange(len(photos))).all()


def test_the_int8_model_is_cached_and_a_later_start_loads_it_without_tensorflow(embedders, cache, library, phone_jpeg):
    int8 = embedders(LITE0, "int8")
    files = sorted(p.name for p in cache.iterdir() if p.name.startswith(f"{LITE0}-int8-"))
    sizes = network_sizes(int8.backbone.input_size, int8.descriptor)  # one file per size the network runs at
    assert len(files) == len(sizes), sorted(p.name for p in cache.iterdir())
    before = [(cache / f).stat().st_mtime_ns for f in files]
    config = _config(cache, LITE0, library=str(library), precision="int8").as_dict()
    out, _, stderr = _start_fresh(config, phone_jpeg, timeout=300)
    assert (out["tensorflow"], out["keras"]) == (False, False)
    assert out["network"].startswith("onnxruntime 1") and "int8 (cached in" in out["network"], out
    assert "converting" not in stderr and [(cache / f).stat().st_mtime_ns for f in files] == before
    want = int8.embed_files([phone_jpeg])[0]
    assert _cosines([np.array(out["vector"], np.float32)], [want])[0] >= 0.99999


def test_too_few_photos_run_fp32_with_one_log_line(embedders, cache, tmp_path, caplog):
    embedders(LITE0, "fp32")  # cached: this start converts nothing
    small = tmp_path / "small"
    _real_photos(small, n=3)
    with caplog.at_level(logging.INFO):
        emb = Embedder.from_config(_config(cache, LITE0, library=str(small), precision="int8"))
    assert emb.model_id == _lite0_id() and "int8" not in emb.network.describe()
    lines = [r.getMessage() for r in caplog.records if "precision int8" in r.getMessage()]
    assert lines == [
        "precision int8: calibrating needs 16 photos of the library and only 3 are there; running fp32 "
        "(vectors of the fp32 model id) until a later start finds enough"
    ]
    assert not any(p.name.startswith(f"{LITE0}-int8-") and "small" in p.name for p in cache.iterdir())


def test_files_that_do_not_decode_leave_too_few_photos_to_calibrate(tmp_path, caplog):
    for i in range(20):
        (tmp_path / f"{i}.jpg").write_bytes(b"not a jpeg")
    cal = quantize.calibration("int8", tmp_path)
    assert cal is not None and len(cal.files) == 20
    # the same order at every start and on every machine, not the order of the folder listing
    assert cal.files == quantize.calibration("int8", tmp_path).files != tuple(sorted(cal.files))
    with caplog.at_level(logging.WARNING):
        assert cal.using(lambda path: ImageError(path, "not an image")).images((224,)) is None
    assert "only 0 decode" in caplog.text


def test_switching_precision_reembeds_the_library_and_never_mixes_vectors(embedders, library, tmp_path):
    root = tmp_path / "lib"
    shutil.copytree(library, root)
    store = Store(tmp_path / "index.db")
    try:
        fp32, int8 = embedders(LITE0, "fp32"), embedders(LITE0, "int8")
        Reconciler(root, store, fp32, VectorIndex(fp32.dim), IgnoreRules([])).run()
        n = len(os.listdir(root))
        assert len(store.load_vectors(fp32.model_id)[0]) == n
        assert store.counts(int8.model_id)["stale"] == n
        summary = Reconciler(root, store, int8, VectorIndex(int8.dim), IgnoreRules([])).run()
        assert summary.reembedded == n
        ids, matrix = store.load_vectors(int8.model_id)
        assert len(ids) == n and store.load_vectors(fp32.model_id)[0].size == 0
        back = Reconciler(root, store, fp32, VectorIndex(fp32.dim), IgnoreRules([])).run()
        assert back.reembedded == n and store.load_vectors(int8.model_id)[0].size == 0
    finally:
        store.close()


def test_the_precision_setting_is_validated_and_read_from_flags_and_environment(tmp_path):
    assert Config().precision == "fp32"
    with pytest.raises(ConfigError, match="precision: 'int4' is not one of fp32, int8"):
        Config({"precision": "int4"}).validate()
    assert load(None, {}, {"SIMD_PRECISION": "int8"}).precision == "int8"
    assert load(None, {"precision": "fp32"}, {"SIMD_PRECISION": "int8"}).precision == "fp32"
    from simd.cli import build_parser, load_config

    args = build_parser().parse_args(["index", str(tmp_path), "--precision", "int8"])
    assert load_config(args).precision == "int8"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["index", str(tmp_path), "--precision", "int4"])


def test_simd_index_with_int8_then_query_without_the_flag_uses_the_indexs_int8_model(
    embedders, cache, library, tmp_path
):
    """`simd query` of a photo outside the library (no daemon) embeds it with the model the index
    was built with: int8 from the model id, calibrated on the index's library (the cached file)."""
    embedders(LITE0, "int8")  # cached
    env = {**os.environ, "SIMD_MODEL_CACHE": str(cache), "SIMD_WEIGHTS_DOWNLOAD": "0", "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.pop(quantize.CONVERT_HERE_ENV, None)
    state = tmp_path / "state"
    common = ["--state-dir", str(state), "--model", LITE0]
    out = subprocess.run(
        [sys.executable, "-m", "simd", "index", str(library), *common, "--precision", "int8", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["embedded"] == len(os.listdir(library)) and "converting" not in out.stderr
    outside = make_phone_photo(tmp_path / "outside.jpg", img=Image.fromarray(data.coffee()).convert("RGB"))
    out = subprocess.run(
        [sys.executable, "-m", "simd", "query", str(outside), "--state-dir", str(state), "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["model"] == f"{_lite0_id()}+int8" and "converting" not in out.stderr
    assert "coffee" in result["results"][0]["path"]
