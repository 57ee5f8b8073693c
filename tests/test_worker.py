"""The daemon's writer thread says what each run found, even when it found nothing to do."""

from __future__ import annotations

import logging
import shutil
import time

from images import make_photo

from simd.ignore import IgnoreRules
from simd.runtime import Runtime
from simd.vectors import VectorIndex
from simd.worker import IndexWorker
from tests.fakes import PixelEmbedder


def run_worker(library, state_dir, *requests):
    embedder = PixelEmbedder()
    runtime = Runtime(model=embedder.model_id)
    worker = IndexWorker(state_dir / "index.db", library, embedder, VectorIndex(embedder.dim), IgnoreRules([]), runtime)
    worker.start()
    try:
        for request in requests:
            before = worker.runs
            request(worker)
            deadline = time.monotonic() + 30
            while worker.runs == before:
                assert time.monotonic() < deadline, "the worker did not finish its run"
                time.sleep(0.02)
    finally:
        assert worker.stop()


def test_every_full_reconcile_is_logged_and_copies_are_named(library, state_dir, phone_jpeg, caplog):
    shutil.copyfile(phone_jpeg, library / "PXL_1.jpg")
    make_photo(library / "b.jpg", seed=3)
    with caplog.at_level(logging.INFO, logger="simd"):
        run_worker(library, state_dir, lambda w: w.request_full("start"))
        assert "reconcile: 2 new (2 embedded)" in caplog.text
        caplog.clear()
        # a restart that finds nothing to do says so, instead of nothing
        run_worker(library, state_dir, lambda w: w.request_full("start"))
        assert "reconcile: 2 files, nothing to do" in caplog.text
        caplog.clear()
        shutil.copyfile(phone_jpeg, library / "PXL_1 (copy).jpg")
        run_worker(library, state_dir, lambda w: w.submit({"PXL_1 (copy).jpg"}))
    assert "PXL_1 (copy).jpg: byte-identical to an indexed image; its vector is reused" in caplog.text
    assert "indexed: 1 new (1 byte-identical to images already indexed)" in caplog.text
