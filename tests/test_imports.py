"""No import cycle among the modules of trainers and pipelines: a module's dependencies can be
read, changed and tested without the module itself coming back through them."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

PACKAGES = ("trainers", "pipelines")


def modules(root: Path, packages: tuple[str, ...]) -> dict[str, Path]:
    """Dotted name -> file of every module of the packages (a package is its __init__.py)."""
    found = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _run_at_import(body: list[ast.stmt]) -> list[ast.Import | ast.ImportFrom]:
    """The import statements that run when the module is imported: at top level and in the
    blocks of if, try, with and class statements; not in functions (deliberately lazy) and not
    under `if TYPE_CHECKING:` (read by type checkers only)."""
    found = []
    for statement in body:
        if isinstance(statement, ast.Import | ast.ImportFrom):
            found.append(statement)
        elif isinstance(statement, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        elif isinstance(statement, ast.If) and ast.unparse(statement.test).endswith(
            "TYPE_CHECKING"
        ):
            found += _run_at_import(statement.orelse)
        else:
            for block in ("body", "orelse", "finalbody", "handlers"):
                found += _run_at_import(getattr(statement, block, []))
    return found


def import_graph(root: Path, packages: tuple[str, ...] = PACKAGES) -> dict[str, set[str]]:
    """Module -> the modules of the packages that importing it imports."""
    known = modules(root, packages)
    graph = {}
    for name, path in known.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for statement in _run_at_import(ast.parse(path.read_text()).body):
            if isinstance(statement, ast.Import):
                targets |= {alias.name for alias in statement.names}
                continue
            base = statement.module or ""
            if statement.level:  # relative: from the importer's package, up level - 1
                anchor = package.split(".")[: len(package.split(".")) - statement.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in statement.names:
                submodule = f"{base}.{alias.name}"
                targets.add(submodule if submodule in known else base)
        graph[name] = {target for target in targets if target in known} - {name}
        # importing a.b.c runs a and a.b first, unless they are the importer's own packages,
        # which run before it anyway
        own = _packages_above(name) | {name}
        graph[name] |= {p for t in targets for p in _packages_above(t) if p in known} - own
    return graph


def _packages_above(name: str) -> set[str]:
    """'a.b.c' -> {'a', 'a.b'}."""
    parts = name.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts))}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None (depth-first search)."""
    done: set[str] = set()
    path: list[str] = []

    def visit(name: str) -> list[str] | None:
        if name in path:
            return [*path[path.index(name) :], name]
        if name in done:
            return None
        path.append(name)
        for target in sorted(graph[name]):
            if cycle := visit(target):
                return cycle
        path.pop()
        done.add(name)
        return None

    for name in sorted(graph):
        if cycle := visit(name):
            return cycle
    return None


def test_no_module_of_trainers_or_pipelines_imports_itself_back():
    graph = import_graph(REPO)
    assert {"trainers.data.format", "trainers.data.storage", "pipelines.cli"} <= graph.keys()
    assert "trainers.data.format" in graph["trainers.data.storage"]  # the walk sees imports
    cycle = find_cycle(graph)
    assert cycle is None, f"import cycle: {' -> '.join(cycle)}"


def test_the_format_module_imports_nothing_of_ours():
    """The shard schema is what the writer, the reader and the storage back-ends share; it uses
    none of them, not even lazily or for type hints."""
    tree = ast.parse((REPO / "trainers/data/format.py").read_text())
    imported = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            imported.append("." * node.level + (node.module or ""))
        elif isinstance(node, ast.Import):
            imported += [alias.name for alias in node.names]
    assert "pydantic" in imported
    assert [name for name in imported if name.startswith((*PACKAGES, "."))] == []


def test_the_walk_finds_a_cycle_through_a_package_and_ignores_lazy_imports(tmp_path):
    files = {
        "shop/__init__.py": "from shop.cart import Cart\n",
        "shop/cart.py": "from . import prices\nclass Cart: ...\n",
        "shop/prices/__init__.py": "",
        "shop/prices/table.py": (
            "from typing import TYPE_CHECKING\n"
            "if TYPE_CHECKING:\n    from shop.cart import Cart\n"
            "def total():\n    from shop.cart import Cart\n"
        ),
        "shop/prices/tax.py": "try:\n    from shop import Cart\nexcept ImportError: ...\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    graph = import_graph(tmp_path, ("shop",))
    assert graph["shop.prices.table"] == set()  # typing-only and lazy imports do not count
    assert find_cycle(graph) is None
    (tmp_path / "shop/prices/__init__.py").write_text("from shop.prices import tax\n")
    assert find_cycle(import_graph(tmp_path, ("shop",))) == [
        "shop",
        "shop.cart",
        "shop.prices",
        "shop.prices.tax",
        "shop",
    ]


def test_the_command_line_starts_without_the_heavy_packages():
    """`ganforge` checks what it was given before Prefect, Ray, MLflow or torch are imported
    (seconds each): importing the command line imports none of them."""
    heavy = ("prefect", "ray", "mlflow", "torch")
    probe = f"import sys, pipelines.cli; print(sorted(set(sys.modules) & set({heavy!r})))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
