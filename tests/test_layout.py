"""The package's shape: no import cycle, and every import goes down the layers of the flow of mail.

Imports are read from the source with ``ast``, function-level and ``TYPE_CHECKING`` ones too,
so an import hidden inside a function cannot close a circle unseen. The implicit import of a
module's parent package is not counted: it is how Python finds the module, not a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import mailrouter

ROOT = Path(mailrouter.__file__).parent

# Lowest first: a module may import its own layer and the layers before it, never later ones.
LAYERS = [
    {"errors", "replies", "message", "bounce", "config", "queue"},
    {"state"},
    {"journal"},
    {"routing"},
    {"outbound"},
    {"confirm"},  # confirmations: kept in a state store, sent through the relay
    {"inbound"},
    {"runtime"},
    {"compat"},  # Salmon's and Lamson's layouts over routing, outbound and state
    {"cli", "console", "testing", "pytest_plugin", "__init__", "__main__"},
]
# The deprecated import paths kept for this release: each re-exports one outbound module.
SHIMS = {"relay", "response", "views"}


def _modules() -> dict[str, Path]:
    found = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__" and len(parts) > 1:
            parts.pop()
        found[".".join(["mailrouter", *parts])] = path
    return found


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The mailrouter modules ``name`` imports, wherever in the file the import is."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                full = f"{base}.{alias.name}"
                targets.add(full if full in known else base)
    return {target for target in targets if target in known and target != name}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, set(modules)) for name, path in modules.items()}


def _layer(module: str) -> int:
    top = module.split(".")[1] if "." in module else "__init__"
    return next(rank for rank, layer in enumerate(LAYERS) if top in layer | SHIMS)


def test_no_import_cycle() -> None:
    graph = _graph()
    visiting: list[str] = []
    done: set[str] = set()

    def visit(module: str) -> None:
        if module in done:
            return
        assert module not in visiting, " -> ".join([*visiting[visiting.index(module) :], module])
        visiting.append(module)
        for target in sorted(graph[module]):
            visit(target)
        visiting.pop()
        done.add(module)

    for module in sorted(graph):
        visit(module)


def test_imports_go_down_the_layers() -> None:
    upward = [
        f"{module} imports {target}"
        for module, targets in _graph().items()
        if module.split(".")[-1] not in SHIMS
        for target in targets
        if _layer(target) > _layer(module)
    ]
    assert upward == []


def test_every_package_is_placed_in_a_layer() -> None:
    tops = {module.split(".")[1] for module in _graph() if "." in module}
    placed = set().union(*LAYERS) | SHIMS
    assert tops <= placed, tops - placed


def test_the_graph_sees_function_level_imports(tmp_path: Path) -> None:
    source = tmp_path / "probe.py"
    source.write_text("def f():\n    from mailrouter.runtime import workers\n")
    known = set(_modules())
    assert _imports("mailrouter.probe", source, known) == {"mailrouter.runtime.workers"}
