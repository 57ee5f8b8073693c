"""The progress bar `simd index` draws on a terminal while it embeds (tqdm, imported on first use)."""

from __future__ import annotations

import sys
from typing import Any


class ProgressBar:
    """Shows the "indexing" phase of a reconcile (`Reconciler(on_progress=bar.update)`); silent when
    stderr is not a terminal."""

    def __init__(self, enabled: bool | None = None):
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.bar: Any = None

    def update(self, phase: str, done: int, total: int) -> None:
        if not self.enabled or phase != "indexing" or not total:
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="img", desc="indexing", file=sys.stderr)
        self.bar.n = done
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
