"""Test helpers that ship with the package, so that users can test their own pipelines offline too: an
OpenAI-compatible server with fault injection (``OpenAIServer``, ``Faults``, ``Answer``, ``default_answer``: the
``serve`` extra), a fake Hugging Face Hub serving one dataset repository (``FakeHub``), and (``slurm``) a real
single-node SLURM cluster started in a scratch folder. This project's own pytest fixtures live in ``tests/``."""

from typing import Any

from tinystories.testing.hub_server import FakeHub

_OPENAI_SERVER = ("Answer", "Faults", "OpenAIServer", "default_answer")
__all__ = ["FakeHub", *_OPENAI_SERVER]


def __getattr__(name: str) -> Any:
    # Imported on first use: the OpenAI server needs FastAPI and uvicorn (the serve extra), FakeHub does not.
    if name in _OPENAI_SERVER:
        from tinystories.testing import openai_server

        return getattr(openai_server, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
