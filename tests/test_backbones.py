"""Backbones: the torch-free .pth reader, EfficientNet-Lite0's real weights, ResNet50 weight resolution.

Offline by construction: KERAS_HOME points at an empty tmp dir and downloads are either disabled
or replaced by a failing stub. Each network is built once per module (a second or two each).
"""

from __future__ import annotations

import logging
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import data

import simd.backbones as bb
from simd.backbones import lite0, resnet, tfruntime, torch_pickle
from simd.errors import WeightsUnavailable

CATS = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat
ESPRESSO, CUP = 967, 968


@pytest.fixture(autouse=True)
def empty_keras_home(tmp_path, monkeypatch):
    home = tmp_path / "keras-home"
    home.mkdir()
    monkeypatch.setenv("KERAS_HOME", str(home))
    return home


@pytest.fixture(scope="module")
def state_dict():
    return torch_pickle.load(lite0.weights_file())


@pytest.fixture(scope="module")
def classifier(state_dict):
    bb.import_tf()
    return lite0.build(include_top=True, state_dict=lite0.load_state_dict())


def _probabilities(model, rgb: np.ndarray, mode: str) -> np.ndarray:
    tf = bb.import_tf()
    img = Image.fromarray(rgb).resize((224, 224), Image.Resampling.BILINEAR)
    x = lite0.preprocess(np.asarray(img, np.float32)[None], mode)
    return tf.nn.softmax(model(x, training=False)).numpy()[0]


# -- import cost
def test_import_does_not_load_tensorflow():
    code = (
        "import sys, simd.backbones, simd.embedder; rows = simd.backbones.models_report(); "
        "print(len(rows), 'tensorflow' in sys.modules, 'keras' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).parent.parent,
        timeout=120,
    )
    assert out.stdout.split() == ["4", "False", "False"]  # resnet50, efficientnet-lite0/1/2


def test_tensorflow_import_noise_filter():
    info = b"I0000 00:00:1795530547.331304   11021 port.cc:153] oneDNN custom operations are on.\n"
    warning = b"W0000 00:00:1795530547.331304   11021 foo.cc:1] something odd\n"
    error = b"E0000 00:00:1795530547.331304   11021 foo.cc:1] broken\n"
    assert tfruntime._is_noise(info, 1) and tfruntime._is_noise(info, 2)
    assert not tfruntime._is_noise(warning, 1) and tfruntime._is_noise(warning, 2)
    assert not tfruntime._is_noise(error, 2)
    assert tfruntime._is_noise(b"WARNING: All log messages before absl::InitializeLog() is called are written\n", 2)
    assert not tfruntime._is_noise(b"Traceback (most recent call last):\n", 2)


# -- torch_pickle
def test_torch_pickle_reads_the_lite0_state_dict(state_dict):
    assert len(state_dict) == 296
    assert state_dict["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert state_dict["_blocks.15._depthwise_conv.weight"].shape == (1152, 1, 3, 3)
    assert state_dict["_conv_head.weight"].shape == (1280, 320, 1, 1)
    assert state_dict["_fc.weight"].shape == (1000, 1280)
    assert state_dict["_fc.bias"].shape == (1000,)
    assert state_dict["_bn0.num_batches_tracked"].dtype == np.int64
    assert state_dict["_bn0.num_batches_tracked"].shape == ()
    floats = [v for k, v in state_dict.items() if not k.endswith("num_batches_tracked")]
    assert all(v.dtype == np.float32 and v.flags.c_contiguous for v in floats)
    # 4,652,008 trainable parameters of EfficientNet-Lite0 (1000-class head included) + BN running stats
    assert sum(v.size for v in floats) == 4_694_024
    assert all(np.isfinite(v).all() for v in floats)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def _legacy_file(obj_pickle: bytes) -> bytes:
    head = b"".join(
        pickle.dumps(x, protocol=2)
        for x in (torch_pickle.MAGIC_NUMBER, torch_pickle.PROTOCOL_VERSION, {"little_endian": True})
    )
    return head + obj_pickle + pickle.dumps([], protocol=2)


def test_torch_pickle_refuses_code(tmp_path):
    p = tmp_path / "evil.pth"
    p.write_bytes(_legacy_file(pickle.dumps({"w": _Evil()}, protocol=2)))
    with pytest.raises(torch_pickle.UnsafePickle, match="posix.system|os.system"):
        torch_pickle.load(p)
    p.write_bytes(pickle.dumps(_Evil(), protocol=2))  # evil right in the header
    with pytest.raises(torch_pickle.UnsafePickle):
        torch_pickle.load(p)


def test_torch_pickle_rejects_other_files(tmp_path):
    p = tmp_path / "x.pth"
    p.write_bytes(b"PK\x03\x04zip")
    with pytest.raises(pickle.UnpicklingError, match="zip"):
        torch_pickle.load(p)
    p.write_bytes(pickle.dumps(12345, protocol=2))
    with pytest.raises(pickle.UnpicklingError, match="magic"):
        torch_pickle.load(p)


@pytest.mark.parametrize("cut", [1, 30, 140, 5_000, 200_000, -4])
def test_torch_pickle_truncated_file(tmp_path, cut):
    whole = lite0.weights_file().read_bytes()
    p = tmp_path / "truncated.pth"
    p.write_bytes(whole[:cut])
    with pytest.raises(pickle.UnpicklingError):
        torch_pickle.load(p)
    with pytest.raises(WeightsUnavailable, match="cannot read efficientnet-lite0 weights"):
        lite0.load_state_dict(p)


def test_torch_pickle_strided_view_and_bounds():
    st = torch_pickle._Storage(np.dtype("<f4"), 6)
    st.data = np.arange(6, dtype="<f4")
    t = torch_pickle._PendingTensor(st, 0, (3, 2), (1, 3))  # a transposed (2, 3) tensor
    np.testing.assert_array_equal(t.materialize(), np.arange(6, dtype=np.float32).reshape(2, 3).T)
    with pytest.raises(pickle.UnpicklingError):
        torch_pickle._PendingTensor(st, 2, (3, 2), (2, 1)).materialize()  # reads past the end


# -- EfficientNet-Lite0
def test_lite0_default_preprocessing_matches_training_statistics(state_dict):
    """The stem's BatchNorm remembers the input distribution it was trained on: with (x-127)/128 the
    stem conv's output variance on real photos is close to BN's running variance; with ImageNet
    mean/std it is ~4x too large. That is why "default" is (x-127)/128 for this checkpoint."""
    tf = bb.import_tf()
    w = tf.constant(state_dict["_conv_stem.weight"].transpose(2, 3, 1, 0))
    running_var = state_dict["_bn0.running_var"]
    live = running_var > 1e-3  # a few channels are dead (variance 0)
    photos = [data.chelsea(), data.coffee(), data.astronaut(), data.rocket()]
    x = np.stack([np.asarray(Image.fromarray(a).resize((224, 224)), np.float32) for a in photos])
    ratio = {}
    for mode in ("default", "seed"):
        y = tf.nn.conv2d(lite0.preprocess(x, mode), w, 2, "SAME").numpy().reshape(-1, 32)
        ratio[mode] = float(np.median(y.var(0)[live] / running_var[live]))
    assert 0.5 < ratio["default"] < 1.5
    assert ratio["seed"] > 2.5


@pytest.mark.parametrize("mode", ["default", "seed"])
def test_lite0_classifies_test_photos(classifier, mode):
    cat = _probabilities(classifier, data.chelsea(), mode)
    assert int(cat.argmax()) in CATS
    assert cat[list(CATS)].sum() > 0.8
    coffee = _probabilities(classifier, data.coffee(), mode)
    assert int(coffee.argmax()) in (ESPRESSO, CUP)
    assert coffee[ESPRESSO] > 0.5


def test_lite0_backbone_interface_and_crop_is_nearest_its_original():
    from simd.embedder import Embedder

    backbone = bb.load_backbone("efficientnet-lite0")
    assert (backbone.id, backbone.dim, backbone.input_size) == ("efficientnet-lite0", 1280, 224)
    fmap = backbone.feature_model(backbone.preprocess(np.zeros((2, 224, 224, 3), np.float32)), training=False)
    assert tuple(fmap.shape) == (2, 7, 7, 1280)
    emb = Embedder(backbone)
    photos = {
        "chelsea": data.chelsea(),
        "coffee": data.coffee(),
        "astronaut": data.astronaut(),
        "rocket": data.rocket(),
        "hubble": data.hubble_deep_field(),
    }
    vecs = {k: emb.embed_image(Image.fromarray(v)) for k, v in photos.items()}
    for name, rgb in photos.items():
        img = Image.fromarray(rgb)
        w, h = img.size
        crop = img.crop((w // 10, h // 12, w - w // 8, h - h // 10)).resize((w * 2 // 3, h * 2 // 3))
        q = emb.embed_image(crop)
        scores = {k: float(q @ v) for k, v in vecs.items()}
        assert max(scores, key=scores.get) == name, scores


# -- ResNet50
@pytest.fixture(scope="module")
def random_resnet_files(tmp_path_factory):
    """Seeded random ResNet50 weights in both .h5 flavours Keras reads: the Keras 3 format and the
    legacy layout of the published ImageNet file; plus the features they give on a fixed input."""
    import h5py
    import keras
    from keras.src.legacy.saving import legacy_h5_format

    bb.import_tf()
    keras.utils.set_random_seed(0)
    model = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(224, 224, 3), pooling=None)
    d = tmp_path_factory.mktemp("resnet")
    modern, legacy = d / "random.weights.h5", d / "random_legacy.h5"
    model.save_weights(modern)
    with h5py.File(legacy, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, model)
    x = np.random.default_rng(0).uniform(0, 255, (2, 224, 224, 3)).astype(np.float32)
    features = model(resnet.preprocess(x), training=False).numpy()
    return {"modern": modern, "legacy": legacy, "x": x, "features": features}


@pytest.mark.parametrize("flavour", ["modern", "legacy"])
def test_resnet50_loads_weights_from_explicit_path(random_resnet_files, flavour):
    backbone = bb.load_backbone("resnet50", weights=random_resnet_files[flavour], allow_download=False)
    assert (backbone.id, backbone.dim) == ("resnet50", 2048)
    assert backbone.weights_source == f"file {random_resnet_files[flavour]}"
    x = random_resnet_files["x"]
    got = backbone.feature_model(backbone.preprocess(x, "seed"), training=False).numpy()
    np.testing.assert_array_equal(got, random_resnet_files["features"])


def test_resnet50_uses_a_verified_keras_cache(random_resnet_files, empty_keras_home, monkeypatch):
    cached = empty_keras_home / "models" / resnet.NOTOP_FILE
    cached.parent.mkdir()
    cached.write_bytes(random_resnet_files["legacy"].read_bytes())
    monkeypatch.setattr(resnet, "NOTOP_MD5", resnet.file_md5(cached))  # our file stands in for the real one
    assert bb.models_report()[0]["weights_available"] is True
    assert bb.fetch_weights("resnet50") == cached
    backbone = bb.load_backbone("auto", allow_download=False)
    assert backbone.id == "resnet50" and backbone.weights_source == f"keras cache {cached}"


def test_corrupt_cache_is_reported_not_used(empty_keras_home):
    cached = empty_keras_home / "models" / resnet.NOTOP_FILE
    cached.parent.mkdir()
    cached.write_bytes(b"\x89HDF\r\n truncated download")
    status = resnet.resolve_weights()
    assert status.path is None and "md5" in status.problem and str(cached) in status.problem
    with pytest.raises(WeightsUnavailable, match="corrupt"):
        bb.load_backbone("resnet50", allow_download=False)
    row = bb.models_report()[0]
    assert row["id"] == "resnet50" and row["weights_available"] is False and "corrupt" in row["weights_source"]
    assert cached.exists()  # reported, not deleted behind the user's back


def test_explicit_resnet50_without_weights_raises():
    with pytest.raises(WeightsUnavailable) as e:
        bb.load_backbone("resnet50", allow_download=False)
    assert "simd weights fetch" in e.value.message and 'weights = "' in e.value.message
    with pytest.raises(WeightsUnavailable, match="does not exist"):
        bb.load_backbone("resnet50", weights="/nonexistent/resnet.h5")


def test_failed_download_is_clean(empty_keras_home, monkeypatch):
    import keras

    calls = []

    def no_network(fname, origin, **kw):
        calls.append(origin)
        Path(kw["cache_dir"], fname).write_bytes(b"partial")  # as if the connection dropped midway
        raise Exception(f"URL fetch failure on {origin}: None -- [Errno -2] Name or service not known")

    monkeypatch.setattr(keras.utils, "get_file", no_network)
    with pytest.raises(WeightsUnavailable, match="download of ResNet50 weights failed.*simd weights fetch"):
        bb.fetch_weights("resnet50")
    assert calls == [resnet.ORIGIN]
    # no partial file, no temp dir left: only the note of the failure, so `auto` waits a day to retry
    assert [p.name for p in (empty_keras_home / "models").iterdir()] == [".simd-resnet50-download-failed"]


def test_auto_retries_a_failed_download_only_after_a_day(empty_keras_home, monkeypatch, caplog):
    import keras

    monkeypatch.setattr(lite0, "build", lambda **kw: "lite0-model")
    calls = []

    def no_network(fname, origin, **kw):
        calls.append(origin)
        raise Exception(f"URL fetch failure on {origin}: None -- [Errno -2] Name or service not known")

    monkeypatch.setattr(keras.utils, "get_file", no_network)
    with caplog.at_level(logging.INFO, logger="simd.backbones"):
        for _ in range(3):  # three starts of the daemon
            assert bb.load_backbone("auto", allow_download=True).id == "efficientnet-lite0"
    assert len(calls) == 1
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 3 and all(len(w) < 250 and "\n" not in w for w in warnings), warnings
    assert 'model = "efficientnet-lite0"' in warnings[0] and "download failed" in warnings[0]
    assert "next try after a day" in warnings[1]
    mark = empty_keras_home / "models" / ".simd-resnet50-download-failed"
    day_ago = mark.stat().st_mtime - resnet.RETRY_AFTER_S - 1
    os.utime(mark, (day_ago, day_ago))
    bb.load_backbone("auto", allow_download=True)
    assert len(calls) == 2
    with pytest.raises(WeightsUnavailable):  # an explicit fetch always tries
        bb.fetch_weights("resnet50")
    assert len(calls) == 3


def test_auto_falls_back_to_lite0_with_a_warning(monkeypatch, caplog):
    import keras

    monkeypatch.setattr(lite0, "build", lambda **kw: "lite0-model")  # the decision, not the network
    with caplog.at_level(logging.WARNING, logger="simd.backbones"):
        backbone = bb.load_backbone("auto", allow_download=False)
    assert backbone.id == "efficientnet-lite0" and backbone.feature_model == "lite0-model"
    [record] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "ResNet50" in record.getMessage() and "simd weights fetch" in record.getMessage()

    def no_network(*a, **kw):
        raise Exception("URL fetch failure")

    monkeypatch.setattr(keras.utils, "get_file", no_network)
    assert bb.load_backbone("auto", allow_download=True).id == "efficientnet-lite0"


def test_auto_falls_back_when_the_weights_file_is_not_weights(monkeypatch, caplog, tmp_path):
    monkeypatch.setattr(lite0, "build", lambda **kw: "lite0-model")
    junk = tmp_path / "resnet.h5"
    junk.write_bytes(b"this is not HDF5")
    with pytest.raises(WeightsUnavailable, match="cannot load ResNet50 weights"):
        bb.load_backbone("resnet50", weights=junk)
    with caplog.at_level(logging.WARNING, logger="simd.backbones"):
        assert bb.load_backbone("auto", weights=junk).id == "efficientnet-lite0"
    assert "cannot load ResNet50 weights" in caplog.text


def test_models_report_and_unknown_names():
    rows = {r["id"]: r for r in bb.models_report()}
    assert (
        set(rows) == set(bb.BACKBONES) == {"resnet50", "efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2"}
    )
    assert [rows[f"efficientnet-lite{i}"]["input_size"] for i in range(3)] == [224, 240, 260]
    assert rows["efficientnet-lite0"]["weights_available"] is True
    assert rows["efficientnet-lite0"]["dim"] == 1280 and rows["resnet50"]["dim"] == 2048
    assert rows["resnet50"]["weights_available"] is False
    assert "simd weights fetch" in rows["resnet50"]["weights_source"]
    with pytest.raises(ValueError):
        bb.load_backbone("vgg16")


def test_a_stalled_download_gives_up_instead_of_hanging(empty_keras_home, monkeypatch):
    """A server that accepts the connection and never answers (a real socket on this machine, not
    the internet): the download fails after its timeout, cleanly, and the timeout is not left set."""
    import socket
    import time

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    try:
        monkeypatch.setattr(resnet, "ORIGIN", f"http://127.0.0.1:{server.getsockname()[1]}/{resnet.NOTOP_FILE}")
        monkeypatch.setattr(resnet, "DOWNLOAD_TIMEOUT_S", 1.0)
        started = time.monotonic()
        with pytest.raises(WeightsUnavailable, match="download of ResNet50 weights failed"):
            bb.fetch_weights("resnet50")
        assert time.monotonic() - started < 20
        assert socket.getdefaulttimeout() is None
        assert [p.name for p in (empty_keras_home / "models").iterdir()] == [".simd-resnet50-download-failed"]
    finally:
        server.close()


@pytest.mark.slow
@pytest.mark.parametrize("name, size", [("efficientnet-lite1", 240), ("efficientnet-lite2", 260)])
def test_lite1_and_lite2_load_through_the_real_path_and_classify(name, size):
    """The same builder, another row of the variants table: every tensor of the packaged file finds
    its layer (a wrong depth or width fails loudly), the classifier knows a cat and an espresso, and
    the embedder makes unit vectors from it."""
    from simd.embedder import Embedder

    backbone = bb.load_backbone(name)
    assert (backbone.id, backbone.dim, backbone.input_size, backbone.classes) == (name, 1280, size, 1000)
    assert bb.resolve_source(name) == (bb.BACKBONES[name], backbone.weights_file)
    w, b = backbone.classifier
    for rgb, wanted in ((data.chelsea(), CATS), (data.coffee(), (ESPRESSO, CUP))):
        x = np.asarray(Image.fromarray(rgb).resize((size, size), Image.Resampling.BICUBIC), np.float32)[None]
        pooled = backbone.feature_model(backbone.preprocess(x), training=False).numpy().mean(axis=(1, 2))
        assert int(np.argmax(pooled @ w.T + b)) in wanted
    vectors = Embedder(backbone).embed_files([])
    assert vectors == []
    v = Embedder(backbone).embed_image(Image.fromarray(data.astronaut()))
    assert v.dtype == np.float32 and abs(float(np.linalg.norm(v)) - 1.0) < 1e-5
