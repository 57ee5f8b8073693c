"""A burst of files into a running daemon while clients query it without pause.

Plain script (tests/bench is not collected by pytest):

    .venv/bin/python tests/bench/bench_burst.py --files 5000 --clients 20 --write
    .venv/bin/python tests/bench/bench_burst.py --files 500 --clients 20          # a quick look

A real `simd serve` (tests/serving.py `Served`, `--model efficientnet-lite0`, settle 0.5 s) on a
library of `--seeds` photos; once it is idle, `--clients` threads (tests/loadclients.py) query it
continuously: `/api/similar?id=` and `?path=` of images they saw listed (a quarter of the path
queries name a file just written, which may not be indexed yet: 404 is expected there),
`/api/status`, `/api/images?q=&offset=&limit=`, thumbnails, and on 4 of the threads a multipart
upload of a real photo every 25 requests. Then `--files` JPEGs are written into `--folders` folders
back to back: ~320x240 to 800x600 crops of scikit-image's photos and `--phones` 12 MP phone photos
(tests/images.py) among them.

Measured: per endpoint the requests, their HTTP statuses, p50/p95/p99/max latency; anything that is
not 2xx (or the expected 404) is counted, 5xx and requests without an answer are failures; the
daemon's RSS, open descriptors and threads every second (VmHWM at the end); the time from the
first file written to status idle with every file indexed; and then a consistency check of the index
against the disk (tests/storecheck.py: a row for each file and a file for each row, the same size and
mtime, no failed row, every vector finite and of unit norm) and `/api/similar` for a sample.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import urllib.error
import urllib.parse
from pathlib import Path

from bench_freshness import machine
from benchutil import write_section

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.images import make_phone_photo  # noqa: E402
from tests.loadclients import Clients, Pool, Sampler, sample_jpegs, table, write_file  # noqa: E402
from tests.serving import Served  # noqa: E402
from tests.storecheck import consistency_problems, library_files, read_rows  # noqa: E402

HEADING = "## Burst under load"
EXPECTED = {"similar_pending": {404}}


def run(args) -> dict:
    print(f"making {args.files + args.seeds} photos ...", file=sys.stderr)
    t = time.monotonic()
    blobs = sample_jpegs(args.seeds + args.files - args.phones, seed=args.seed)
    print(f"  {time.monotonic() - t:.0f} s", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="simd-bench-burst-") as tmp:
        tmp = Path(tmp)
        lib, state = tmp / "library", tmp / "state"
        (lib / "seed").mkdir(parents=True)
        for i, blob in enumerate(blobs[: args.seeds]):
            write_file(lib / "seed" / f"IMG_{i:04d}.jpg", blob)
        phones = []
        for i in range(args.phones):
            p = make_phone_photo(tmp / "phones" / f"PXL_2026060{i % 10}_{i:04d}.jpg", seed=i)
            phones.append((p.name, p.read_bytes()))
        uploads = [blobs[0], blobs[1], blobs[2], phones[0][1] if phones else blobs[3]]
        served = Served(lib, state, settle=0.5)
        try:
            t0 = time.monotonic()
            served.wait_idle(indexed=args.seeds, timeout=600)
            startup = time.monotonic() - t0
            print(f"daemon idle after {startup:.1f} s", file=sys.stderr)
            sampler = Sampler(served.proc.pid, state / "index.db-wal", interval=1.0).start()
            pool = Pool()
            pool.add_images(served.get("/api/images?limit=500")["images"])
            clients = Clients(served.url, args.clients, pool, uploads, uploaders=4, upload_every=25, seed=3).start()
            try:
                time.sleep(args.warm)
                burst = blobs[args.seeds :]
                total = len(burst) + len(phones)
                at_phone = {(k + 1) * total // (len(phones) + 1): k for k in range(len(phones))}
                folders = [f"burst{f:02d}" for f in range(args.folders)]
                for f in folders:
                    (lib / f).mkdir()
                t_first = time.monotonic()
                j = 0
                for i in range(total):
                    folder = folders[i * len(folders) // total]
                    if i in at_phone:
                        name, blob = phones[at_phone[i]]
                    else:
                        name, blob = f"IMG_{j:05d}.jpg", burst[j]
                        j += 1
                    write_file(lib / folder / name, blob)
                    pool.add_written(f"{folder}/{name}")
                t_written = time.monotonic()
                print(f"wrote {total} files in {t_written - t_first:.1f} s", file=sys.stderr)
                expected_count = args.seeds + total
                last = 0.0

                def done():
                    nonlocal last
                    st = served.get("/api/status", timeout=60)
                    if time.monotonic() - last > 10:
                        last = time.monotonic()
                        s = sampler.samples[-1]
                        print(
                            f"  {time.monotonic() - t_first:.0f} s: {st['state']} indexed {st['indexed']}, "
                            f"pending {st['pending']}; RSS {s.rss_mb:.0f} MB, fds {s.fds}, "
                            f"{len(clients.answers)} answers",
                            file=sys.stderr,
                        )
                    ok = st["state"] == "idle" and st["pending"] == 0 and st["indexed"] == expected_count
                    return st if ok else None

                try:
                    served.wait_until(done, args.timeout, f"{expected_count} indexed")
                    to_idle: float | None = time.monotonic() - t_first
                    print(f"all {expected_count} indexed after {to_idle:.1f} s", file=sys.stderr)
                except AssertionError:  # reported (not finished within --timeout), not raised
                    if served.proc.poll() is not None:
                        raise
                    to_idle = None
                    print(f"not all indexed within {args.timeout:.0f} s", file=sys.stderr)
                time.sleep(args.warm)
            finally:
                clients.stop()
                sampler.stop()
            status = served.get("/api/status")
            rows = read_rows(state / "index.db")
            files = library_files(lib)
            problems = consistency_problems(rows, files, model=status["model"])
            sample = sorted(files)[:: max(1, len(files) // 50)]
            similar_ok = 0
            for rel in sample:
                try:
                    out = served.get(f"/api/similar?path={urllib.parse.quote(rel)}&k=10", timeout=60)
                except urllib.error.HTTPError as e:  # 404: not indexed (a run stopped at its deadline)
                    e.close()
                    continue
                similar_ok += out["query"]["path"] == rel and len(out["results"]) == 10
        finally:
            code = served.stop(timeout=60)
    return {
        "startup": startup,
        "write_seconds": t_written - t_first,
        "to_idle": to_idle,
        "files": total,
        "expected_count": expected_count,
        "rows": len(rows),
        "disk": len(files),
        "problems": problems,
        "similar_ok": similar_ok,
        "similar_checked": len(sample),
        "tally": clients.tally(EXPECTED),
        "per_client": clients.per_client(),
        "problem_samples": clients.samples_of_problems(EXPECTED),
        "sampler": sampler,
        "duration": clients.stopped - clients.started,
        "exit": code,
        "status": status,
    }


def render(info: dict, r: dict, args) -> str:
    tally, s = r["tally"], r["sampler"]
    requests = sum(t["count"] for t in tally.values())
    failures = sum(t["server_errors"] + t["no_answer"] for t in tally.values())
    unexpected = sum(t["unexpected"] for t in tally.values())
    per = r["per_client"].values()
    rss = [x.rss_mb for x in s.samples]
    fds = [x.fds for x in s.samples]
    threads = [x.threads for x in s.samples]
    consistent = "consistent" if not r["problems"] else f"**{len(r['problems'])} problems**"
    lines = [
        HEADING,
        "",
        f"Measured {time.strftime('%Y-%m-%d')} with `.venv/bin/python tests/bench/bench_burst.py "
        f"--files {args.files} --clients {args.clients} --write` (seeds {args.seeds}, phone photos "
        f"{args.phones}, folders {args.folders}).",
        "",
        "Machine: "
        + "; ".join(f"{k}: {v}" for k, v in info.items())
        + "; load average at the end: "
        + " ".join(f"{x:.2f}" for x in os.getloadavg())
        + ".",
        "",
        f"A real `simd serve` (`--model efficientnet-lite0`, settle 0.5 s) on {args.seeds} seed photos "
        f"(startup {r['startup']:.0f} s, not counted). {args.clients} client threads query it without pause "
        "(a random 0-50 ms between requests): `/api/similar?id=`, `?path=` (a quarter of them of a file just "
        "written, where 404 is expected until it is indexed: `similar_pending`), `/api/status`, "
        "`/api/images?q=&offset=&limit=`, thumbnails, and on 4 threads a multipart upload of a real photo "
        f"(one a 12 MP phone JPEG) every 25 requests. Then {r['files']} JPEGs (12 MP phone photos: "
        f"{args.phones}; the rest 320x240 to 800x600) were written into {args.folders} folders back to back "
        f"in {r['write_seconds']:.1f} s.",
        "",
        *table(tally),
        "",
        f"- **{requests} requests in {r['duration']:.0f} s; {failures} failures** (5xx or no answer), "
        f"{unexpected} unexpected statuses. Every client got answers: {min(c['answers'] for c in per)} to "
        f"{max(c['answers'] for c in per)} per thread, the longest wait of any thread for an answer "
        f"{max(c['longest_gap'] for c in per):.1f} s.",
        (
            f"- **All {r['expected_count']} files indexed {r['to_idle']:.0f} s after the first was written** "
            f"(status idle, indexed = files): {r['files'] / r['to_idle']:.1f} files/s with the clients running."
            if r["to_idle"] is not None
            else f"- **Not all files indexed within the deadline** (`--timeout {args.timeout:g}`): "
            f"{r['status']['indexed']} of {r['expected_count']} at the end."
        ),
        f"- Daemon: RSS {rss[0]:.0f} MB before the burst, peak {max(rss):.0f} MB (VmHWM {s.hwm_mb:.0f} MB), "
        f"{rss[-1]:.0f} MB at the end; open descriptors {fds[0]} before, peak {max(fds)}, {fds[-1]} at the end; "
        f"threads {threads[0]} before, peak {max(threads)}, {threads[-1]} at the end.",
        f"- End: index {consistent} with the disk ({r['rows']} rows, {r['disk']} files: paths, sizes, mtimes; "
        f"no failed row; every vector finite, unit norm); `/api/similar?path=` answered "
        f"{r['similar_ok']}/{r['similar_checked']} sampled; the daemon stopped with exit status {r['exit']} "
        "on SIGTERM.",
    ]
    if r["problems"]:
        lines += ["", "Consistency problems:", "", *[f"    {p}" for p in r["problems"][:20]]]
    if r["problem_samples"]:
        lines += ["", "Unexpected answers (first 10):", "", *[f"    {p}" for p in r["problem_samples"]]]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=5000, help="files written in the burst")
    ap.add_argument("--clients", type=int, default=20, help="client threads")
    ap.add_argument("--seeds", type=int, default=50, help="photos in the library before the daemon starts")
    ap.add_argument("--phones", type=int, default=5, help="12 MP phone photos among the burst's files")
    ap.add_argument("--folders", type=int, default=10, help="folders the burst is written into")
    ap.add_argument("--warm", type=float, default=5.0, help="seconds of queries before the burst and after idle")
    ap.add_argument("--timeout", type=float, default=3600.0, help="deadline for indexing the burst, seconds")
    ap.add_argument("--seed", type=int, default=17)
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
    failures = sum(t["server_errors"] + t["no_answer"] for t in r["tally"].values())
    return 1 if failures or r["problems"] or r["exit"] != 0 or r["to_idle"] is None else 0


if __name__ == "__main__":
    sys.exit(main())
