"""The shipped unit files load cleanly in systemd and the system instance is well sandboxed.

`systemd-analyze verify` exits 0 even on unknown or misspelt keys (it only warns), so the tests
demand an empty stderr. It also insists that ExecStart's binary exists: the user unit gets a fake
`~/.local/bin/simd` under a temporary HOME, the system template a copy pointing at a real binary.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from simd import config as cfg

UNITS = Path(__file__).resolve().parent.parent / "systemd"
ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(
    ANALYZE is None,
    reason="systemd-analyze is not installed (apt-get install systemd); the unit files were not checked",
)


def _run(args: list[str], cwd: Path, home: Path) -> subprocess.CompletedProcess:
    runtime = home / "runtime"
    runtime.mkdir(mode=0o700, exist_ok=True)
    env = {
        **os.environ,
        "HOME": str(home),
        "XDG_RUNTIME_DIR": str(runtime),
        "SYSTEMD_LOG_LEVEL": "notice",
        "SYSTEMD_COLORS": "0",
        "SYSTEMD_PAGER": "",
        "LC_ALL": "C.UTF-8",
    }
    env.pop("XDG_CONFIG_HOME", None)
    return subprocess.run([ANALYZE, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture
def template_copy(tmp_path) -> Path:
    """simd@.service with ExecStart pointing at an executable that exists here."""
    text = (UNITS / "simd@.service").read_text()
    assert "ExecStart=/opt/simd/venv/bin/simd " in text
    unit = tmp_path / "simd@.service"
    unit.write_text(text.replace("/opt/simd/venv/bin/simd", shutil.which("true") or "/bin/true"))
    return unit


@needs_analyze
def test_user_unit_verifies_cleanly(tmp_path):
    home = tmp_path / "home"
    binary = home / ".local" / "bin" / "simd"
    binary.parent.mkdir(parents=True)
    binary.write_text("#!/bin/sh\nexit 0\n")
    binary.chmod(0o755)
    shutil.copy(UNITS / "simd.service", tmp_path / "simd.service")
    r = _run(["--user", "verify", "./simd.service"], tmp_path, home)
    assert r.returncode == 0 and r.stderr == "", r.stderr


@needs_analyze
def test_system_template_verifies_cleanly(tmp_path, template_copy):
    r = _run(["verify", "./simd@test.service"], tmp_path, tmp_path)
    assert r.returncode == 0 and r.stderr == "", r.stderr


@needs_analyze
def test_verify_catches_a_misspelt_key(tmp_path, template_copy):
    """Guards the guard: a typo must show up on stderr, or the tests above prove nothing."""
    template_copy.write_text(template_copy.read_text().replace("ProtectClock=yes", "ProtectClok=yes"))
    r = _run(["verify", "./simd@test.service"], tmp_path, tmp_path)
    assert "ProtectClok" in r.stderr


@needs_analyze
def test_system_instance_exposure_is_low(tmp_path, template_copy):
    r = _run(["security", "--offline=true", "--no-pager", "./simd@test.service"], tmp_path, tmp_path)
    assert r.returncode == 0, r.stderr
    m = re.search(r"Overall exposure level for simd@test\.service:\s*([0-9.]+)", r.stdout)
    assert m, r.stdout[-2000:]
    assert float(m.group(1)) <= 2.0, r.stdout


def _directives(path: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith(("#", ";", "[")) and "=" in line:
            key, value = line.split("=", 1)
            out.setdefault(key.strip(), []).append(value.strip())
    return out


@pytest.mark.parametrize("name", ["simd.service", "simd@.service"])
def test_units_are_notify_services_with_a_watchdog(name):
    d = _directives(UNITS / name)
    assert d["Type"] == ["notify"] and d["NotifyAccess"] == ["main"]
    assert d["WatchdogSec"] == ["60"] and d["Restart"] == ["on-failure"]
    assert d["TimeoutStartSec"] == ["300"] and d["TimeoutStopSec"] == ["20"]
    assert d["RestartPreventExitStatus"] == ["2"]
    assert "--config" in d["ExecStart"][0].split()


def test_system_template_paths():
    d = _directives(UNITS / "simd@.service")
    assert d["ExecStart"] == ["/opt/simd/venv/bin/simd serve --config /etc/simd/%i.toml --state-dir /var/lib/simd/%i"]
    assert d["StateDirectory"] == ["simd/%i"] and d["User"] == ["simd"]
    assert "KERAS_HOME=/var/lib/simd/%i/keras" in d["Environment"][0].split()
    assert "MemoryDenyWriteExecute" not in d


def test_example_config_is_valid():
    data = tomllib.loads((UNITS / "example.toml").read_text())
    conf = cfg.Config(data).validate()
    assert conf.library == "/srv/photos" and cfg.is_loopback(conf.host)


ROOT = UNITS.parent
FETCH = "env HOME=/var/lib/simd/photos KERAS_HOME=/var/lib/simd/photos/keras /opt/simd/venv/bin/simd weights fetch"


def test_make_install_puts_simd_where_the_template_runs_it():
    m = re.search(r"^PREFIX \?= (\S+)$", (ROOT / "Makefile").read_text(), re.M)
    assert m, "Makefile has no PREFIX default"
    binary = _directives(UNITS / "simd@.service")["ExecStart"][0].split()[0]
    assert binary == m.group(1) + "/venv/bin/simd"


@pytest.mark.parametrize("doc", ["README.md", "systemd/simd@.service", "systemd/example.toml", "systemd/simd.service"])
def test_docs_name_the_installed_simd(doc):
    """No doc sends anyone to the old /opt/simd/.venv (a copied checkout running the original's code)."""
    text = (ROOT / doc).read_text()
    assert "/opt/simd/.venv" not in text and "cp -r . /opt/simd" not in text


def _system_steps(text: str, prefix: str) -> list[str]:
    """The documented commands of the system service, one per line, continuation lines joined."""
    lines, out = [line.removeprefix(prefix) for line in text.splitlines() if line.startswith(prefix)], []
    for line in lines:
        line = line.split(" #")[0].strip()
        if out and out[-1].endswith("\\"):
            out[-1] = out[-1][:-1].rstrip() + " " + line
        elif line:
            out.append(line)
    return out


def _readme_system_block() -> list[str]:
    text = (ROOT / "README.md").read_text()
    start = text.index("**A shared library, as a hardened system service**")
    block = text[text.index("```sh\n", start) + 6 :]
    return _system_steps(block[: block.index("```")], "")


@pytest.mark.parametrize(
    "steps",
    [
        pytest.param(_readme_system_block, id="README.md"),
        pytest.param(lambda: _system_steps((UNITS / "simd@.service").read_text(), "#   "), id="simd@.service"),
    ],
)
def test_system_steps_work_in_order(steps):
    """acl before setfacl; install before using the binary; state dir, as simd, before the weights
    fetch, which comes before the first start (the unit has no network); same cache as the unit."""
    steps = [s.removeprefix("sudo ") for s in steps()]

    def first(needle: str) -> int:
        hits = [i for i, s in enumerate(steps) if needle in s]
        assert hits, f"no step with {needle!r} in {steps}"
        return hits[0]

    assert first("apt-get install -y acl") < first("setfacl ")
    assert first("useradd --system") < first("make install") < first("/opt/simd/venv/bin/simd weights fetch")
    assert first("install -d -o simd -g simd -m 0700 /var/lib/simd/photos") < first("weights fetch")
    assert first("weights fetch") < first("systemctl enable --now simd@photos")
    fetch = steps[first("weights fetch")]
    assert fetch.startswith(("-u simd ", "runuser -u simd -- ")) and fetch.endswith(FETCH), fetch
    env = _directives(UNITS / "simd@.service")["Environment"][0].split()
    assert "HOME=/var/lib/simd/%i" in env and "KERAS_HOME=/var/lib/simd/%i/keras" in env


def test_example_config_says_which_settings_are_flags():
    """Every setting is in `simd --help`; exactly the flags the header names are `simd serve`'s."""
    from simd import cli

    parser = cli.build_parser()
    top_help = parser.format_help()
    for s in cfg.SETTINGS:
        assert f"SIMD_{s.name.upper()}" in top_help and s.name in top_help
    serve = parser._subparsers._group_actions[0].choices["serve"]
    flags = {o for a in serve._actions for o in a.option_strings if o.startswith("--")} - {"--help", "--config"}
    header = "".join(
        line.removeprefix("#") for line in (UNITS / "example.toml").read_text().split("\n\n")[0].splitlines()
    )
    assert "simd --help" in header and "simd serve --help" in header
    named = set(re.findall(r"--[a-z-]+", header.split("both:")[1]))
    assert named == flags
    assert "library (its argument)" in header


def test_example_config_commented_settings_are_valid():
    """Uncommenting any `# name = value` line of the example gives a valid config too."""
    text = (UNITS / "example.toml").read_text()
    names = {s.name for s in cfg.SETTINGS}
    seen = []
    for line in text.splitlines():
        m = re.match(r"#\s*([a-z_]+)\s*=\s*(.+)$", line)
        if m and m.group(1) in names:
            value = tomllib.loads(f"{m.group(1)} = {m.group(2)}")
            seen.append(m.group(1))
            cfg.Config({**tomllib.loads(text), **value}).validate()
    assert {"state_dir", "allow_remote", "weights", "ignore", "batch_size", "tf_threads"} <= set(seen)
