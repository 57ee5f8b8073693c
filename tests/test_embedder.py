"""Embedder: batching, bad files, counters, the seed descriptor against a hand computation."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import data

import simd.backbones as bb
from simd.embedder import DESCRIPTORS, Descriptor, Embedder
from simd.errors import ImageError


@pytest.fixture(scope="module")
def lite0_backbone():
    return bb.load_backbone("efficientnet-lite0")


@pytest.fixture(scope="module")
def resnet_backbone():
    import keras

    bb.import_tf()
    keras.utils.set_random_seed(0)
    return bb.random_resnet50()


@pytest.fixture(scope="module")
def backbones(lite0_backbone, resnet_backbone):
    return {"efficientnet-lite0": lite0_backbone, "resnet50": resnet_backbone}


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Five real photos as files: JPEGs and a PNG, different sizes and aspect ratios."""
    d = tmp_path_factory.mktemp("photos")
    paths = []
    for name, rgb, fmt in [
        ("chelsea", data.chelsea(), "JPEG"),
        ("coffee", data.coffee(), "PNG"),
        ("astronaut", data.astronaut(), "JPEG"),
        ("rocket", data.rocket(), "JPEG"),
        ("hubble", data.hubble_deep_field(), "JPEG"),
    ]:
        p = d / f"{name}.{fmt.lower()}"
        Image.fromarray(rgb).save(p, fmt, quality=90)
        paths.append(p)
    bad = d / "broken.jpg"
    bad.write_bytes(paths[0].read_bytes()[:200])  # a truncated JPEG
    return {"good": paths, "bad": bad}


def test_shapes_norms_dtype_and_model_id(lite0_backbone, photos):
    emb = Embedder(lite0_backbone, batch_size=4)
    # The tuned default ("r2") keeps the 1280-d pooled features beside Lite0's 1000 ImageNet logits;
    # seed keeps the 1280-d GAP.
    assert (emb.model_id, emb.dim) == ("efficientnet-lite0+r2", 2280)
    seed = Embedder(lite0_backbone, descriptor="seed")
    assert (seed.model_id, seed.dim) == ("efficientnet-lite0+seed", 1280)
    vecs = emb.embed_files(photos["good"])
    assert len(vecs) == 5
    for v in vecs:
        assert isinstance(v, np.ndarray) and v.shape == (2280,) and v.dtype == np.float32
        assert abs(float(np.linalg.norm(v)) - 1.0) < 1e-5
    assert emb.images_embedded == 5
    assert emb.embed_files([]) == [] and emb.images_embedded == 5


def test_bad_file_mid_batch(lite0_backbone, photos):
    good = photos["good"]
    paths = [good[0], good[1], photos["bad"], good[2], good[3], good[4]]
    emb = Embedder(lite0_backbone, batch_size=2)
    out = emb.embed_files(paths)
    assert isinstance(out[2], ImageError) and out[2].name == str(photos["bad"])
    assert emb.images_embedded == 5  # the broken file never reached the network
    for p, v in zip(paths, out, strict=True):
        if p != photos["bad"]:
            [alone] = emb.embed_files([p])
            np.testing.assert_allclose(v, alone, atol=2e-6)
    assert emb.images_embedded == 10


def test_embed_bytes_and_image(lite0_backbone, photos):
    emb = Embedder(lite0_backbone)
    png = photos["good"][1]
    [from_file] = emb.embed_files([png])
    np.testing.assert_allclose(emb.embed_bytes(png.read_bytes(), "upload.png"), from_file, atol=2e-6)
    np.testing.assert_allclose(emb.embed_image(Image.open(png)), from_file, atol=2e-6)
    assert emb.images_embedded == 3
    with pytest.raises(ImageError) as e:
        emb.embed_bytes(b"not an image at all", "notes.txt")
    assert e.value.name == "notes.txt"
    assert emb.images_embedded == 3


@pytest.mark.parametrize("backbone_id", ["efficientnet-lite0", "resnet50"])
def test_seed_descriptor_is_the_original_method(backbones, photos, backbone_id):
    """Keras load_img squashes with NEAREST; the backbone's seed preprocessing; GAP; L2."""
    import keras

    backbone = backbones[backbone_id]
    emb = Embedder(backbone, descriptor="seed", batch_size=2)
    paths = photos["good"][:3]
    got = emb.embed_files(paths)
    for p, v in zip(paths, got, strict=True):
        img = keras.utils.load_img(p, target_size=(224, 224))  # interpolation="nearest"
        x = keras.utils.img_to_array(img)[None]
        fmap = backbone.feature_model(backbone.preprocess(x, "seed"), training=False).numpy()
        expected = fmap.mean(axis=(1, 2))[0]
        expected /= np.linalg.norm(expected)
        np.testing.assert_allclose(v, expected, atol=2e-6)


def test_no_retracing_across_batch_sizes(lite0_backbone, photos):
    emb = Embedder(lite0_backbone, batch_size=4)
    for n in (1, 3, 5, 2):
        emb.embed_files(photos["good"][:n])
    [fn] = emb.network._functions.values()
    assert fn.experimental_get_tracing_count() == 1


def test_descriptor_knobs(lite0_backbone):
    flip_gem = Descriptor("test-flip-gem", pooling="gem", flip=True, aspect="crop", scales=(1.0, 1.25))
    emb = Embedder(lite0_backbone, descriptor=flip_gem)
    assert emb.model_id == "efficientnet-lite0+test-flip-gem" and emb.sizes == (224, 280)
    img = Image.fromarray(data.astronaut())
    v = emb.embed_image(img)
    assert v.shape == (1280,) and abs(float(np.linalg.norm(v)) - 1) < 1e-5
    # flip averaging makes the vector invariant to mirroring the picture
    mirrored = emb.embed_image(img.transpose(Image.Transpose.FLIP_LEFT_RIGHT))
    np.testing.assert_allclose(v, mirrored, atol=1e-5)
    assert emb.images_embedded == 2
    with pytest.raises(ValueError):
        Embedder(lite0_backbone, descriptor="fancy")
    with pytest.raises(ValueError):
        Embedder(lite0_backbone, descriptor=Descriptor("x", pooling="max"))
    assert set(DESCRIPTORS) == {"default", "seed"}


def test_large_and_odd_images(lite0_backbone, tmp_path):
    """JPEG draft decoding of a big photo, a grayscale PNG and a tiny image all embed."""
    big = tmp_path / "big.jpg"
    Image.fromarray(data.coffee()).resize((3000, 2000)).save(big, quality=90)
    gray = tmp_path / "gray.png"
    Image.fromarray(data.camera()).save(gray)
    tiny = io.BytesIO()
    Image.new("RGB", (3, 2), (200, 10, 10)).save(tiny, "PNG")
    emb = Embedder(lite0_backbone)
    out = emb.embed_files([big, gray])
    assert all(isinstance(v, np.ndarray) for v in out)
    assert emb.embed_bytes(tiny.getvalue(), "tiny.png").shape == (emb.dim,)
    [small] = emb.embed_files([tmp_path / "missing.jpg"])
    assert isinstance(small, ImageError) and "not found" in small.reason


def test_default_descriptor_is_tuned_per_backbone(lite0_backbone):
    """Lite0's default ("r2"): the pooled features beside the ImageNet logits, equal weights, at 288 px;
    an image under 200 px (a web copy) at 224 px instead of upscaled to 288."""
    emb = Embedder(lite0_backbone)
    assert emb.sizes == (288,) and emb.dim == 2280 and emb.model_id == "efficientnet-lite0+r2"
    w, b = lite0_backbone.classifier

    def expected(img: Image.Image, size: int) -> np.ndarray:
        # Hand-computed: trim (nothing to trim here), bicubic squash, (x-127)/128, GAP, logits.
        pooled = _pooled(lite0_backbone, img, size)
        return np.concatenate([np.sqrt(0.5) * _unit(pooled), np.sqrt(0.5) * _unit(pooled @ w.T + b)])

    img = Image.fromarray(data.chelsea())  # 451 x 300
    v = emb.embed_image(img)
    np.testing.assert_allclose(v, expected(img, 288), atol=2e-4)
    assert int(np.argmax(v[1280:])) in range(281, 286)  # the logits of a cat photo point at the cat classes
    small = img.resize((180, 120), Image.Resampling.LANCZOS)
    np.testing.assert_allclose(emb.embed_image(small), expected(small, 224), atol=2e-4)
    # (that this finds thumbnails more often is a statistical claim, measured in docs/QUALITY.md)


def _exif_rotated_copy(src: Path, dest: Path) -> None:
    """The pixels stored turned by 90 degrees, with EXIF Orientation 6 saying how to show them."""
    img = Image.open(src).convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = 6  # display = rotate the stored pixels 90 degrees clockwise
    img.transpose(Image.Transpose.ROTATE_90).save(dest, "JPEG", quality=95, exif=exif.tobytes())


def test_exif_rotated_copy_embeds_like_the_upright_photo(lite0_backbone, photos, tmp_path):
    upright = photos["good"][0]
    turned = tmp_path / "turned.jpg"
    _exif_rotated_copy(upright, turned)
    default = Embedder(lite0_backbone)
    a, b = default.embed_files([upright, turned])
    assert float(a @ b) > 0.97
    # The seed baseline ignores the tag, as Keras' load_img does: it sees a sideways picture.
    seed = Embedder(lite0_backbone, descriptor="seed")
    sa, sb = seed.embed_files([upright, turned])
    assert float(sa @ sb) < float(a @ b) - 0.02


def test_batches_start_small_without_padding():
    """The first full batch is split 8, 8, 16 (bucket sizes: nothing padded), then batches of 32."""
    from simd.embedder import _batches

    sizes = [len(r) for r in _batches(100, 32)]
    assert sizes == [8, 8, 16, 32, 32, 4] and sum(sizes) == 100
    assert [len(r) for r in _batches(16, 32)] == [4, 4, 8]
    assert [len(r) for r in _batches(20, 32)] == [4, 4, 8, 4]  # every call a bucket size: 1, 2, 4, ..., 32
    assert [len(r) for r in _batches(5, 32)] == [5]  # too few to split
    assert [len(r) for r in _batches(10, 6)] == [6, 4]  # not a power of two: never split
    ranges = _batches(70, 32)
    assert [i for r in ranges for i in r] == list(range(70))


def test_phone_photos_in_a_split_first_batch_match_alone(resnet_backbone, phone_jpeg, tmp_path):
    """12 MP phone JPEGs embedded 9 at a time (batch 8: split 2, 2, 4, then 1) get the vectors they
    get one by one, and the network sees only bucket sizes."""
    flipped = tmp_path / "flipped.jpg"
    Image.open(phone_jpeg).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(flipped, "JPEG", quality=92)
    paths = []
    for i in range(9):  # the photo and its mirror image, alternating; distinct files
        p = tmp_path / f"PXL_{i}.jpg"
        p.write_bytes((flipped if i % 2 else phone_jpeg).read_bytes() + bytes([i]))
        paths.append(p)
    emb = Embedder(resnet_backbone, batch_size=8)
    calls = []
    run = emb._run
    emb._run = lambda size, batch: calls.append(len(batch)) or run(size, batch)  # type: ignore[method-assign]
    vectors = emb.embed_files(paths)
    assert calls == [2, 2, 4, 1]
    for p, v in zip(paths, vectors, strict=True):
        [alone] = emb.embed_files([p])
        np.testing.assert_allclose(v, alone, atol=2e-6)


def test_an_upload_goes_before_the_indexers_next_batch(lite0_backbone, photos, phone_jpeg):
    """While the indexer embeds file after file, an upload (someone waiting on the page) takes the
    network at the next turn, not after the indexer's run: the indexer asks again the moment its
    call ends, and a plain lock let it keep the network for minutes during a burst."""
    import threading
    import time

    emb = Embedder(lite0_backbone, batch_size=2)
    inner, calls = emb.network, []

    class Recording:  # the real network, each call stretched so that the upload waits for a turn
        def run(self, size, batch):
            calls.append(threading.current_thread().name)
            time.sleep(0.3)
            return inner.run(size, batch)

    emb.network = Recording()
    files = photos["good"] * 4
    indexer = threading.Thread(target=emb.embed_files, args=(files,), name="indexer")
    indexer.start()
    try:
        while calls.count("indexer") < 2:
            time.sleep(0.01)
        asked = len(calls)
        vector = emb.embed_bytes(phone_jpeg.read_bytes(), "PXL.jpg")
        upload_at = calls.index(threading.current_thread().name)
        assert upload_at - asked <= 1, calls  # at most the call already running went first
        assert indexer.is_alive(), "the upload must not wait for the indexer's whole run"
        assert vector.shape == (emb.dim,) and abs(float(np.linalg.norm(vector)) - 1) < 1e-5
    finally:
        indexer.join(120)
    assert calls.count("indexer") >= len(files) // 2


def _pooled(backbone, img: Image.Image, size: int) -> np.ndarray:
    x = np.asarray(img.resize((size, size), Image.Resampling.BICUBIC), np.float32)[None]
    return backbone.feature_model(backbone.preprocess(x, "default")).numpy().mean(axis=(1, 2))[0]


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def test_gap_weight_puts_the_pooled_features_beside_the_logits(lite0_backbone):
    """cosine = w * cosine(pooled) + (1 - w) * cosine(logits): each part normalised, weighted by sqrt."""
    d = Descriptor("test-both", resize="bicubic", logits=True, gap_weight=0.3)
    emb = Embedder(lite0_backbone, descriptor=d)
    assert emb.dim == 1280 + 1000 and emb.model_id == "efficientnet-lite0+test-both"
    img = Image.fromarray(data.chelsea())
    pooled = _pooled(lite0_backbone, img, 224)
    w, b = lite0_backbone.classifier
    expected = np.concatenate([np.sqrt(0.3) * _unit(pooled), np.sqrt(0.7) * _unit(pooled @ w.T + b)])
    np.testing.assert_allclose(emb.embed_image(img), expected, atol=2e-4)
    with pytest.raises(ValueError, match="invalid descriptor"):
        Embedder(lite0_backbone, descriptor=Descriptor("x", gap_weight=0.5))  # no logits to sit beside


def test_low_view_adds_the_look_of_a_thumbnail(lite0_backbone):
    """The vector is the normalised sum of the image's view and (weighted) its 160 px view; a 160 px
    copy of a large photo then scores higher against it than without."""
    d = Descriptor("test-low", resize="bicubic", low_view=1.0)
    emb, plain = (
        Embedder(lite0_backbone, descriptor=d),
        Embedder(lite0_backbone, descriptor=Descriptor("p", resize="bicubic")),
    )
    img = Image.fromarray(data.astronaut()).resize((1024, 1024), Image.Resampling.LANCZOS)
    low = img.copy()
    low.thumbnail((160, 160), Image.Resampling.LANCZOS)
    expected = _unit(_unit(_pooled(lite0_backbone, img, 224)) + _unit(_pooled(lite0_backbone, low, 224)))
    np.testing.assert_allclose(emb.embed_image(img), expected, atol=2e-4)
    thumb = Image.open(io.BytesIO(_jpeg_bytes(low, 75))).convert("RGB")
    assert float(emb.embed_image(img) @ emb.embed_image(thumb)) > float(
        plain.embed_image(img) @ plain.embed_image(thumb)
    )


def _jpeg_bytes(img: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def test_trim_embeds_a_letterboxed_copy_like_its_photo(lite0_backbone):
    """The photo padded to 1:1 on white (a chat app's copy) embeds as the photo itself once trimmed."""
    photo = Image.fromarray(data.coffee())  # 600x400
    canvas = Image.new("RGB", (600, 600), "white")
    canvas.paste(photo, (0, 100))
    padded = Image.open(io.BytesIO(_jpeg_bytes(canvas, 85))).convert("RGB")
    trimmed = Embedder(lite0_backbone, descriptor=Descriptor("t", resize="bicubic", trim=True))
    whole = Embedder(lite0_backbone, descriptor=Descriptor("w", resize="bicubic"))
    with_trim = float(trimmed.embed_image(photo) @ trimmed.embed_image(padded))
    assert with_trim > 0.97
    assert with_trim > float(whole.embed_image(photo) @ whole.embed_image(padded)) + 0.02


def test_an_index_of_the_previous_default_is_re_embedded_for_the_new_one(lite0_backbone, photos, library, state_dir):
    """A library indexed with the previous Lite0 default (model id "efficientnet-lite0", 1000-d logits)
    is re-embedded, file by file, when the active model id becomes the new default's; the old vectors
    are never searched beside the new ones."""
    from simd.ignore import IgnoreRules
    from simd.indexer import Reconciler
    from simd.store import Store
    from simd.vectors import VectorIndex

    for p in photos["good"][:3]:
        (library / p.name).write_bytes(p.read_bytes())
    previous = Embedder(
        lite0_backbone, descriptor=Descriptor("default", resize="bicubic", scales=(288 / 224,), logits=True)
    )
    current = Embedder(lite0_backbone)
    assert (previous.model_id, previous.dim) == ("efficientnet-lite0", 1000)
    assert current.model_id != previous.model_id
    with Store(state_dir / "index.db") as store:
        Reconciler(library, store, previous, VectorIndex(previous.dim), IgnoreRules([])).run()
        assert store.counts(current.model_id)["stale"] == 3
        summary = Reconciler(library, store, current, VectorIndex(current.dim), IgnoreRules([])).run()
        assert (summary.reembedded, current.images_embedded) == (3, 3)
        ids, matrix = store.load_vectors(current.model_id)
        assert len(ids) == 3 and matrix.shape == (3, 2280)
        assert store.load_vectors(previous.model_id)[0].size == 0
