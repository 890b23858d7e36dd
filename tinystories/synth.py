"""Story synthesis with any OpenAI-compatible LLM (TinyStories, section 2), and the Instruct corpus.

Story `index` of a run with seed `seed` always gets the same id (`{seed}-{index}`), the same sampled
words and features and the same prompt, so a run can be stopped at any point (even SIGKILL) and the
same command continues it: ids already in the output file are never requested again.

Files written next to `--out stories.jsonl` (each appended one whole line at a time, see `JsonlLog`):

* `stories.jsonl`          one record per story (the `story` field is what `tinystories data prepare` reads);
* `stories.jsonl.failed`   requests that failed after every retry (retried on the next run, never lost);
* `stories.jsonl.pending`  Instruct stories waiting for their summary call;
* `stories.jsonl.batches`  Batch API jobs already submitted, so a restart polls them instead of paying twice.

The Instruct layout is documented in docs/synthesis.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import sys
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tinystories.atomic import atomic_save_png
from tinystories.llm_client import add_client_arguments
from tinystories.vocabulary import (
    ADJECTIVES,
    FEATURE_LABELS,
    FEATURES,
    NOUNS,
    PARTS_OF_SPEECH,
    VERBS,
    WORDS_BY_PART_OF_SPEECH,
    word_forms,
)

SUMMARY_MARKER = "Summarize the following children's story in one short sentence, using only simple words.\n\nStory:\n"
_WORDS_RE = re.compile(r'the verb "([a-z]+)", the noun "([a-z]+)" and the adjective "([a-z]+)"')

# Instruct: the instruction types, in the order the layout prints them.
INSTRUCTION_TYPES = ("features", "words", "summary", "sentence")
DEFAULT_OOD_COMBINATION = ("words", "summary")


# --- prompts ------------------------------------------------------------------------------------------------


def build_prompt(verb: str, noun: str, adjective: str, features: list[str] | tuple[str, ...]) -> str:
    """The paper's prompt: simple words, the three required words, the sampled features."""
    prompt = (
        "Write a short story (3-5 paragraphs) which only uses very simple words that a 3 year old child would "
        f'likely understand. The story should use the verb "{verb}", the noun "{noun}" and the adjective '
        f'"{adjective}".'
    )
    if features:
        prompt += " The story should have the following features: " + ", ".join(FEATURES[f] for f in features) + "."
    return prompt + " Remember to only use simple words!"


def parse_prompt(prompt: str) -> tuple[dict[str, str], list[str]]:
    """Inverse of `build_prompt`: ({"verb": .., "noun": .., "adjective": ..}, features)."""
    match = _WORDS_RE.search(prompt)
    words = dict(zip(("verb", "noun", "adjective"), match.groups())) if match else {}
    return words, [name for name, phrase in FEATURES.items() if phrase in prompt]


def summary_prompt(story: str) -> str:
    return SUMMARY_MARKER + story


# --- per-story sampling -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StorySpec:
    """Everything sampled for one story; a pure function of (seed, index)."""

    id: str
    index: int
    seed: int
    words: dict[str, str]
    features: tuple[str, ...]
    instructions: tuple[str, ...]  # Instruct only: which instruction types precede the story
    prompt: str


def story_id(seed: int, index: int) -> str:
    return f"{seed}-{index}"


def sample_spec(seed: int, index: int, *, instruct: bool = False) -> StorySpec:
    rng = random.Random(f"tinystories-synth:{seed}:{index}")  # str seeds hash with SHA-512: stable everywhere
    words = {"verb": rng.choice(VERBS), "noun": rng.choice(NOUNS), "adjective": rng.choice(ADJECTIVES)}
    instructions: tuple[str, ...] = ()
    while instruct and not instructions:  # a non-empty subset, uniform over the 15 of them
        instructions = tuple(t for t in INSTRUCTION_TYPES if rng.random() < 0.5)
    names = list(FEATURES)
    at_least = 1 if "features" in instructions else 0  # a "Features:" line needs a feature to name
    features = tuple(sorted(rng.sample(names, rng.randint(at_least, 3)), key=names.index))
    prompt = build_prompt(words["verb"], words["noun"], words["adjective"], features)
    return StorySpec(story_id(seed, index), index, seed, words, features, instructions, prompt)


def split_of(instructions: Iterable[str], ood_combination: Iterable[str]) -> str:
    """'ood' for the held-out combination of instruction types (kept out of training), else 'train'."""
    return "ood" if set(instructions) == set(ood_combination) else "train"


def pick_sentence(story: str, spec: StorySpec) -> str:
    sentences = [s.strip() for s in re.findall(r"[^.!?]+[.!?]+[\"']?", story) if len(s.split()) >= 3]
    return random.Random(f"sentence:{spec.id}").choice(sentences) if sentences else story.strip().split("\n")[0]


def format_instructions(
    *,
    words: dict[str, str] | None = None,
    features: Sequence[str] = (),
    summary: str | None = None,
    sentence: str | None = None,
) -> str:
    """The Instruct header: the given instructions in the fixed order, each on its own line, then
    "Story:" and a newline, which is where the story (or a model's continuation) begins."""
    lines = []
    if features:
        lines.append("Features: " + ", ".join(FEATURE_LABELS[f] for f in features))
    if words:
        lines.append("Words: " + ", ".join(words[p] for p in PARTS_OF_SPEECH if p in words))
    if summary:
        lines.append(f"Summary: {summary}")
    if sentence:
        lines.append(f"Random sentence: {sentence}")
    return "".join(line + "\n" for line in lines) + "Story:\n"


def instruct_text(record: dict) -> str:
    """A synthesis record in the Instruct layout (docs/synthesis.md): its chosen instructions, then the story."""
    chosen = record["instructions"]
    header = format_instructions(
        words=record["words"] if "words" in chosen else None,
        features=record["features"] if "features" in chosen else (),
        summary=record.get("summary") if "summary" in chosen else None,
        sentence=record.get("random_sentence") if "sentence" in chosen else None,
    )
    return header + record["story"].strip()


# --- validation and duplicates ------------------------------------------------------------------------------

_NOT_PLAIN = re.compile(r"(^#{1,6}\s|\*\*|__|```|^\s*[-*+]\s|^\s*\d+\.\s|<[a-z/][^>]*>|^title:)", re.I | re.M)
_WORD = re.compile(r"[a-z]+")


def validate(story: str, words: dict[str, str], *, min_words: int = 50) -> list[str]:
    """Flags for a story: missing_word:<w>, too_short, not_plain_text. An empty list means valid."""
    tokens = set(_WORD.findall(story.lower()))
    flags = [f"missing_word:{w}" for pos, w in words.items() if not (word_forms(w, pos) & tokens)]
    if len(story.split()) < min_words:
        flags.append("too_short")
    if _NOT_PLAIN.search(story) or any(ord(c) > 0x2FFF for c in story):
        flags.append("not_plain_text")
    return flags


class DuplicateIndex:
    """Exact duplicates (hash of the normalized text) and near duplicates (MinHash over word 5-shingles
    with LSH banding, estimated Jaccard >= threshold). Memory: ~`bands` dict entries per story."""

    def __init__(self, threshold: float = 0.8, num_perm: int = 64, bands: int = 16, shingle: int = 5):
        import numpy as np

        self.threshold, self.num_perm, self.bands, self.shingle = threshold, num_perm, bands, shingle
        self._rows = num_perm // bands
        rng = np.random.default_rng(1234)  # fixed: signatures must agree across runs
        self._a = rng.integers(1, (1 << 61) - 1, num_perm, dtype=np.uint64)
        self._b = rng.integers(0, (1 << 61) - 1, num_perm, dtype=np.uint64)
        self._np = np
        self._exact: dict[bytes, str] = {}
        self._bands: list[dict[bytes, str]] = [{} for _ in range(bands)]
        self._signatures: dict[str, Any] = {}

    def _signature(self, words: list[str]):
        np = self._np
        n = self.shingle
        shingles = {" ".join(words[i : i + n]) for i in range(max(1, len(words) - n + 1))}
        hashes = np.fromiter((zlib.crc32(s.encode()) for s in shingles), dtype=np.uint64, count=len(shingles))
        # (a*x + b) mod 2^64 is a fine universal-ish hash family for MinHash on 32-bit inputs
        return (hashes[:, None] * self._a[None, :] + self._b[None, :]).min(axis=0)

    def add(self, story_id: str, text: str) -> list[str]:
        """Index `text`; returns flags (duplicate_of:<id> / near_duplicate_of:<id>) against earlier texts."""
        words = _WORD.findall(text.lower())
        key = hashlib.blake2b(" ".join(words).encode(), digest_size=16).digest()
        if key in self._exact:
            return [f"duplicate_of:{self._exact[key]}"]
        self._exact[key] = story_id
        if self.threshold <= 0 or len(words) < self.shingle:
            return []
        signature = self._signature(words)
        flags: list[str] = []
        for band, table in enumerate(self._bands):
            band_key = signature[band * self._rows : (band + 1) * self._rows].tobytes()
            other = table.get(band_key)
            if other is None:
                table[band_key] = story_id
            elif not flags and float((self._signatures[other] == signature).mean()) >= self.threshold:
                flags.append(f"near_duplicate_of:{other}")
        self._signatures[story_id] = signature
        return flags


# --- the append-only JSONL log ------------------------------------------------------------------------------


class JsonlLog:
    """Append-only JSONL where each record is one `write` of a whole line.

    A crash can only tear the last line (a write cut short); opening the file detects that (no final
    newline) and truncates the torn tail, so every line in the file is a complete record. `fsync`:
    "always" (after every record), "interval" (at most every `fsync_interval_s`, default) or "never"
    (the OS decides; a process crash still loses nothing already written, a power cut may)."""

    def __init__(self, path: str | Path, *, fsync: str = "interval", fsync_interval_s: float = 1.0):
        if fsync not in ("always", "interval", "never"):
            raise ValueError(f"fsync must be 'always', 'interval' or 'never', got {fsync!r}")
        self.path = Path(path)
        self.fsync, self.fsync_interval_s = fsync, fsync_interval_s
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.repair(self.path)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._last_sync = time.monotonic()

    @staticmethod
    def repair(path: Path) -> int:
        """Truncate a torn last line; returns how many bytes were cut."""
        if not path.exists() or path.stat().st_size == 0:
            return 0
        with open(path, "rb+") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - 1))
            if f.read(1) == b"\n":
                return 0
            tail_start = max(0, size - (1 << 20))
            while True:  # find the last newline, reading backwards in 1 MiB steps
                f.seek(tail_start)
                cut = f.read(size - tail_start).rfind(b"\n")
                if cut >= 0 or tail_start == 0:
                    break
                tail_start = max(0, tail_start - (1 << 20))
            keep = tail_start + cut + 1 if cut >= 0 else 0
            f.truncate(keep)
            os.fsync(f.fileno())
            print(f"{path}: cut a torn last line ({size - keep} bytes) left by an interrupted run", file=sys.stderr)
            return size - keep

    @staticmethod
    def read(path: str | Path) -> Iterator[dict]:
        """Records of a log; a torn last line (no newline) is skipped, any other bad line is an error."""
        path = Path(path)
        if not path.exists():
            return
        with open(path, "rb") as f:
            for number, line in enumerate(f, 1):
                if not line.endswith(b"\n"):
                    return
                try:
                    yield json.loads(line)
                except ValueError as e:
                    raise ValueError(f"{path}:{number}: not a JSON record ({e})") from e

    def append(self, record: dict) -> None:
        data = (json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n").encode()
        written = os.write(self._fd, data)
        while written < len(data):  # only on a full disk or a signal; finish the line or fail loudly
            written += os.write(self._fd, data[written:])
        if self.fsync == "always" or (
            self.fsync == "interval" and time.monotonic() - self._last_sync >= self.fsync_interval_s
        ):
            os.fsync(self._fd)
            self._last_sync = time.monotonic()

    def close(self) -> None:
        if self._fd >= 0:
            if self.fsync != "never":
                os.fsync(self._fd)
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> JsonlLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- the run ------------------------------------------------------------------------------------------------


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
    client: Any = None  # llm_client.ClientConfig; None means defaults

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        if self.n < 0:
            raise ValueError(f"--n must be >= 0, got {self.n}")
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


def _side(out: Path, suffix: str) -> Path:
    return out.with_name(out.name + suffix)


class _Synthesizer:
    def __init__(self, config: SynthConfig):
        self.cfg = config
        self.out = config.out
        self.failed_path, self.pending_path = _side(self.out, ".failed"), _side(self.out, ".pending")
        self.batches_path = _side(self.out, ".batches")
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
            JsonlLog.repair(path)
        for record in JsonlLog.read(self.out):
            if not self.done:
                self._check_same_job(record)
            self.done.add(record["id"])
            self.spent += record.get("cost_usd", 0.0)
            self.duplicates.add(record["id"], record["story"])
        self.summary.already_done = len(self.done)
        for record in JsonlLog.read(self.pending_path):
            if record["id"] not in self.done:
                self.pending[record["id"]] = record
                self.spent += record.get("cost_usd", 0.0)
        for record in JsonlLog.read(self.failed_path):
            self.spent += record.get("cost_usd", 0.0)

    def _check_same_job(self, record: dict) -> None:
        """Resuming with another seed or layout would mix two samplings in one file: refuse."""
        was_instruct = "instructions" in record
        if record.get("seed") != self.cfg.seed or was_instruct != self.cfg.instruct:
            raise ValueError(
                f"{self.out} holds a run with --seed {record.get('seed')}{' --instruct' if was_instruct else ''}; "
                "resume it with the same options or write to another --out"
            )

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

    def on_story(self, spec: StorySpec, result: Any, backend: str) -> None:
        """A story answer arrived (result: llm_client.ChatResult)."""
        base = {
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
        record = {**base, "story": result.text.strip(), "finish_reason": result.finish_reason}
        if spec.instructions:
            record["instructions"] = list(spec.instructions)
            record["split"] = split_of(spec.instructions, self.cfg.ood_combination)
            record["random_sentence"] = pick_sentence(record["story"], spec)
            if "summary" in spec.instructions:
                self.pending_log.append(record)
                self.pending[spec.id] = record
                return
        self.finish(record)

    def on_summary(self, record: dict, result: Any) -> None:
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
    job = _Synthesizer(config)
    try:
        specs = job.specs_to_request()
        if config.backend == "template":
            _run_template(job, specs)
        elif config.batch_api:
            _run_batch_api(job, specs)
        else:
            _run_online(job, specs)
    finally:
        job.close()
    return job.summary


def _progress(config: SynthConfig, total: int, description: str):
    """A rich progress bar (or a no-op) used as a context manager yielding `advance()`."""
    import contextlib

    @contextlib.contextmanager
    def bar():
        if not config.progress or total == 0:
            yield lambda: None
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

        with Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            transient=False,
        ) as progress:
            task = progress.add_task(description, total=total)
            yield lambda: progress.advance(task)

    return bar()


def _template_result(text: str) -> Any:
    from tinystories.llm_client import ChatResult

    return ChatResult(id="", text=text, finish_reason="stop", model="template", attempts=1)


def _run_template(job: _Synthesizer, specs: list[StorySpec]) -> None:
    from tinystories import story_templates

    for spec in specs:
        story = story_templates.generate_story(
            random.Random(spec.id), spec.words["verb"], spec.words["noun"], spec.words["adjective"], spec.features
        )
        job.on_story(spec, _template_result(story), "template")
    for record in list(job.pending.values()):
        first = record["story"].split(".")[0]
        job.on_summary(record, _template_result(f"{first}, and then something happens."))


def _client_config(job: _Synthesizer) -> Any:
    from tinystories.llm_client import ClientConfig, PriceTable

    client = job.cfg.client or ClientConfig()
    prices: PriceTable = client.prices
    if client.max_cost_usd is not None and not prices.has_price(job.cfg.model):
        raise ValueError(
            f"--max-cost-usd needs a price for model {job.cfg.model!r}; add it with --prices FILE "
            '(JSON: {"MODEL": {"input": USD_per_1M, "output": USD_per_1M}})'
        )
    return client


def _run_online(job: _Synthesizer, specs: list[StorySpec]) -> None:
    from tinystories.llm_client import ChatRequest, run_chat

    client = _client_config(job)
    by_id = {spec.id: spec for spec in specs}
    with _progress(job.cfg, len(specs), "stories") as advance:

        def on_result(result: Any) -> None:
            job.on_story(by_id[result.id], result, "openai")
            advance()

        requests = (ChatRequest(spec.id, job.story_body(spec)) for spec in specs)
        stats = run_chat(requests, client, on_result, already_spent_usd=job.spent)
    job.summary.stopped = stats.stopped
    if stats.stopped or not job.pending:
        return
    pending = dict(job.pending)
    with _progress(job.cfg, len(pending), "summaries") as advance:

        def on_summary(result: Any) -> None:
            job.on_summary(pending[result.id.removesuffix("/summary")], result)
            advance()

        requests = (ChatRequest(f"{sid}/summary", job.summary_body(r)) for sid, r in pending.items())
        stats = run_chat(requests, client, on_summary, already_spent_usd=job.spent)
    job.summary.stopped = stats.stopped


# --- Batch API ----------------------------------------------------------------------------------------------


def _run_batch_api(job: _Synthesizer, specs: list[StorySpec]) -> None:
    """Submit (or resume) Batch API jobs for the stories, then for Instruct summaries."""
    import openai

    client_cfg = _client_config(job)
    client = openai.OpenAI(
        base_url=client_cfg.base_url, api_key=client_cfg.resolve_api_key(), timeout=client_cfg.timeout_s
    )
    by_id = {spec.id: spec for spec in specs}
    stories = {spec.id: job.story_body(spec) for spec in specs}
    _batch_phase(job, client, "stories", stories, lambda sid, r: job.on_story(by_id[sid], r, "batch"), client_cfg)
    pending = dict(job.pending)
    summaries = {f"{sid}/summary": job.summary_body(r) for sid, r in pending.items()}
    _batch_phase(
        job,
        client,
        "summaries",
        summaries,
        lambda sid, r: job.on_summary(pending[sid.removesuffix("/summary")], r),
        client_cfg,
    )


def _batch_phase(
    job: _Synthesizer,
    client: Any,
    phase: str,
    bodies: dict[str, dict],
    handle: Callable[[str, Any], None],
    client_cfg: Any,
) -> None:
    entries = [b for b in JsonlLog.read(job.batches_path) if b["phase"] == phase]
    merged = {b["batch_id"] for b in entries if b.get("merged")}
    submitted = [b for b in entries if b["batch_id"] not in merged]  # submitted, results not yet merged
    already = {cid for b in submitted for cid in b["custom_ids"]}
    todo = [cid for cid in bodies if cid not in already]
    with JsonlLog(job.batches_path, fsync="always") as batches_log:
        for start in range(0, len(todo), job.cfg.batch_max_requests):
            ids = todo[start : start + job.cfg.batch_max_requests]
            lines = b"".join(
                json.dumps(
                    {"custom_id": cid, "method": "POST", "url": "/v1/chat/completions", "body": bodies[cid]}
                ).encode()
                + b"\n"
                for cid in ids
            )
            upload = client.files.create(file=(f"{job.out.stem}-{phase}-{start}.jsonl", lines), purpose="batch")
            batch = client.batches.create(
                input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
            )
            entry = {"phase": phase, "batch_id": batch.id, "input_file_id": upload.id, "custom_ids": ids}
            batches_log.append(entry)  # durable before we wait: a restart polls this batch, never resubmits
            submitted.append(entry)
        for entry in submitted:
            _collect_batch(job, client, entry, bodies, handle, client_cfg)
            batches_log.append({**entry, "custom_ids": [], "merged": True})


def _collect_batch(
    job: _Synthesizer,
    client: Any,
    entry: dict,
    bodies: dict[str, dict],
    handle: Callable[[str, Any], None],
    client_cfg: Any,
) -> None:
    from tinystories.llm_client import ChatResult

    while True:
        batch = client.batches.retrieve(entry["batch_id"])
        if batch.status in ("completed", "failed", "expired", "cancelled"):
            break
        time.sleep(job.cfg.batch_poll_s)
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


def _batch_result(cid: str, item: dict, model: str, client_cfg: Any) -> Any:
    """A Batch output line as a ChatResult, judged by the same policy as the online client."""
    from tinystories.llm_client import ChatResult

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


# --- stats --------------------------------------------------------------------------------------------------


def corpus_stats(path: str | Path) -> dict:
    """Counts, lengths, vocabulary coverage, distinct-n and feature frequencies of a synthesis output."""
    records = list(JsonlLog.read(path))
    if not records:
        raise ValueError(f"{path}: no records")
    texts = [r["story"] for r in records]
    tokens = [_WORD.findall(t.lower()) for t in texts]
    lengths = [len(t) for t in tokens]
    seen = set().union(*map(set, tokens))
    coverage = {
        pos: sum(bool(word_forms(w, pos) & seen) for w in words) / len(words)
        for pos, words in WORDS_BY_PART_OF_SPEECH.items()
    }
    distinct = {}
    for n in (1, 2, 3):
        grams = Counter(tuple(t[i : i + n]) for t in tokens for i in range(len(t) - n + 1))
        distinct[f"distinct-{n}"] = len(grams) / max(1, sum(grams.values()))
    features = Counter(f for r in records for f in r.get("features", []))
    flags = Counter(f.split(":")[0] for r in records for f in r.get("flags", []))
    return {
        "records": len(records),
        "valid": sum(bool(r.get("valid", True)) for r in records),
        "failed": len({f["id"] for f in JsonlLog.read(_side(Path(path), ".failed"))} - {r["id"] for r in records}),
        "words_mean": sum(lengths) / len(lengths),
        "words_min": min(lengths),
        "words_max": max(lengths),
        "lengths": lengths,
        "coverage": coverage,
        "distinct": distinct,
        "features": {f: features[f] / len(records) for f in FEATURES},
        "flags": dict(flags),
        "splits": dict(Counter(r["split"] for r in records if "split" in r)),
        "cost_usd": sum(r.get("cost_usd", 0.0) for r in records),
    }


def plot_stats(stats: dict, png: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    axes[0, 0].hist(stats["lengths"], bins=40, color="#4c72b0")
    axes[0, 0].set(title="story length", xlabel="words", ylabel="stories")
    axes[0, 1].bar(list(stats["features"]), list(stats["features"].values()), color="#55a868")
    axes[0, 1].set(title="feature frequency", ylabel="fraction of stories")
    axes[0, 1].tick_params(axis="x", rotation=30)
    axes[1, 0].bar(list(stats["coverage"]), list(stats["coverage"].values()), color="#c44e52")
    axes[1, 0].set(title="coverage of the child vocabulary", ylabel="fraction of words used", ylim=(0, 1))
    axes[1, 1].bar(list(stats["distinct"]), list(stats["distinct"].values()), color="#8172b2")
    axes[1, 1].set(title="diversity (distinct n-grams / n-grams)", ylim=(0, 1))
    fig.suptitle(f"{stats['records']} stories, {stats['valid']} valid")
    fig.tight_layout()
    atomic_save_png(fig, png, dpi=100)
    plt.close(fig)


def print_stats(stats: dict, path: str | Path) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"synthesis stats: {path}")
    table.add_column("measure")
    table.add_column("value", justify="right")
    rows = [
        ("records", stats["records"]),
        ("valid (no flags)", stats["valid"]),
        ("failed, no story yet (see .failed)", stats["failed"]),
        (
            "words per story (mean / min / max)",
            f"{stats['words_mean']:.1f} / {stats['words_min']} / {stats['words_max']}",
        ),
        *((f"vocabulary coverage: {pos}s", f"{v:.1%}") for pos, v in stats["coverage"].items()),
        *((name, f"{v:.3f}") for name, v in stats["distinct"].items()),
        *((f"feature: {f}", f"{v:.1%}") for f, v in stats["features"].items()),
        *((f"flag: {f}", n) for f, n in sorted(stats["flags"].items())),
        *((f"split: {s}", n) for s, n in sorted(stats["splits"].items())),
        ("cost (USD)", f"{stats['cost_usd']:.4f}"),
    ]
    for name, value in rows:
        table.add_row(name, str(value))
    Console().print(table)


# --- CLI ----------------------------------------------------------------------------------------------------


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="{stats}")
    stats = sub.add_parser("stats", help="counts, lengths, vocabulary coverage, diversity, features (table + PNG)")
    stats.add_argument("file", type=Path)
    stats.add_argument("--png", type=Path, help="where to save the plots (default: FILE.stats.png)")
    parser.add_argument("--n", type=int, help="number of stories (ids 0..n-1 for this seed)")
    parser.add_argument("--out", type=Path, help="output JSONL (appended; re-run the same command to resume)")
    parser.add_argument("--model", default="gpt-4o-mini")
    add_client_arguments(parser, cost_help="stop cleanly before spending more than this (all runs)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--instruct", action="store_true", help="precede stories with instructions (docs/synthesis.md)")
    parser.add_argument(
        "--ood-combination",
        default=",".join(DEFAULT_OOD_COMBINATION),
        help=f"instruction types held out for the OOD split, from {','.join(INSTRUCTION_TYPES)}",
    )
    parser.add_argument("--batch-api", action="store_true", help="use the OpenAI Batch API (half price, slower)")
    parser.add_argument("--batch-poll-s", type=float, default=30.0)
    parser.add_argument(
        "--backend",
        choices=("openai", "template"),
        default="openai",
        help="'template': offline template stories, no API",
    )
    parser.add_argument("--max-tokens", type=int, default=1024)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--min-words", type=int, default=50, help="shorter stories are flagged too_short")
    parser.add_argument("--near-duplicate-threshold", type=float, default=0.8, help="0 disables near-dup search")
    parser.add_argument("--fsync", choices=("always", "interval", "never"), default="interval")
    parser.add_argument("--no-progress", action="store_true")


def run_cli(args: argparse.Namespace) -> int:
    if args.action == "stats":
        stats = corpus_stats(args.file)
        print_stats(stats, args.file)
        png = args.png or args.file.with_name(args.file.name + ".stats.png")
        plot_stats(stats, png)
        print(f"plots: {png}")
        return 0
    if args.n is None or args.out is None:
        print("tinystories synth: --n and --out are required (or use: tinystories synth stats FILE)", file=sys.stderr)
        return 2
    from tinystories.llm_client import client_config_from_args

    client = client_config_from_args(args)
    config = SynthConfig(
        n=args.n,
        out=args.out,
        model=args.model,
        seed=args.seed,
        backend=args.backend,
        instruct=args.instruct,
        ood_combination=tuple(t.strip() for t in args.ood_combination.split(",") if t.strip()),
        batch_api=args.batch_api,
        batch_poll_s=args.batch_poll_s,
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        min_words=args.min_words,
        near_duplicate_threshold=args.near_duplicate_threshold,
        fsync=args.fsync,
        progress=not args.no_progress,
        client=client,
    )
    try:
        summary = synthesize(config)
    except ValueError as e:  # bad options or files: a clear message, not a traceback
        print(f"tinystories synth: {e}", file=sys.stderr)
        return 2
    print(
        f"{args.out}: {summary.written} new records ({summary.flagged} flagged: {dict(summary.flag_counts)}), "
        f"{summary.already_done} from earlier runs, {summary.failed} failed requests "
        f"(see {_side(args.out, '.failed')}), ${summary.cost_usd:.4f} this run"
        + (f"; stopped: {summary.stopped}" if summary.stopped else "")
    )
    return 0 if summary.stopped in (None, "budget") else 1
