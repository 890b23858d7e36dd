"""tinystories: synthesize, tokenize, train, grade and inspect TinyStories-scale language models.

Submodules are imported on demand (``tinystories.tokenizer``, ``tinystories.data``,
``tinystories.model`` ...) so that ``import tinystories`` stays cheap and works without the
optional extras (openai, triton).
"""

import importlib.machinery as _machinery
import os as _os
import sys as _sys

__version__ = "0.1.0"


def _has_native_module(folder: str) -> bool:
    return any(_os.path.exists(_os.path.join(folder, "_core" + s)) for s in _machinery.EXTENSION_SUFFIXES)


def _borrow_installed_build() -> None:
    """Let a source checkout find the compiled parts of an installed copy.

    ``python -m ...`` or ``python -c ...`` run from the repository root imports this package from the source
    tree, which holds neither the compiled ``_core`` nor ``kernels/`` under its installed name. When a
    non-editable install of the package sits elsewhere on ``sys.path``, its folder is added to this package's
    search path so ``tinystories._core`` and ``tinystories.kernels`` resolve there.
    """
    here = _os.path.dirname(_os.path.abspath(__file__))
    if _has_native_module(here):
        return
    for entry in _sys.path:
        candidate = _os.path.abspath(_os.path.join(entry or _os.curdir, "tinystories"))
        if candidate != here and _has_native_module(candidate):
            __path__.append(candidate)
            return


_borrow_installed_build()
