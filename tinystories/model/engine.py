"""The one generation engine: continuous (iteration-level) batching over a KV cache preallocated per slot.

``serve`` (through a thread, :mod:`tinystories.serve.engine`), ``tinystories sample``, the trainer's samples and
the evaluation (through :func:`tinystories.model.generate.generate_rows`) all decode here.

Each running row holds a *slot*: its keys and values live at ``cache[slot, :, position]``, so a row's positions
are its own (0 for its first prompt token, with no padding before it) whatever the other rows are. One
:meth:`Engine.step`:

1. drops cancelled jobs (their rows free their slots at once);
2. admits waiting rows into free slots;
3. chooses the next token of every running row, and retires the rows that ended (<|endoftext|>, their
   ``max_new_tokens``, or ``on_token`` returning False), moving the last slot's row into a freed slot so the
   running rows stay ``0..n-1``.

On a CPU in fp32 step 3 is one forward pass of :class:`tinystories.model.decode.DecodeStep` over the last token
of each decoding row and the whole prompt of each row that joined. Elsewhere (a GPU, autocast, a hook on the
model) and with ``fast=False`` it is two passes of ``GPTNeo.forward``: the joining rows' prompts together
(right-padded: a prompt's padding comes after its last token, where causal attention never looks), choosing
their first token, then one token for every running row.

Each row's next token comes from ``choose`` (:func:`tinystories.model.generate.choose_tokens`, given by
``generate_rows`` and serve), with the row's own settings and generator, so a seeded row gives the same tokens
alone, in a busy batch or joining one midway.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor

from tinystories.model.attention import KVCache
from tinystories.model.decode import DecodeStep
from tinystories.model.gpt_neo import GPTNeo


class EngineRow(Protocol):
    """What the engine reads of a row (:class:`tinystories.model.generate.Row`, whose settings only ``choose``
    reads)."""

    prompt: list[int]
    max_new_tokens: int
    on_token: Callable[[int], bool] | None


Choose = Callable[[Sequence[Any], Tensor], list[int]]  # (rows, their next-position logits (rows, V)) -> next tokens


class SlotCache(KVCache):
    """Keys and values per slot, preallocated (slots, heads, length, head_dim) per layer and grown rarely (the
    slots double, the length jumps to what a new row needs): writing a token is an indexed copy, never a
    ``torch.cat``. :meth:`bind` says which slots and positions the next forward pass writes."""

    def __init__(self, num_layers: int, heads: int, head_dim: int) -> None:
        super().__init__(num_layers)
        self.heads, self.head_dim = heads, head_dim
        self.uniform = False  # rows at positions of their own
        self.slots = self.length = 0  # the capacity the next write allocates for
        self._slots = slice(0, 0)
        self._rows = torch.zeros(0, dtype=torch.long)
        self._at: Tensor | None = None  # (n,) decode positions; None: a prefill written from position 0
        self._span = 0

    def reserve(self, slots: int, length: int) -> None:
        if slots > self.slots:
            self.slots = max(slots, 2 * self.slots)
        self.length = max(self.length, length)

    def bind(self, first: int, count: int, positions: Tensor, span: int) -> None:
        """The next forward pass writes slots ``first..first+count-1``: a prefill (positions (n, T) from 0) or
        one token per row at ``positions`` (n, 1); its queries see keys ``0..span-1``."""
        decode = positions.shape[1] == 1
        self._slots = slice(first, first + count)
        self._rows = torch.arange(first, first + count, device=positions.device)
        self._at = positions[:, 0] if decode else None
        self._span = span

    @property
    def seq_len(self) -> int:
        return self._span

    def next_positions(self) -> Tensor | None:
        return None  # the engine always passes position_ids

    def append_positions(self, positions: Tensor, valid: Tensor, uniform: bool) -> tuple[Tensor, Tensor]:
        """Key ``s`` of a row is at position ``s``; every key up to a query's position is a real token (a prompt's
        padding sits after it, and is overwritten by the row's next token before any query reaches it)."""
        n = positions.shape[0]
        key_positions = torch.arange(self._span, device=positions.device).expand(n, -1)
        return key_positions, torch.ones(n, self._span, dtype=torch.bool, device=positions.device)

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        keys, values = self._grow(layer, k.dtype, k.device)
        if self._at is None:  # a prefill: every row from position 0
            keys[self._slots, :, : k.shape[2]] = k
            values[self._slots, :, : v.shape[2]] = v
        else:
            keys[self._rows, :, self._at] = k[:, :, 0]
            values[self._rows, :, self._at] = v[:, :, 0]
        return keys[self._slots, :, : self._span], values[self._slots, :, : self._span]

    def buffers(self, dtype: torch.dtype, device: torch.device) -> tuple[list[Tensor], list[Tensor]]:
        """Every layer's keys and values, grown to the reserved capacity (for :class:`DecodeStep`, which writes
        them itself)."""
        grown = [self._grow(layer, dtype, device) for layer in range(len(self.keys))]
        return [k for k, _ in grown], [v for _, v in grown]

    def _grow(self, layer: int, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor]:
        keys, values = self.keys[layer], self.values[layer]
        if keys is None or values is None or keys.shape[0] < self.slots or keys.shape[2] < self.length:
            shape = (self.slots, self.heads, self.length, self.head_dim)
            grown = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(2)]
            if keys is not None and values is not None:
                grown[0][: keys.shape[0], :, : keys.shape[2]] = keys
                grown[1][: values.shape[0], :, : values.shape[2]] = values
            keys, values = self.keys[layer], self.values[layer] = grown[0], grown[1]
        return keys, values

    def move(self, source: int, target: int, length: int) -> None:
        """Slot ``source``'s first ``length`` keys and values into slot ``target``."""
        for keys, values in zip(self.keys, self.values):
            if keys is not None and values is not None:
                keys[target, :, :length] = keys[source, :, :length]
                values[target, :, :length] = values[source, :, :length]


@dataclass(eq=False)
class Job:
    """Rows that finish together (one HTTP request, one ``generate_rows`` call). ``tokens[i]`` is row ``i``'s
    new tokens (without the <|endoftext|> that ended it); ``done(job)`` runs once every row has ended, or
    the engine failed (``error``). Setting ``cancelled`` frees its rows at the next step."""

    rows: Sequence[EngineRow]
    done: Callable[[Job], None] | None = None
    cancelled: bool = False
    error: BaseException | None = None
    tokens: list[list[int]] = field(init=False)
    submitted_step: int = -1  # the engine's step count when it was submitted, and when its first token came
    first_token_step: int | None = None
    _left: int = field(init=False)

    def __post_init__(self) -> None:
        self.tokens = [[] for _ in self.rows]
        self._left = len(self.rows)


@dataclass(eq=False)
class _Running:
    job: Job
    index: int  # the row's index in its job
    position: int  # the position of ``last``, the token the next decode step feeds
    last: int = -1

    @property
    def row(self) -> EngineRow:
        return self.job.rows[self.index]


class Engine:
    """Continuous batching of :class:`Job` rows over ``max_batch`` slots; not thread-safe (one thread
    calls :meth:`submit` and :meth:`step`, as :class:`tinystories.serve.engine.Engine`'s thread does).
    ``fast=False`` never takes the native step (every step runs ``GPTNeo.forward``)."""

    def __init__(self, model: GPTNeo, eos: int, choose: Choose, *, max_batch: int = 32, fast: bool = True) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.model, self.eos, self.choose, self.max_batch = model, eos, choose, max_batch
        self.decode_step = DecodeStep(model) if fast else None
        self.context = model.config.max_position_embeddings
        self.device = next(model.parameters()).device
        self.cache = SlotCache(model.config.num_layers, model.config.num_heads, model.config.head_dim)
        self.running: list[_Running] = []
        self.waiting: deque[tuple[Job, int]] = deque()  # (job, row index), first come first served
        self.steps = 0  # decode steps run
        self.batches: deque[int] = deque(maxlen=100_000)  # rows per recent decode step (tests, profiles)

    @property
    def idle(self) -> bool:
        return not self.running and not self.waiting

    def submit(self, job: Job) -> None:
        """Queue ``job``'s rows; they join at the next step. ValueError if a row does not fit the context."""
        for row in job.rows:
            if not row.prompt:
                raise ValueError("a row has an empty prompt (start a story from <|endoftext|>)")
            if len(row.prompt) + row.max_new_tokens > self.context:
                raise ValueError(
                    f"a prompt of {len(row.prompt)} tokens + {row.max_new_tokens} new tokens exceed the context "
                    f"of {self.context} tokens"
                )
        if job.submitted_step < 0:  # the serve thread may have set it when the job arrived
            job.submitted_step = self.steps
        self.waiting.extend((job, i) for i, row in enumerate(job.rows) if row.max_new_tokens > 0)
        job._left = sum(row.max_new_tokens > 0 for row in job.rows)
        if not job._left:
            self._finish(job)

    def step(self) -> None:
        """Admit waiting rows (prefilling their prompts), then choose one token for every running row. A failed
        forward pass fails the jobs it ran (their ``done`` gets the error) and is raised."""
        self._drop_cancelled()
        if self.model.training:  # no dropout while decoding (run() puts the mode back)
            self.model.eval()
        try:
            with torch.no_grad():
                new = self._admit()
                if self.decode_step is not None and self.decode_step.usable():
                    if self.running:
                        self._step_native(self.decode_step, len(self.running) - len(new))
                else:
                    if new:
                        self._prefill(new)
                    if self.running:
                        self._decode()
        except Exception as exc:
            self._fail(exc)
            raise

    def run(self) -> None:
        """Step until every submitted row has ended; the model is back in its mode (train or eval) after."""
        was_training = self.model.training
        try:
            while not self.idle:
                self.step()
        finally:
            self.model.train(was_training)

    # -- the steps ------------------------------------------------------------------------------------
    def _admit(self) -> list[_Running]:
        """Waiting rows into free slots (the running list's end), first come first served."""
        new: list[_Running] = []
        while self.waiting and len(self.running) + len(new) < self.max_batch:
            job, index = self.waiting.popleft()
            new.append(_Running(job, index, len(job.rows[index].prompt) - 1))
        if new:
            self.running.extend(new)  # before the forward pass: a failure fails their jobs too
            self.cache.reserve(len(self.running), max(len(r.row.prompt) + r.row.max_new_tokens for r in new))
        return new

    def _step_native(self, step: DecodeStep, fresh: int) -> None:
        """One forward pass (:class:`DecodeStep`) over the last token of the rows ``0..fresh-1`` and the whole
        prompt of each row after them, which joined this step; every row gets its next token."""
        tokens: list[int] = []
        slots: list[int] = []
        positions: list[int] = []
        wanted: list[int] = []
        for i, running in enumerate(self.running):
            if i < fresh:
                tokens.append(running.last)
                slots.append(i)
                positions.append(running.position)
            else:
                prompt = running.row.prompt
                tokens += prompt
                slots += [i] * len(prompt)
                positions += range(len(prompt))
                if running.job.first_token_step is None:
                    running.job.first_token_step = self.steps
            wanted.append(len(tokens) - 1)
        keys, values = self.cache.buffers(torch.float32, self.device)
        tensor = torch.tensor  # on the CPU, where the native step runs
        logits = step(tensor(tokens), tensor(slots), tensor(positions), keys, values, tensor(wanted))
        self.batches.append(len(self.running))
        self.steps += 1
        self._choose(logits, 0)

    def _prefill(self, new: list[_Running]) -> None:
        """``GPTNeo.forward`` over the prompts of the rows that joined (right-padded), choosing their first token."""
        first, prompts = len(self.running) - len(new), [r.row.prompt for r in new]
        width = max(len(p) for p in prompts)
        ids = torch.full((len(new), width), self.eos, dtype=torch.long)
        for i, prompt in enumerate(prompts):
            ids[i, : len(prompt)] = torch.tensor(prompt, dtype=torch.long)
        positions = torch.arange(width, device=self.device).expand(len(new), -1)
        self.cache.bind(first, len(new), positions, width)
        last = torch.tensor([len(p) - 1 for p in prompts], device=self.device)
        logits = self.model(ids.to(self.device), kv_cache=self.cache, position_ids=positions, logits_at=last).logits
        assert logits is not None
        for running in new:
            if running.job.first_token_step is None:
                running.job.first_token_step = self.steps
        self._choose(logits[:, -1], first)

    def _decode(self) -> None:
        n = len(self.running)
        self.batches.append(n)
        positions = torch.tensor([r.position for r in self.running], device=self.device)
        ids = torch.tensor([r.last for r in self.running], device=self.device)
        self.cache.bind(0, n, positions[:, None], int(positions.max()) + 1)
        logits = self.model(ids[:, None], kv_cache=self.cache, position_ids=positions[:, None]).logits
        assert logits is not None
        self.steps += 1
        self._choose(logits[:, -1], 0)

    def _choose(self, logits: Tensor, first: int) -> None:
        """Each row's next token from its logits (rows ``first..``, (rows, V)); ended rows leave their slots."""
        ended = []
        chosen = self.choose([r.row for r in self.running[first:]], logits)
        for i, token in enumerate(chosen, start=first):
            running = self.running[i]
            row, tokens = running.row, running.job.tokens[running.index]
            if token == self.eos:
                ended.append(i)
                continue
            tokens.append(token)
            keep_going = row.on_token(token) if row.on_token is not None else True
            if not keep_going or len(tokens) >= row.max_new_tokens:
                ended.append(i)
            running.last = token
            running.position += 1
        for i in reversed(ended):  # highest first: a moved row is never one that still has to leave
            self._leave(i)

    def _leave(self, i: int) -> None:
        job, last = self.running[i].job, self.running.pop()
        if i < len(self.running):
            self.cache.move(len(self.running), i, last.position)
            self.running[i] = last
        job._left -= 1
        if not job._left:
            self._finish(job)

    def _drop_cancelled(self) -> None:
        if any(job.cancelled for job, _ in self.waiting):
            kept: deque[tuple[Job, int]] = deque()
            for job, index in self.waiting:
                if not job.cancelled:
                    kept.append((job, index))
                else:
                    job._left -= 1
                    if not job._left:
                        self._finish(job)
            self.waiting = kept
        for i in reversed(range(len(self.running))):
            if self.running[i].job.cancelled:
                self._leave(i)

    def _fail(self, error: BaseException) -> None:
        """A forward pass failed: the jobs it ran end with ``error``, their waiting rows are dropped."""
        failed = {r.job for r in self.running}
        self.running.clear()
        self.waiting = deque(item for item in self.waiting if item[0] not in failed)
        for job in failed:
            job.error = error
            self._finish(job)

    def _finish(self, job: Job) -> None:
        if job.done is not None:
            job.done(job)
