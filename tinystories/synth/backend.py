"""What a synthesis backend (``online``, ``batch_api``) needs from the job that drives it.

The backends import this Protocol, never :mod:`tinystories.synth.job`: the job imports the backends, so a
backend importing the job (even only for type checking) would close a circle. :class:`SynthJob` satisfies the
Protocol structurally; a test or another driver can pass anything else that does.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from tinystories.llm.client import ChatResult, ClientConfig
from tinystories.synth.prompts import StorySpec


class SynthRequests(Protocol):
    """The job's side of a backend run: the request bodies, where each answer goes, what was spent."""

    @property
    def spent(self) -> float:
        """USD already spent on this output (earlier runs included): a ``--max-cost-usd`` budget counts it."""
        ...

    @property
    def pending(self) -> Mapping[str, dict[str, Any]]:
        """Instruct stories waiting for their summary request, by story id (updated as answers arrive)."""
        ...

    def client_config(self) -> ClientConfig:
        """The client settings, checked against the job."""
        ...

    def story_body(self, spec: StorySpec) -> dict[str, Any]:
        """The chat-completions request body that asks for ``spec``'s story."""
        ...

    def summary_body(self, record: dict[str, Any]) -> dict[str, Any]:
        """The request body that asks for the summary of a pending Instruct story."""
        ...

    def on_story(self, spec: StorySpec, result: ChatResult, backend: str) -> None:
        """A story answer (or its final failure) arrived; ``backend`` is recorded with it."""
        ...

    def on_summary(self, record: dict[str, Any], result: ChatResult) -> None:
        """A summary answer (or its final failure) arrived for the pending story ``record``."""
        ...
