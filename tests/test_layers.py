"""The import graph of the project runs one way: apps -> partners -> infra, and no cycle.

Read from the source (every import, at module level or inside a function), so an import
added anywhere that climbs a floor or closes a loop fails here, naming the file and line.
"""

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The service's packages; tests/ and bench/ stand outside the graph.
PACKAGES = ("infra", "partners", "conversions", "publishers", "reconciliation", "health", "postback_site")
# What each package may import of the others (one direction of knowledge).
MAY_IMPORT = {
    "infra": set(),
    "partners": {"infra"},
    "conversions": {"infra", "partners"},
    "publishers": {"infra", "partners", "conversions"},
    "reconciliation": {"infra", "partners", "conversions"},
    # Channel health watches the signals of every floor below it.
    "health": {"infra", "partners", "conversions", "publishers", "reconciliation"},
    # The project shell: settings, urls, wsgi, views. Nothing imports it.
    "postback_site": {"infra", "partners", "conversions", "publishers", "reconciliation", "health"},
}


def _modules() -> dict[str, Path]:
    modules = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join(parts)] = path
    return modules


MODULES = _modules()


def _resolve(name: str) -> str | None:
    # The project module an imported name lives in (`a.b.func` -> `a.b`), if any.
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str, path: Path) -> list[tuple[str, int]]:
    """(imported project module, line) for every import in `path`."""
    found = []
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                source = ".".join([*base, *([node.module] if node.module else [])])
            else:
                source = node.module or ""
            names = [source, *(f"{source}.{alias.name}" for alias in node.names)]
        for name in names:
            target = _resolve(name)
            if target and target != module:
                found.append((target, node.lineno))
    return found


GRAPH = {module: _imports(module, path) for module, path in MODULES.items()}


def test_the_graph_is_read():
    assert "infra.databases.router" in MODULES and "conversions.ingest.pipeline" in MODULES
    assert ("infra.databases", 0) not in GRAPH["conversions.ingest.store"]
    assert any(target.startswith("infra.") for target, _ in GRAPH["conversions.ingest.store"])


def test_no_import_climbs_a_floor():
    violations = []
    for module, imports in GRAPH.items():
        package = module.split(".")[0]
        for target, line in imports:
            other = target.split(".")[0]
            if other != package and other not in MAY_IMPORT[package]:
                violations.append(f"{MODULES[module].relative_to(ROOT)}:{line} imports {target}")
    assert not violations, "imports against the layers:\n" + "\n".join(sorted(set(violations)))


def test_postback_site_is_imported_by_no_other_package():
    importers = [
        f"{MODULES[module].relative_to(ROOT)}:{line}"
        for module, imports in GRAPH.items()
        if not module.startswith("postback_site")
        for target, line in imports
        if target.startswith("postback_site")
    ]
    assert not importers, importers


def test_no_module_imports_itself_back():
    # Tarjan's strongly connected components over every import.
    edges = defaultdict(set)
    for module, imports in GRAPH.items():
        edges[module].update(target for target, _ in imports)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in edges[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in MODULES:
        if module not in index:
            visit(module)
    assert not cycles, f"import cycles: {cycles}"
