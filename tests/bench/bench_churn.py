"""A long run of library churn with queries: does the daemon keep its memory, descriptors and threads,
and is its index, at the end, the one a fresh index of the library makes?

Plain script (tests/bench is not collected by pytest):

    .venv/bin/python tests/bench/bench_churn.py                  # the hour (--minutes 60)
    .venv/bin/python tests/bench/bench_churn.py --minutes 10 --write
    .venv/bin/python tests/bench/bench_churn.py --minutes 3      # a quick look

A real `simd serve` (tests/serving.py `Served`, `--model efficientnet-lite0`, settle 0.5 s) on a
library of `--files` photos in 10 folders. For `--minutes`, a churn loop does one thing every
0.2-1.2 s: creates 1-10 photos (sometimes in a new folder), rewrites 1-4 with other pixels, renames
or moves a photo to another folder, renames a folder or moves it into another, deletes 1-8 photos,
or now and then deletes a small folder; the library stays between `--min-files` and `--max-files`.
Meanwhile `--clients` threads (tests/loadclients.py) query it (similar by id and path, status,
listings, thumbnails, an upload now and then; 404 is expected for an image deleted or moved since
it was listed). Every `--sample` s the daemon's RSS, open descriptors, threads and WAL size are
recorded.

At the end the churn stops, the daemon must become idle with every file indexed; its index is
checked against the disk (tests/storecheck.py), the daemon is stopped (SIGTERM, exit 0), and a
fresh `simd index` of the same library into a new state dir must give the same paths, the same
content hashes and the same vectors (cosine >= 0.9999 for every path).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path

import numpy as np
from bench_freshness import machine
from benchutil import write_section

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.images import make_phone_photo  # noqa: E402
from tests.loadclients import Clients, Pool, Sampler, sample_jpegs, table, write_file  # noqa: E402
from tests.serving import Served  # noqa: E402
from tests.storecheck import consistency_problems, cosine_mismatches, library_files, read_rows  # noqa: E402

HEADING = "## Churn over time"
# Under churn an image listed a moment ago may be gone or moved (404), or be rewritten right now
# (a thumbnail of a half-written file: 415 until it is whole).
EXPECTED = {
    "similar_id": {404},
    "similar_path": {404},
    "similar_pending": {404},
    "thumb": {404, 415},
}
SIZES = ((320, 240), (640, 480))


class Churn:
    """Changes the library on its own thread until stop(); counts what it did."""

    def __init__(self, lib: Path, pool: Pool, args, seed: int):
        self.lib, self.pool, self.args = lib, pool, args
        self.rng = random.Random(seed)
        self.ops: dict[str, int] = {}
        self.files_touched = 0
        self._n = 0
        self._blob_seed = 10_000
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="churn")
        self.error: BaseException | None = None

    def _blobs(self, n: int) -> list[bytes]:
        self._blob_seed += 1
        return sample_jpegs(n, seed=self._blob_seed, sizes=SIZES)

    def _name(self) -> str:
        self._n += 1
        return f"IMG_{self._n:06d}.jpg"

    def _folders(self) -> list[Path]:
        return sorted(p for p in self.lib.rglob("*") if p.is_dir())

    def _files(self) -> list[Path]:
        return sorted(p for p in self.lib.rglob("*.jpg") if p.is_file())

    def _did(self, op: str, files: int) -> None:
        self.ops[op] = self.ops.get(op, 0) + 1
        self.files_touched += files

    def create(self, files: list[Path]) -> None:
        folders = self._folders()
        if not folders or self.rng.random() < 0.1:
            parent = self.rng.choice([self.lib, *folders]) if folders and self.rng.random() < 0.3 else self.lib
            folder = parent / f"new{self._n:06d}"
            folder.mkdir()
        else:
            folder = self.rng.choice(folders)
        blobs = self._blobs(self.rng.randint(1, 10))
        for blob in blobs:
            name = self._name()
            write_file(folder / name, blob)
            self.pool.add_written((folder / name).relative_to(self.lib).as_posix())
        self._did("create", len(blobs))

    def modify(self, files: list[Path]) -> None:
        chosen = self.rng.sample(files, min(len(files), self.rng.randint(1, 4)))
        for path, blob in zip(chosen, self._blobs(len(chosen)), strict=True):
            write_file(path, blob)  # truncated and rewritten in place: other pixels, other size
        self._did("modify", len(chosen))

    def rename(self, files: list[Path]) -> None:
        src = self.rng.choice(files)
        folder = self.rng.choice(self._folders()) if self.rng.random() < 0.5 else src.parent
        dest = folder / self._name()
        os.rename(src, dest)
        self.pool.add_written(dest.relative_to(self.lib).as_posix())
        self._did("rename", 1)

    def move_folder(self, files: list[Path]) -> None:
        folders = [f for f in self._folders() if len(f.relative_to(self.lib).parts) <= 2]
        if not folders:
            return
        src = self.rng.choice(folders)
        targets = [f for f in folders if len(f.relative_to(self.lib).parts) == 1 and src not in (f, *f.parents)]
        targets = [t for t in targets if src not in t.parents]
        parent = self.rng.choice(targets) if targets and self.rng.random() < 0.4 else self.lib
        if len(src.relative_to(self.lib).parts) + (0 if parent == self.lib else 1) > 2 or parent in src.parents:
            parent = self.lib
        dest = parent / f"moved{self._n:06d}"
        self._n += 1
        moved = sum(1 for _ in src.rglob("*.jpg"))
        os.rename(src, dest)
        self._did("move_folder", moved)

    def delete(self, files: list[Path]) -> None:
        chosen = self.rng.sample(files, min(len(files), self.rng.randint(1, 8)))
        for path in chosen:
            path.unlink()
        self._did("delete", len(chosen))

    def delete_folder(self, files: list[Path]) -> None:
        small = [(f, sum(1 for _ in f.rglob("*.jpg"))) for f in self._folders()]
        small = [(f, n) for f, n in small if n <= 40 and len(files) - n >= self.args.min_files]
        if not small:
            return self.delete(files)
        folder, n = self.rng.choice(small)
        shutil.rmtree(folder)
        self._did("delete_folder", n)

    def step(self) -> None:
        files = self._files()
        if len(files) < self.args.min_files:
            op = self.create
        elif len(files) > self.args.max_files:
            op = self.delete
        else:
            op = self.rng.choices(
                [self.create, self.modify, self.rename, self.move_folder, self.delete, self.delete_folder],
                weights=[30, 20, 15, 5, 25, 3],
            )[0]
        op(files)

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self.step()
                self._stop.wait(self.rng.uniform(0.2, 1.2))
        except BaseException as e:  # reported at the end: the churn itself must not fail silently
            self.error = e
            raise

    def start(self) -> Churn:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def windows(samples, duration: float, window: float):
    first = [s for s in samples if s.t <= window]
    last = [s for s in samples if s.t >= duration - window]
    return first, last


def fresh_index(lib: Path, state: Path, log: Path) -> tuple[int, float]:
    env = {**os.environ, "SIMD_WEIGHTS_DOWNLOAD": "0", "TF_CPP_MIN_LOG_LEVEL": "3"}
    t = time.monotonic()
    with open(log, "w") as out:
        proc = subprocess.run(
            [sys.executable, "-m", "simd", "index", str(lib), "--state-dir", str(state)]
            + ["--model", "efficientnet-lite0", "--json"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    return proc.returncode, time.monotonic() - t


def run(args) -> dict:
    with tempfile.TemporaryDirectory(prefix="simd-bench-churn-") as tmp:
        tmp = Path(tmp)
        lib, state = tmp / "library", tmp / "state"
        blobs = sample_jpegs(args.files - 1, seed=args.seed, sizes=SIZES)
        for i, blob in enumerate(blobs):
            (lib / f"roll{i % 10:02d}").mkdir(parents=True, exist_ok=True)
            write_file(lib / f"roll{i % 10:02d}" / f"IMG_{i:06d}.jpg", blob)
        make_phone_photo(lib / "camera" / "PXL_20260601_120000.jpg", seed=1)
        uploads = [blobs[0], blobs[1], (lib / "camera" / "PXL_20260601_120000.jpg").read_bytes()]
        served = Served(lib, state, settle=0.5)
        try:
            served.wait_idle(indexed=args.files, timeout=900)
            print(f"daemon idle with {args.files} photos", file=sys.stderr)
            sampler = Sampler(served.proc.pid, state / "index.db-wal", interval=args.sample).start()
            pool = Pool()
            pool.add_images(served.get("/api/images?limit=500")["images"])
            clients = Clients(
                served.url, args.clients, pool, uploads, uploaders=1, upload_every=40, think=0.2, seed=9
            ).start()
            churn = Churn(lib, pool, args, seed=args.seed).start()
            t0 = time.monotonic()
            end = t0 + args.minutes * 60
            try:
                next_print = t0
                while time.monotonic() < end:
                    if served.proc.poll() is not None:
                        raise AssertionError(f"simd serve exited with {served.proc.returncode}")
                    if churn.error is not None:
                        raise churn.error
                    if time.monotonic() >= next_print:
                        s = sampler.samples[-1]
                        print(
                            f"  {(time.monotonic() - t0) / 60:.1f} min: RSS {s.rss_mb:.0f} MB, fds {s.fds}, "
                            f"threads {s.threads}, WAL {s.wal_mb:.1f} MB; {sum(churn.ops.values())} changes, "
                            f"{len(clients.answers)} answers",
                            file=sys.stderr,
                        )
                        next_print += 60
                    time.sleep(1)
            finally:
                churn.stop()
            churn_seconds = time.monotonic() - t0
            t_stop = time.monotonic()
            files = library_files(lib)
            try:
                served.wait_idle(indexed=len(files), timeout=600)
            finally:
                clients.stop()
                sampler.stop()
            settle = time.monotonic() - t_stop
            status = served.get("/api/status")
            rows = read_rows(state / "index.db")
            problems = consistency_problems(rows, files, model=status["model"])
            sample = sorted(files)[:: max(1, len(files) // 50)]
            similar_ok = 0
            for rel in sample:
                out = served.get(f"/api/similar?path={urllib.parse.quote(rel)}&k=10", timeout=60)
                similar_ok += out["query"]["path"] == rel and len(out["results"]) == 10
        finally:
            code = served.stop(timeout=60)
        log = served.log_path.read_text(errors="replace")
        rows = read_rows(state / "index.db")  # after the stop: what the next start would find
        print("fresh reconcile with `simd index` ...", file=sys.stderr)
        fresh_code, fresh_seconds = fresh_index(lib, tmp / "fresh", tmp / "fresh.log")
        fresh_out = (tmp / "fresh.log").read_text(errors="replace")
        fresh = read_rows(tmp / "fresh" / "index.db")
        worst, low = cosine_mismatches(rows, fresh)
        hash_diff = [p for p in set(rows) & set(fresh) if rows[p].hash != fresh[p].hash]
        summary = None
        for line in fresh_out.splitlines():
            if line.startswith("{"):
                try:
                    summary = json.loads(line)
                except ValueError:
                    pass
    return {
        "churn_seconds": churn_seconds,
        "settle": settle,
        "ops": churn.ops,
        "files_touched": churn.files_touched,
        "files_end": len(files),
        "rows": len(rows),
        "problems": problems,
        "similar_ok": similar_ok,
        "similar_checked": len(sample),
        "tally": clients.tally(EXPECTED),
        "per_client": clients.per_client(),
        "problem_samples": clients.samples_of_problems(EXPECTED),
        "answers": clients.answers,
        "t_clients": clients.started,
        "sampler": sampler,
        "exit": code,
        "log_errors": [ln for ln in log.splitlines() if re.search(r"\bERROR\b|Traceback", ln)],
        "log_warnings": sum(1 for ln in log.splitlines() if re.search(r"\bWARNING\b", ln)),
        "fresh_code": fresh_code,
        "fresh_seconds": fresh_seconds,
        "fresh_rows": len(fresh),
        "fresh_summary": summary,
        "paths_equal": set(rows) == set(fresh),
        "only_daemon": sorted(set(rows) - set(fresh))[:10],
        "only_fresh": sorted(set(fresh) - set(rows))[:10],
        "worst_cosine": worst,
        "low_cosine": low,
        "hash_diff": hash_diff,
    }


def p95_between(answers, t_from: float, t_to: float) -> float:
    lat = [a.seconds for a in answers if a.status and t_from <= a.at < t_to]
    return float(np.percentile(lat, 95)) if lat else float("nan")


def render(info: dict, r: dict, args) -> str:
    s = r["sampler"]
    duration = r["churn_seconds"]
    window = min(600.0, duration / 4)
    first, last = windows(s.samples, duration, window)

    def stat(samples, attr):
        vals = [getattr(x, attr) for x in samples]
        fmt = ".1f" if attr == "wal_mb" else ".0f"
        return f"{np.mean(vals):{fmt}} ({max(vals):{fmt}})" if vals else "-"

    tally = r["tally"]
    requests = sum(t["count"] for t in tally.values())
    failures = sum(t["server_errors"] + t["no_answer"] for t in tally.values())
    unexpected = sum(t["unexpected"] for t in tally.values())
    t0 = r["t_clients"]
    p95_first = p95_between(r["answers"], t0, t0 + window)
    p95_last = p95_between(r["answers"], t0 + duration - window, t0 + duration)
    ops = ", ".join(f"{k} {v}" for k, v in sorted(r["ops"].items()))
    consistent = "consistent" if not r["problems"] else f"**{len(r['problems'])} problems**"
    same = r["paths_equal"] and not r["low_cosine"] and not r["hash_diff"] and r["fresh_code"] == 0 and r["rows"] > 0
    lines = [
        HEADING,
        "",
        f"Measured {time.strftime('%Y-%m-%d')} with `.venv/bin/python tests/bench/bench_churn.py "
        f"--minutes {args.minutes:g} --write` ({args.files} photos to start, kept between {args.min_files} and "
        f"{args.max_files}; {args.clients} client threads; a sample every {args.sample:g} s). "
        + (
            ""
            if args.minutes >= 60
            else f"**A {args.minutes:g}-minute run, not the hour** (`--minutes 60`, the default, runs the hour)."
        ),
        "",
        "Machine: "
        + "; ".join(f"{k}: {v}" for k, v in info.items())
        + "; load average at the end: "
        + " ".join(f"{x:.2f}" for x in os.getloadavg())
        + ".",
        "",
        f"A real `simd serve` (`--model efficientnet-lite0`, settle 0.5 s). For {duration / 60:.1f} minutes a "
        "churn loop changed the library every 0.2-1.2 s (320x240 to 640x480 JPEGs from scikit-image's photos; "
        f"one 12 MP phone photo in the library): {ops} ({r['files_touched']} files touched); "
        f"{args.clients} client threads queried it (a random 0-200 ms between requests; 404 expected for an "
        "image deleted or moved since it was listed, 415 for a thumbnail of a file being rewritten).",
        "",
        f"| | first {window / 60:.1f} min | last {window / 60:.1f} min |",
        "|---|---:|---:|",
        f"| daemon RSS, MB: mean (max) | {stat(first, 'rss_mb')} | {stat(last, 'rss_mb')} |",
        f"| open descriptors: mean (max) | {stat(first, 'fds')} | {stat(last, 'fds')} |",
        f"| threads: mean (max) | {stat(first, 'threads')} | {stat(last, 'threads')} |",
        f"| WAL, MB: mean (max) | {stat(first, 'wal_mb')} | {stat(last, 'wal_mb')} |",
        f"| request latency p95, ms (all endpoints) | {p95_first * 1000:.0f} | {p95_last * 1000:.0f} |",
        "",
        *table(tally),
        "",
        f"- **{requests} requests; {failures} failures** (5xx or no answer), {unexpected} unexpected statuses; "
        f"peak RSS {s.peak('rss_mb'):.0f} MB (VmHWM {s.hwm_mb:.0f} MB), peak descriptors {s.peak('fds'):.0f}, "
        f"peak threads {s.peak('threads'):.0f}, peak WAL {s.peak('wal_mb'):.1f} MB.",
        f"- The daemon's log: {len(r['log_errors'])} ERROR lines or tracebacks, {r['log_warnings']} warnings.",
        f"- End: idle with all {r['files_end']} files indexed {r['settle']:.1f} s after the churn stopped; index "
        f"{consistent} with the disk (paths, sizes, mtimes; no failed row; finite unit vectors); "
        f"`/api/similar?path=` answered {r['similar_ok']}/{r['similar_checked']} sampled; SIGTERM: exit {r['exit']}.",
        f"- **Fresh reconcile** (`simd index` of the same library into a new state dir, {r['fresh_seconds']:.0f} s, "
        f"exit {r['fresh_code']}): {r['fresh_rows']} rows; "
        + (
            f"the same paths and content hashes as the daemon's {r['rows']}, and every vector the same "
            f"(lowest cosine {r['worst_cosine']:.6f}, bar 0.9999)."
            if same
            else f"**differs**: paths equal {r['paths_equal']}, {len(r['low_cosine'])} vectors under 0.9999 "
            f"(lowest {r['worst_cosine']:.6f}), {len(r['hash_diff'])} hashes differ; only in the daemon's: "
            f"{r['only_daemon']}, only in the fresh one: {r['only_fresh']}."
        ),
    ]
    if r["problems"]:
        lines += ["", "Consistency problems:", "", *[f"    {p}" for p in r["problems"][:20]]]
    if r["problem_samples"]:
        lines += ["", "Unexpected answers (first 10):", "", *[f"    {p}" for p in r["problem_samples"]]]
    if r["log_errors"]:
        lines += ["", "Log errors (first 10):", "", *[f"    {p}" for p in r["log_errors"][:10]]]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=60.0, help="how long the churn runs")
    ap.add_argument("--files", type=int, default=500, help="photos in the library at the start")
    ap.add_argument("--min-files", type=int, default=300)
    ap.add_argument("--max-files", type=int, default=1000)
    ap.add_argument("--clients", type=int, default=4, help="client threads")
    ap.add_argument("--sample", type=float, default=10.0, help="seconds between samples of the daemon")
    ap.add_argument("--seed", type=int, default=23)
    ap.add_argument("--write", action="store_true", help="write the section into docs/BENCHMARKS.md")
    ap.add_argument("--out", default=str(ROOT / "docs" / "BENCHMARKS.md"))
    args = ap.parse_args(argv)
    info = machine()
    print("machine: " + "; ".join(f"{k}: {v}" for k, v in info.items()))
    r = run(args)
    section = render(info, r, args)
    print()
    print(section)
    if args.write:
        write_section(Path(args.out), HEADING, section)
        print(f"wrote {args.out}")
    bad = sum(t["server_errors"] + t["no_answer"] for t in r["tally"].values())
    same = r["paths_equal"] and not r["low_cosine"] and not r["hash_diff"] and r["fresh_code"] == 0
    return 1 if bad or r["problems"] or r["exit"] != 0 or not same else 0


if __name__ == "__main__":
    sys.exit(main())
