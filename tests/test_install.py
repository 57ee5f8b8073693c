"""`make install` gives a self-contained simd: a venv of its own under PREFIX, simd installed as a copy.

What matters to a system service: after `make install PREFIX=P`, `P/venv/bin/simd` runs from any
directory, with P's own Python and code, and nothing under P points back at the checkout (shebangs,
.pth files, editable finders, direct_url.json, pyvenv.cfg): the checkout can move or go.

The fast test installs simd alone (INSTALL_ARGS=--no-deps), which `simd --version` needs; it still
makes the venv, upgrades its pip and builds simd's wheel through PyPI (about 20 s). The slow test
installs everything for real, as `sudo make install` does (several minutes, ~1.8 GB), and indexes
two pictures with the installed simd.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MAKE = shutil.which("make")
pytestmark = pytest.mark.skipif(MAKE is None, reason="make is not installed")


def _env(home: Path, *checkouts: Path) -> dict[str, str]:
    """The environment `sudo make install` would have: no venv activated, nothing of the checkout
    on PATH or PYTHONPATH (so `python3` is the machine's, not this checkout's .venv)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME", "MAKEFLAGS", "MFLAGS", "MAKELEVEL")
    }
    env["PATH"] = os.pathsep.join(
        p
        for p in env.get("PATH", "/usr/bin:/bin").split(os.pathsep)
        if p and not any(Path(p).resolve().is_relative_to(c) for c in checkouts)
    )
    env["HOME"] = str(home)
    return env


def _make(
    target: str, checkout: Path, prefix: Path, env: dict[str, str], *args: str, timeout: float = 600
) -> subprocess.CompletedProcess:
    r = subprocess.run(
        [MAKE, "--no-print-directory", "-C", str(checkout), target, f"PREFIX={prefix}", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert r.returncode == 0, f"make {target} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


def _run(args: list[str], cwd: Path, env: dict[str, str], timeout: float = 120) -> str:
    r = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{args} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r.stdout


def _assert_self_contained(prefix: Path, *checkouts: Path) -> None:
    venv = prefix / "venv"
    for checkout in checkouts:
        hits = subprocess.run(["grep", "-rlF", str(checkout), str(prefix)], capture_output=True, text=True)
        assert hits.returncode == 1, f"files under {prefix} name the checkout {checkout}:\n{hits.stdout[:3000]}"
    for script in (venv / "bin").iterdir():
        if script.is_file() and not script.is_symlink():
            head = script.read_bytes()[:200]
            if head.startswith(b"#!"):
                assert head.split(b"\n")[0].startswith(b"#!" + bytes(venv / "bin" / "python")), (script, head)
    site = next((venv / "lib").glob("python3.*/site-packages"))
    assert not list(site.glob("__editable__*")) and not list(site.glob("*.egg-link"))
    assert (site / "simd" / "cli.py").is_file() and (site / "simd" / "web" / "templates").is_dir()
    dist_info = list(site.glob("simd-*.dist-info"))
    assert len(dist_info) == 1 and not (dist_info[0] / "direct_url.json").exists()
    for pth in site.glob("*.pth"):
        assert "simd" not in pth.read_text(), pth
    assert "include-system-site-packages = false" in (venv / "pyvenv.cfg").read_text()


def _check_runs(prefix: Path, cwd: Path, env: dict[str, str], version: str) -> None:
    venv = prefix / "venv"
    assert _run([str(venv / "bin" / "simd"), "--version"], cwd, env).strip() == f"simd {version}"
    where = _run([str(venv / "bin" / "python"), "-c", "import simd; print(simd.__file__)"], cwd, env)
    assert Path(where.strip()).is_relative_to(venv), where


def _version() -> str:
    out = subprocess.run(
        [sys.executable, "-c", "import simd; print(simd.__version__)"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


def test_install_upgrade_uninstall_without_dependencies(tmp_path):
    """make install from a checkout, run it elsewhere, upgrade it from a changed checkout, remove it."""
    home, elsewhere = tmp_path / "home", tmp_path / "elsewhere"
    home.mkdir()
    elsewhere.mkdir()
    prefix = tmp_path / "opt" / "simd"
    version = _version()
    built_before = (ROOT / "build").exists()

    env = _env(home, ROOT)
    _make("install", ROOT, prefix, env, "INSTALL_ARGS=--no-deps")
    _assert_self_contained(prefix, ROOT)
    _check_runs(prefix, elsewhere, env, version)
    assert (ROOT / "build").exists() == built_before, "make install wrote build/ into the checkout"
    size = sum(f.stat().st_size for f in prefix.rglob("*") if f.is_file() and not f.is_symlink())
    assert size < 100e6, f"{size / 1e6:.0f} MB under {prefix}: was .venv copied?"

    # Upgrade: the same version number, changed code, from another checkout; the venv is kept.
    other = tmp_path / "checkout"
    other.mkdir()
    for name in ("Makefile", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, other / name)
    shutil.copytree(ROOT / "simd", other / "simd", ignore=shutil.ignore_patterns("__pycache__"))
    (other / "simd" / "_upgrade_probe.py").write_text("HERE = True\n")
    (prefix / "venv" / "kept").touch()
    env = _env(home, ROOT, other)
    _make("install", other, prefix, env, "INSTALL_ARGS=--no-deps")
    assert (prefix / "venv" / "kept").exists(), "the upgrade made the venv anew"
    shutil.rmtree(other)  # the install must not need its checkout any more
    _check_runs(prefix, elsewhere, env, version)
    _run([str(prefix / "venv" / "bin" / "python"), "-c", "import simd._upgrade_probe"], elsewhere, env)
    _assert_self_contained(prefix, ROOT, other)

    r = _make("uninstall", ROOT, prefix, env)
    assert "removed" in r.stdout and not prefix.exists()
    r = _make("uninstall", ROOT, prefix, env)
    assert "nothing to remove" in r.stdout


def test_install_refuses_a_relative_or_root_prefix(tmp_path):
    env = _env(tmp_path, ROOT)
    for prefix in ("opt/simd", "/", ""):
        for target in ("install", "uninstall"):
            r = subprocess.run(
                [MAKE, "--no-print-directory", "-C", str(ROOT), target, f"PREFIX={prefix}"],
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert r.returncode != 0 and "PREFIX must be an absolute path" in r.stdout, (prefix, target, r)


def test_uninstall_leaves_a_foreign_venv_alone(tmp_path):
    foreign = tmp_path / "venv"
    foreign.mkdir()
    (foreign / "pyvenv.cfg").write_text("home = /usr/bin\n")
    r = _make("uninstall", ROOT, tmp_path, _env(tmp_path, ROOT))
    assert "left alone" in r.stdout and (foreign / "pyvenv.cfg").exists()


def _jpeg(path: Path, color: tuple[int, int, int]) -> None:
    from PIL import Image

    Image.new("RGB", (320, 240), color).save(path, quality=90)


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_full_install_runs_outside_the_checkout(tmp_path):
    """`make install` as documented (all dependencies from PyPI), then index two pictures with it."""
    home, elsewhere, library = tmp_path / "home", tmp_path / "elsewhere", tmp_path / "photos"
    for d in (home, elsewhere, library):
        d.mkdir()
    prefix = tmp_path / "opt" / "simd"
    env = _env(home, ROOT)
    start = time.monotonic()
    _make("install", ROOT, prefix, env, timeout=3000)
    took = time.monotonic() - start
    size = sum(f.stat().st_size for f in prefix.rglob("*") if f.is_file() and not f.is_symlink())
    print(f"\nmake install: {took:.0f} s, {size / 1e9:.2f} GB under {prefix}")

    _assert_self_contained(prefix, ROOT)
    _check_runs(prefix, elsewhere, env, _version())
    simd = str(prefix / "venv" / "bin" / "simd")
    models = _run([simd, "models"], elsewhere, {**env, "KERAS_HOME": str(home / "keras")})
    assert "efficientnet-lite0" in models
    _jpeg(library / "red.jpg", (200, 30, 30))
    _jpeg(library / "blue.jpg", (30, 30, 200))
    out = _run(
        [
            simd,
            "index",
            str(library),
            "--state-dir",
            str(tmp_path / "state"),
            "--model",
            "efficientnet-lite0",
            "--json",
        ],
        elsewhere,
        {**env, "KERAS_HOME": str(home / "keras")},
        timeout=600,
    )
    summary = json.loads(out)
    assert summary["new"] == 2 and summary["embedded"] == 2 and summary["failed"] == 0, summary

    start = time.monotonic()
    _make("install", ROOT, prefix, env, timeout=1200)  # the upgrade path: nothing new to download
    print(f"make install again: {time.monotonic() - start:.0f} s")
    _check_runs(prefix, elsewhere, env, _version())
    _make("uninstall", ROOT, prefix, env)
    assert not prefix.exists()
