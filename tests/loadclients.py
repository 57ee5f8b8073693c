"""Load for a running `simd serve`: client threads that query it the way the page and scripts do,
a sampler of the daemon's memory, descriptors and threads, and the photos written into its library
(for tests/test_burst_clients.py and the burst and churn benchmarks in tests/bench/).

Each `Clients` thread loops (a think time of 0-`think` s between requests) over a mix of
`GET /api/similar?id=` and `?path=` of images it has seen listed, `GET /api/status`,
`GET /api/images?q=&offset=&limit=`, a thumbnail, and, on the first `uploaders` threads now and
then, a multipart upload of a real photo (`POST /api/similar`). Every answer is recorded with its
endpoint, HTTP status and latency; a request that gets no HTTP answer (refused, reset, timed out) is
recorded with status 0. Which statuses are expected is the caller's to say (`Clients.tally`).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

# -- photos ---------------------------------------------------------------------------------------

_SOURCES = (
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "hubble_deep_field",
    "immunohistochemistry",
    "camera",
    "coins",
    "cat",
    "retina",
    "motorcycle_left",
    "page",
)
_sources_cache: list[np.ndarray] = []


def _sources() -> list[np.ndarray]:
    if not _sources_cache:
        from skimage import data

        for name in _SOURCES:
            fn = getattr(data, name, None)
            if fn is None:
                continue
            try:
                arr = fn()
            except Exception:  # a sample that needs a download (pooch) is left out
                continue
            if isinstance(arr, tuple):
                arr = arr[0]
            _sources_cache.append(np.asarray(Image.fromarray(np.asarray(arr)).convert("RGB")))
    return _sources_cache


def sample_jpegs(count: int, seed: int, sizes=((320, 240), (800, 600))) -> list[bytes]:
    """`count` distinct JPEGs from 320x240 to 800x600 (4:3, either way up): random crops of
    scikit-image's sample photos, some mirrored, some darker or brighter, JPEG quality 75-95.
    Deterministic for a seed; no two have the same bytes."""
    (w0, _), (w1, _) = sizes
    sources = _sources()
    rng = np.random.default_rng(seed)
    out: list[bytes] = []
    digests: set[bytes] = set()
    while len(out) < count:
        src = sources[int(rng.integers(len(sources)))]
        h, w = src.shape[:2]
        cw = int(rng.integers(min(w, h * 4 // 3) // 3, min(w, h * 4 // 3) + 1))
        ch = cw * 3 // 4
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        tw = int(rng.integers(w0, w1 + 1)) // 8 * 8
        size = (tw, tw * 3 // 4)
        img = Image.fromarray(src[y : y + ch, x : x + cw]).resize(size, Image.Resampling.BILINEAR)
        if rng.random() < 0.5:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if rng.random() < 0.2:
            img = img.transpose(Image.Transpose.ROTATE_90)  # portrait
        if rng.random() < 0.3:
            gain = float(rng.uniform(0.7, 1.3))
            img = Image.fromarray(np.clip(np.asarray(img, np.float32) * gain, 0, 255).astype(np.uint8))
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=int(rng.integers(75, 96)))
        blob = buf.getvalue()
        digest = hashlib.blake2b(blob, digest_size=16).digest()
        if digest not in digests:  # identical bytes would be reused, not embedded
            digests.add(digest)
            out.append(blob)
    return out


def write_file(path: Path, blob: bytes) -> None:
    """Write like a program saving a photo: create, write, close."""
    with open(path, "wb") as f:
        f.write(blob)


# -- the daemon's resources -----------------------------------------------------------------------


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM (kB) and Threads from /proc/<pid>/status; {} once the process is gone."""
    out = {}
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return out
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "Threads"):
            out[key] = int(value.split()[0])
    return out


def open_fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


@dataclass
class Sample:
    t: float  # seconds since the sampler started
    rss_mb: float
    fds: int
    threads: int
    wal_mb: float


class Sampler:
    """Samples a process's RSS, open descriptors, threads and the index's WAL size every `interval` s."""

    def __init__(self, pid: int, wal: Path, interval: float = 1.0):
        self.pid, self.wal, self.interval = pid, Path(wal), interval
        self.samples: list[Sample] = []
        self.hwm_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)
        self.t0 = time.monotonic()

    def sample(self) -> Sample | None:
        st = proc_status(self.pid)
        if not st:
            return None
        try:
            wal = self.wal.stat().st_size
        except OSError:
            wal = 0
        s = Sample(time.monotonic() - self.t0, st["VmRSS"] / 1024, open_fds(self.pid), st["Threads"], wal / 2**20)
        self.samples.append(s)
        self.hwm_mb = max(self.hwm_mb, st.get("VmHWM", 0) / 1024)
        return s

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def start(self) -> Sampler:
        self.sample()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def peak(self, attr: str) -> float:
        return max((getattr(s, attr) for s in self.samples), default=float("nan"))


# -- clients --------------------------------------------------------------------------------------


@dataclass
class Answer:
    endpoint: str
    status: int  # 0: no HTTP answer (connection refused or reset, timeout)
    seconds: float
    at: float  # monotonic time of the answer
    client: int
    detail: str = ""
    code: str = ""  # the JSON error's code of a 5xx (e.g. "busy")

    @property
    def label(self) -> int | str:
        """The status, with the error's code for a 5xx: 503 "busy" (an upload told to come back
        after Retry-After) is simd's designed answer to load, unlike any other 5xx."""
        return f"{self.status} {self.code}" if self.status >= 500 and self.code else self.status


@dataclass
class Pool:
    """What the clients know: images seen listed (id, path), and paths written but maybe not indexed."""

    images: list[tuple[int, str]] = field(default_factory=list)
    written: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add_images(self, items) -> None:
        with self.lock:
            known = {i for i, _ in self.images} if len(self.images) < 50_000 else set()
            for item in items:
                if item.get("state", "ok") == "ok" and item["id"] not in known:
                    self.images.append((item["id"], item["path"]))
                    known.add(item["id"])

    def add_written(self, rel: str) -> None:
        with self.lock:
            self.written.append(rel)

    def pick(self, rng: random.Random, written: bool = False) -> tuple[int, str] | str | None:
        with self.lock:
            seq = self.written if written else self.images
            return rng.choice(seq) if seq else None


def _multipart(name: str, blob: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'
        "Content-Type: image/jpeg\r\n\r\n"
    ).encode()
    return head + blob + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


# endpoint: weight (uploads are separate: `upload_every`)
MIX = {"similar_id": 30, "similar_path": 20, "status": 15, "images": 20, "thumb": 15}
QUERIES = ("", "", "IMG", "roll", "burst_0", "jpg", "b0", "01", "cat", "2026")


class Clients:
    """`n` threads querying `url` until stop(). `pool` is shared with the writer of the library (it
    adds written paths) and filled from the listings the clients get. `uploads` are the photos the
    first `uploaders` threads upload, one every ~`upload_every` of their requests."""

    def __init__(
        self,
        url: str,
        n: int,
        pool: Pool,
        uploads: list[bytes],
        *,
        uploaders: int = 4,
        upload_every: int = 25,
        think: float = 0.05,
        timeout: float = 120.0,
        seed: int = 0,
    ):
        self.url, self.n, self.pool, self.uploads = url, n, pool, uploads
        self.uploaders, self.upload_every, self.think, self.timeout = uploaders, upload_every, think, timeout
        self.answers: list[Answer] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(i, random.Random(seed * 1000 + i)), name=f"client-{i}")
            for i in range(n)
        ]
        self.started = self.stopped = 0.0

    # one request
    def _request(
        self, client: int, endpoint: str, path: str, body: bytes | None = None, ctype: str = ""
    ) -> dict | None:
        req = urllib.request.Request(self.url + path, data=body, method="POST" if body is not None else "GET")
        if ctype:
            req.add_header("Content-Type", ctype)
        t0 = time.perf_counter()
        status, detail, code, payload = 0, "", "", None
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as r:
                data = r.read()
                status = r.status
                if r.headers.get_content_type() == "application/json":
                    payload = json.loads(data)
        except urllib.error.HTTPError as e:
            status = e.code
            try:
                detail = e.read()[:300].decode("utf-8", "replace")
            except OSError:
                detail = ""
            e.close()
            try:
                code = str(json.loads(detail)["error"]["code"])
            except (ValueError, KeyError, TypeError):
                code = ""
        except (urllib.error.URLError, OSError, ValueError) as e:
            status, detail = 0, f"{type(e).__name__}: {e}"
        now = time.perf_counter()
        answer = Answer(endpoint, status, now - t0, time.monotonic(), client, detail, code)
        with self._lock:
            self.answers.append(answer)
        return payload

    def _one(self, i: int, rng: random.Random, count: int) -> None:
        if i < self.uploaders and self.uploads and count % self.upload_every == self.upload_every - 1:
            blob = rng.choice(self.uploads)
            body, ctype = _multipart(f"query_{count}.jpg", blob)
            self._request(i, "upload", "/api/similar?k=10", body, ctype)
            return
        endpoint = rng.choices(list(MIX), weights=list(MIX.values()))[0]
        picked = self.pool.pick(rng)
        if endpoint == "status" or (picked is None and endpoint != "images"):
            self._request(i, "status", "/api/status")
            return
        if endpoint == "images":
            q = urllib.parse.quote(rng.choice(QUERIES))
            total = max(len(self.pool.images), 1)
            offset = rng.randrange(0, total) if rng.random() < 0.7 else 0
            limit = rng.choice((20, 50, 100, 200))
            out = self._request(i, "images", f"/api/images?q={q}&offset={offset}&limit={limit}")
            if out:
                self.pool.add_images(out.get("images", []))
            return
        iid, rel = picked  # type: ignore[misc]
        if endpoint == "similar_id":
            out = self._request(i, "similar_id", f"/api/similar?id={iid}&k={rng.choice((5, 10, 30))}")
        elif endpoint == "similar_path":
            pending = rng.random() < 0.25 and self.pool.written
            if pending:  # a file written into the library: indexed yet or not (404)
                rel = self.pool.pick(rng, written=True)  # type: ignore[assignment]
            name = "similar_pending" if pending else "similar_path"
            out = self._request(i, name, f"/api/similar?path={urllib.parse.quote(rel)}&k=10")
        else:
            self._request(i, "thumb", f"/api/images/{iid}/thumb")
            return
        if out:
            self.pool.add_images(out.get("results", []))

    def _run(self, i: int, rng: random.Random) -> None:
        count = 0
        while not self._stop.is_set():
            self._one(i, rng, count)
            count += 1
            if self.think:
                self._stop.wait(rng.uniform(0, self.think))

    def start(self) -> Clients:
        self.started = time.monotonic()
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join()
        self.stopped = time.monotonic()

    # results
    def tally(self, expected: dict[str, set] | None = None) -> dict[str, dict]:
        """Per endpoint: count, statuses (`Answer.label`), p50/p95/p99/max latency (s) of the HTTP
        answers; `unexpected`: answers that are not 2xx/304 and whose label is not in
        `expected[endpoint]` (no answer included); `server_errors`: 5xx not expected; `busy`: 503 busy."""
        expected = expected or {}
        by: dict[str, list[Answer]] = defaultdict(list)
        for a in self.answers:
            by[a.endpoint].append(a)
        out = {}
        for endpoint, answers in sorted(by.items()):
            lat = np.array([a.seconds for a in answers if a.status], dtype=np.float64)
            statuses: dict[int | str, int] = defaultdict(int)
            for a in answers:
                statuses[a.label] += 1
            allowed = expected.get(endpoint, set())
            good = [a for a in answers if 200 <= a.status < 300 or a.status == 304 or a.label in allowed]
            out[endpoint] = {
                "count": len(answers),
                "statuses": dict(sorted(statuses.items(), key=lambda kv: str(kv[0]))),
                "unexpected": len(answers) - len(good),
                "server_errors": sum(1 for a in answers if a.status >= 500 and a.label not in allowed),
                "busy": sum(1 for a in answers if a.status == 503 and a.code == "busy"),
                "no_answer": sum(1 for a in answers if a.status == 0),
                "p50": float(np.percentile(lat, 50)) if lat.size else float("nan"),
                "p95": float(np.percentile(lat, 95)) if lat.size else float("nan"),
                "p99": float(np.percentile(lat, 99)) if lat.size else float("nan"),
                "max": float(lat.max()) if lat.size else float("nan"),
            }
        return out

    def per_client(self) -> dict[int, dict]:
        """Per thread: answers received (any HTTP status), and the longest wait between two answers
        (from the start to the first, between answers, from the last to the stop)."""
        out = {}
        for i in range(self.n):
            times = sorted(a.at for a in self.answers if a.client == i and a.status)
            edges = [self.started, *times, self.stopped]
            gaps = [b - a for a, b in zip(edges[:-1], edges[1:], strict=True)]
            out[i] = {"answers": len(times), "longest_gap": max(gaps)}
        return out

    def samples_of_problems(self, expected: dict[str, set] | None = None, limit: int = 10) -> list[str]:
        expected = expected or {}
        bad = [
            a
            for a in self.answers
            if not (200 <= a.status < 300 or a.status == 304) and a.label not in expected.get(a.endpoint, set())
        ]
        return [f"{a.endpoint} -> {a.status or 'no answer'} after {a.seconds:.2f} s: {a.detail}" for a in bad[:limit]]


def table(tally: dict[str, dict]) -> list[str]:
    """A markdown table of a `Clients.tally`."""
    lines = [
        "| endpoint | requests | statuses | unexpected | p50 ms | p95 ms | p99 ms | max ms |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for endpoint, t in tally.items():
        statuses = ", ".join(f"{s or 'none'}: {n}" for s, n in t["statuses"].items())
        lines.append(
            f"| {endpoint} | {t['count']} | {statuses} | {t['unexpected']} | {t['p50'] * 1000:.0f} "
            f"| {t['p95'] * 1000:.0f} | {t['p99'] * 1000:.0f} | {t['max'] * 1000:.0f} |"
        )
    return lines
