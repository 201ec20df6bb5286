"""The package's shape, read from its source with ``ast``: no import cycle, the library never imports
the command line or the app, and every import inside a function says why it is there."""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "dinofeat"
#: The layers that may import anything (they sit on top); nothing else may import them.
TOP_LAYERS = ("dinofeat.cli", "dinofeat.app")


@dataclass(frozen=True)
class Import:
    """One ``import`` statement of ``module``: what it imports and where it stands."""

    module: str
    target: str
    line: int
    in_function: bool
    types_only: bool  # under ``if TYPE_CHECKING:`` (never runs)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def source_files() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


MODULES = {module_name(path) for path in source_files()}


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute module a ``from ... import`` names (relative imports resolved)."""
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _targets(module: str, is_package: bool, node: ast.Import | ast.ImportFrom) -> list[str]:
    """The dinofeat modules an import statement loads (``from a import b`` is module ``a.b`` when
    there is one, else ``a``)."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = _resolve(module, is_package, node)
        names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names]
    return sorted({name for name in names if name == "dinofeat" or name.startswith("dinofeat.")})


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_of(path: Path) -> list[Import]:
    """Every import statement of ``path`` that loads a dinofeat module, and where it stands."""
    module, is_package = module_name(path), path.name == "__init__.py"
    found: list[Import] = []

    def visit(node: ast.AST, in_function: bool, types_only: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                for target in _targets(module, is_package, child):
                    found.append(Import(module, target, child.lineno, in_function, types_only))
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                visit(child, True, types_only)
            elif isinstance(child, ast.If) and _is_type_checking(child):
                for part in child.body:
                    visit(ast.Module(body=[part], type_ignores=[]), in_function, True)
                for part in child.orelse:
                    visit(ast.Module(body=[part], type_ignores=[]), in_function, types_only)
            else:
                visit(child, in_function, types_only)

    visit(ast.parse(path.read_text(encoding="utf-8")), False, False)
    return found


def function_level_imports(path: Path) -> list[tuple[int, str]]:
    """``(line, source line)`` of every import statement inside a function of ``path`` (of any module)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    found = []
    for func in ast.walk(ast.parse("\n".join(lines))):
        if isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(func):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    found.append((node.lineno, lines[node.lineno - 1]))
    return sorted(set(found))


ALL_IMPORTS = [imp for path in source_files() for imp in imports_of(path)]


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` (as the modules along it, first repeated at the end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)) is not None:
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)) is not None:
            return cycle
    return None


def test_the_import_graph_is_read():
    """The walk sees what it must, so the tests below mean something."""
    assert "dinofeat.features.extractor" in MODULES and "dinofeat.cli" in MODULES
    edges = {(imp.module, imp.target) for imp in ALL_IMPORTS if not imp.in_function}
    assert ("dinofeat.features.extractor", "dinofeat.models.weights") in edges
    assert any(imp.in_function for imp in ALL_IMPORTS)
    assert any(imp.types_only for imp in ALL_IMPORTS)


def test_says_lazy_reads_the_line_and_the_comment_above_its_group():
    lines = [
        "    # lazy: heavy",
        "    import a",
        "    import b",
        "    x = 1",
        "    import c",
        "    import d  # lazy: d",
    ]
    assert [_says_lazy(lines, n) for n in (2, 3, 5, 6)] == [True, True, False, True]


def test_find_cycle_finds_a_cycle_and_only_a_cycle():
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycle_among_module_level_imports():
    graph: dict[str, set[str]] = {}
    for imp in ALL_IMPORTS:
        if not imp.in_function and not imp.types_only and imp.target != imp.module:
            graph.setdefault(imp.module, set()).add(imp.target)
    cycle = _find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_only_the_cli_and_the_app_import_the_cli_and_the_app():
    def in_top(name: str) -> bool:
        return any(name == top or name.startswith(top + ".") for top in TOP_LAYERS)

    wrong = sorted(f"{imp.module}:{imp.line} imports {imp.target}" for imp in ALL_IMPORTS if in_top(imp.target))
    wrong = [line for line in wrong if not in_top(line.split(":")[0])]
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize(
    "path",
    source_files(),
    ids=lambda p: str(p.relative_to(SRC)),
)
def test_function_level_imports_say_why(path):
    """An import inside a function is there only to keep ``import dinofeat`` and ``dinofeat --help``
    fast (or an optional dependency out of the way), and says so: ``# lazy: ...`` on its line or in
    the comment above it. The CLI and the app too: their modules are imported for ``--help``."""
    relative = path.relative_to(SRC).as_posix()
    lines = path.read_text(encoding="utf-8").splitlines()
    unexplained = [
        f"{relative}:{line}: {text.strip()}"
        for line, text in function_level_imports(path)
        if not _says_lazy(lines, line)
    ]
    assert not unexplained, "\n".join(unexplained)


def _says_lazy(lines: list[str], line: int) -> bool:
    """Whether the import on ``line`` (from 1) carries ``# lazy`` on its line, or in the comment
    line just above it or above the group of import lines it belongs to."""
    index = line - 1
    if "# lazy" in lines[index]:
        return True
    index -= 1
    while index >= 0 and lines[index].strip().startswith(("import ", "from ")):
        index -= 1
    return index >= 0 and lines[index].strip().startswith("#") and "# lazy" in lines[index]
