"""Test helpers that ship with the package: an OpenAI-compatible server for tests and benchmarks, a fake
Hugging Face Hub serving one dataset repository (``hub_server.FakeHub``), and (``slurm``) a real single-node
SLURM cluster started in a scratch folder."""

from tinystories.testing.hub_server import FakeHub
from tinystories.testing.openai_server import Answer, Faults, OpenAIServer, default_answer

__all__ = ["Answer", "FakeHub", "Faults", "OpenAIServer", "default_answer"]
