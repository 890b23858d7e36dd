"""Test helpers that ship with the package: an OpenAI-compatible server for tests and benchmarks."""

from tinystories.testing.openai_server import Answer, Faults, OpenAIServer, default_answer

__all__ = ["Answer", "Faults", "OpenAIServer", "default_answer"]
