"""Images -> L2-normalised float32 vectors: decode pool, batching, one network per input size.

The network (preprocessing, backbone, pooling, logit projection) runs on ONNX Runtime
(``simd.backbones.onnx``: converted once, cached, loaded without TensorFlow) or on TensorFlow as a
tf.function (``simd.backbones.tfnet``, the reference; the `runtime` setting). Both take uint8 with
the batch dimension open; the last partial batch is zero-padded up to a bucket size (1, 2, 4, ...
batch_size), so TensorFlow traces once and the kernels of either see few shapes.

Decoding (JPEG draft mode, EXIF, resize) happens in a small thread pool, one batch ahead of the
network, so the two overlap; the first full batch is sent in pieces (8, 8, 16 of 32) so the network
starts after a few decodes. A file that cannot be decoded yields its ``ImageError`` at its place
in the result list; the other files of the batch are embedded as if it was not there.

How an image becomes a vector is a ``Descriptor`` (``simd.descriptors``): a small table of knobs,
so tuning is a table change.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from PIL import Image

from simd.backbones.tfnet import TFNetwork
from simd.budget import DECODE_SECONDS, Budget
from simd.config import MAX_IMAGE_PIXELS, MAX_UPLOAD_PIXELS, Config
from simd.descriptors import (
    BACKBONE_DEFAULTS,
    DESCRIPTORS,
    Descriptor,
    head,
    input_sizes,
    l2,
    network_sizes,
    resolve_descriptor,
    validate,
    vector_dim,
    view_weights,
    views,
)
from simd.errors import Busy, ImageError

log = logging.getLogger(__name__)

# the descriptor table lives in simd.descriptors; these names stay importable from here
__all__ = ["BACKBONE_DEFAULTS", "DESCRIPTORS", "Descriptor", "Embedder", "input_sizes", "resolve_descriptor"]

# Uploads are decoded and embedded one at a time: the largest allowed (max_upload_pixels) may need
# ~0.6 GB while it decodes, and the network runs one batch at a time anyway. Up to UPLOAD_WAITING
# more wait for their turn (each holds an HTTP thread); one more is refused at once with Busy (503).
UPLOAD_SLOTS = 1
UPLOAD_WAITING = 7
UPLOAD_WAIT = 60.0  # s an upload waits for its turn before Busy


class Embedder:
    """Embeds files, PIL images and uploaded bytes with one backbone and one descriptor.

    Thread-safe: network calls take turns (`_network_turn`: two concurrent batches would only double
    peak memory on a CPU that is already busy), decoding runs outside them.
    """

    def __init__(
        self,
        backbone: Any,
        *,
        descriptor: str | Descriptor = "default",
        batch_size: int = 32,
        max_pixels: int = MAX_IMAGE_PIXELS,
        decode_workers: int | None = None,
        max_upload_pixels: int = MAX_UPLOAD_PIXELS,
        network: Any = None,
    ):
        if isinstance(descriptor, str):
            descriptor = resolve_descriptor(descriptor, backbone.id)
        validate(descriptor)
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.backbone = backbone
        self.descriptor = descriptor
        self.batch_size = batch_size
        self.max_pixels = max_pixels
        self.max_upload_pixels = min(max_upload_pixels, max_pixels)
        self._upload_turn = threading.Semaphore(UPLOAD_SLOTS)
        self._upload_line = threading.BoundedSemaphore(UPLOAD_SLOTS + UPLOAD_WAITING)
        self.decode_workers = decode_workers or min(4, os.cpu_count() or 1)
        self.dim = vector_dim(descriptor, backbone.dim, getattr(backbone, "classes", 0))
        self.sizes = input_sizes(backbone.input_size, descriptor)
        self._weights = view_weights(descriptor, self.sizes)
        self.buckets = sorted({min(2**i, batch_size) for i in range(batch_size.bit_length() + 1)})
        self.images_embedded = 0
        # The network runs one call at a time. An upload (a person waiting for an answer) goes
        # before the indexer's next batch: with a plain lock the indexer, which asks again at
        # once, kept it for minutes during a burst of new files (uploads waited 23-62 s).
        self._turns = threading.Condition()
        self._network_busy = False
        self._uploads_waiting = 0
        # runs uint8 (n, S, S, 3) -> float32 (n, dim): TensorFlow (tfnet) or ONNX Runtime (onnx)
        self.network = network if network is not None else TFNetwork(backbone, descriptor)

    @property
    def model_id(self) -> str:  # backbone [+descriptor] [+int8]: vectors of two ids are never compared
        named = f"+{self.descriptor.name}" if self.descriptor.name != "default" else ""
        return self.backbone.id + named + getattr(self.network, "id_suffix", "")

    @classmethod
    def from_config(cls, config: Config, model: str | None = None, descriptor: str | None = None) -> Embedder:
        """The embedder a config asks for (`model`, `descriptor`: override the config's), with real
        weights, on the config's runtime. ONNX Runtime: a converted model in the cache is loaded
        without TensorFlow; else TensorFlow builds the backbone (threads set first, as TensorFlow
        takes them only then) and it is converted once; if that fails, TensorFlow runs it."""
        from simd.backbones import configure_tensorflow, load_backbone, resolve_source
        from simd.backbones.onnx import NAME as ORT
        from simd.backbones.onnx import convert_apart, open_network
        from simd.backbones.quantize import CONVERT_HERE_ENV, calibration

        name, descriptor = model or config.model, descriptor or config.descriptor
        options = dict(batch_size=config.batch_size, max_pixels=config.max_image_pixels)
        options.update(max_upload_pixels=config.max_upload_pixels)
        ort = dict(cache=config.model_cache, threads=config.tf_threads)
        int8 = calibration(config.precision, config.library, config.ignore) if config.runtime == ORT else None
        if (
            config.runtime == ORT
            and (source := resolve_source(name, config.weights, config.weights_download)) is not None
        ):
            spec, weights = source
            d = resolve_descriptor(descriptor, spec.id)
            sizes = network_sizes(spec.input_size, d)
            if int8 and os.environ.get(CONVERT_HERE_ENV):  # the conversion child calibrates
                int8 = int8.using(cls(spec, descriptor=d, network=False, **options)._decode_file)
            for q in (int8, None) if int8 else (None,):  # int8 when it can be had, else fp32
                ort["int8"], apart = q, config.replace(precision="int8" if q else "fp32")
                network = open_network(spec.id, spec.classes, d, sizes, weights, **ort)
                if network is None and weights is not None and convert_apart(apart, spec.id, descriptor):
                    network = open_network(spec.id, spec.classes, d, sizes, weights, **ort)
                if network is not None:
                    return cls(spec, descriptor=d, network=network, **options)._started()
        if config.tf_threads:
            configure_tensorflow(config.tf_threads)
        backbone = load_backbone(name, weights=config.weights, allow_download=config.weights_download)
        embedder = cls(backbone, descriptor=descriptor, **options)
        if config.runtime == ORT:
            d, w = embedder.descriptor, backbone.weights_file
            ort["int8"] = int8 and int8.using(embedder._decode_file)
            network = open_network(
                backbone.id,
                backbone.classes,
                d,
                network_sizes(backbone.input_size, d),
                w,
                convert_from=embedder.network,
                **ort,
            )
            embedder.network = network or embedder.network
        return embedder._started()

    def _started(self) -> Embedder:
        log.info("model %s on %s", self.model_id, self.network.describe())
        return self

    # -- public API
    def embed_files(
        self, paths: Iterable[str | os.PathLike], *, stop: threading.Event | None = None
    ) -> list[np.ndarray | ImageError]:
        """One vector (or the ImageError) per path, in order; never raises for a bad image. Each
        decode has its budget (`simd.budget.DECODE_SECONDS`, bytes by pixel size); `stop` set:
        `simd.budget.Stopped` within a read."""
        paths = list(paths)
        results: list[np.ndarray | ImageError | None] = [None] * len(paths)
        if not paths:
            return []
        chunks = _batches(len(paths), self.batch_size)
        with ThreadPoolExecutor(self.decode_workers, thread_name_prefix="simd-decode") as pool:

            def submit(chunk):
                return [pool.submit(self._decode_file, paths[i], stop) for i in chunk]

            pending = submit(chunks[0])
            for k, chunk in enumerate(chunks):
                current = pending
                if k + 1 < len(chunks):  # decode the next batch while this one runs
                    pending = submit(chunks[k + 1])
                decoded = [f.result() for f in current]
                ok = [(i, d) for i, d in zip(chunk, decoded, strict=True) if not isinstance(d, ImageError)]
                for i, d in zip(chunk, decoded, strict=True):
                    if isinstance(d, ImageError):
                        log.debug("skipping %s: %s", paths[i], d.reason)
                        results[i] = d
                if ok:
                    vectors = self._embed_arrays([d for _, d in ok])
                    for (i, _), v in zip(ok, vectors, strict=True):
                        results[i] = v
        return results  # type: ignore[return-value]

    def embed_image(self, image: Image.Image) -> np.ndarray:
        """Vector of an already decoded (and upright) PIL image."""
        if image.mode != "RGB":
            image = image.convert("RGB")
        return self._embed_arrays([self._prepare(image)], first=True)[0]

    def embed_bytes(self, data: bytes, name: str) -> np.ndarray:
        """Vector of an uploaded image, decoded and embedded one upload at a time (UPLOAD_SLOTS);
        raises ImageError if it cannot be decoded or has more than `max_upload_pixels`, Busy when
        too many uploads are in line."""
        from simd.imaging import open_image, release_free_memory

        if not self._upload_line.acquire(blocking=False):
            raise Busy(f"{UPLOAD_SLOTS + UPLOAD_WAITING} uploads are in line already; try again in a moment")
        try:
            if not self._upload_turn.acquire(timeout=UPLOAD_WAIT):
                raise Busy(f"the uploads before this one took over {UPLOAD_WAIT:.0f} s; try again in a moment")
            image: Image.Image | None = None
            try:
                image = open_image(
                    data,
                    name=name,
                    max_pixels=self.max_upload_pixels,
                    draft_size=self._draft_size(),
                    apply_exif=self.descriptor.exif,
                )
                return self.embed_image(image)
            finally:
                del image  # the decoded pixels go before their memory is handed back
                release_free_memory()
                self._upload_turn.release()
        finally:
            self._upload_line.release()

    # -- decoding (runs in the pool)
    def _draft_size(self) -> tuple[int, int] | None:
        if not self.descriptor.draft:
            return None
        side = 2 * max(self.sizes)  # 2x margin: the antialiased resize still has pixels to average
        return side, side

    def _decode_file(
        self, path: str | os.PathLike, stop: threading.Event | None = None
    ) -> list[np.ndarray] | ImageError:
        from simd.imaging import open_image

        name = os.fspath(path)
        try:
            image = open_image(
                path,
                name=name,
                max_pixels=self.max_pixels,
                draft_size=self._draft_size(),
                apply_exif=self.descriptor.exif,
                budget=Budget(DECODE_SECONDS, stop, "decoding"),
            )
            return self._prepare(image)
        except ImageError as e:
            return e
        except (OSError, ValueError, MemoryError) as e:  # resize of a pathological image; not fatal
            return ImageError(name, f"cannot prepare image ({type(e).__name__}: {e})")

    def _prepare(self, image: Image.Image) -> list[np.ndarray]:
        """The uint8 (S, S, 3) network inputs of the descriptor's views (``descriptors.views``)."""
        return views(image, self.descriptor, self.sizes, self.backbone.input_size)

    # -- network
    @contextlib.contextmanager
    def _network_turn(self, first: bool):
        """Hold the network for one call; `first` (an upload) goes before any batch that waits."""
        with self._turns:
            self._uploads_waiting += first
            try:
                while self._network_busy or (not first and self._uploads_waiting):
                    self._turns.wait()
            finally:
                self._uploads_waiting -= first
            self._network_busy = True
        try:
            yield
        finally:
            with self._turns:
                self._network_busy = False
                self._turns.notify_all()

    def _embed_arrays(self, prepared: list[list[np.ndarray]], *, first: bool = False) -> list[np.ndarray]:
        n = len(prepared)
        total = np.zeros((n, self.dim), dtype=np.float32)
        with self._network_turn(first):
            for s, weight in enumerate(self._weights):
                # one call per input size: a small image's views may be smaller (`small_side`)
                for size in sorted({p[s].shape[0] for p in prepared}):
                    rows = [i for i, p in enumerate(prepared) if p[s].shape[0] == size]
                    out = self._run(size, np.stack([prepared[i][s] for i in rows]))
                    total[rows] += weight * head(out, self.descriptor, self.backbone.dim)
            self.images_embedded += n
        return list(l2(total))

    def _run(self, size: int, batch: np.ndarray) -> np.ndarray:
        """Pooled features (n, C) of a uint8 batch, padded to a bucket size (TensorFlow never
        retraces; ONNX Runtime reuses its plans for a few shapes)."""
        n = batch.shape[0]
        out = []
        for start in range(0, n, self.batch_size):
            part = batch[start : start + self.batch_size]
            m = part.shape[0]
            bucket = next(b for b in self.buckets if b >= m)
            if bucket > m:
                part = np.concatenate([part, np.zeros((bucket - m, *part.shape[1:]), np.uint8)])
            out.append(self.network.run(size, part)[:m])
        return np.concatenate(out)


def _batches(n: int, batch_size: int) -> list[range]:
    """Index ranges of the network calls for `n` files: batches of `batch_size`, but the first
    power-of-two number of files (at least 8, at most a batch) is split 1/4, 1/4, 1/2 (8, 8, 16 of
    32), all bucket sizes (no padding), so the network starts once a few files are decoded instead
    of a whole batch: on two cores that wait was ~1 s per call of `embed_files` for 12 MP photos."""
    first = 1 << (min(n, batch_size).bit_length() - 1) if n else 0
    sizes = [first // 4, first // 4, first // 2] if first >= 8 and batch_size & (batch_size - 1) == 0 else []
    out, start = [], 0
    while start < n:
        size = sizes.pop(0) if sizes else batch_size
        out.append(range(start, min(start + size, n)))
        start += size
    return out
