"""What the benchmark scripts share: the machine they ran on, and their section of docs/BENCHMARKS.md.

The scripts run as `python tests/bench/X.py`, so this folder is on sys.path and they `import benchutil`.
"""

from __future__ import annotations

import os
import platform
import re
from pathlib import Path


def _proc_field(path: str, pattern: str) -> str | None:
    """The first group of `pattern` (multiline) in a /proc file, or None where it cannot be read."""
    try:
        m = re.search(pattern, Path(path).read_text(), re.M)
    except OSError:
        return None
    return m.group(1).strip() if m else None


def machine_info(**versions: str) -> dict[str, str]:
    """nproc (the CPUs this process may use), CPU model, RAM, Python, then `versions` in the order
    given (e.g. ``NumPy=np.__version__``; names that are not identifiers via ``**{"sqlite-utils": ...}``),
    then the 1-, 5- and 15-minute load averages ("load average at start")."""
    cpu = _proc_field("/proc/cpuinfo", r"^model name\s*:\s*(.+)$") or platform.processor() or "unknown"
    kb = _proc_field("/proc/meminfo", r"^MemTotal:\s+(\d+)")
    return {
        "nproc": str(len(os.sched_getaffinity(0))),
        "CPU": cpu,
        "RAM": f"{int(kb) / 1024**2:.1f} GiB" if kb else "unknown",
        "Python": platform.python_version(),
        **{k: str(v) for k, v in versions.items()},
        "load average at start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def write_section(path: Path, heading: str, section: str) -> None:
    """Replace the section that starts with the line `heading` (e.g. ``## Freshness``), up to the next
    ``## `` heading, by `section` (which starts with that heading); append it if there is none."""
    text = path.read_text() if path.exists() else "# Benchmarks\n\n"
    m = re.search(rf"^{re.escape(heading)}\n", text, re.M)
    if m is None:
        text = text.rstrip("\n") + "\n\n" + section.rstrip("\n") + "\n"
    else:
        nxt = text.find("\n## ", m.end() - 1)
        text = text[: m.start()] + section.rstrip("\n") + "\n\n" + (text[nxt + 1 :] if nxt != -1 else "")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text.rstrip("\n") + "\n")
