"""The code keeps a shape a reader can hold: no import circles among the project's modules, and no module in
deploy/, trainer/ or remote_scripts/ over MAX_LINES lines.

- A circle is read from the module-level imports (`import x`, `from x import y`, `from . import y`, those
  under a module-level `if` or `try` included; not those inside a function, which run later). A function-level
  import that only hid a circle is a circle still: it is found by reading it as a module-level one, which
  `test_function_level_imports_hide_no_circle` does.
- A module over MAX_LINES lines is split by job, or named in LONG_MODULES with the reason it stays.
- A function over MAX_FUNCTION_LINES lines (its docstring and nested functions included) is split, or named in
  LONG_FUNCTIONS with the reason it stays (a one-line comment above it says the same).

A fast test (tests/support/kinds.py): it reads the source, it imports none of it.
"""

import ast

import pytest

from tests.support.helpers import ROOT

PACKAGES = ("trainer", "deploy")
SCRIPTS = ROOT / "remote_scripts"  # run from their folder on the host: they import each other by bare name
MAX_LINES = 300
SIZE_CHECKED = ("deploy", "trainer", "remote_scripts")
# module -> why it stays over MAX_LINES (short on purpose: each one is a promise to split it)
LONG_MODULES = {
    "trainer/storage/uploader.py": "the uploader's loop as one class around one record (snapshot, upload, pointer, end), "
                                   "26 lines over: split with the next change to it",
}

MAX_FUNCTION_LINES = 50
# "path:function" (a method as Class.method) -> why it stays over MAX_FUNCTION_LINES; short on purpose, as LONG_MODULES
LONG_FUNCTIONS = {
    "trainer/training/loop.py:fit": "one epoch's steps in the order every worker takes them, read top to bottom",
    "trainer/cli.py:build_parser": "the command line as one table, an option a line",
    "deploy/tasks/plumbing.py:host_task": "the one wrapper of every task, its steps in the order they apply",
}


def project_modules():
    """{dotted module name: path} for the packages, and remote_scripts' modules by their bare name."""
    modules = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    for path in sorted(SCRIPTS.glob("*.py")):
        modules[path.stem] = path
    return modules


def _resolve(node, name, package):
    """The absolute module name of an `ImportFrom` in `package`."""
    if not node.level:
        return node.module
    base = package.split(".")[: len(package.split(".")) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def imported_names(tree, name, is_package, modules, include_functions=False):
    """The project modules that module `name` imports at module level (or anywhere, with include_functions)."""
    package = name if is_package else name.rpartition(".")[0]
    found = set()

    def visit(stmts):
        for node in stmts:
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                source = _resolve(node, name, package)
                found.add(source)
                found.update(f"{source}.{alias.name}" for alias in node.names)  # `from pkg import submodule`
            elif isinstance(node, (ast.If, ast.Try, ast.With)):
                visit([*node.body, *getattr(node, "orelse", []), *getattr(node, "finalbody", []),
                       *(s for h in getattr(node, "handlers", []) for s in h.body)])
            elif include_functions and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                visit(list(ast.walk(node))[1:])

    visit(tree.body)
    # importing a.b.c runs a and a.b first: a circle through a package's __init__ is a circle too
    return {m for m in found if m in modules and m != name}


def import_graph(include_functions=False):
    modules = project_modules()
    graph = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        graph[name] = imported_names(tree, name, path.name == "__init__.py", modules, include_functions)
    return graph


def cycles(graph):
    """Every strongly connected component of more than one module (Tarjan), each as one circle's path."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def strongconnect(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(circle_path(graph, set(component)) + f"  (the circle's modules: {', '.join(sorted(component))})")

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)
    return found


def circle_path(graph, component):
    """One circle through the component's first module, as 'a -> b -> a' (breadth-first, so the shortest)."""
    start = min(component)
    paths, seen = [[start]], {start}
    while paths:
        path = paths.pop(0)
        for w in sorted(graph[path[-1]] & component):
            if w == start:
                return " -> ".join([*path, start])
            if w not in seen:
                seen.add(w)
                paths.append([*path, w])
    return " <-> ".join(sorted(component))


def test_the_cycle_finder_finds_a_circle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == ["a -> b -> c -> a  (the circle's modules: a, b, c)"]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_circles():
    found = cycles(import_graph())
    assert found == [], "import circles (module level):\n  " + "\n  ".join(found)


def test_function_level_imports_hide_no_circle():
    """A function-level import that exists for start-up speed (boto3, TensorFlow) imports no project module
    that imports back; one that does only hides a circle."""
    found = cycles(import_graph(include_functions=True))
    assert found == [], "import circles (counting imports inside functions):\n  " + "\n  ".join(found)


def module_lengths():
    for folder in SIZE_CHECKED:
        for path in sorted((ROOT / folder).rglob("*.py")):
            yield path.relative_to(ROOT).as_posix(), len(path.read_text().splitlines())


def test_no_module_over_max_lines():
    long = [f"{name}: {lines} lines" for name, lines in module_lengths() if lines > MAX_LINES and name not in LONG_MODULES]
    assert long == [], "split these by job (or name them in LONG_MODULES with the reason they stay):\n  " + "\n  ".join(long)


@pytest.mark.parametrize("name", sorted(LONG_MODULES))
def test_the_long_modules_are_still_long(name):
    """An entry of LONG_MODULES goes once its module is split."""
    assert len((ROOT / name).read_text().splitlines()) > MAX_LINES, f"{name} fits now: remove it from LONG_MODULES"


def function_lengths():
    """("path:function", lines) of every module-level function and method in SIZE_CHECKED."""
    for folder in SIZE_CHECKED:
        for path in sorted((ROOT / folder).rglob("*.py")):
            name = path.relative_to(ROOT).as_posix()
            for node in ast.parse(path.read_text(), str(path)).body:
                methods = node.body if isinstance(node, ast.ClassDef) else [node]
                prefix = f"{node.name}." if isinstance(node, ast.ClassDef) else ""
                for f in methods:
                    if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef)):
                        yield f"{name}:{prefix}{f.name}", f.end_lineno - f.lineno + 1


def test_no_function_over_max_lines():
    long = [f"{name}: {lines} lines" for name, lines in function_lengths() if lines > MAX_FUNCTION_LINES and name not in LONG_FUNCTIONS]
    assert long == [], "split these (or name them in LONG_FUNCTIONS with the reason they stay):\n  " + "\n  ".join(long)


@pytest.mark.parametrize("name", sorted(LONG_FUNCTIONS))
def test_the_long_functions_are_still_long(name):
    """An entry of LONG_FUNCTIONS goes once its function is split."""
    lengths = dict(function_lengths())
    assert name in lengths, f"{name} is gone: remove it from LONG_FUNCTIONS"
    assert lengths[name] > MAX_FUNCTION_LINES, f"{name} fits now: remove it from LONG_FUNCTIONS"
