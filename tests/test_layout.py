"""The package's shape: no import circle (module-level or inside functions), no module past
450 lines, and ``python -m jaxalign`` runs the command."""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "jaxalign"


def _is_main_guard(node: ast.AST) -> bool:
    """``if __name__ == "__main__":`` (what runs only as a script is not a dependency)."""
    test = getattr(node, "test", None)
    return (
        isinstance(node, ast.If)
        and isinstance(test, ast.Compare)
        and isinstance(test.left, ast.Name)
        and test.left.id == "__name__"
    )


def _imports(tree: ast.AST, name: str, is_package: bool) -> set[str]:
    """Every module ``name`` imports, at any depth, except under a ``__main__`` guard."""
    found: set[str] = set()
    stack = [tree]
    while stack:
        node = stack.pop()
        if _is_main_guard(node):
            continue
        if isinstance(node, ast.ImportFrom):
            if node.level:
                parts = name.split(".")
                base = parts[: len(parts) - node.level + (1 if is_package else 0)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        stack.extend(ast.iter_child_nodes(node))
    return found


def _graph() -> dict[str, set[str]]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts).removesuffix(".__init__")
        modules[name] = (ast.parse(path.read_text()), path.name == "__init__.py")
    graph = {}
    for name, (tree, is_package) in modules.items():
        deps = _imports(tree, name, is_package)
        # Importing through an enclosing package (``from jaxalign.tasks import images`` inside
        # jaxalign.tasks.clip) is how Python resolves a sibling, not a dependency on the package.
        graph[name] = {
            d for d in deps if d in modules and d != name and not name.startswith(d + ".")
        }
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                return [*path[path.index(dep) :], dep]
            if dep not in state and (found := visit(dep)):
                return found
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_circle():
    graph = _graph()
    assert "jaxalign.train" in graph["jaxalign.cli"]  # the check sees lazy imports
    assert "jaxalign.cli" not in graph["jaxalign.train"]  # argv is the command's alone
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])


def test_the_cycle_finder_finds_one():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_module_past_450_lines():
    long = {
        str(p.relative_to(PACKAGE)): n
        for p in PACKAGE.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > 450
    }
    assert not long, long


def test_python_dash_m_jaxalign_runs_the_command():
    out = subprocess.run(
        [sys.executable, "-m", "jaxalign", "--version"], capture_output=True, text=True, check=True
    )
    assert out.stdout.startswith("jaxalign ")
    out = subprocess.run(
        [sys.executable, "-m", "jaxalign", "train", "--help"], capture_output=True, text=True
    )
    assert out.returncode == 0 and "--workdir" in out.stdout
