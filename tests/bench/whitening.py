"""PCA-whitening learned from the library itself (a tuning experiment; not in the product).

Measured with tune_descriptor.py it lowered category precision@10 on the public kit at every
setting tried (docs/QUALITY.md), so simd does not apply it. Were it to, it would be fitted on the
stored descriptors and applied where the in-RAM index is built (to the matrix before
`VectorIndex.replace_all`, and to each query before `search`), never re-embedding.
Whitening down-weights the directions in which all of the
library's photos vary together (the "generic photo" component), which makes cosine similarity
more about what a picture shows.

Full whitening on a small library overfits badly (with n <= dim, whitened training points become
nearly equidistant), so eigenvalues are shrunk: each component is divided by
(eigenvalue + shrink * mean eigenvalue) ** (power / 2).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

MIN_SAMPLES = 64  # below this a learned transform is noise; search uses the raw descriptor


@dataclass(frozen=True)
class WhiteningParams:
    power: float = 0.5
    shrink: float = 1.0
    max_components: int = 512


def fit_whitening(
    matrix: np.ndarray, params: WhiteningParams | None = None
) -> Callable[[np.ndarray], np.ndarray] | None:
    """A function mapping (n, d) or (d,) L2-normalised vectors to whitened L2-normalised vectors.

    None when the library is too small to learn from.
    """
    from sklearn.decomposition import PCA

    p = params or WhiteningParams()
    x = np.asarray(matrix, dtype=np.float32)
    n, d = x.shape if x.ndim == 2 else (0, 0)
    if n < MIN_SAMPLES:
        return None
    components = int(min(d, n - 1, p.max_components))
    pca = PCA(n_components=components, svd_solver="randomized" if components < d // 2 else "full", random_state=0)
    pca.fit(x)
    eig = pca.explained_variance_.astype(np.float64)
    scale = (eig + p.shrink * eig.mean()) ** (-p.power / 2.0)
    projection = (pca.components_.T * scale).astype(np.float32)  # (d, components)
    mean = pca.mean_.astype(np.float32)

    def transform(v: np.ndarray) -> np.ndarray:
        v = np.asarray(v, dtype=np.float32)
        single = v.ndim == 1
        y = (np.atleast_2d(v) - mean) @ projection
        y /= np.maximum(np.linalg.norm(y, axis=1, keepdims=True), 1e-12)
        return y[0] if single else y

    transform.components = components  # type: ignore[attr-defined]
    return transform
