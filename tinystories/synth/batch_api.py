"""The OpenAI Batch API backend: half price, slower. Submitted batches are recorded before any wait, so a
restart polls them instead of paying twice (``stories.jsonl.batches``)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tinystories.jsonl import JsonlLog, read_jsonl
from tinystories.llm.client import ChatResult, ClientConfig
from tinystories.synth.backend import SynthRequests
from tinystories.synth.prompts import StorySpec

if TYPE_CHECKING:
    import openai


@dataclass(frozen=True)
class BatchSettings:
    """Where this backend records its batches and how it sizes and polls them."""

    log_path: Path  # ``stories.jsonl.batches``: every submitted batch, written before any wait
    upload_prefix: str  # uploaded request files are named ``{upload_prefix}-{phase}-{start}.jsonl``
    max_requests: int  # per batch (the Batch API's limit is 50,000)
    poll_s: float  # between status checks of a submitted batch


def run_batch_api(job: SynthRequests, specs: list[StorySpec], settings: BatchSettings) -> None:
    """Submit (or resume) Batch API jobs for the stories, then for Instruct summaries."""
    import openai

    client_cfg = job.client_config()
    client = openai.OpenAI(
        base_url=client_cfg.base_url, api_key=client_cfg.resolve_api_key(), timeout=client_cfg.timeout_s
    )
    by_id = {spec.id: spec for spec in specs}
    stories = {spec.id: job.story_body(spec) for spec in specs}
    _batch_phase(settings, client, "stories", stories, lambda sid, r: job.on_story(by_id[sid], r, "batch"), client_cfg)
    pending = dict(job.pending)
    summaries = {f"{sid}/summary": job.summary_body(r) for sid, r in pending.items()}
    _batch_phase(
        settings,
        client,
        "summaries",
        summaries,
        lambda sid, r: job.on_summary(pending[sid.removesuffix("/summary")], r),
        client_cfg,
    )


def _batch_phase(
    settings: BatchSettings,
    client: openai.OpenAI,
    phase: str,
    bodies: dict[str, dict],
    handle: Callable[[str, ChatResult], None],
    client_cfg: ClientConfig,
) -> None:
    entries = [b for b in read_jsonl(settings.log_path) if b["phase"] == phase]
    merged = {b["batch_id"] for b in entries if b.get("merged")}
    submitted = [b for b in entries if b["batch_id"] not in merged]  # submitted, results not yet merged
    already = {cid for b in submitted for cid in b["custom_ids"]}
    todo = [cid for cid in bodies if cid not in already]
    with JsonlLog(settings.log_path, fsync="always") as batches_log:
        for start in range(0, len(todo), settings.max_requests):
            ids = todo[start : start + settings.max_requests]
            lines = b"".join(
                json.dumps(
                    {"custom_id": cid, "method": "POST", "url": "/v1/chat/completions", "body": bodies[cid]}
                ).encode()
                + b"\n"
                for cid in ids
            )
            upload = client.files.create(
                file=(f"{settings.upload_prefix}-{phase}-{start}.jsonl", lines), purpose="batch"
            )
            batch = client.batches.create(
                input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
            )
            entry = {"phase": phase, "batch_id": batch.id, "input_file_id": upload.id, "custom_ids": ids}
            batches_log.append(entry)  # durable before we wait: a restart polls this batch, never resubmits
            submitted.append(entry)
        for entry in submitted:
            _collect_batch(settings, client, entry, bodies, handle, client_cfg)
            batches_log.append({**entry, "custom_ids": [], "merged": True})


def _collect_batch(
    settings: BatchSettings,
    client: openai.OpenAI,
    entry: dict,
    bodies: dict[str, dict],
    handle: Callable[[str, ChatResult], None],
    client_cfg: ClientConfig,
) -> None:
    while True:
        batch = client.batches.retrieve(entry["batch_id"])
        if batch.status in ("completed", "failed", "expired", "cancelled"):
            break
        time.sleep(settings.poll_s)
    answered: set[str] = set()
    for file_id in (batch.output_file_id, batch.error_file_id):
        if not file_id:
            continue
        for line in client.files.content(file_id).content.decode().splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            cid = item["custom_id"]
            if cid not in bodies or cid in answered:
                continue
            answered.add(cid)
            handle(cid, _batch_result(cid, item, bodies[cid]["model"], client_cfg))
    for cid in entry["custom_ids"]:  # in neither file: the batch failed or expired before reaching it
        if cid in bodies and cid not in answered:
            handle(
                cid,
                ChatResult(
                    id=cid,
                    model=bodies[cid]["model"],
                    attempts=1,
                    error=f"batch {entry['batch_id']} ended {batch.status} without an answer",
                ),
            )


def _batch_result(cid: str, item: dict, model: str, client_cfg: ClientConfig) -> ChatResult:
    """A Batch output line as a ChatResult, judged by the same policy as the online client."""
    result = ChatResult(id=cid, model=model, attempts=1)
    response = item.get("response") or {}
    body = response.get("body") or {}
    usage = body.get("usage") or {}
    result.usage = {k: usage.get(k, 0) for k in ("prompt_tokens", "completion_tokens", "total_tokens")}
    result.cost_usd = client_cfg.prices.cost(
        model, result.usage["prompt_tokens"], result.usage["completion_tokens"], batch=True
    )
    if response.get("status_code") != 200 or item.get("error"):
        result.error = f"batch: status {response.get('status_code')}: {item.get('error') or body.get('error')}"
        return result
    try:
        choice = body["choices"][0]
        result.text, result.finish_reason = choice["message"]["content"], choice.get("finish_reason")
    except (KeyError, IndexError, TypeError):
        result.error = "batch: malformed response body"
        return result
    if not isinstance(result.text, str) or not result.text.strip():
        result.error = "batch: empty answer" if client_cfg.retry_empty else None
    elif result.finish_reason == "length" and client_cfg.retry_truncated:
        result.error = "batch: truncated (finish_reason=length)"
    return result
