"""One table of settings: defaults, help text, validation; read from TOML, `SIMD_*` env vars and flags.

Precedence, lowest first: defaults < config file < environment < command-line flags.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from simd.errors import ConfigError

MODELS = ("auto", "resnet50", "efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2")
DESCRIPTORS = ("default", "seed")
RUNTIMES = ("onnxruntime", "tensorflow")
PRECISIONS = ("fp32", "int8")


@dataclass(frozen=True)
class Setting:
    name: str
    default: Any
    type: type
    help: str
    choices: tuple | None = None
    check: Callable[[Any], str | None] | None = None  # returns an error message or None


def _positive(v):
    return None if v > 0 else "must be > 0"


def _non_negative(v):
    return None if v >= 0 else "must be >= 0"


def _port(v):
    return None if 0 <= v <= 65535 else "must be a TCP port (0-65535)"


# Decoded pixels above which an image is refused as a decompression bomb (the setting's default).
MAX_IMAGE_PIXELS = 120_000_000
# The same for an upload (a query): anyone who can reach the API chooses it. 50 MP is the largest
# photo phones save by default; decoding one costs up to ~0.6 GB (docs/RELIABILITY.md).
MAX_UPLOAD_PIXELS = 50_000_000

SETTINGS: tuple[Setting, ...] = (
    Setting("library", None, str, "The image folder to index (the library root)."),
    Setting(
        "state_dir",
        None,
        str,
        "Where the index and thumbnails live; default $XDG_STATE_HOME/simd/<library name>-<hash>.",
    ),
    Setting("host", "127.0.0.1", str, "Address the HTTP server binds to. Non-loopback needs allow_remote and token."),
    Setting("port", 8765, int, "TCP port of the HTTP server.", check=_port),
    Setting("allow_remote", False, bool, "Allow binding to a non-loopback address (requires token)."),
    Setting("token", None, str, "Bearer token required on every API request when set."),
    Setting(
        "model",
        "auto",
        str,
        "Backbone: auto (ResNet50 if its weights can be had, else efficientnet-lite0), resnet50 or efficientnet-lite0.",
        choices=MODELS,
    ),
    Setting("weights", None, str, "Path to ResNet50 notop ImageNet weights (.h5); skips the Keras cache/download."),
    Setting("weights_download", True, bool, "Let --model auto/resnet50 download ResNet50 weights through Keras."),
    Setting(
        "descriptor",
        "default",
        str,
        "How an image becomes a vector: default (tuned) or seed "
        "(the original method: squashed 224x224, GAP; for comparisons).",
        choices=DESCRIPTORS,
    ),
    Setting(
        "runtime",
        "onnxruntime",
        str,
        "What runs the network: onnxruntime (converted once from TensorFlow and cached, starts without "
        "TensorFlow) or tensorflow (for comparisons). Both give the same vectors (cosine > 0.9999).",
        choices=RUNTIMES,
    ),
    Setting(
        "precision",
        "fp32",
        str,
        "Numbers the network computes with on onnxruntime: fp32, or int8 (calibrated once on up to 64 "
        "photos of the library; faster for resnet50, not for efficientnet-lite0; its vectors are another "
        "model id, so switching re-embeds). The README says what int8 costs in quality.",
        choices=PRECISIONS,
    ),
    Setting(
        "model_cache",
        None,
        str,
        "Where converted (ONNX) models are cached; default $KERAS_HOME/models/simd-onnx (~/.keras/models/simd-onnx).",
    ),
    Setting("batch_size", 32, int, "Images per model call.", check=_positive),
    Setting(
        "tf_threads",
        0,
        int,
        "Threads of the network: TensorFlow's intra/inter-op, ONNX Runtime's intra-op (0: the runtime's default).",
        check=_non_negative,
    ),
    Setting(
        "settle_seconds",
        2.0,
        float,
        "A changed file is indexed once quiet and stable for this long.",
        check=_non_negative,
    ),
    Setting(
        "reconcile_interval", 3600.0, float, "Seconds between full reconcile scans (0: never).", check=_non_negative
    ),
    Setting(
        "observer",
        "auto",
        str,
        "File watching: auto (polling on network filesystems), native or polling.",
        choices=("auto", "native", "polling"),
    ),
    Setting("follow_symlinks", False, bool, "Follow symbolic links inside the library."),
    Setting("ignore", [], list, "Extra glob patterns (matched against names and relative paths) to skip."),
    Setting("max_upload_mb", 25.0, float, "Largest accepted upload, in MB (larger: HTTP 413).", check=_positive),
    Setting(
        "max_image_pixels",
        MAX_IMAGE_PIXELS,
        int,
        "Images with more pixels are refused as decompression bombs.",
        check=_positive,
    ),
    Setting(
        "max_upload_pixels",
        MAX_UPLOAD_PIXELS,
        int,
        "Uploaded images (queries) with more pixels are refused before decoding (HTTP 415).",
        check=_positive,
    ),
    Setting(
        "keep_rules",
        ["most_pixels", "largest_file", "oldest", "shortest_path"],
        list,
        "Which copy of a group of duplicates to suggest keeping: rules in order, each narrowing the copies "
        "(most_pixels, largest_file, oldest, newest, shortest_path, prefer_folder:NAME, prefer_format:EXT).",
    ),
    Setting(
        "allow_trash",
        False,
        bool,
        "Let POST /api/duplicates/trash move copies to the desktop trash (simd never deletes; off by default).",
    ),
    Setting("log_level", "INFO", str, "Logging level.", choices=("DEBUG", "INFO", "WARNING", "ERROR")),
)
_BY_NAME = {s.name: s for s in SETTINGS}


class Config:
    """Resolved settings; attribute access (`config.port`). Build with `load()`."""

    def __init__(self, values: dict[str, Any] | None = None):
        merged = {s.name: (list(s.default) if isinstance(s.default, list) else s.default) for s in SETTINGS}
        for name, value in (values or {}).items():
            if name not in _BY_NAME:
                raise ConfigError(f"unknown setting {name!r}")
            merged[name] = _coerce(_BY_NAME[name], value)
        self.__dict__["_values"] = merged

    def __getattr__(self, name: str) -> Any:
        try:
            return self.__dict__["_values"][name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name, value):
        raise AttributeError("Config is read-only; use replace()")

    def replace(self, **changes) -> Config:
        return Config({**self._values, **changes})

    def as_dict(self) -> dict[str, Any]:
        return dict(self._values)

    @property
    def library_path(self) -> Path:
        if not self.library:
            raise ConfigError("no library given (pass LIBRARY or set `library` in the config file)")
        # resolve(): "../Photos", "./Photos/" and a symlink to it are one library with one index
        return Path(self.library).expanduser().resolve()

    @property
    def state_path(self) -> Path:
        if self.state_dir:
            return Path(self.state_dir).expanduser().resolve()
        return default_state_dir(self.library_path)

    def validate(self) -> Config:
        for s in SETTINGS:
            v = self._values[s.name]
            if v is None:
                continue
            if s.choices and v not in s.choices:
                raise ConfigError(f"{s.name}: {v!r} is not one of {', '.join(s.choices)}")
            if s.check and (msg := s.check(v)):
                raise ConfigError(f"{s.name}: {msg} (got {v!r})")
        if not is_loopback(self.host):
            if not self.allow_remote:
                raise ConfigError(
                    f"host {self.host!r} is not a loopback address; set allow_remote = true "
                    "and a token to serve other machines"
                )
            if not self.token:
                raise ConfigError(
                    f"host {self.host!r} is not loopback: a token is required (config `token` or SIMD_TOKEN)"
                )
        return self


def _coerce(setting: Setting, value: Any) -> Any:
    if value is None:
        return None
    t = setting.type
    try:
        if t is bool:
            if isinstance(value, bool):
                return value
            s = str(value).strip().lower()
            if s in ("1", "true", "yes", "on"):
                return True
            if s in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if t is list:
            if isinstance(value, str):
                return [p.strip() for p in value.split(",") if p.strip()]
            if isinstance(value, (list, tuple)):
                return [str(p) for p in value]
            raise ValueError
        if t is int and isinstance(value, float) and not value.is_integer():
            raise ValueError
        if t in (int, float) and isinstance(value, bool):
            raise ValueError
        return t(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{setting.name}: expected {t.__name__}, got {value!r}") from None


def read_toml(path: str | Path) -> dict[str, Any]:
    p = Path(path).expanduser()
    try:
        with p.open("rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {p}") from None
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"cannot read config file {p}: {e}") from None
    data = data.get("simd", data)  # accept a [simd] table or top-level keys
    unknown = sorted(set(data) - set(_BY_NAME))
    if unknown:
        raise ConfigError(f"{p}: unknown setting(s): {', '.join(unknown)}")
    return data


def read_env(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    env: Mapping[str, str] = os.environ if environ is None else environ
    out = {}
    for s in SETTINGS:
        key = "SIMD_" + s.name.upper()
        if key in env:
            out[s.name] = env[key]
    return out


def load(
    config_file: str | None = None, flags: dict[str, Any] | None = None, environ: Mapping[str, str] | None = None
) -> Config:
    """Merge file, env and flags (flags whose value is None are 'not given') and validate."""
    values: dict[str, Any] = {}
    env: Mapping[str, str] = os.environ if environ is None else environ
    config_file = config_file or env.get("SIMD_CONFIG")
    if config_file:
        values.update(read_toml(config_file))
    values.update(read_env(env))
    values.update({k: v for k, v in (flags or {}).items() if v is not None})
    return Config(values).validate()


def is_loopback(host: str) -> bool:
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def http_url(host: str, port: int) -> str:
    """http://HOST:PORT, with an IPv6 address in brackets."""
    host = host.strip("[]")
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def state_base() -> Path:
    """$XDG_STATE_HOME/simd (default ~/.local/state/simd): where default state dirs live."""
    return Path(os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")) / "simd"


def default_state_dir(library: Path) -> Path:
    """$XDG_STATE_HOME/simd/<name>-<8 hex of the absolute path>, so two libraries never share state."""
    lib = Path(library).expanduser().resolve()
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", lib.name or "root").strip("._") or "library"
    digest = hashlib.sha256(str(lib).encode()).hexdigest()[:8]
    return state_base() / f"{slug}-{digest}"


def describe() -> str:
    """The settings table as text, for `--help` epilogs and docs."""
    lines = []
    for s in SETTINGS:
        default = "none" if s.default is None else s.default
        lines.append(f"  {s.name:<20} (SIMD_{s.name.upper()}, default {default}) {s.help}")
    return "\n".join(lines)
