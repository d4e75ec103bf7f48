"""The module graph of jepa_eval and pretrain has no import circles (function-local imports count: they only
hide a circle), and jepa_eval never needs pretrain below its command layer (pretrain builds on jepa_eval)."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("jepa_eval", "pretrain")
# the command layer may drive pretraining; nothing under it may depend on pretrain
MAY_IMPORT_PRETRAIN = ("jepa_eval.commands", "jepa_eval.demo")


def _may_import_pretrain(name: str) -> bool:
    return name in MAY_IMPORT_PRETRAIN or name.startswith("jepa_eval.commands.")


def modules(root: Path = ROOT) -> dict[str, Path]:
    found = {}
    for pkg in PACKAGES:
        for path in sorted((root / pkg).rglob("*.py")):
            name = ".".join(path.relative_to(root).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = path
    return found


def _known(name: str, mods: dict[str, Path]) -> str | None:
    """The module ``name`` names, or the nearest enclosing known module (``pkg.mod.func`` -> ``pkg.mod``)."""
    while name and name not in mods:
        name = name.rpartition(".")[0]
    return name or None


def _runtime_nodes(tree: ast.AST):
    """Every node that can execute: the bodies of ``if TYPE_CHECKING:`` blocks (annotations only) are skipped."""
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", getattr(node.test, "attr", None)) == "TYPE_CHECKING":
            node.body = []
    yield from ast.walk(tree)


def import_graph(mods: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the modules it imports anywhere in its body (type-checking-only imports aside).
    ``from pkg import sub`` is an edge to ``pkg.sub`` when that is a module (not to ``pkg``: a submodule is
    not a dependency of its package's ``__init__``)."""
    graph: dict[str, set[str]] = {name: set() for name in mods}
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in _runtime_nodes(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    parts = package.split(".")
                    base = ".".join(parts[:len(parts) - (node.level - 1)] + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in mods]
                targets = subs if len(subs) == len(node.names) else [base, *subs]
            for t in targets:
                known = _known(t, mods)
                if known and known != name:
                    graph[name].add(known)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            v, children = work[-1]
            w = next(children, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph.get(w, ())))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    found.append(sorted(comp))
    return found


def pretrain_importers(graph: dict[str, set[str]]) -> dict[str, list[str]]:
    """jepa_eval modules outside the command layer that import pretrain, with what they import."""
    return {name: sorted(t for t in targets if t.split(".")[0] == "pretrain") for name, targets in graph.items()
            if name.startswith("jepa_eval.") and not _may_import_pretrain(name)
            and any(t.split(".")[0] == "pretrain" for t in targets)}


def test_no_import_circles():
    assert cycles(import_graph(modules())) == []


def test_jepa_eval_below_the_command_layer_never_imports_pretrain():
    assert pretrain_importers(import_graph(modules())) == {}


def test_the_checker_sees_circles_also_through_function_local_imports(tmp_path):
    """The check itself: a circle closed only inside a function body is found; a package importing its own
    submodules (``from . import x``) is not one."""
    pkg = tmp_path / "jepa_eval"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from . import a\n")
    (pkg / "a.py").write_text("from .b import thing\n")
    (pkg / "b.py").write_text("def thing():\n    from .a import other\n    return other\n")
    (pkg / "sub" / "__init__.py").write_text("from .c import x\n")
    (pkg / "sub" / "c.py").write_text("from . import d\nx = 1\n")
    (pkg / "sub" / "d.py").write_text("import os\n")
    (tmp_path / "pretrain").mkdir()
    (tmp_path / "pretrain" / "__init__.py").write_text("import jepa_eval.sub.c\n")
    graph = import_graph(modules(tmp_path))
    assert graph["jepa_eval.sub.c"] == {"jepa_eval.sub.d"}
    assert cycles(graph) == [["jepa_eval.a", "jepa_eval.b"]]
    (pkg / "b.py").write_text("def thing():\n    import pretrain\n")
    graph = import_graph(modules(tmp_path))
    assert cycles(graph) == [] and pretrain_importers(graph) == {"jepa_eval.b": ["pretrain"]}
    (pkg / "commands").mkdir()
    (pkg / "commands" / "__init__.py").write_text("")
    (pkg / "commands" / "run.py").write_text("from pretrain import x\n")
    assert set(pretrain_importers(import_graph(modules(tmp_path)))) == {"jepa_eval.b"}
