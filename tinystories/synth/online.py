"""The online backend: the synthesis requests through the concurrent client (:mod:`tinystories.llm`)."""

from __future__ import annotations

from tinystories.llm.client import ChatRequest, ChatResult
from tinystories.llm.workers import run_chat
from tinystories.progress import Progress
from tinystories.synth.backend import SynthRequests
from tinystories.synth.prompts import StorySpec


def run_online(job: SynthRequests, specs: list[StorySpec], *, progress: bool) -> str | None:
    """Every story request (then every Instruct summary request) through the concurrent client; returns why the
    client stopped early (the budget...), or None when every request was made."""
    client = job.client_config()
    by_id = {spec.id: spec for spec in specs}
    with Progress("stories", len(specs), enabled=progress and bool(specs)) as bar:

        def on_result(result: ChatResult) -> None:
            job.on_story(by_id[result.id], result, "openai")
            bar.advance()

        requests = (ChatRequest(spec.id, job.story_body(spec)) for spec in specs)
        stats = run_chat(requests, client, on_result, already_spent_usd=job.spent)
    if stats.stopped or not job.pending:
        return stats.stopped
    pending = dict(job.pending)
    with Progress("summaries", len(pending), enabled=progress) as bar:

        def on_summary(result: ChatResult) -> None:
            job.on_summary(pending[result.id.removesuffix("/summary")], result)
            bar.advance()

        requests = (ChatRequest(f"{sid}/summary", job.summary_body(r)) for sid, r in pending.items())
        stats = run_chat(requests, client, on_summary, already_spent_usd=job.spent)
    return stats.stopped
