"""The package's structure, read from its source with ``ast`` (no module of it is imported):

(a) no import cycles among qexact's modules, counting module-level and function-level imports
    alike (an import moved into a function to dodge a cycle is still a cycle);
(b) no engine module imports an op, the graph, explain, an importer, the command line,
    conformance or another module built on the ops;
(c) no op module names a backend in code (``qnnpack``, ``fbgemm``, ``onednn``): not in an
    identifier, an import, or a string compared against (a comparison, a subscript, a dict key,
    a ``case``, ``getattr``'s name); docstrings, messages and comments citing sources may;
(d) no ``prepare_*`` function of the ops gives a parameter named ``engine`` a default.

``KNOWN_*`` list today's offenders, module by module, while the engine-table work moves them out;
``test_known_offenders_still_offend`` fails for an entry that no longer offends, so each list
only shrinks. Importing a submodule also runs its parent package's ``__init__``: those implicit
edges are left out (every module would otherwise be in a cycle through ``qexact/__init__``).
"""

from __future__ import annotations

import ast
from functools import lru_cache
from pathlib import Path

SOURCE = Path(__file__).resolve().parents[1] / "src" / "qexact"
BACKEND_WORDS = ("qnnpack", "fbgemm", "onednn")
ABOVE_ENGINES = ("qexact.ops", "qexact.graph", "qexact.explain", "qexact.importers",
                 "qexact.cli", "qexact.conformance", "qexact.serialization", "qexact.diagnose",
                 "qexact.demo", "qexact.report", "qexact.summary", "qexact.__main__",
                 "qexact.export")
"""Modules an engine must not import (nor the package ``qexact`` itself, which imports them)."""

KNOWN_IN_CYCLES: set[str] = set()
KNOWN_ENGINE_IMPORTS: set[str] = set()
KNOWN_BACKEND_NAMES: set[str] = set()
KNOWN_ENGINE_DEFAULTS: set[str] = set()


# --- reading the source ------------------------------------------------------------------------


@lru_cache(maxsize=None)
def modules() -> dict[str, tuple[Path, bool]]:
    """Every module of the package: dotted name -> (path, is a package ``__init__``)."""
    found = {}
    for path in sorted(SOURCE.rglob("*.py")):
        parts = list(path.relative_to(SOURCE.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        found[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return found


@lru_cache(maxsize=None)
def tree(name: str) -> ast.Module:
    path, _ = modules()[name]
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def imported_modules(name: str) -> dict[str, int]:
    """The qexact modules ``name`` imports (anywhere in it), each with the line of its first
    import. ``from X import Y`` imports module ``X.Y`` when there is one, else ``X``."""
    _, is_package = modules()[name]
    package = name if is_package else name.rpartition(".")[0]
    found: dict[str, int] = {}
    for node in ast.walk(tree(name)):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules() else base
                       for alias in node.names]
        else:
            continue
        for target in targets:
            if target in modules() and target != name:
                found.setdefault(target, node.lineno)
    return found


def import_graph() -> dict[str, dict[str, int]]:
    return {name: imported_modules(name) for name in modules()}


def cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each as its sorted
    members: every module of a component is in a cycle with every other."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def cycle_path(graph: dict[str, dict[str, int]], component: list[str]) -> str:
    """One cycle through the component's first module, as ``a:line -> b:line -> ... -> a``."""
    members, start = set(component), component[0]
    paths = {start: [start]}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for target in sorted(graph[node]):
            if target == start:
                path = paths[node] + [start]
                return " -> ".join(f"{a} (line {graph[a][b]})" for a, b in zip(path, path[1:])) \
                    + f" -> {start}"
            if target in members and target not in paths:
                paths[target] = paths[node] + [target]
                queue.append(target)
    return ", ".join(component)


def modules_in_cycles() -> tuple[set[str], list[str]]:
    graph = import_graph()
    components = cycles(graph)
    return {name for component in components for name in component}, \
        [cycle_path(graph, component) for component in components]


def engine_imports() -> dict[str, list[str]]:
    """Engine modules importing a module above the engines: module -> ``target (line)``."""
    offending = {}
    for name in modules():
        if name != "qexact.engines" and not name.startswith("qexact.engines."):
            continue
        bad = [f"{target} (line {line})" for target, line in imported_modules(name).items()
               if target == "qexact" or target.startswith(ABOVE_ENGINES)]
        if bad:
            offending[name] = bad
    return offending


def _strings(node: ast.AST):
    """The string constants of an expression compared against (descending into tuples, lists,
    sets: ``engine in ("qnnpack", ...)``)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        yield node
    elif isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        for item in node.elts:
            yield from _strings(item)


def backend_names(module: ast.Module) -> list[str]:
    """Where a module names a backend in code: ``line N: what 'text'``."""
    found = []

    def check(text: str | None, node: ast.AST, kind: str) -> None:
        if text and any(word in text.lower() for word in BACKEND_WORDS):
            found.append(f"line {node.lineno}: {kind} {text!r}")

    for node in ast.walk(module):
        if isinstance(node, ast.Import):
            for alias in node.names:
                check(alias.name, node, "import")
        elif isinstance(node, ast.ImportFrom):
            check(node.module, node, "import from")
            for alias in node.names:
                check(alias.name, node, "imported name")
        elif isinstance(node, ast.Name):
            check(node.id, node, "name")
        elif isinstance(node, ast.Attribute):
            check(node.attr, node, "attribute")
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            check(node.name, node, "definition")
        elif isinstance(node, ast.arg):
            check(node.arg, node, "parameter")
        elif isinstance(node, ast.keyword) and node.arg:
            check(node.arg, node.value, "keyword")
        elif isinstance(node, ast.Compare):
            for operand in [node.left, *node.comparators]:
                for constant in _strings(operand):
                    check(constant.value, constant, "compared string")
        elif isinstance(node, ast.Subscript):
            for constant in _strings(node.slice):
                check(constant.value, constant, "subscript")
        elif isinstance(node, ast.Dict):
            for key in node.keys:
                for constant in _strings(key) if key is not None else ():
                    check(constant.value, constant, "dict key")
        elif isinstance(node, ast.MatchValue):
            for constant in _strings(node.value):
                check(constant.value, constant, "case")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) \
                and node.func.id in ("getattr", "hasattr", "setattr") and len(node.args) > 1:
            for constant in _strings(node.args[1]):
                check(constant.value, constant, "attribute name")
    return found


def op_modules() -> list[str]:
    return [name for name in modules() if name == "qexact.ops" or name.startswith("qexact.ops.")]


def engine_defaults(module: ast.Module) -> list[str]:
    """A module's ``prepare_*`` functions whose ``engine`` parameter has a default."""
    found = []
    for node in ast.walk(module):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) \
                or not node.name.startswith("prepare_"):
            continue
        arguments = node.args
        positional = arguments.posonlyargs + arguments.args
        defaulted = positional[len(positional) - len(arguments.defaults):]
        defaulted += [arg for arg, default in zip(arguments.kwonlyargs, arguments.kw_defaults)
                      if default is not None]
        if any(arg.arg == "engine" for arg in defaulted):
            found.append(f"{node.name} (line {node.lineno})")
    return found


def offenders() -> dict[str, set[str]]:
    """Today's offending modules of each rule, by the name of its ``KNOWN_*`` set."""
    in_cycles, _ = modules_in_cycles()
    return {
        "KNOWN_IN_CYCLES": in_cycles,
        "KNOWN_ENGINE_IMPORTS": set(engine_imports()),
        "KNOWN_BACKEND_NAMES": {name for name in op_modules() if backend_names(tree(name))},
        "KNOWN_ENGINE_DEFAULTS": {name for name in op_modules()
                                  if engine_defaults(tree(name))},
    }


# --- the rules ---------------------------------------------------------------------------------


def test_the_source_is_found():
    assert {"qexact", "qexact.graph", "qexact.engines", "qexact.ops.linear"} <= set(modules())


def test_no_import_cycles():
    in_cycles, paths = modules_in_cycles()
    new = in_cycles - KNOWN_IN_CYCLES
    assert not new, (f"modules in import cycles: {sorted(new)}; cycles:\n  "
                     + "\n  ".join(path for path in paths if any(name in path for name in new)))


def test_engines_import_nothing_above_them():
    offending = {name: bad for name, bad in engine_imports().items()
                 if name not in KNOWN_ENGINE_IMPORTS}
    assert not offending, f"engine modules importing ops, graph or above: {offending}"


def test_ops_name_no_backend():
    offending = {name: backend_names(tree(name)) for name in op_modules()
                 if name not in KNOWN_BACKEND_NAMES and backend_names(tree(name))}
    assert not offending, f"op modules naming a backend ({', '.join(BACKEND_WORDS)}): {offending}"


def test_no_default_engine_in_op_preparation():
    offending = {name: engine_defaults(tree(name)) for name in op_modules()
                 if name not in KNOWN_ENGINE_DEFAULTS and engine_defaults(tree(name))}
    assert not offending, f"prepare_* functions with a default engine: {offending}"


def test_known_offenders_still_offend():
    """Each ``KNOWN_*`` entry is a module that still breaks its rule: remove fixed ones."""
    known = {"KNOWN_IN_CYCLES": KNOWN_IN_CYCLES, "KNOWN_ENGINE_IMPORTS": KNOWN_ENGINE_IMPORTS,
             "KNOWN_BACKEND_NAMES": KNOWN_BACKEND_NAMES,
             "KNOWN_ENGINE_DEFAULTS": KNOWN_ENGINE_DEFAULTS}
    current = offenders()
    stale = {key: sorted(entries - current[key]) for key, entries in known.items()
             if entries - current[key]}
    assert not stale, f"no longer offending, remove from the lists: {stale}"


def test_the_rules_catch_what_they_look_for():
    """Each check finds its fault in a small made-up source (so an empty result means clean)."""
    module = ast.parse(
        'from ..engines.qnnpack_add import KERNELS\n'
        'def prepare_x(a, *, engine="fbgemm"):\n'
        '    if engine.name == "onednn":\n'
        '        return a\n'
        'def prepare_y(a, engine="x86"):\n'
        '    return {"qnnpack": a}, getattr(a, "fbgemm_path")\n'
        'def prepare_z(a, *, engine):\n'
        '    """Cites fbgemm: a docstring may."""\n'
        '    return a\n')
    names = backend_names(module)
    assert [item.split(":")[0] for item in names] == ["line 1", "line 3", "line 6", "line 6"]
    assert any("compared string 'onednn'" in item for item in names)
    assert any("dict key 'qnnpack'" in item for item in names)
    assert any("attribute name 'fbgemm_path'" in item for item in names)
    assert [item.split(" ")[0] for item in engine_defaults(module)] == ["prepare_x", "prepare_y"]
    graph = {"a": {"b": 1}, "b": {"c": 2}, "c": {"a": 3}, "d": {"a": 4}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycle_path(graph, ["a", "b", "c"]) == "a (line 1) -> b (line 2) -> c (line 3) -> a"
