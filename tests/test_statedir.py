"""One simd process per state dir; its lock tells others who holds it."""

import subprocess
import sys

import pytest

from simd.errors import SimdError
from simd.statedir import StateLock, holder


def test_second_holder_is_refused_with_who_holds_it(tmp_path):
    lock = StateLock(tmp_path).acquire(role="serve", url="http://127.0.0.1:9999")
    try:
        assert holder(tmp_path)["url"] == "http://127.0.0.1:9999"
        with pytest.raises(SimdError, match=r"another simd \(pid \d+, simd serve at http://127.0.0.1:9999\)"):
            StateLock(tmp_path).acquire(role="index")
        lock.update(role="serve", url="http://127.0.0.1:1234")
        assert holder(tmp_path)["url"] == "http://127.0.0.1:1234"
    finally:
        lock.release()
    assert holder(tmp_path) is None
    StateLock(tmp_path).acquire(role="index").release()


def test_a_killed_holder_leaves_no_lock(tmp_path):
    code = (
        "import os, sys; from simd.statedir import StateLock; "
        f"StateLock({str(tmp_path)!r}).acquire(role='index'); os.kill(os.getpid(), 9)"
    )
    subprocess.run([sys.executable, "-c", code], check=False)
    assert holder(tmp_path) is None
    StateLock(tmp_path).acquire(role="serve").release()
