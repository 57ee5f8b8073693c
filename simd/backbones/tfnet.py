"""The embedding network on TensorFlow: preprocessing, the backbone, pooling and (when the
descriptor asks for it) the ImageNet logit projection, as one tf.function per input size.

This is the reference the ONNX Runtime network (``simd.backbones.onnx``) is converted from and
compared with; ``runtime = "tensorflow"`` runs it directly.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from simd.backbones.tfruntime import import_tf

NAME = "tensorflow"


class TFNetwork:
    """``run(size, batch)``: uint8 (n, size, size, 3) -> float32 (n, dim) pooled (or logit) features.

    ``backbone``: a loaded ``simd.backbones.Backbone``; ``descriptor``: a ``simd.embedder.Descriptor``
    (its preprocess, flip, pooling, gem_p, logits and gap_weight shape the graph). One tf.function per size,
    traced once per batch shape (the embedder pads batches to a few bucket sizes).
    """

    runtime = NAME

    def __init__(self, backbone: Any, descriptor: Any):
        self.backbone = backbone
        self.descriptor = descriptor
        classifier = getattr(backbone, "classifier", None) if descriptor.logits else None
        self.classifier = (
            None
            if classifier is None
            else (np.asarray(classifier[0], np.float32).T, np.asarray(classifier[1], np.float32))
        )
        self._functions: dict[int, Any] = {}

    def describe(self) -> str:
        tf = import_tf()
        return f"{NAME} {tf.__version__}"

    def run(self, size: int, batch: np.ndarray) -> np.ndarray:
        return np.asarray(self.function(size)(batch).numpy(), dtype=np.float32)

    def function(self, size: int) -> Any:
        """The tf.function for input ``size`` (uint8 (None, size, size, 3) in, float32 (None, dim) out)."""
        if size in self._functions:
            return self._functions[size]
        tf = import_tf()
        d, backbone, classifier = self.descriptor, self.backbone, self.classifier

        def pooled_features(x):
            x = backbone.preprocess(tf.cast(x, tf.float32), d.preprocess)
            if d.flip:
                x = tf.concat([x, tf.reverse(x, axis=[2])], axis=0)
            f = backbone.feature_model(x, training=False)
            if d.pooling == "gem":
                p = float(d.gem_p)
                v = tf.reduce_mean(tf.pow(tf.maximum(f, 1e-6), p), axis=[1, 2]) ** (1.0 / p)
            else:
                v = tf.reduce_mean(f, axis=[1, 2])
            if d.flip:
                a, b = tf.split(v, 2, axis=0)
                v = (a + b) / 2.0
            if classifier is not None:
                logits = tf.matmul(v, classifier[0]) + classifier[1]
                # gap_weight: both, side by side; the embedder normalises and weights each part
                v = tf.concat([v, logits], axis=1) if getattr(d, "gap_weight", 0.0) else logits
            return v

        fn = tf.function(
            pooled_features, reduce_retracing=True, input_signature=[tf.TensorSpec([None, size, size, 3], tf.uint8)]
        )
        self._functions[size] = fn
        return fn
