"""The settings table: precedence, coercion, validation, state dir."""

from pathlib import Path

import pytest

from simd import config as cfg
from simd.errors import ConfigError


def test_defaults_are_valid_and_documented():
    c = cfg.load(environ={})
    assert (c.host, c.port, c.model, c.settle_seconds) == ("127.0.0.1", 8765, "auto", 2.0)
    text = cfg.describe()
    for s in cfg.SETTINGS:
        assert s.name in text and s.help, s.name


def test_precedence_file_env_flags(tmp_path):
    f = tmp_path / "simd.toml"
    f.write_text('port = 9000\nmodel = "resnet50"\nignore = ["*.raw"]\n')
    c = cfg.load(str(f), environ={"SIMD_PORT": "9001"})
    assert (c.port, c.model, c.ignore) == (9001, "resnet50", ["*.raw"])
    c = cfg.load(str(f), flags={"port": 9002, "model": None}, environ={"SIMD_PORT": "9001"})
    assert (c.port, c.model) == (9002, "resnet50")


def test_simd_table_is_accepted(tmp_path):
    f = tmp_path / "simd.toml"
    f.write_text('[simd]\nlibrary = "/photos"\n')
    assert cfg.load(str(f), environ={}).library == "/photos"


@pytest.mark.parametrize(
    "content, message",
    [
        ("port = 70000", "port"),
        ('model = "vgg"', "model"),
        ("bogus = 1", "unknown setting"),
        ("port = [", "cannot read"),
        ('settle_seconds = "soon"', "settle_seconds"),
        ("batch_size = 0", "batch_size"),
    ],
)
def test_bad_config_file_names_the_problem(tmp_path, content, message):
    f = tmp_path / "simd.toml"
    f.write_text(content)
    with pytest.raises(ConfigError, match=message):
        cfg.load(str(f), environ={})


def test_missing_config_file():
    with pytest.raises(ConfigError, match="not found"):
        cfg.load("/nonexistent/simd.toml", environ={})


@pytest.mark.parametrize("value, expected", [("1", True), ("yes", True), ("off", False), ("0", False)])
def test_env_booleans(value, expected):
    assert cfg.load(environ={"SIMD_FOLLOW_SYMLINKS": value}).follow_symlinks is expected


def test_bad_env_value():
    with pytest.raises(ConfigError, match="SIMD|follow_symlinks"):
        cfg.load(environ={"SIMD_FOLLOW_SYMLINKS": "maybe"})


def test_non_loopback_needs_allow_remote_and_token():
    with pytest.raises(ConfigError, match="allow_remote"):
        cfg.load(flags={"host": "0.0.0.0"}, environ={})
    with pytest.raises(ConfigError, match="token"):
        cfg.load(flags={"host": "0.0.0.0", "allow_remote": True}, environ={})
    c = cfg.load(flags={"host": "0.0.0.0", "allow_remote": True}, environ={"SIMD_TOKEN": "s3cret"})
    assert c.token == "s3cret"
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        assert cfg.is_loopback(host)


def test_default_state_dir_is_per_library_and_outside_it(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    a = cfg.default_state_dir(Path("/photos/Family"))
    b = cfg.default_state_dir(Path("/other/Family"))
    assert a != b and a.parent == tmp_path / "xdg" / "simd" and a.name.startswith("Family-")
    monkeypatch.delenv("XDG_STATE_HOME")
    assert ".local/state/simd" in str(cfg.default_state_dir(Path("/photos")))


def test_every_spelling_of_a_library_is_one_index(tmp_path, monkeypatch):
    (tmp_path / "Photos").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "Photos")
    monkeypatch.chdir(tmp_path / "Photos")
    spellings = [str(tmp_path / "Photos"), "../Photos", ".", str(tmp_path / "link"), str(tmp_path / "Photos") + "/"]
    paths = {cfg.load(flags={"library": s}, environ={}).library_path for s in spellings}
    states = {cfg.load(flags={"library": s}, environ={}).state_path for s in spellings}
    assert paths == {(tmp_path / "Photos").resolve()} and len(states) == 1


def test_config_is_read_only():
    c = cfg.load(environ={})
    with pytest.raises(AttributeError):
        c.port = 1
    assert c.replace(port=1).port == 1 and c.port == 8765
