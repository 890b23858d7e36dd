"""pyproject.toml's requirements against the code: every third-party import is declared by the core or by the extra
of the code path that makes it, each distribution has one floor, and the floors install and work (the slow test
makes a virtual environment, installs the light requirements at exactly their floors and runs
``tests/_floor_smoke.py`` there)."""

from __future__ import annotations

import ast
import importlib.metadata
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement

if sys.version_info >= (3, 11):
    import tomllib
else:  # pytest itself depends on tomli before 3.11
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]

# Imports that only some code paths make: {import name: {module (or package) of ours: the extra that declares it}}.
OPTIONAL: dict[str, dict[str, str]] = {
    "openai": {"tinystories.llm": "synth", "tinystories.synth": "synth"},
    "httpx2": {"tinystories.llm": "synth", "tinystories.data.download": "hub", "tinystories.model.hub": "hub"},
    "huggingface_hub": {"tinystories.data.download": "hub", "tinystories.model.hub": "hub"},
    "pyarrow": {"tinystories.corpus": "parquet"},
    "transformers": {"tinystories.evaluate.students": "hf"},
    "triton": {"tinystories.kernels": "kernels"},
    "submitit": {"tinystories.sweep": "cluster"},
    # the OpenAI-compatible test server (tinystories.testing) runs on serve's FastAPI app
    "fastapi": {"tinystories.serve": "serve", "tinystories.testing": "serve"},
    "uvicorn": {"tinystories.serve": "serve", "tinystories.testing": "serve"},
    "starlette": {"tinystories.serve": "serve", "tinystories.testing": "serve"},
}
# Speed-ups used when installed and never required: each of their imports sits in a `try` that catches ImportError.
GUARDED = {"orjson", "uvloop"}
# The slow test installs these at their floors; the heavy ones (compiled against each other) come from the machine.
LIGHT = [
    "openai",
    "httpx2",
    "huggingface-hub",
    "fastapi",
    "uvicorn",
    "httptools",
    "starlette",
    "pydantic",
    "pydantic-settings",
    "submitit",
    "rich",
    "zstandard",
    "jsonschema",
    "safetensors",
]
HEAVY = {"numpy", "torch", "matplotlib", "pyarrow", "transformers", "triton"}


def canonical(name: str) -> str:
    """A distribution's name as the package index compares them (PEP 503): huggingface_hub == huggingface-hub."""
    return re.sub(r"[-_.]+", "-", name).lower()


def declared() -> dict[str, dict[str, Requirement]]:
    """ "core" and every extra -> {distribution: its requirement}; an extra naming ``tinystories[...]`` includes
    those extras' requirements."""
    groups = {"core": PROJECT["dependencies"], **PROJECT["optional-dependencies"]}
    found: dict[str, dict[str, Requirement]] = {}

    def expand(group: str) -> dict[str, Requirement]:
        if group not in found:
            found[group] = {}
            for line in groups[group]:
                requirement = Requirement(line)
                if canonical(requirement.name) == PROJECT["name"]:
                    for extra in requirement.extras:
                        found[group].update(expand(extra))
                else:
                    found[group][canonical(requirement.name)] = requirement
        return found[group]

    for group in groups:
        expand(group)
    return found


def floor(requirement: Requirement) -> str:
    floors = [spec.version for spec in requirement.specifier if spec.operator == ">="]
    assert len(floors) == 1, f"{requirement}: one '>=' floor expected"
    return floors[0]


def floor_environment(env: Path, probe: str) -> Path:
    """A venv at ``env`` over this interpreter's packages (torch, numpy), for installing floors into; its python.
    Skips the test when the package index does not answer (asked for the versions of ``probe``)."""
    answer = subprocess.run(
        [sys.executable, "-m", "pip", "index", "versions", probe], capture_output=True, text=True, timeout=120
    )
    if answer.returncode != 0:
        pytest.skip(f"the package index is unreachable: {(answer.stderr.strip().splitlines() or ['?'])[-1]}")
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(env)], check=True, timeout=300)
    return env / "bin" / "python"


def module_name(path: Path) -> str:
    """``tinystories.x.y`` for a file of the package (``kernels/`` is installed as ``tinystories.kernels``)."""
    root, prefix = (ROOT / "kernels", "tinystories.kernels") if path.is_relative_to(ROOT / "kernels") else (ROOT, "")
    parts = [*path.relative_to(root).with_suffix("").parts]
    return ".".join([p for p in [prefix, *parts] if p and p != "__init__"])


def third_party_imports() -> list[tuple[str, str, ast.stmt, bool]]:
    """(our module, imported top-level name, the statement, whether a `try` catching ImportError guards it)."""
    found: list[tuple[str, str, ast.stmt, bool]] = []
    for path in sorted([*(ROOT / "tinystories").rglob("*.py"), *(ROOT / "kernels").rglob("*.py")]):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        guarded: set[int] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Try) and any(_catches_import_error(h) for h in node.handlers):
                guarded |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for top in {name.split(".")[0] for name in names}:
                if top not in sys.stdlib_module_names and top not in ("tinystories", "kernels"):
                    found.append((module_name(path), top, node, id(node) in guarded))
    return found


def _catches_import_error(handler: ast.ExceptHandler) -> bool:
    names = {n.id for n in ast.walk(handler.type) if isinstance(n, ast.Name)} if handler.type else set()
    return bool(names & {"ImportError", "ModuleNotFoundError"})


def extra_for(module: str, top: str) -> str | None:
    """The extra that must declare ``top`` where ``module`` imports it (the longest matching path of OPTIONAL)."""
    paths = [p for p in OPTIONAL.get(top, {}) if module == p or module.startswith(p + ".")]
    return OPTIONAL[top][max(paths, key=len)] if paths else None


def undeclared_imports(
    imports: list[tuple[str, str, ast.stmt, bool]], groups: dict[str, dict[str, Requirement]]
) -> list[str]:
    """Every import that neither the core nor its code path's extra declares (guarded speed-ups aside)."""
    problems = []
    for module, top, node, guarded in imports:
        if top in GUARDED:
            if not guarded:
                problems.append(
                    f"{module}: `{ast.unparse(node)}` is a speed-up but no try/except ImportError guards it"
                )
            continue
        if canonical(top) in groups["core"]:
            continue
        extra = extra_for(module, top)
        if extra is None:
            problems.append(f"{module}: {top} is in no requirement (add it to the core or map it to an extra here)")
        elif canonical(top) not in groups.get(extra, {}):
            problems.append(f"{module}: {top} must be declared by the extra {extra!r}")
    return sorted(set(problems))


def test_the_check_finds_an_undeclared_import():
    groups = {"core": {"numpy": Requirement("numpy>=1")}, "synth": {"openai": Requirement("openai>=3")}}
    imports = [
        (module, top, ast.parse(source).body[0], guarded)
        for module, top, source, guarded in [
            ("tinystories.llm.client", "openai", "import openai", False),
            ("tinystories.llm.client", "httpx2", "import httpx2", False),  # synth does not declare it
            ("tinystories.data.download", "openai", "import openai", False),  # no extra for this path
            ("tinystories.llm.wire", "orjson", "import orjson", False),  # not guarded
            ("tinystories.llm.client", "uvloop", "import uvloop", True),
            ("tinystories.data.loader", "numpy", "import numpy as np", False),
        ]
    ]
    assert undeclared_imports(imports, groups) == [
        "tinystories.data.download: openai is in no requirement (add it to the core or map it to an extra here)",
        "tinystories.llm.client: httpx2 must be declared by the extra 'synth'",
        "tinystories.llm.wire: `import orjson` is a speed-up but no try/except ImportError guards it",
    ]


def test_every_import_is_declared_where_its_code_path_needs_it():
    imports = third_party_imports()
    assert {"openai", "httpx2", "torch", "orjson"} <= {top for _, top, _, _ in imports}
    assert any(m == "tinystories.kernels._triton" and top == "triton" for m, top, _, _ in imports)
    groups = declared()
    assert {"matplotlib", "safetensors"} <= set(groups["core"])  # the PNGs and `export` need no extra
    assert not undeclared_imports(imports, groups), "\n".join(undeclared_imports(imports, groups))


def test_each_distribution_has_one_floor_and_dev_installs_every_extra():
    groups = declared()
    floors: dict[str, set[str]] = {}
    for requirements in groups.values():
        for name, requirement in requirements.items():
            floors.setdefault(name, set()).add(floor(requirement))
    assert {name: f for name, f in floors.items() if len(f) > 1} == {}
    extras = set(PROJECT["optional-dependencies"]) - {"dev"}
    for extra in extras:
        assert set(groups[extra]) <= set(groups["dev"]), f"dev lacks the {extra!r} extra: the tests use every path"
    runtime = set(groups["core"]).union(*(groups[e] for e in extras))
    assert runtime == {canonical(n) for n in LIGHT} | HEAVY, "sort a new requirement into LIGHT or HEAVY"


def test_install_hints_name_real_extras():
    hints = {
        (path.name, extra)
        for path in (ROOT / "tinystories").rglob("*.py")
        for extra in re.findall(r"tinystories\[(\w+)\]", path.read_text(encoding="utf-8"))
    }
    assert len(hints) >= 5
    assert {h for h in hints if h[1] not in PROJECT["optional-dependencies"]} == set()


@pytest.mark.slow
def test_the_floors_install_and_run(tmp_path):
    """The light requirements at exactly their floors, beside this machine's torch and numpy, run our code."""
    try:
        tinystories_site = importlib.metadata.distribution("tinystories").locate_file("")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("tinystories is not installed (pip install -e .): the floor environment could not import it")
    groups = declared()
    runtime = {name: req for group, reqs in groups.items() if group != "dev" for name, req in reqs.items()}
    pins = {name: floor(runtime[canonical(name)]) for name in LIGHT}
    python = floor_environment(tmp_path / "floors", "openai")
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", *(f"{name}=={version}" for name, version in pins.items())],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert install.returncode == 0, f"the floors do not install together:\n{install.stdout}{install.stderr}"

    light = {canonical(name) for name in LIGHT}
    imports = sorted({ast.unparse(node) for _, top, node, _ in third_party_imports() if canonical(top) in light})
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"versions": pins, "imports": imports, "site_dirs": [str(tinystories_site)]}))
    smoke = subprocess.run(
        [str(python), str(ROOT / "tests" / "_floor_smoke.py"), str(spec)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert smoke.returncode == 0 and "floors ok" in smoke.stdout, smoke.stdout + smoke.stderr
