"""What the daemon is doing now: its phase and progress, written by the daemon's threads and read
by requests (`GET /api/status`). Status fields only; the search service holds the index and model."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

PHASES = ("starting", "scanning", "indexing", "idle", "offline", "retrying")  # `state` in /api/status


@dataclass
class Runtime:
    """`pending` in the status is the files waiting: the current run's planned work not yet done
    (`pending`) plus the paths handed to the indexer that no run has taken yet (`queued`)."""

    phase: str = "starting"
    pending: int = 0
    model: str | None = None
    dim: int | None = None
    progress: dict | None = None  # the current reconcile: {"phase", "done", "total", "started_at"}
    last_error: str | None = None
    queued: int = 0
    duplicates: dict | None = None  # the build of the pairs of copies: {"state", "done", "total"}
    verification: dict | None = None  # the pixels' verdicts on pairs of copies (`dupverifier`)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def update(self, **changes) -> None:
        if "phase" in changes and changes["phase"] not in PHASES:
            raise ValueError(f"unknown phase {changes['phase']!r}")
        with self._lock:
            for key, value in changes.items():
                if not hasattr(self, key) or key.startswith("_"):
                    raise AttributeError(key)
                setattr(self, key, value)

    def add_pending(self, n: int) -> None:
        """Paths queued (n > 0) or taken by a run (n < 0)."""
        with self._lock:  # the watcher thread adds while the indexer thread takes
            self.queued = max(self.queued + n, 0)

    def snapshot(self) -> dict:
        with self._lock:
            return {
                "phase": self.phase,
                "pending": self.pending + self.queued,
                "model": self.model,
                "dim": self.dim,
                "progress": dict(self.progress) if self.progress else None,
                "last_error": self.last_error,
            }
