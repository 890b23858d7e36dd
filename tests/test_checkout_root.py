"""The checkout's root is a safe place to work: the design card's top-level ``kernels/`` folder (our Triton sources,
installed as ``tinystories.kernels``) must not shadow Hugging Face's ``kernels`` package, which transformers 5.x
imports when it loads a model. Run from the root, ``python -c ...``, ``python -m pytest`` and a researcher's own
script put the root first on ``sys.path``; a regular package there would win over the installed one."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run_at_root(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def hf_kernels_installed() -> bool:
    try:
        importlib.metadata.version("kernels")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def test_the_kernels_folder_is_not_a_regular_package():
    assert (ROOT / "kernels" / "attention.py").is_file()  # the design card's folder is there
    assert not (ROOT / "kernels" / "__init__.py").exists(), "an __init__.py makes `import kernels` at the root ours"
    assert (ROOT / "tinystories" / "kernels" / "__init__.py").is_file()  # the package's API lives in the package


def test_import_kernels_at_the_root_is_hugging_faces_or_nothing():
    code = "import kernels; print(getattr(kernels, '__file__', None)); print(list(getattr(kernels, '__path__', [])))"
    out = run_at_root("-c", code)
    if hf_kernels_installed():
        assert out.returncode == 0, out.stderr
        file = Path(out.stdout.splitlines()[0]).resolve()
        assert ROOT not in file.parents, f"`import kernels` at the root found {file}"
    else:  # at most an empty namespace package: nothing of ours is importable as `kernels`
        assert out.returncode != 0 or out.stdout.splitlines()[0] == "None", out.stdout


def test_our_kernels_still_import_as_tinystories_kernels_at_the_root():
    out = run_at_root(
        "-c",
        "from tinystories.kernels import FusedAttention, FusedLayerNorm, kernels_available; "
        "import tinystories.kernels.reference as r; print(r.__name__)",
    )
    assert out.returncode == 0 and out.stdout.strip() == "tinystories.kernels.reference", out.stderr


def test_a_gpt_neo_loads_in_transformers_from_the_root(tmp_path):
    pytest.importorskip("transformers")
    if not hf_kernels_installed():
        pytest.skip("Hugging Face's kernels package is not installed (transformers 5.x installs it)")
    code = (
        "import sys, torch, transformers\n"
        "config = transformers.GPTNeoConfig(vocab_size=64, hidden_size=32, num_layers=2, num_heads=4,\n"
        "    max_position_embeddings=32, attention_types=[[['global', 'local'], 1]], window_size=8)\n"
        "transformers.GPTNeoForCausalLM(config).save_pretrained(sys.argv[1])\n"
        "model = transformers.AutoModelForCausalLM.from_pretrained(sys.argv[1])\n"
        "print(type(model).__name__, model(torch.tensor([[1, 2, 3]])).logits.shape[-1])\n"
    )
    out = run_at_root("-c", code, str(tmp_path / "neo"))
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == ["GPTNeoForCausalLM", "64"]


@pytest.mark.slow
def test_the_hf_tests_pass_when_pytest_runs_from_the_root():
    pytest.importorskip("transformers")
    out = run_at_root("-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_hf.py", timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
