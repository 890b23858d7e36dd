"""Make ``tinystories.kernels`` importable straight from a source checkout (e.g. a lent GPU machine where the
package is not pip-installed): ``kernels/`` is mapped to ``tinystories.kernels`` as the wheel does."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def ensure_importable() -> str:
    """Returns how ``tinystories.kernels`` was found: "installed" or "source tree"."""
    try:
        import tinystories.kernels  # noqa: F401

        return "installed"
    except ImportError:
        pass
    sys.path.insert(0, str(REPO_ROOT))
    for name in [n for n in sys.modules if n == "tinystories" or n.startswith("tinystories.")]:
        del sys.modules[name]  # a failed import can leave a half-initialized package behind
    import tinystories

    spec = importlib.util.spec_from_file_location(
        "tinystories.kernels", REPO_ROOT / "kernels" / "__init__.py", submodule_search_locations=[str(REPO_ROOT / "kernels")]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["tinystories.kernels"] = module
    tinystories.kernels = module
    spec.loader.exec_module(module)
    return "source tree"
