"""The layout by role holds: which room may import which, checked on the source (ast)."""

from __future__ import annotations

import ast
from pathlib import Path

import kdlab

PACKAGE = Path(kdlab.__file__).resolve().parent
PLUGIN_ROOMS = {"methods", "metrics", "infra"}
# what a model may import of the core: its error type and the output type a language model's
# split head returns (both plain Python and torch, no pluggy)
MODEL_IMPORTS = {"kdlab.engine.errors", "kdlab.engine.heads"}


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module, imported names) for every import in a file, function-level ones included;
    ``from kdlab import X`` is resolved to the module that defines X."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [a.name for a in node.names]
            if node.module == "kdlab":
                out += [(kdlab._PUBLIC.get(n, f"kdlab.{n}"), [n]) for n in names]
            else:
                out.append((node.module, names))
    return out


def _room(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "kdlab" or len(parts) < 2:
        return None
    return parts[1].removesuffix(".py")


def _files():
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        yield path, (rel.parts[0].removesuffix(".py") if len(rel.parts) > 1 else rel.stem)


def test_models_and_speech_import_no_plugin_and_models_no_pluggy():
    bad = []
    for path, room in _files():
        if room not in ("models", "speech"):
            continue
        for module, _ in _imports(path):
            if _room(module) in PLUGIN_ROOMS:
                bad.append(f"{path.relative_to(PACKAGE)} imports {module}")
            if room == "models" and (module.split(".")[0] == "pluggy" or
                                     (_room(module) not in (None, "models") and module not in MODEL_IMPORTS)):
                bad.append(f"{path.relative_to(PACKAGE)} imports {module} (a model needs only torch and attrs)")
    assert bad == []


def test_no_plugin_imports_a_private_engine_name():
    bad = [f"{path.relative_to(PACKAGE)}: {module}.{name}"
           for path, room in _files() if room in PLUGIN_ROOMS
           for module, names in _imports(path) if _room(module) == "engine"
           for name in names if name.startswith("_")]
    assert bad == []


def _cycles(edges: dict[str, set[str]]) -> list[str]:
    """Every cycle a depth-first search of the import graph meets, as "a -> b -> a"."""
    state: dict[str, int] = {}
    cycles = []

    def visit(node, trail):
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                loop = trail[trail.index(nxt):] if nxt in trail else [nxt]
                cycles.append(" -> ".join([*loop, node, nxt]))
            elif nxt not in state:
                visit(nxt, [*trail, node])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [])
    return cycles


def test_no_import_cycle_between_folders():
    edges: dict[str, set[str]] = {}
    for path, room in _files():
        for module, _ in _imports(path):
            target = _room(module)
            if target and target != room:
                edges.setdefault(room, set()).add(target)
    assert _cycles(edges) == []  # import cycles between folders
    assert edges.get("engine", set()) == set()  # the core imports no room: it finds plugins by entry point


def test_a_model_imports_without_the_plugin_machinery():
    import subprocess
    import sys

    code = ("import sys; import kdlab.models.cnn, kdlab.models.crnn, kdlab.models.conformer_ctc; "
            "print('pluggy' in sys.modules, 'kdlab.engine.hookspecs' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    return ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)


def test_no_import_cycle_between_engine_modules():
    """Every import counts, those inside functions and under TYPE_CHECKING too: a cycle hidden
    in a function (preflight <-> runner) or a type hint (hookspecs <-> registry) is still one
    module that cannot be read without the other."""
    engine = {_module_name(p): p for p in sorted((PACKAGE / "engine").glob("*.py"))}
    edges = {m: {t for t, _ in _imports(p) if t in engine and t != m} for m, p in engine.items()}
    for module, path in engine.items():  # `from kdlab.engine import checkpoint` names a module too
        for target, names in _imports(path):
            edges[module] |= {f"{target}.{n}" for n in names if f"{target}.{n}" in engine} - {module}
    assert _cycles(edges) == []
