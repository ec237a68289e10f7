"""The package's wings import downwards only (issue 13): the rule is checked on the source, so it outlives any change.

Layers, bottom to top (a module may import its own layer and the layers below it):

====  =========================================================  ============================================
rank  wing                                                       what
====  =========================================================  ============================================
0     ``mcdrl`` (``__init__``), ``errors``, ``paths``, ``utils``  shared basics
1     ``networks``                                               the paper's parts, MCDRLNet, losses, prompts
2     ``transforms``, ``io``, ``synthetic``, ``datalists``         data in and out
3     ``engines``                                                how a run trains
4     ``evaluation``, ``deploy``                                 what measures; the ways out (siblings)
5     ``demo``                                                   the demo application
====  =========================================================  ============================================

``evaluation`` and ``deploy`` are siblings: neither imports the other. Within a wing, no modules import each other in a
circle. Every import counts, including those inside functions, relative ones, and
``importlib.import_module("mcdrl....")`` calls with a literal name.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "custom" / "mcdrl"

RANK = {"": 0, "errors": 0, "paths": 0, "utils": 0, "networks": 1, "transforms": 2, "io": 2, "synthetic": 2, "datalists": 2,
        "engines": 3, "evaluation": 4, "deploy": 4, "demo": 5}
SIBLINGS = {frozenset({"evaluation", "deploy"})}


def module_name(path: Path, root: Path = PKG) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def wing_of(module: str) -> str:
    """``mcdrl.networks.head`` -> ``networks``; ``mcdrl`` -> ``""``."""
    parts = module.split(".")
    if parts[0] != "mcdrl":
        raise ValueError(module)
    return parts[1] if len(parts) > 1 else ""


def imported_modules(path: Path, root: Path = PKG) -> list[tuple[int, str]]:
    """(line, absolute module name) of every ``mcdrl`` import in the file, relative ones resolved."""
    tree = ast.parse(path.read_text(), filename=str(path))
    this = module_name(path, root)
    package = this if path.name == "__init__.py" else this.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "mcdrl"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "mcdrl":
                continue
            if node.module is None or target in ("mcdrl",) or target.count(".") == 0:
                # from . import a, b / from mcdrl import x: each name may be a submodule (or a wing)
                sub = root.parent / Path(*target.split("."))
                found += [(node.lineno, f"{target}.{a.name}" if (sub / a.name).is_dir() or (sub / f"{a.name}.py").is_file() else target)
                          for a in node.names]
            else:
                found.append((node.lineno, target))
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module":
            if node.args and isinstance(node.args[0], ast.Constant) and str(node.args[0].value).startswith("mcdrl."):
                found.append((node.lineno, node.args[0].value))
    return found


def violations(root: Path = PKG) -> list[str]:
    out = []
    for path in sorted(root.rglob("*.py")):
        src = wing_of(module_name(path, root))
        for line, target in imported_modules(path, root):
            dst = wing_of(target)
            if dst == src:
                continue
            if dst not in RANK or src not in RANK:
                out.append(f"{path.relative_to(root.parent)}:{line}: {target}: wing {dst or src!r} has no rank in tests/test_layout.py")
            elif RANK[dst] > RANK[src] or (RANK[dst] == RANK[src] and frozenset({src, dst}) in SIBLINGS):
                out.append(f"{path.relative_to(root.parent)}:{line}: {src or 'mcdrl'} imports {target} ({dst}), which is not below it")
    return out


def test_every_module_belongs_to_a_wing():
    wings = {wing_of(module_name(p)) for p in PKG.rglob("*.py")}
    assert wings <= set(RANK), f"modules outside the layout table: {sorted(wings - set(RANK))}"


def test_wings_import_downwards_only():
    found = violations()
    assert not found, "imports against the layering (see this file's docstring):\n" + "\n".join(found)


@pytest.mark.parametrize("source, line, forbidden", [
    ("networks/head.py", "from mcdrl.engines.training import param_groups", "engines"),
    ("networks/head.py", "from ..io import discover", "io"),
    ("engines/training.py", "import mcdrl.evaluation.metrics", "evaluation"),
    ("engines/training.py", "from mcdrl.deploy import shipped", "deploy"),
    ("evaluation/metrics.py", "from mcdrl.deploy.shipped import verify_shipped", "deploy"),
    ("engines/training.py", "from mcdrl.networks.losses import MCDRLLoss", None),
])
def test_the_check_catches_a_forbidden_import(tmp_path, source, line, forbidden):
    """The check itself: a copy of the package with one import added by hand (inside a function) fails exactly when
    the import is forbidden, and names the file and the wing."""
    import shutil

    copy = tmp_path / "mcdrl"
    shutil.copytree(PKG, copy, ignore=shutil.ignore_patterns("__pycache__", "*.json"))
    target = copy / source
    target.write_text(target.read_text() + f"\n\ndef _added_by_hand():\n    {line}\n")
    found = violations(copy)
    if forbidden is None:
        assert found == []
    else:
        assert len(found) == 1 and found[0].startswith(f"mcdrl/{source}:") and f"({forbidden})" in found[0], found


def import_cycles(root: Path = PKG) -> list[list[str]]:
    """Groups of the package's modules that import each other in a circle (every import counts, as above, including
    those inside functions): each strongly connected group of two or more modules, sorted."""
    graph = {module_name(p, root): {t for _, t in imported_modules(p, root)} for p in sorted(root.rglob("*.py"))}
    graph = {m: sorted(t for t in targets if t in graph and t != m) for m, targets in graph.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                cycles.append(sorted(group))

    for v in graph:
        if v not in index:
            visit(v)
    return cycles


def test_no_modules_import_each_other_in_a_circle():
    """Within a wing too, imports go one way (issue 22 untied loso's methods -> runner -> run -> methods)."""
    assert not import_cycles(), "modules that import each other in a circle: " + "; ".join(" <-> ".join(c) for c in import_cycles())


def test_the_cycle_check_catches_a_circle(tmp_path):
    import shutil

    copy = tmp_path / "mcdrl"
    shutil.copytree(PKG, copy, ignore=shutil.ignore_patterns("__pycache__", "*.json"))
    assert import_cycles(copy) == []
    target = copy / "evaluation" / "loso" / "methods.py"
    target.write_text(target.read_text() + "\n\ndef _added_by_hand():\n    from .runner import run_id\n")
    assert import_cycles(copy) == [["mcdrl.evaluation.loso.methods", "mcdrl.evaluation.loso.run", "mcdrl.evaluation.loso.runner"]]
