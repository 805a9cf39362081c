"""The layout the tree keeps: module and function sizes, no import cycle, who may import whom.

Read from the source with `ast`, never by importing the package, so it is quick and
sees every module (a module nothing imports too). One test per rule; each failure
names the file, the rule and the figure. The installed package is read from
setup.cfg's `package_dir` (`yptask.web = web`, ...), so a module is named here as
it is imported.
"""

from __future__ import annotations

import ast
import configparser
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

MAX_MODULE_LINES = 450
MAX_FUNCTION_LINES = 60
MAX_NODE_LINES = 350
# The codec's hot paths: one flat if-chain each, on purpose (a call per branch costs).
LONG_FUNCTIONS_ALLOWED = {("yptask/wire/codec.py", "_encode"),
                          ("yptask/wire/decode.py", "_decode")}
NODE = "yptask/node.py"
# Only node.py wires the concrete tree and the web surface into the node.
WIRING_ONLY = ("yptask.supervisors", "yptask.web")
# The worker side runs in a worker process: the standard library and the protocol only.
# The worker side runs in the worker process: the protocol, and the publisher client for
# BaseTask.cast/call (standard library only, like the runner).
WORKER_SIDE_ALLOWED = ("yptask.wire", "yptask.errors", "yptask.tasks", "yptask.client",
                       "yptask.http_connection")


@dataclass(frozen=True)
class Module:
    """One source file of the installed package."""

    name: str  # as imported: yptask.web.rpc
    path: Path
    tree: ast.Module

    @property
    def rel(self) -> str:
        return self.path.relative_to(ROOT).as_posix()

    @property
    def is_package(self) -> bool:
        return self.path.name == "__init__.py"


def package_dirs() -> dict[str, Path]:
    """Package name -> its directory, from setup.cfg (`yptask.web = web`, ...)."""
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    dirs = {}
    for line in cfg["options"]["package_dir"].strip().splitlines():
        name, _, folder = (part.strip() for part in line.partition("="))
        dirs[name] = ROOT / folder
    return dirs


def load_modules() -> dict[str, Module]:
    modules: dict[str, Module] = {}
    for package, folder in package_dirs().items():  # the mapped directories are apart
        for path in sorted(folder.rglob("*.py")):
            parts = path.relative_to(folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            name = ".".join((package, *parts))
            modules[name] = Module(name, path, ast.parse(path.read_text(), str(path)))
    return modules


MODULES = load_modules()


def imported_names(module: Module, node: ast.AST, *, deferred: bool) -> Iterator[str]:
    """The modules that `node` imports, resolved against the package's modules.

    `deferred=False` keeps to the imports run when the module is imported (module and
    class level, `if TYPE_CHECKING:` included); True adds those inside functions.
    """
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            if deferred:
                yield from imported_names(module, child, deferred=deferred)
            continue
        if isinstance(child, ast.Import):
            yield from (alias.name for alias in child.names)
        elif isinstance(child, ast.ImportFrom):
            base = resolve_from(module, child)
            for alias in child.names:
                sub = f"{base}.{alias.name}"
                yield sub if sub in MODULES else base
        else:
            yield from imported_names(module, child, deferred=deferred)


def resolve_from(module: Module, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    package = module.name if module.is_package else module.name.rpartition(".")[0]
    for _ in range(node.level - 1):
        package = package.rpartition(".")[0]
    return f"{package}.{node.module}" if node.module else package


def within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def line_count(path: Path) -> int:
    return len(path.read_text().splitlines())


def test_the_layout_reads_the_whole_package() -> None:
    # Given setup.cfg's mapping, the modules found include each mapped directory's.
    assert {"yptask.node", "yptask.web.rpc", "yptask.tasks.runner",
            "yptask.supervisors.worker", "yptask.conf"} <= set(MODULES)


def test_no_module_is_over_450_lines() -> None:
    too_long = [f"{m.rel}: {n} lines, over the {MAX_MODULE_LINES}-line limit for a module"
                for m in MODULES.values() if (n := line_count(m.path)) > MAX_MODULE_LINES]
    assert not too_long, "\n".join(too_long)


def test_no_function_is_over_60_lines() -> None:
    too_long = []
    for m in MODULES.values():
        for node in ast.walk(m.tree):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            # From the def line (decorators not counted) through the function's last line.
            n = (node.end_lineno or node.lineno) - node.lineno + 1
            if n > MAX_FUNCTION_LINES and (m.rel, node.name) not in LONG_FUNCTIONS_ALLOWED:
                too_long.append(f"{m.rel}:{node.lineno}: function {node.name} is {n} lines, "
                                f"over the {MAX_FUNCTION_LINES}-line limit")
    assert not too_long, "\n".join(too_long)


def test_the_codec_hot_paths_named_as_exempt_exist() -> None:
    # An exemption for a function that is gone, or was renamed, would hide nothing: drop it.
    defined = {(m.rel, node.name) for m in MODULES.values() for node in ast.walk(m.tree)
               if isinstance(node, ast.FunctionDef)}
    missing = LONG_FUNCTIONS_ALLOWED - defined
    assert not missing, f"exempt from the function-length limit, yet not defined: {missing}"


def test_node_py_is_at_most_350_lines() -> None:
    n = line_count(ROOT / NODE)
    assert n <= MAX_NODE_LINES, (f"{NODE}: {n} lines, over the {MAX_NODE_LINES}-line limit "
                                 "for the node's wiring")


def test_no_import_cycle() -> None:
    graph = {name: sorted({i for i in imported_names(m, m.tree, deferred=False)
                           if i in MODULES and i != name})
             for name, m in MODULES.items()}
    cycles = [c for c in strongly_connected(graph) if len(c) > 1]
    described = [f"{MODULES[c[0]].rel}: import cycle of {len(c)} modules: "
                 + " -> ".join(one_cycle(graph, c)) for c in cycles]
    assert not described, "\n".join(described)


def test_only_node_py_imports_the_supervisors_and_web() -> None:
    wrong = []
    for m in MODULES.values():
        if within(m.name, ("yptask.supervisors", "yptask.web", "yptask.tasks", "yptask.conf")):
            continue  # the other mapped directories: not under yptask/
        if m.rel == NODE:
            continue
        bad = sorted({i for i in imported_names(m, m.tree, deferred=True)
                      if within(i, WIRING_ONLY)})
        if bad:
            wrong.append(f"{m.rel}: imports {', '.join(bad)}; only {NODE} may import "
                         f"{' or '.join(WIRING_ONLY)}")
    assert not wrong, "\n".join(wrong)


def test_the_worker_side_imports_only_the_stdlib_and_the_protocol() -> None:
    wrong = []
    for m in MODULES.values():
        if not within(m.name, ("yptask.tasks",)):
            continue
        bad = sorted({i for i in imported_names(m, m.tree, deferred=True)
                      if i.partition(".")[0] not in sys.stdlib_module_names
                      and not within(i, WORKER_SIDE_ALLOWED)})
        if bad:
            wrong.append(f"{m.rel}: imports {', '.join(bad)}; the worker side may import "
                         "only the standard library, yptask.wire, yptask.errors, "
                         f"yptask.tasks and the client")
    assert not wrong, "\n".join(wrong)


def test_the_rules_catch_what_they_are_for(tmp_path: Path) -> None:
    # Given a small tree with a cycle, a deferred import and a relative one,
    # when the helpers read it, then they see each as the rules need.
    source = ("from __future__ import annotations\nfrom typing import TYPE_CHECKING\n"
              "from . import decode\nfrom .codec import Atom\n"
              "if TYPE_CHECKING:\n    import yptask.web.rpc\n"
              "def f():\n    import yptask.supervisors.task\n")
    m = Module("yptask.wire.a", tmp_path / "a.py", ast.parse(source))
    eager = set(imported_names(m, m.tree, deferred=False))
    assert {"yptask.wire.decode", "yptask.wire.codec", "yptask.web.rpc"} <= eager
    assert "yptask.supervisors.task" not in eager
    assert "yptask.supervisors.task" in set(imported_names(m, m.tree, deferred=True))
    graph = {"a": ["b"], "b": ["c"], "c": ["a"], "d": ["a"]}
    assert [sorted(c) for c in strongly_connected(graph) if len(c) > 1] == [["a", "b", "c"]]
    assert one_cycle(graph, ["a", "b", "c"]) == ["a", "b", "c", "a"]


def strongly_connected(graph: dict[str, list[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components, iteratively (no recursion limit)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    for root, root_edges in graph.items():
        if root in index:
            continue
        work = [(root, iter(root_edges))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, edges = work[-1]
            for nxt in edges:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(graph[nxt])))
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    components.append(sorted(component))
    return components


def one_cycle(graph: dict[str, list[str]], component: list[str]) -> list[str]:
    """A path from the component's first module back to itself, within the component."""
    members, start = set(component), component[0]
    paths = {start: [start]}
    frontier = [start]
    while frontier:  # breadth first, so the path shown is a shortest one
        nxt_frontier = []
        for node in frontier:
            for nxt in graph[node]:
                if nxt == start:
                    return [*paths[node], start]
                if nxt in members and nxt not in paths:
                    paths[nxt] = [*paths[node], nxt]
                    nxt_frontier.append(nxt)
        frontier = nxt_frontier
    return component
