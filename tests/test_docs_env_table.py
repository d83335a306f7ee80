"""The one table of environment variables (docs/operations.md) and the code agree.

Every variable the service's code reads is in the table, and every variable in the table
is read somewhere. "The code" is every .py file of the project outside the test suite and
the benchmarks, found by walking the tree (modules move; no path is written here), plus
the project's shell scripts (deploy_multi_partner.sh reads variables of its own).
"""

import ast
import re
from collections.abc import Iterator
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parents[1]
OPERATIONS = PROJECT_DIR / "docs" / "operations.md"
TABLE_HEADING = "## Environment variables"
# Not the service's code: the tests and benchmarks read variables of their own (the test
# suite's are named in the prose under the table), and the rest is not ours.
NOT_SCANNED = {"tests", "bench", "docs", "templates", "var", "staticfiles", "node_modules", "venv"}
# Variables in the table that no code of ours reads, only a tool the service runs under,
# each with the reason it is documented. None today: PROMETHEUS_MULTIPROC_DIR,
# GOOGLE_CLOUD_PROJECT and K_SERVICE are read by our own code too.
READ_ONLY_BY_TOOLS: dict[str, str] = {}
# django-environ's Env methods that do not read one variable.
ENV_METHODS_NOT_READING = {"read_env", "smart_cast", "parse_value"}
SHELL_READ = re.compile(r"\$\{([A-Z][A-Z0-9_]*)")
NAME = re.compile(r"`([A-Z][A-Z0-9_]*)`")


def project_files(pattern: str) -> Iterator[Path]:
    for entry in sorted(PROJECT_DIR.iterdir()):
        if entry.name.startswith(".") or entry.name in NOT_SCANNED:
            continue
        if entry.is_dir():
            yield from sorted(entry.rglob(pattern))
        elif entry.match(pattern):
            yield entry


def documented() -> list[str]:
    """The variables of the table under TABLE_HEADING, in order (first column)."""
    text = OPERATIONS.read_text()
    assert f"\n{TABLE_HEADING}\n" in text, f"docs/operations.md has no '{TABLE_HEADING}' section"
    section = re.split(r"\n## ", text.split(f"\n{TABLE_HEADING}\n", 1)[1], maxsplit=1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    assert rows and rows[0].split("|")[1].strip() == "variable", "the section's first table is not the variables'"
    return [name for row in rows[2:] for name in NAME.findall(row.split("|")[1])]


class EnvReads(ast.NodeVisitor):
    """The variable names one module reads from the environment.

    Forms: django-environ (`env("X")`, `env.str("X")`, `env.bool`, `env.int`, `env.float`,
    `env.list`, `env.url`, `env.email_url`, ... on a name bound to `environ.Env()`),
    `os.environ.get("X")`, `os.environ["X"]`, `"X" in os.environ`, `os.getenv("X")` (also
    as `from os import environ, getenv`), and a function that reads one of its parameters
    that way, called with the name (`_positive_seconds("GUNICORN_HEADER_TIMEOUT", ...)`).
    `os.environ.setdefault(...)` sets a default (DJANGO_SETTINGS_MODULE) and is no read.
    """

    def __init__(self, tree: ast.Module):
        self.constants = {
            target.id: node.value.value
            for node in tree.body
            if isinstance(node, ast.Assign)
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
            for target in node.targets
            if isinstance(target, ast.Name)
        }
        self.env_objects: set[str] = set()
        self.os_environ: set[str] = set()
        self.os_getenv: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call) and _is_env_class(node.value.func):
                self.env_objects |= {target.id for target in node.targets if isinstance(target, ast.Name)}
            if isinstance(node, ast.ImportFrom) and node.module == "os":
                for alias in node.names:
                    if alias.name == "environ":
                        self.os_environ.add(alias.asname or alias.name)
                    elif alias.name == "getenv":
                        self.os_getenv.add(alias.asname or alias.name)
        self.reads: list[tuple[str, int]] = []  # (name, line)
        self.forwarders: dict[str, int] = {}  # function name -> index of the parameter it reads
        self.unresolved: list[int] = []  # lines where a read's name cannot be told
        self._functions: list[ast.FunctionDef | ast.AsyncFunctionDef] = []

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self._functions.append(node)
        self.generic_visit(node)
        self._functions.pop()

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Call(self, node: ast.Call) -> None:
        name_arg = self._read_argument(node)
        if name_arg is not None:
            self._record(name_arg)
        self.generic_visit(node)

    def visit_Subscript(self, node: ast.Subscript) -> None:
        if isinstance(node.ctx, ast.Load) and self._is_os_environ(node.value):
            self._record(node.slice)
        self.generic_visit(node)

    def visit_Compare(self, node: ast.Compare) -> None:
        if any(isinstance(op, ast.In | ast.NotIn) for op in node.ops) and any(
            self._is_os_environ(comparator) for comparator in node.comparators
        ):
            self._record(node.left)
        self.generic_visit(node)

    def _read_argument(self, node: ast.Call) -> ast.expr | None:
        func = node.func
        if not node.args:
            return None
        if isinstance(func, ast.Name) and (func.id in self.env_objects or func.id in self.os_getenv):
            return node.args[0]
        if isinstance(func, ast.Attribute):
            owner = func.value
            if isinstance(owner, ast.Name) and owner.id in self.env_objects:
                return None if func.attr in ENV_METHODS_NOT_READING else node.args[0]
            if func.attr == "get" and self._is_os_environ(owner):
                return node.args[0]
            if func.attr == "getenv" and isinstance(owner, ast.Name) and owner.id == "os":
                return node.args[0]
        return None

    def _is_os_environ(self, node: ast.expr) -> bool:
        if isinstance(node, ast.Name):
            return node.id in self.os_environ
        return (
            isinstance(node, ast.Attribute)
            and node.attr == "environ"
            and isinstance(node.value, ast.Name)
            and node.value.id == "os"
        )

    def _record(self, arg: ast.expr) -> None:
        if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
            self.reads.append((arg.value, arg.lineno))
            return
        if isinstance(arg, ast.Name):
            if self._functions:
                params = [a.arg for a in self._functions[-1].args.args]
                if arg.id in params:
                    self.forwarders[self._functions[-1].name] = params.index(arg.id)
                    return
            if arg.id in self.constants:
                self.reads.append((self.constants[arg.id], arg.lineno))
                return
        self.unresolved.append(arg.lineno)


def _is_env_class(func: ast.expr) -> bool:
    """`environ.Env` or a bare `Env` (django-environ)."""
    return (isinstance(func, ast.Attribute) and func.attr == "Env") or (isinstance(func, ast.Name) and func.id == "Env")


def forwarded_reads(tree: ast.Module, forwarders: dict[str, int]) -> Iterator[tuple[str, int]]:
    """Calls of a forwarding function with the variable's name as a literal."""
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        called = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None
        if called not in forwarders:
            continue
        index = forwarders[called]
        if len(node.args) > index and isinstance(node.args[index], ast.Constant):
            yield node.args[index].value, node.lineno


def read_by_code() -> tuple[dict[str, list[str]], list[str]]:
    """{variable: ["file:line", ...]} over the project's code, and the reads whose name is not a literal."""
    reads: dict[str, list[str]] = {}
    unresolved: list[str] = []
    trees: dict[Path, ast.Module] = {}
    forwarders: dict[str, int] = {}
    for path in project_files("*.py"):
        tree = ast.parse(path.read_text(), filename=str(path))
        visitor = EnvReads(tree)
        visitor.visit(tree)
        trees[path] = tree
        forwarders.update(visitor.forwarders)
        where = path.relative_to(PROJECT_DIR)
        for name, line in visitor.reads:
            reads.setdefault(name, []).append(f"{where}:{line}")
        unresolved += [f"{where}:{line}" for line in visitor.unresolved]
    for path, tree in trees.items():
        for name, line in forwarded_reads(tree, forwarders):
            reads.setdefault(name, []).append(f"{path.relative_to(PROJECT_DIR)}:{line}")
    for path in project_files("*.sh"):
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            for name in SHELL_READ.findall(line):
                reads.setdefault(name, []).append(f"{path.relative_to(PROJECT_DIR)}:{number}")
    return reads, unresolved


def test_the_scan_finds_the_code_and_its_forms_of_reading():
    reads, unresolved = read_by_code()
    assert not unresolved, f"environment reads whose variable name is not a literal: {', '.join(unresolved)}"
    # One of each form the code uses, so a scan that finds nothing cannot pass the tests below.
    for name in ("DATABASE_URL", "EMAIL_URL", "K_SERVICE", "PORT", "GUNICORN_HEADER_TIMEOUT", "DRY_RUN"):
        assert name in reads, f"the scan no longer finds {name}: has the way it is read changed?"


def test_the_table_lists_each_variable_once():
    names = documented()
    repeated = sorted({name for name in names if names.count(name) > 1})
    assert not repeated, f"listed more than once in docs/operations.md: {', '.join(repeated)}"


def test_every_variable_the_code_reads_is_in_the_table():
    reads, _ = read_by_code()
    missing = sorted(set(reads) - set(documented()))
    assert not missing, "read by the code but missing from the table in docs/operations.md: " + "; ".join(
        f"{name} ({', '.join(reads[name])})" for name in missing
    )


def test_every_variable_in_the_table_is_read_somewhere():
    reads, _ = read_by_code()
    unread = sorted(set(documented()) - set(reads) - set(READ_ONLY_BY_TOOLS))
    assert not unread, f"in the table of docs/operations.md but read by no code: {', '.join(unread)}"


def test_there_is_one_table_of_variables():
    pages = [PROJECT_DIR / "README.md", *sorted((PROJECT_DIR / "docs").glob("*.md"))]
    tables = [
        f"{page.relative_to(PROJECT_DIR)}:{number}"
        for page in pages
        for number, line in enumerate(page.read_text().splitlines(), start=1)
        if re.match(r"\|\s*variable\s*\|", line)
    ]
    assert tables == ["docs/operations.md:" + str(_table_line())], f"tables of variables: {', '.join(tables)}"


def _table_line() -> int:
    lines = OPERATIONS.read_text().splitlines()
    start = lines.index(TABLE_HEADING)
    return next(number for number, line in enumerate(lines, start=1) if number > start and line.startswith("|"))
