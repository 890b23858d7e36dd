"""A synthesis job: its configuration, its files, and what happens to every answer (the backends are in
``online`` and ``batch_api``; the offline ``template`` backend is here).

Story `index` of a run with seed `seed` always gets the same id (`{seed}-{index}`), the same sampled
words and features and the same prompt, so a run can be stopped at any point (even SIGKILL) and the
same command continues it: ids already in the output file are never requested again.

Files written next to `--out stories.jsonl` (append-only logs, see :mod:`tinystories.jsonl`):

* `stories.jsonl`          one record per story (the `story` field is what `tinystories data prepare` reads);
* `stories.jsonl.failed`   requests that failed after every retry (retried on the next run, never lost);
* `stories.jsonl.pending`  Instruct stories waiting for their summary call;
* `stories.jsonl.batches`  Batch API jobs already submitted, so a restart polls them instead of paying twice.

The Instruct layout is documented in docs/synthesis.md.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tinystories.corpus import instruct_text
from tinystories.jsonl import JsonlLog, read_jsonl, repair_torn_tail
from tinystories.llm.client import ChatResult, ClientConfig
from tinystories.story_templates import generate_story
from tinystories.synth.batch_api import BatchSettings, run_batch_api
from tinystories.synth.online import run_online
from tinystories.synth.prompts import (
    DEFAULT_OOD_COMBINATION,
    INSTRUCTION_TYPES,
    StorySpec,
    pick_sentence,
    sample_spec,
    split_of,
    story_id,
    summary_prompt,
)
from tinystories.synth.quality import DuplicateIndex, validate


@dataclass
class SynthConfig:
    n: int
    out: Path
    model: str = "gpt-4o-mini"
    seed: int = 0
    backend: str = "openai"  # "openai" or "template" (offline, no API)
    instruct: bool = False
    ood_combination: tuple[str, ...] = DEFAULT_OOD_COMBINATION
    batch_api: bool = False
    batch_poll_s: float = 30.0
    batch_max_requests: int = 50_000  # the Batch API's per-batch limit
    max_tokens: int = 1024
    temperature: float = 1.0
    min_words: int = 50
    near_duplicate_threshold: float = 0.8
    fsync: str = "interval"
    progress: bool = True
    client: ClientConfig | None = None  # None: the defaults

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        if self.n < 0:
            raise ValueError(f"--num-stories must be >= 0, got {self.n}")
        if self.backend not in ("openai", "template"):
            raise ValueError(f"--backend must be 'openai' or 'template', got {self.backend!r}")
        unknown = set(self.ood_combination) - set(INSTRUCTION_TYPES)
        if unknown:
            raise ValueError(
                f"--ood-combination: unknown instruction type(s) {sorted(unknown)}; known: {INSTRUCTION_TYPES}"
            )


@dataclass
class SynthSummary:
    written: int = 0
    flagged: int = 0
    failed: int = 0
    already_done: int = 0
    cost_usd: float = 0.0
    stopped: str | None = None
    flag_counts: Counter = field(default_factory=Counter)


def side_path(out: Path, suffix: str) -> Path:
    return out.with_name(out.name + suffix)


class SynthJob:
    def __init__(self, config: SynthConfig):
        self.cfg = config
        self.out = config.out
        self.failed_path, self.pending_path = side_path(self.out, ".failed"), side_path(self.out, ".pending")
        self.batches_path = side_path(self.out, ".batches")
        self.summary = SynthSummary()
        self.done: set[str] = set()
        self.pending: dict[str, dict] = {}  # Instruct stories waiting for a summary, by id
        self.spent = 0.0
        self.duplicates = DuplicateIndex(config.near_duplicate_threshold)
        self._load_previous_runs()
        self.log = JsonlLog(self.out, fsync=config.fsync)
        self.failed_log = JsonlLog(self.failed_path, fsync=config.fsync)
        self.pending_log = JsonlLog(self.pending_path, fsync=config.fsync) if config.instruct else None

    def _load_previous_runs(self) -> None:
        for path in (self.out, self.failed_path, self.pending_path):
            repair_torn_tail(path)
        for record in read_jsonl(self.out):
            if not self.done:
                self._check_same_job(record)
            self.done.add(record["id"])
            self.spent += record.get("cost_usd", 0.0)
            self.duplicates.add(record["id"], record["story"])
        self.summary.already_done = len(self.done)
        for record in read_jsonl(self.pending_path):
            if record["id"] not in self.done:
                self.pending[record["id"]] = record
                self.spent += record.get("cost_usd", 0.0)
        for record in read_jsonl(self.failed_path):
            self.spent += record.get("cost_usd", 0.0)

    def _check_same_job(self, record: dict) -> None:
        """Resuming with another seed or layout would mix two samplings in one file: refuse."""
        was_instruct = "instructions" in record
        if record.get("seed") != self.cfg.seed or was_instruct != self.cfg.instruct:
            raise ValueError(
                f"{self.out} holds a run with --seed {record.get('seed')}{' --instruct' if was_instruct else ''}; "
                "resume it with the same options or write to another --out"
            )

    def client_config(self) -> ClientConfig:
        """The client settings, checked against this job (a budget needs the model's price)."""
        client = self.cfg.client or ClientConfig()
        if client.max_cost_usd is not None and not client.prices.has_price(self.cfg.model):
            raise ValueError(
                f"--max-cost-usd needs a price for model {self.cfg.model!r}; add it with --prices FILE "
                '(JSON: {"MODEL": {"input": USD_per_1M, "output": USD_per_1M}})'
            )
        return client

    def close(self) -> None:
        for log in (self.log, self.failed_log, self.pending_log):
            if log:
                log.close()

    # -- records ---------------------------------------------------------------------------------------
    def specs_to_request(self) -> list[StorySpec]:
        specs = []
        for index in range(self.cfg.n):
            sid = story_id(self.cfg.seed, index)
            if sid not in self.done and sid not in self.pending:
                specs.append(sample_spec(self.cfg.seed, index, instruct=self.cfg.instruct))
        return specs

    def story_body(self, spec: StorySpec) -> dict:
        return {
            "model": self.cfg.model,
            "messages": [{"role": "user", "content": spec.prompt}],
            "max_tokens": self.cfg.max_tokens,
            "temperature": self.cfg.temperature,
        }

    def summary_body(self, record: dict) -> dict:
        return {
            "model": self.cfg.model,
            "messages": [{"role": "user", "content": summary_prompt(record["story"])}],
            "max_tokens": 100,
            "temperature": 0.0,
        }

    def on_story(self, spec: StorySpec, result: ChatResult, backend: str) -> None:
        """A story answer arrived."""
        base: dict[str, Any] = {
            "id": spec.id,
            "seed": spec.seed,
            "index": spec.index,
            "prompt": spec.prompt,
            "words": spec.words,
            "features": list(spec.features),
            "model": result.model or self.cfg.model,
            "backend": backend,
            "usage": result.usage,
            "cost_usd": result.cost_usd,
            "attempts": result.attempts,
            "attempt_errors": result.attempt_errors,
        }
        self.spent += result.cost_usd
        self.summary.cost_usd += result.cost_usd
        if not result.ok:
            self.failed_log.append({**base, "error": result.error, "finish_reason": result.finish_reason})
            self.summary.failed += 1
            return
        assert result.text is not None  # an answer without text is an error (the client's retry_empty)
        record = {**base, "story": result.text.strip(), "finish_reason": result.finish_reason}
        if spec.instructions:
            record["instructions"] = list(spec.instructions)
            record["split"] = split_of(spec.instructions, self.cfg.ood_combination)
            record["random_sentence"] = pick_sentence(record["story"], spec)
            if "summary" in spec.instructions:
                assert self.pending_log is not None  # instructions come only with --instruct, which opens it
                self.pending_log.append(record)
                self.pending[spec.id] = record
                return
        self.finish(record)

    def on_summary(self, record: dict, result: ChatResult) -> None:
        self.spent += result.cost_usd
        self.summary.cost_usd += result.cost_usd
        record["cost_usd"] += result.cost_usd
        record["attempts"] += result.attempts
        for key, value in result.usage.items():
            record["usage"][key] = record["usage"].get(key, 0) + value
        if not result.ok:  # the story stays pending; the next run asks for the summary again
            self.failed_log.append(
                {
                    "id": record["id"],
                    "stage": "summary",
                    "error": result.error,
                    "cost_usd": result.cost_usd,
                    "usage": result.usage,
                }
            )
            self.summary.failed += 1
            return
        assert result.text is not None  # an answer without text is an error (the client's retry_empty)
        record["summary"] = " ".join(result.text.split())
        self.finish(record)

    def finish(self, record: dict) -> None:
        flags = validate(record["story"], record["words"], min_words=self.cfg.min_words)
        if record.get("finish_reason") == "length":
            flags.append("truncated")
        flags += self.duplicates.add(record["id"], record["story"])
        record["flags"] = flags
        record["valid"] = not flags
        if record.get("instructions"):
            record["text"] = instruct_text(record)  # what `data prepare` trains on: it reads "text" before "story"
        self.log.append(record)
        self.done.add(record["id"])
        self.pending.pop(record["id"], None)
        self.summary.written += 1
        self.summary.flagged += bool(flags)
        self.summary.flag_counts.update(f.split(":")[0] for f in flags)


def synthesize(config: SynthConfig) -> SynthSummary:
    """Run (or continue) a synthesis job; returns what this run did."""
    job = SynthJob(config)
    try:
        specs = job.specs_to_request()
        if config.backend == "template":
            _run_template(job, specs)
        elif config.batch_api:
            settings = BatchSettings(job.batches_path, job.out.stem, config.batch_max_requests, config.batch_poll_s)
            run_batch_api(job, specs, settings)
        else:
            job.summary.stopped = run_online(job, specs, progress=config.progress)
    finally:
        job.close()
    return job.summary


def _template_result(text: str) -> ChatResult:
    return ChatResult(id="", text=text, finish_reason="stop", model="template", attempts=1)


def _run_template(job: SynthJob, specs: list[StorySpec]) -> None:
    for spec in specs:
        story = generate_story(
            random.Random(spec.id), spec.words["verb"], spec.words["noun"], spec.words["adjective"], spec.features
        )
        job.on_story(spec, _template_result(story), "template")
    for record in list(job.pending.values()):
        first = record["story"].split(".")[0]
        job.on_summary(record, _template_result(f"{first}, and then something happens."))
