"""The command line as a person uses it: fast help, clear one-line errors, exit codes."""

import subprocess
import sys

import pytest

from simd import __version__

PY = sys.executable


def simd(*args, env=None, timeout=120):
    return subprocess.run([PY, "-m", "simd", *args], capture_output=True, text=True, timeout=timeout, env=env)


def test_help_and_version_do_not_import_tensorflow():
    code = (
        "import sys; from simd.cli import build_parser; build_parser().format_help(); "
        "import simd.cli, simd.commands; print('tensorflow' in sys.modules)"
    )
    out = subprocess.run([PY, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    r = simd("--version")
    assert r.returncode == 0 and __version__ in r.stdout
    r = simd("--help")
    assert r.returncode == 0
    for word in ("serve", "index", "query", "status", "errors", "models", "weights"):
        assert word in r.stdout


def test_no_command_prints_help_and_exits_2():
    r = simd()
    assert r.returncode == 2 and "usage" in r.stdout


@pytest.mark.parametrize(
    "args, code, message",
    [
        (["serve", "--port", "notaport"], 2, "invalid int"),
        (["serve", "/tmp", "--model", "vgg"], 2, "invalid choice"),
        (["index"], 2, "no library"),
        (["query", "/nonexistent.jpg"], 1, "no such file"),
    ],
)
def test_usage_errors_are_one_line(args, code, message, tmp_path):
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "XDG_STATE_HOME": str(tmp_path / "state")}
    r = simd(*args, env=env)
    assert r.returncode == code, r.stderr
    assert message in r.stderr
    assert "Traceback" not in r.stderr


def test_missing_library_is_an_error_not_an_offline_index(tmp_path):
    r = simd("index", str(tmp_path / "typo-Photos"), "--state-dir", str(tmp_path / "state"))
    assert r.returncode == 1 and "does not exist" in r.stderr
    assert not (tmp_path / "state").exists(), "no state dir is made for a library that never existed"


def test_bad_config_exits_2(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text("port = 99999\n")
    r = simd("index", str(tmp_path), "--config", str(f))
    assert r.returncode == 2 and "port" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_status_without_index_says_how_to_start(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "XDG_STATE_HOME": str(tmp_path / "state")}
    r = simd("status", "--json", env=env)
    assert r.returncode == 2 and "simd index" in r.stderr


def test_state_dir_inside_library_is_refused(tmp_path):
    lib = tmp_path / "lib"
    lib.mkdir()
    r = simd("index", str(lib), "--state-dir", str(lib / ".simd"), "--model", "efficientnet-lite0")
    assert r.returncode == 2 and "inside the library" in r.stderr
    assert not (lib / ".simd").exists()


def test_models_reports_the_vectors_the_index_stores(tmp_path):
    """Lite0's default descriptor stores its pooled features and 1000 ImageNet logits from a 288 px input; the seed
    descriptor stores the 1280-d pooled features from 224 px. `simd status` reports the same dim."""
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "SIMD_WEIGHTS_DOWNLOAD": "0"}
    r = simd("models", env=env)
    assert r.returncode == 0, r.stderr
    lines = {line.split()[0]: line for line in r.stdout.splitlines()}
    assert "vectors 2280-d  input 288px  weights: yes" in lines["efficientnet-lite0"]
    assert "vectors 2048-d  input 224px  weights: no" in lines["resnet50"]
    r = simd("models", env={**env, "SIMD_DESCRIPTOR": "seed"})
    assert "vectors 1280-d  input 224px" in r.stdout
