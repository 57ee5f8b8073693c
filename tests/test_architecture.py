"""The house keeps its shape: docs/ARCHITECTURE.md's layers are the import order of simd/, with no
circle, counting imports inside functions; every function and class it names exists with the
parameters it shows; no module grows past 400 lines."""

from __future__ import annotations

import ast
import importlib
import inspect
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "simd"
DOC = REPO / "docs" / "ARCHITECTURE.md"
MAX_LINES = 400


def module_files() -> dict[str, Path]:
    """Every module of simd/ by dotted name ("simd", "simd.web.api", ...)."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> dict[str, int]:
    """The simd modules `name` imports anywhere in its file (module level or inside functions),
    each with the line of its first import. `from simd.x import y` counts as importing simd.x.y
    when that is a module, else simd.x."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: dict[str, int] = {}
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        for target in targets:
            while target and target not in modules and "." in target:
                target = target.rpartition(".")[0]
            if target in modules and target != name:
                found.setdefault(target, node.lineno)
    return found


def import_graph() -> dict[str, dict[str, int]]:
    modules = module_files()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def documented_layers() -> dict[str, int]:
    """Module -> layer from the table under '## Layers' (rows `| N | `a`, `b.c` | ... |`)."""
    text = DOC.read_text()
    section = text.split("\n## Layers", 1)[1].split("\n## ", 1)[0]
    layers: dict[str, int] = {}
    for m in re.finditer(r"^\|\s*(\d+)\s*\|([^|]*)\|", section, re.M):
        for mod in re.findall(r"`([\w.]+)`", m.group(2)):
            full = "simd" if mod == "simd" else f"simd.{mod}"
            assert full not in layers, f"{full} is listed twice in ARCHITECTURE.md's layers"
            layers[full] = int(m.group(1))
    return layers


def test_no_import_circle():
    graph = import_graph()
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(mod: str) -> None:
        state[mod] = "open"
        stack.append(mod)
        for dep in graph[mod]:
            if state.get(dep) == "open":
                circle = stack[stack.index(dep) :] + [dep]
                pytest.fail("import circle: " + " -> ".join(circle))
            if dep not in state:
                visit(dep)
        stack.pop()
        state[mod] = "done"

    for mod in sorted(graph):
        if mod not in state:
            visit(mod)


def test_every_module_has_a_documented_layer():
    layers, modules = documented_layers(), set(module_files())
    assert not modules - set(layers), f"modules missing from ARCHITECTURE.md's layers: {sorted(modules - set(layers))}"
    assert not set(layers) - modules, f"layers name modules that do not exist: {sorted(set(layers) - modules)}"


def test_imports_follow_the_layers():
    layers = documented_layers()
    wrong = []
    for mod, deps in sorted(import_graph().items()):
        for dep, line in sorted(deps.items()):
            if mod in layers and dep in layers and layers[dep] >= layers[mod]:
                wrong.append(f"{mod} (layer {layers[mod]}) imports {dep} (layer {layers[dep]}) at line {line}")
    assert not wrong, "imports against the layer order:\n" + "\n".join(wrong)


def test_the_layer_test_catches_a_function_level_import(tmp_path):
    """The AST walk sees imports inside functions, where circles used to hide."""
    (tmp_path / "a.py").write_text("def f():\n    from simd.daemon import Daemon\n")
    modules = {"simd.a": tmp_path / "a.py", "simd.daemon": tmp_path / "daemon.py"}
    assert imports_of("simd.a", modules["simd.a"], modules) == {"simd.daemon": 2}


def test_no_module_over_400_lines():
    long = {name: n for name, path in module_files().items() if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


# -- the interfaces ARCHITECTURE.md names ---------------------------------------------------------

_HEADING = re.compile(r"^### `(simd[\w.]*)`", re.M)
_CALL = re.compile(r"`([A-Za-z_][\w.]*)\(([^`]*?)\)(?: -> [^`]*)?`")


def documented_signatures() -> list[tuple[str, str, str]]:
    """(module, dotted name, parameters as written) for every `name(params)` code span under a
    '### `simd.module`' heading of the Interfaces section."""
    text = DOC.read_text().split("\n## Interfaces", 1)[1].split("\n## ", 1)[0]
    out = []
    headings = list(_HEADING.finditer(text))
    for i, h in enumerate(headings):
        body = text[h.end() : headings[i + 1].start() if i + 1 < len(headings) else len(text)]
        out += [(h.group(1), m.group(1), m.group(2)) for m in _CALL.finditer(body)]
    return out


def written_params(params: str) -> list[str]:
    """'source, *, name=None, max_pixels=...' -> ['source', '*', 'name', 'max_pixels']."""
    out, depth, current = [], 0, ""
    for ch in params + ",":
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        if ch == "," and depth == 0:
            if current.strip():
                out.append(current.split("=", 1)[0].split(":", 1)[0].strip())
            current = ""
        else:
            current += ch
    return out


def actual_params(obj) -> list[str]:
    """As written in the document; a method named on its class is shown without `self`."""
    out, star = [], False
    for p in inspect.signature(obj).parameters.values():
        if p.name == "self" and not out:
            continue
        if p.kind is p.KEYWORD_ONLY and not star:
            out.append("*")
            star = True
        if p.kind is p.VAR_POSITIONAL:
            out.append(f"*{p.name}")
            star = True
        elif p.kind is p.VAR_KEYWORD:
            out.append(f"**{p.name}")
        else:
            out.append(p.name)
    return out


def test_the_document_names_interfaces():
    assert len(documented_signatures()) >= 30


@pytest.mark.parametrize(("module", "name", "params"), documented_signatures(), ids=lambda v: str(v)[:40])
def test_documented_interface_exists_with_that_signature(module, name, params):
    obj = importlib.import_module(module)
    for part in name.split("."):
        assert hasattr(obj, part), f"{module} has no {name}"
        obj = getattr(obj, part)
    assert callable(obj), f"{module}.{name} is not callable"
    assert written_params(params) == actual_params(obj), f"{module}.{name}{inspect.signature(obj)}"
