"""The package's layout rules: imports point one way (down the layers below, no cycles), no module grows past ~450
lines, and every stage's ``__init__.py`` says what it does.

The layers, lowest first; a module may import its own layer and the layers below it, never one above:

==============  ===============================================================================================
kernels         ``tinystories.kernels`` (the ``kernels/`` folder): imports torch and triton, and its own files only
                through relative imports, so it is importable elsewhere (``runtime.device`` and the model use it).
shared          the root package (and its native ``_core``), ``atomic``, ``jsonl``, ``progress``, ``plots``,
                ``corpus``, ``vocabulary``, ``story_templates`` and ``runtime`` (device and execution path,
                ``ConfigError``, the command-line argument helpers): what every stage may use.
llm             the OpenAI-compatible client (it uses ``runtime.arguments`` for its options, never a CLI).
synth           writes the corpus through ``llm``; it needs no tokenizer, so it sits below one.
tokenizer       the BPE (the C++ core from the root package).
data            shards and the loader: ``data.writer`` and ``data.shards`` encode with the tokenizer.
model           GPT-Neo, checkpoints (which carry the tokenizer), generation, Hugging Face import/export.
train           the trainer: the data loader feeding the model.
evaluate        grades and measures checkpoints: held-out loss over shards, the judge through ``llm``.
interpret       neurons and heads of a model over stories read like ``data``'s.
sweep           grids of ``train`` runs (its config, its step timing) and the compute-optimal fit.
serve           checkpoints over HTTP; the playground's run pages reuse ``evaluate.report``.
application     ``tinystories.cli`` (dispatches to every stage's CLI) and ``tinystories.testing`` (test servers
                and fixtures over synth, llm, data and tokenizer).
==============  ===============================================================================================

The real graph forces most of this order (synth -> llm, data -> tokenizer, model -> tokenizer, train -> data and
model, sweep -> train, serve -> evaluate, runtime.device -> kernels); where it leaves two stages unordered (synth
and tokenizer, data and model, evaluate / interpret / sweep / serve among themselves) the pipeline's order decides,
so a later stage may use what an earlier one made and never the other way round.

Every import counts, wherever it is written: inside a function (a lazy import is still a dependency) and under
``if TYPE_CHECKING:`` (a type-only import of a higher layer is still an arrow up in the design, and a type-only
import of a module that imports you is still a circle: pass a ``typing.Protocol`` defined below both instead, as
``synth.backend`` does for the synthesis backends).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
PACKAGE, KERNELS = REPO_ROOT / "tinystories", REPO_ROOT / "kernels"
MAX_LINES = 450
MAX_TRAINER_FUNCTION_LINES = 80  # the trainer reads one method at a time (torchtitan's Trainer)


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


def imported_modules(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that ``name`` imports anywhere in its code: inside functions and under
    ``if TYPE_CHECKING:`` too (see the module docstring)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:  # `from a.b import c` imports the module a.b.c when there is one
                targets.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
    return {t for t in targets if t in modules and t != name}


def import_graph() -> dict[str, set[str]]:
    modules = module_files()
    return {name: imported_modules(name, path, modules) for name, path in modules.items()}


# The layers of the module docstring, lowest first, by the name under ``tinystories.`` ("": the root package).
SHARED = {"", "atomic", "jsonl", "progress", "plots", "corpus", "vocabulary", "story_templates", "runtime"}
LAYERS: list[tuple[str, set[str]]] = [
    ("kernels", {"kernels"}),
    ("shared", SHARED),
    ("llm", {"llm"}),
    ("synth", {"synth"}),
    ("tokenizer", {"tokenizer"}),
    ("data", {"data"}),
    ("model", {"model"}),
    ("train", {"train"}),
    ("evaluate", {"evaluate"}),
    ("interpret", {"interpret"}),
    ("sweep", {"sweep"}),
    ("serve", {"serve"}),
    ("application", {"cli", "testing"}),
]


def layer_of(module: str) -> tuple[int, str] | None:
    """(rank, name) of ``module``'s layer, lowest 0; None for a module no layer names."""
    parts = module.split(".")
    if parts[0] != "tinystories":
        return None
    top = parts[1] if len(parts) > 1 else ""
    for rank, (layer, names) in enumerate(LAYERS):
        if top in names:
            return rank, layer
    return None


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """Every import of a higher layer than the importer's, as ``importer (layer) -> imported (layer)``."""
    found = []
    for importer, targets in sorted(graph.items()):
        low = layer_of(importer)
        for target in sorted(targets):
            high = layer_of(target)
            if low and high and high[0] > low[0]:
                found.append(f"{importer} ({low[1]}) -> {target} ({high[1]})")
    return found


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


def test_the_import_walk_sees_lazy_relative_and_type_only_imports(tmp_path):
    source = tmp_path / "mod.py"
    source.write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import x.typed\n"
        "def f():\n    from x import sub\n    from . import sibling\n    import x.plain\n"
    )
    modules = {name: source for name in ("x.pkg.mod", "x.sub", "x.pkg.sibling", "x.plain", "x.typed")}
    assert imported_modules("x.pkg.mod", source, modules) == {"x.sub", "x.pkg.sibling", "x.plain", "x.typed"}


def test_the_layer_check_finds_an_import_from_a_later_stage():
    graph = {
        "tinystories.model.gpt_neo": {"tinystories.kernels", "tinystories.runtime.device", "tinystories.train.loop"},
        "tinystories.train.loop": {"tinystories.model.gpt_neo", "tinystories.data.loader"},
        "tinystories.jsonl": {"tinystories.cli"},
        "tinystories.kernels.mlp": {"tinystories.kernels._triton", "tinystories"},
        "tinystories.cli": {"tinystories.serve.cli", "tinystories.runtime.arguments"},
    }
    assert upward_imports(graph) == [
        "tinystories.jsonl (shared) -> tinystories.cli (application)",
        "tinystories.kernels.mlp (kernels) -> tinystories (shared)",
        "tinystories.model.gpt_neo (model) -> tinystories.train.loop (train)",
    ]
    assert layer_of("tinystories") == (1, "shared") and layer_of("tinystories.newstage.x") is None


def test_every_module_has_a_layer():
    unplaced = sorted(name for name in module_files() if layer_of(name) is None)
    assert not unplaced, f"modules in no layer (add them to LAYERS and the module docstring): {unplaced}"


def test_imports_point_down_the_layers():
    graph = import_graph()
    assert "tinystories.runtime.arguments" in graph["tinystories.llm.client"]  # the walk reads real files
    upward = upward_imports(graph)
    assert not upward, "imports of a later layer (see the module docstring):\n" + "\n".join(upward)


def test_kernels_import_nothing_of_tinystories_by_name():
    """kernels/ reaches its own files by relative imports only, so the folder works under any package name."""
    files = [*KERNELS.rglob("*.py"), PACKAGE / "kernels" / "__init__.py"]
    found = []
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom) and node.level == 0
                else []
            )
            found += [
                f"{path.relative_to(REPO_ROOT)}: {n}" for n in names if n.split(".")[0] in ("tinystories", "kernels")
            ]
    assert len(files) > 5 and not found, found


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


def test_no_trainer_function_over_the_size_limit():
    """tinystories/train/ is read top to bottom by people changing how a run trains: no function or method there
    is longer than a screen (docstring and comments included)."""
    lengths = {}
    for path in sorted((PACKAGE / "train").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lengths[f"{path.name}:{node.lineno} {node.name}"] = node.end_lineno - node.lineno + 1
    assert any(name.startswith("loop.py") for name in lengths)  # the walk reads real files
    too_long = {name: n for name, n in lengths.items() if n > MAX_TRAINER_FUNCTION_LINES}
    assert not too_long, f"functions over {MAX_TRAINER_FUNCTION_LINES} lines in train/ (split them): {too_long}"


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
