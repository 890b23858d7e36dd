"""The package's layout rules: imports flow one way (no cycles), no module grows past ~450 lines, and every
stage's ``__init__.py`` says what it does."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
PACKAGE, KERNELS = REPO_ROOT / "tinystories", REPO_ROOT / "kernels"
MAX_LINES = 450


def module_files() -> dict[str, Path]:
    """Module name -> source file, for the package and ``kernels/`` (installed as ``tinystories.kernels``)."""
    found = {}
    for root, prefix in ((PACKAGE, "tinystories"), (KERNELS, "tinystories.kernels")):
        for path in sorted(root.rglob("*.py")):
            parts = [*path.relative_to(root).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([prefix, *parts])] = path
    return found


def _is_type_checking_block(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def imported_modules(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that ``name`` imports anywhere in its code (inside functions too: a lazy import is
    still a dependency), except under ``if TYPE_CHECKING:``, which never runs."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets: set[str] = set()

    def visit(node: ast.AST) -> None:
        if _is_type_checking_block(node):
            return
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:  # `from a.b import c` imports the module a.b.c when there is one
                targets.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    return {t for t in targets if t in modules and t != name}


def import_graph() -> dict[str, set[str]]:
    modules = module_files()
    return {name: imported_modules(name, path, modules) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
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
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return found


def test_the_cycle_finder_finds_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_import_walk_sees_lazy_and_relative_imports(tmp_path):
    source = tmp_path / "mod.py"
    source.write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import x.typed\n"
        "def f():\n    from x import sub\n    from . import sibling\n    import x.plain\n"
    )
    modules = {name: source for name in ("x.pkg.mod", "x.sub", "x.pkg.sibling", "x.plain", "x.typed")}
    assert imported_modules("x.pkg.mod", source, modules) == {"x.sub", "x.pkg.sibling", "x.plain"}


def test_imports_flow_one_way():
    graph = import_graph()
    assert len(graph) > 60 and "tinystories.model.checkpoint" in graph["tinystories.train.loop"]
    found = cycles(graph)
    assert not found, "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


def test_no_module_over_the_size_limit():
    sizes = {name: len(path.read_text(encoding="utf-8").splitlines()) for name, path in module_files().items()}
    assert sizes["tinystories.model.gpt_neo"] > 100  # the walk reads real files
    too_big = {name: n for name, n in sizes.items() if n > MAX_LINES}
    assert not too_big, f"modules over {MAX_LINES} lines (split them by concept): {too_big}"


@pytest.mark.parametrize(
    "stage",
    [
        "synth",
        "tokenizer",
        "data",
        "model",
        "train",
        "evaluate",
        "interpret",
        "sweep",
        "llm",
        "testing",
        "serve",
        "runtime",
    ],
)
def test_every_stage_says_what_it_does(stage):
    init = PACKAGE / stage / "__init__.py"
    doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8")))
    assert doc and len(doc.split()) >= 12, f"{init}: the docstring must say what the stage does and exposes"


def test_light_commands_do_not_load_torch_or_openai():
    """`tinystories tokenizer|data|synth|eval report` start in a fraction of a second: no torch, no openai."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import tinystories.cli, tinystories.tokenizer.cli, tinystories.data.cli, tinystories.synth.cli\n"
        "import tinystories.evaluate.cli, tinystories.llm\n"
        "print(sorted(m for m in ('torch', 'openai', 'httpx2', 'matplotlib') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
