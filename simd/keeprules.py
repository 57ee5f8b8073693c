"""Which copy of a group to keep: an ordered list of rules, each narrowing the members to those it likes
best, until one is left; every step says what it decided and why ("kept because ...").

Rules (strings, as a config file gives them):

- `most_pixels`: width x height (an unknown size counts as none);
- `largest_file`: bytes on disk;
- `oldest` / `newest`: modification time;
- `shortest_path`: fewest characters (a copy in "Photos/x.jpg" over "Photos/old/backup/x (1).jpg");
- `prefer_folder:NAME`: a member whose folder path contains NAME as whole components ("Camera",
  "DCIM/Camera"; case-sensitive, as the file system is);
- `prefer_format:EXT`: a member whose extension is EXT (jpg = jpeg, tif = tiff; case-insensitive).

When every rule has run and members are still tied, the first by path (then id) is kept.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from simd.errors import ConfigError

DEFAULT_KEEP_RULES = ("most_pixels", "largest_file", "oldest", "shortest_path")
_PLAIN = ("most_pixels", "largest_file", "oldest", "newest", "shortest_path")
_WITH_ARG = ("prefer_folder", "prefer_format")
_FORMATS = {"jpg", "png", "webp", "gif", "bmp", "tif", "heic", "heif", "avif"}
_ALIASES = {"jpeg": "jpg", "tiff": "tif"}
TIE_BREAK = "first_path"
# Modification times this close count as the same: FAT and exFAT cards store them to 2 s, and a
# copy made in the same second is no older in any sense a person means.
_SAME_TIME_SECONDS = 2.0
_TOLERANCE = {"oldest": _SAME_TIME_SECONDS, "newest": _SAME_TIME_SECONDS}


@dataclass(frozen=True)
class Member:
    """What the rules look at: `path` relative to the library ('/' separators), `width` and `height`
    in pixels (None when unknown), `size` in bytes, `mtime` in seconds since the epoch."""

    path: str
    width: int | None
    height: int | None
    size: int
    mtime: float
    image_id: int | None = None


@dataclass(frozen=True)
class KeepStep:
    """One rule's decision: the members (indexes into the group) still in after it, and why."""

    rule: str
    kept: tuple[int, ...]
    reason: str


@dataclass(frozen=True)
class Keep:
    """The member to keep (`index` into the group), the rule that decided it, and every step taken."""

    keeper: Member
    index: int
    decided_by: str
    steps: tuple[KeepStep, ...]


def parse_keep_rules(rules: Iterable[str]) -> tuple[str, ...]:
    """Rule strings checked and normalised (`prefer_format:JPEG` -> `prefer_format:jpg`), or a
    `ConfigError` naming the bad one and what is allowed."""
    allowed = ", ".join([*_PLAIN, "prefer_folder:<folder>", "prefer_format:<extension>"])
    out = []
    for raw in rules:
        if not isinstance(raw, str):
            raise ConfigError(f"keep rule {raw!r} is not a string; rules are: {allowed}")
        name, sep, arg = raw.strip().partition(":")
        name = name.strip().lower()
        if not sep and name in _PLAIN:
            out.append(name)
        elif sep and name == "prefer_folder" and arg.strip("/ "):
            out.append(f"prefer_folder:{arg.strip('/ ')}")
        elif sep and name == "prefer_format" and _ALIASES.get(f := arg.strip().lstrip(".").lower(), f) in _FORMATS:
            out.append(f"prefer_format:{_ALIASES.get(f, f)}")
        elif name in _WITH_ARG:
            what = "a folder" if name == "prefer_folder" else f"one of {', '.join(sorted(_FORMATS))}"
            raise ConfigError(f"keep rule {raw!r}: {name} needs {what}, as in {name}:{_example(name)}")
        else:
            raise ConfigError(f"unknown keep rule {raw!r}; rules are: {allowed}")
    return tuple(out)


def _example(name: str) -> str:
    return "Camera" if name == "prefer_folder" else "heic"


def _extension(path: str) -> str:
    base = path.rsplit("/", 1)[-1]
    ext = base.rsplit(".", 1)[-1].lower() if "." in base.lstrip(".") else ""
    return _ALIASES.get(ext, ext)


def _in_folder(path: str, folder: str) -> bool:
    parts, want = path.split("/")[:-1], folder.split("/")
    return any(parts[i : i + len(want)] == want for i in range(len(parts) - len(want) + 1))


def _pixels(m: Member) -> int:
    return m.width * m.height if m.width and m.height else -1


def _show_pixels(m: Member) -> str:
    return f"{m.width}x{m.height} ({_pixels(m) / 1e6:.1f} MP)" if _pixels(m) >= 0 else "unknown size"


def _show_size(n: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def _show_time(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t))


def _rule(rule: str) -> tuple[Callable[[Member], float], Callable[[Member], str]]:
    """(score: higher is better, how a member looks to the rule)."""
    name, _, arg = rule.partition(":")
    if name == "most_pixels":
        return _pixels, _show_pixels
    if name == "largest_file":
        return (lambda m: m.size), lambda m: _show_size(m.size)
    if name == "oldest":
        return (lambda m: -m.mtime), lambda m: "modified " + _show_time(m.mtime)
    if name == "newest":
        return (lambda m: m.mtime), lambda m: "modified " + _show_time(m.mtime)
    if name == "shortest_path":
        return (lambda m: -len(m.path)), lambda m: f"a path of {len(m.path)} characters"
    if name == "prefer_folder":
        return (
            lambda m: float(_in_folder(m.path, arg))
        ), lambda m: ("" if _in_folder(m.path, arg) else "not ") + (f"in folder {arg}")
    if name == "prefer_format":
        return (lambda m: float(_extension(m.path) == arg)), lambda m: f"format {_extension(m.path) or 'unknown'}"
    raise ConfigError(f"unknown keep rule {rule!r}")


def suggest_keep(members: Sequence[Member], rules: Iterable[str] = DEFAULT_KEEP_RULES) -> Keep:
    """The member to keep by `rules` (in order; see the module's doc), with what each rule decided."""
    if not members:
        raise ValueError("a group has members")
    parsed = parse_keep_rules(rules)
    left = list(range(len(members)))
    steps = []
    for rule in parsed:
        if len(left) == 1:
            break
        score, show = _rule(rule)
        best = max(score(members[i]) for i in left)
        tolerance = _TOLERANCE.get(rule, 0.0)
        kept = [i for i in left if best - score(members[i]) <= tolerance]
        if len(kept) == len(left):
            within = f" (within {tolerance:.0f} s)" if tolerance and len({score(members[i]) for i in left}) > 1 else ""
            reason = f"no difference: all {show(members[left[0]])}{within}" if len(left) > 1 else ""
        else:
            losers = [i for i in left if i not in kept]
            runner = max(losers, key=lambda i: score(members[i]))
            reason = f"{show(members[kept[0]])}, against {show(members[runner])} at best for the others"
        steps.append(KeepStep(rule, tuple(kept), reason))
        left = kept
    if len(left) > 1:
        first = min(left, key=lambda i: (members[i].path, members[i].image_id or 0))
        steps.append(KeepStep(TIE_BREAK, (first,), "still tied after every rule: the first by path"))
        left = [first]
    decided = steps[-1].rule if steps else "only_member"  # the loop ends at the step that left one
    return Keep(members[left[0]], left[0], decided, tuple(steps))
