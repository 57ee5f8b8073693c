"""Run a real `simd serve` subprocess for end-to-end tests, and talk to it over HTTP."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Served:
    def __init__(
        self,
        library: Path,
        state_dir: Path,
        *,
        model: str = "efficientnet-lite0",
        settle: float = 0.5,
        extra_env: dict | None = None,
        args: tuple = (),
    ):
        self.library, self.state_dir, self.port = Path(library), Path(state_dir), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {
            **os.environ,
            "SIMD_WEIGHTS_DOWNLOAD": "0",
            "TF_CPP_MIN_LOG_LEVEL": "3",
            "SIMD_SETTLE_SECONDS": str(settle),
            **(extra_env or {}),
        }
        self.log_path = self.state_dir.parent / f"serve-{self.port}.log"
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "simd",
                "serve",
                str(library),
                "--state-dir",
                str(state_dir),
                "--port",
                str(self.port),
                "--model",
                model,
                *args,
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=env,
        )

    def get(self, path: str, timeout: float = 10):
        with urllib.request.urlopen(self.url + path, timeout=timeout) as r:
            return json.load(r)

    def wait_until(self, predicate, timeout: float = 120, what: str = "condition"):
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"simd serve exited with {self.proc.returncode}:\n{self.output()}")
            try:
                last = predicate()
                if last:
                    return last
            except (urllib.error.URLError, ConnectionError, OSError, ValueError):
                pass
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {what}; last: {last}\n{self.output()[-3000:]}")

    def wait_idle(self, indexed: int | None = None, timeout: float = 180) -> dict:
        def ready():
            st = self.get("/api/status")
            ok = st["state"] == "idle" and st["pending"] == 0 and (indexed is None or st["indexed"] == indexed)
            return st if ok else None

        return self.wait_until(ready, timeout, f"idle with {indexed} indexed")

    def paths(self) -> set[str]:
        return {img["path"] for img in self.get("/api/images?limit=500")["images"] if img.get("state", "ok") == "ok"}

    def output(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self, sig=signal.SIGTERM, timeout: float = 15) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"simd serve did not stop within {timeout} s") from None
        self.log.close()
        return self.proc.returncode
