"""int8 networks: the cached fp32 ONNX model quantized statically (onnxruntime's quantize_static),
calibrated on photos of the library.

Why the library: its photos are what the network will see, and no photos need to ship with simd.
Which ones: up to ``CALIBRATION_IMAGES`` files that decode, in the order of the sha1 of their
relative paths (a fixed shuffle: spread over the folders and years of the library, not its first
folder), decoded as the embedder decodes them (its ``_decode_file``). The cache key holds this
recipe and the library's path, not the photos' contents, so a later start finds the model without
reading the library; a library that grows keeps its calibrated model (and its vectors).
A library with fewer than ``MIN_CALIBRATION`` files stays fp32 (one log line) until a later start.

Quantizer options, chosen to keep quality (docs/QUALITY.md "int8", tests/bench/int8_options.py):
QDQ, weights int8 per output channel, activations int8 from MinMax ranges over the calibration
set, and ``reduce_range`` (7-bit weights): on CPUs without VNNI onnxruntime's int8 kernels
(VPMADDUBSW) saturate, and this lifted EfficientNet-Lite0's mean cosine to fp32 from 0.923 to
0.971. Percentile calibration did no better than MinMax (and took 14x as long); quantizing only
the convolutions, or uint8 weights and activations, did worse.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from simd.ignore import IgnoreRules

log = logging.getLogger(__name__)

PRECISION = "int8"
ID_SUFFIX = "+int8"  # appended to the model id: int8 vectors are never compared with fp32 ones
CALIBRATION_IMAGES = 64
MIN_CALIBRATION = 16
FORMAT = 1  # bump when the quantization changes in a way OPTIONS does not show
OPTIONS = {"format": "QDQ", "per_channel": True, "reduce_range": True, "method": "MinMax", "activations": "int8"}
CONVERT_HERE_ENV = "SIMD_CONVERT_HERE"  # set in the conversion child (`onnx.convert_apart`)


@dataclass(frozen=True)
class Calibration:
    """What an int8 model is calibrated on: the library's candidate files in calibration order,
    and (in the process that quantizes) ``decode``: a path to one uint8 array per input size, or
    an ImageError, as the embedder decodes it."""

    root: Path
    files: tuple[str, ...]
    decode: Callable[[str], Any] | None = None

    def key(self) -> dict:
        """The part of the cache key that is int8's: the recipe and the library, not the photos."""
        recipe = {"images": CALIBRATION_IMAGES, "order": "sha1(path)", **OPTIONS, "quantize_format": FORMAT}
        return {"precision": PRECISION, "library": str(self.root), **recipe}

    def using(self, decode: Callable[[str], Any]) -> Calibration:
        return replace(self, decode=decode)

    def images(self, sizes: tuple[int, ...]) -> dict[int, np.ndarray] | None:
        """uint8 (n, S, S, 3) per size from the first CALIBRATION_IMAGES files that decode (at
        most 4x as many tried); None, with one log line, when fewer than MIN_CALIBRATION decode."""
        assert self.decode is not None
        chosen: list[list[np.ndarray]] = []
        for rel in self.files[: 4 * CALIBRATION_IMAGES]:
            got = self.decode(str(self.root / rel))
            if isinstance(got, list):
                chosen.append(got)
                if len(chosen) == CALIBRATION_IMAGES:
                    break
        if len(chosen) < MIN_CALIBRATION:
            log.warning(_too_few(len(chosen), "decode"))
            return None
        return {size: np.stack([_at_size(c, size) for c in chosen]) for size in sizes}

    def quantize(self, fp32: bytes, images: np.ndarray) -> bytes:
        """The int8 (QDQ) model of one fp32 model, calibrated on ``images`` (uint8 NHWC)."""
        import onnx
        from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, quantize_static
        from onnxruntime.quantization.shape_inference import quant_pre_process

        name = onnx.load_from_string(fp32).graph.input[0].name

        class Reader(CalibrationDataReader):
            def __init__(self) -> None:
                self.batches = iter([{name: images[i : i + 8]} for i in range(0, len(images), 8)])

            def get_next(self) -> dict | None:
                return next(self.batches, None)

        with tempfile.TemporaryDirectory(prefix="simd-int8-") as tmp:
            src, pre, out = (os.path.join(tmp, f) for f in ("fp32.onnx", "pre.onnx", "int8.onnx"))
            Path(src).write_bytes(fp32)
            # folds and fuses (BatchNorm into Conv, ...) first, so what is quantized is what runs
            quant_pre_process(src, pre, skip_symbolic_shape=True)
            quantize_static(
                pre,
                out,
                Reader(),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                reduce_range=True,
                calibrate_method=CalibrationMethod.MinMax,
            )
            model = onnx.load(out)
        entry = model.metadata_props.add()
        entry.key, entry.value = "simd_calibration", json_digest(self.root, self.files, len(images))
        return bytes(model.SerializeToString())


def _at_size(views: list[np.ndarray], size: int) -> np.ndarray:
    """The view of a photo at `size` px; resized from its first view when the descriptor runs that
    size for other images only (r2 embeds images under `small_side` at the backbone's own size)."""
    for v in views:
        if v.shape[0] == size:
            return v
    from PIL import Image

    return np.asarray(Image.fromarray(views[0]).resize((size, size), Image.Resampling.BICUBIC), np.uint8)


def json_digest(root: Path, files: Iterable[str], n: int) -> str:
    return f"{n} photos of {root} ({hashlib.sha256(repr(list(files)).encode()).hexdigest()[:12]})"


def calibration(precision: str, library: str | os.PathLike | None, ignore: Iterable[str] = ()) -> Calibration | None:
    """The calibration of an int8 model for this library, or None (run fp32): precision fp32, no
    library, or too few files in it (logged)."""
    if precision != PRECISION:
        return None
    if not library:
        log.warning("precision int8 needs a library to calibrate on; running fp32")
        return None
    root = Path(library).resolve()
    files = _calibration_order(root, IgnoreRules(list(ignore)))
    if len(files) < MIN_CALIBRATION:
        log.warning(_too_few(len(files), "are there"))
        return None
    return Calibration(root, tuple(files))


def _too_few(n: int, what: str) -> str:
    return (
        f"precision int8: calibrating needs {MIN_CALIBRATION} photos of the library and only {n} {what}; "
        "running fp32 (vectors of the fp32 model id) until a later start finds enough"
    )


def _calibration_order(root: Path, ignore: IgnoreRules) -> list[str]:
    """The library's files (as the scanner skips: hidden, system, ignored), ordered by the sha1 of
    their relative paths: the same order on every machine and at every start. Names only (os.walk
    tells folders from the rest without a stat): this runs at every start with precision int8."""
    found = []
    for folder, dirs, names in os.walk(root):
        rel_dir = os.path.relpath(folder, root)
        rel_dir = "" if rel_dir == "." else rel_dir + "/"
        dirs[:] = [d for d in dirs if not ignore.ignored(rel_dir + d, True)]
        for name in names:
            rel = rel_dir + name
            if not ignore.ignored(rel, False):
                found.append(rel)
    return sorted(found, key=lambda rel: hashlib.sha1(rel.encode("utf-8", "surrogateescape")).hexdigest())
