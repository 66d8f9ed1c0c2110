"""The package's import graph, read statically: no circles among attngen modules, and the
pipeline reads one direction (ir → dsl → lower → codegen → runtime; the rest on top)."""
from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx

import attngen

ROOT = Path(attngen.__file__).parent
# Lower stages first. `ir` is the data every stage shares, so the language (which builds
# Pattern objects) sits above it; see docs/design.md, "Import order".
STAGES = ["ir", "dsl", "lower", "codegen", "runtime"]
TOP = ("profile", "integrations", "cli", "bench", "distributed")


def module_name(path: Path) -> str:
    parts = ["attngen", *path.relative_to(ROOT).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def resolve(name: str, modules: set[str]) -> str | None:
    """The attngen module that `name` (a module, or a name inside one) lives in."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """Every attngen module `path` imports, at module level or inside functions."""
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # `from a import b` names the module a.b, or else a name that a defines.
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                     for alias in node.names]
        else:
            continue
        for name in names:
            target = resolve(name, modules)
            if target is not None and target != me:
                found.add(target)
    return found


def import_graph() -> nx.DiGraph:
    paths = sorted(ROOT.rglob("*.py"))
    modules = {module_name(p) for p in paths}
    graph = nx.DiGraph()
    graph.add_nodes_from(modules)
    for path in paths:
        for target in imports_of(path, modules):
            graph.add_edge(module_name(path), target)
    return graph


def rank(module: str) -> int:
    """A module's place in the pipeline; `len(STAGES)` for everything on top."""
    head = module.split(".")[1] if "." in module else ""
    if head in STAGES:
        return STAGES.index(head)
    return len(STAGES) if head.startswith(TOP) else -1


def test_graph_sees_module_and_function_imports() -> None:
    graph = import_graph()
    assert graph.has_edge("attngen.runtime.compiler", "attngen.codegen.render")
    assert graph.has_edge("attngen.lower.layout", "attngen.lower.classify")
    assert graph.has_edge("attngen.lower.layout", "attngen.dsl")  # inside layout()
    assert graph.number_of_edges() > 50


def test_no_import_circles() -> None:
    cycles = sorted(nx.simple_cycles(import_graph()), key=len)
    assert not cycles, "import circles:\n" + "\n".join(
        " -> ".join([*c, c[0]]) for c in cycles[:20])


def test_stages_never_import_later_ones() -> None:
    graph = import_graph()
    wrong = [f"{a} -> {b}" for a, b in sorted(graph.edges)
             if 0 <= rank(a) < len(STAGES) and rank(b) > rank(a)]
    assert not wrong, "imports against the pipeline:\n" + "\n".join(wrong)


def test_integrations_sit_below_profile_cli_and_bench() -> None:
    """The profiler runs models through the integrations, never the other way round."""
    graph = import_graph()
    above = ("attngen.profile", "attngen.cli", "attngen.bench")
    wrong = [f"{a} -> {b}" for a, b in sorted(graph.edges)
             if a.startswith("attngen.integrations") and b.startswith(above)]
    assert not wrong, "integrations importing what sits on them:\n" + "\n".join(wrong)
