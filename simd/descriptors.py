"""How an image becomes a vector: the ``Descriptor`` knobs, the named descriptors, the views.

A ``Descriptor`` is a small table of knobs (preprocessing, resize filter, aspect handling, pooling,
flip averaging, scales, the head, letterbox trimming, a low-resolution view), so tuning is a table
change. ``views`` turns a decoded image into the network inputs a descriptor asks for; ``head``
turns the network's outputs for them into one vector.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from simd.borders import trim

FILTERS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
}


@dataclass(frozen=True)
class Descriptor:
    """The knobs that turn a decoded image into a vector; vectors of two descriptors never mix.

    name:       appended to the backbone id as ``<backbone>+<name>`` in ``model_id`` (not for
                "default"). Change the name whenever a knob changes, or old and new vectors of
                the same library would be compared as if they were alike.
    preprocess: the backbone's preprocessing mode ("seed" or "default").
    resize:     PIL filter for the resize to the network input ("nearest", "bilinear", "bicubic").
    aspect:     "squash" (whole image, aspect not kept) or "crop" (centred square).
    pooling:    "gap" (global average) or "gem" (generalised mean with exponent gem_p).
    flip:       also embed the mirrored image and average the two.
    scales:     network input sizes as multiples of the backbone's input size; per-scale vectors
                are L2-normalised, summed and normalised again.
    draft:      let JPEGs decode at a reduced DCT scale (>= 2x the largest input), ~4x faster.
    exif:       apply the EXIF orientation (only the seed baseline ignores it, as load_img did).
    logits:     project the pooled features onto the backbone's ImageNet classifier logits when
                its weights include the classifier (EfficientNet-Lite0 does; ResNet50's notop
                file does not). A fixed linear map learned on ImageNet, not on the library:
                it weights feature directions by how much they tell ImageNet classes apart.
    gap_weight: with ``logits``, keep the pooled features too: the vector is the L2-normalised
                pooled features times sqrt(gap_weight) beside the L2-normalised logits times
                sqrt(1 - gap_weight), so a cosine is gap_weight * (cosine of the pooled features)
                + (1 - gap_weight) * (cosine of the logits). 0: logits only.
    trim:       cut letterbox bands (paired uniform margins, ``simd.borders``) before embedding.
    small_side: an image whose long side is below this (px; a web-sized copy, a thumbnail) is
                embedded at the backbone's own input size instead of the scales' larger one: it is
                not upscaled further than it must be, which invents no detail the original lacks.
                0: every image at the scales' sizes.
    low_view:   weight of a second, low-resolution view of every image (long side ``LOW_SIDE``
                px, then resized up to the input like the first): a large original then also
                carries the look of its thumbnails. 0: none.
    """

    name: str
    preprocess: str = "default"
    resize: str = "bilinear"
    aspect: str = "squash"
    pooling: str = "gap"
    gem_p: float = 3.0
    flip: bool = False
    scales: tuple[float, ...] = (1.0,)
    draft: bool = True
    logits: bool = False
    exif: bool = True
    gap_weight: float = 0.0
    trim: bool = False
    small_side: int = 0
    low_view: float = 0.0


DESCRIPTORS: dict[str, Descriptor] = {
    # The original method, reproduced exactly: Keras load_img(target_size=(224, 224)) ignores the
    # EXIF orientation and squashes the fully decoded image with NEAREST; then the backbone's own
    # preprocessing and GAP.
    "seed": Descriptor("seed", preprocess="seed", resize="nearest", aspect="squash", draft=False, exif=False),
    # The backbone's best preprocessing, an antialiased resize of the whole image, GAP.
    "default": Descriptor("default"),
}

# Tuned per backbone on the public evaluation kit and a holdout of other photos with other edits
# (docs/QUALITY.md, tests/bench/sweep_views.py). EfficientNet-Lite0, "r2": a 288 px input (bicubic)
# with the pooled features beside the ImageNet logits at equal weight (the logits alone lifted
# category precision but lost thumbnails: 160 px copies were found 0.88 of the time), letterbox
# bands trimmed, and images under 200 px (thumbnails, web copies) embedded at 224 px instead of
# being upscaled to 288. Its name is new, so an index of the previous default ("efficientnet-lite0")
# is re-embedded, never mixed. ResNet50's ImageNet weights cannot be had on the machines that tuned
# this, so it keeps the plain default until it can be measured.
BACKBONE_DEFAULTS: dict[str, Descriptor] = {
    "efficientnet-lite0": Descriptor(
        "r2", resize="bicubic", scales=(288 / 224,), logits=True, gap_weight=0.5, trim=True, small_side=200
    ),
}


def resolve_descriptor(name: str, backbone_id: str) -> Descriptor:
    """`seed`, `default` (the backbone's tuned default), or the tuned default's own name (as a model
    id such as ``efficientnet-lite0+r2`` carries it)."""
    tuned = BACKBONE_DEFAULTS.get(backbone_id)
    if tuned is not None and name == tuned.name:
        return tuned
    if name not in DESCRIPTORS:
        raise ValueError(f"unknown descriptor {name!r}; choose {', '.join(DESCRIPTORS)}")
    if name == "default":
        return BACKBONE_DEFAULTS.get(backbone_id, DESCRIPTORS["default"])
    return DESCRIPTORS[name]


def input_sizes(input_size: int, descriptor: Descriptor) -> tuple[int, ...]:
    """The network input sizes (px) of a descriptor's scales on a backbone of ``input_size``."""
    return tuple(max(32, round(input_size * s)) for s in descriptor.scales)


LOW_SIDE = 160  # the low-resolution view's long side: a web-sized copy's


def validate(d: Descriptor) -> None:
    """ValueError for knobs no network or view knows."""
    if (
        d.resize not in FILTERS
        or d.aspect not in ("squash", "crop")
        or d.pooling not in ("gap", "gem")
        or not d.scales
        or not 0.0 <= d.gap_weight < 1.0
        or d.low_view < 0.0
        or (d.gap_weight and not d.logits)
    ):
        raise ValueError(f"invalid descriptor {d}")


def network_sizes(input_size: int, d: Descriptor) -> tuple[int, ...]:
    """Every input size the network runs at: the scales' and, with ``small_side``, the backbone's."""
    sizes = input_sizes(input_size, d)
    return sizes + ((input_size,) if d.small_side and input_size not in sizes else ())


def views(image: Image.Image, d: Descriptor, sizes: tuple[int, ...], input_size: int = 0) -> list[np.ndarray]:
    """The uint8 (S, S, 3) network inputs of one decoded RGB image: one per size, then (with
    ``low_view``) one low-resolution view per size. With ``small_side``, a small image's views are
    all at ``input_size`` instead."""
    if d.trim:
        image = trim(image)
    if d.small_side and input_size and max(image.size) < d.small_side:
        sizes = (input_size,) * len(sizes)
    if d.aspect == "crop":
        w, h = image.size
        s = min(w, h)
        left, top = (w - s) // 2, (h - s) // 2
        image = image.crop((left, top, left + s, top + s))
    sources = [image]
    if d.low_view:
        low = image.copy()
        low.thumbnail((LOW_SIDE, LOW_SIDE), Image.Resampling.LANCZOS)  # antialiased, as a web copy is made
        sources.append(low)
    out = []
    for source in sources:
        for size in sizes:
            resized = source if source.size == (size, size) else source.resize((size, size), FILTERS[d.resize])
            out.append(np.asarray(resized, dtype=np.uint8))
    return out


def view_weights(d: Descriptor, sizes: tuple[int, ...]) -> list[float]:
    """The weight of each of ``views``' vectors in the sum."""
    return [1.0] * len(sizes) + ([d.low_view] * len(sizes) if d.low_view else [])


def vector_dim(d: Descriptor, features: int, classes: int) -> int:
    """The vector's length: the logits (or pooled features), with ``gap_weight`` both."""
    if not (d.logits and classes):
        return features
    return classes + (features if d.gap_weight else 0)


def head(out: np.ndarray, d: Descriptor, features: int) -> np.ndarray:
    """One view's network output (n, dim) as its unit vectors: with ``gap_weight`` the output is
    the pooled features beside the logits, each normalised and weighted."""
    if d.gap_weight and out.shape[1] > features:
        g, lg = out[:, :features], out[:, features:]
        out = np.concatenate([np.sqrt(d.gap_weight) * l2(g), np.sqrt(1.0 - d.gap_weight) * l2(lg)], axis=1)
    return l2(out)


def l2(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32)
