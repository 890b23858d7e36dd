"""The online backend: the synthesis requests through the concurrent client (:mod:`tinystories.llm`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tinystories.llm.client import ChatRequest, ChatResult
from tinystories.llm.workers import run_chat
from tinystories.progress import Progress
from tinystories.synth.prompts import StorySpec

if TYPE_CHECKING:
    from tinystories.synth.job import SynthJob


def run_online(job: SynthJob, specs: list[StorySpec]) -> None:
    """Every story request (then every Instruct summary request) through the concurrent client."""
    client = job.client_config()
    by_id = {spec.id: spec for spec in specs}
    with Progress("stories", len(specs), enabled=job.cfg.progress and bool(specs)) as bar:

        def on_result(result: ChatResult) -> None:
            job.on_story(by_id[result.id], result, "openai")
            bar.advance()

        requests = (ChatRequest(spec.id, job.story_body(spec)) for spec in specs)
        stats = run_chat(requests, client, on_result, already_spent_usd=job.spent)
    job.summary.stopped = stats.stopped
    if stats.stopped or not job.pending:
        return
    pending = dict(job.pending)
    with Progress("summaries", len(pending), enabled=job.cfg.progress) as bar:

        def on_summary(result: ChatResult) -> None:
            job.on_summary(pending[result.id.removesuffix("/summary")], result)
            bar.advance()

        requests = (ChatRequest(f"{sid}/summary", job.summary_body(r)) for sid, r in pending.items())
        stats = run_chat(requests, client, on_summary, already_spent_usd=job.spent)
    job.summary.stopped = stats.stopped
