"""Test helpers that ship with the package: an OpenAI-compatible server for tests and benchmarks, and
(``slurm``) a real single-node SLURM cluster started in a scratch folder."""

from tinystories.testing.openai_server import Answer, Faults, OpenAIServer, default_answer

__all__ = ["Answer", "Faults", "OpenAIServer", "default_answer"]
