"""The grid of a sweep: model shapes x token budgets, each an ordinary ``tinystories-train`` run.

Each grid point has its own run directory (``<out>/h<hidden>-l<layers>-t<tokens>``), so any run can be
inspected, resumed or re-run alone. A token budget becomes ``max_steps = ceil(tokens / tokens_per_step)``,
resolved through the trainer's own configuration before anything runs; the data is prepared once for all.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tinystories.atomic import atomic_write_json
from tinystories.data import load_dataset_tokenizer
from tinystories.jsonl import read_jsonl
from tinystories.model.checkpoint import list_checkpoints
from tinystories.model.config import GPTNeoConfig
from tinystories.runtime.arguments import deprecated
from tinystories.runtime.device import Dist
from tinystories.train.config import TrainConfig, load_config
from tinystories.train.fields import RENAMED
from tinystories.train.inputs import resolve_data

STATUS_FILE = "sweep-status.json"
MANIFEST = "sweep.json"
# Keys the sweep itself sets for every run; passing them with --set would silently break the grid.
RESERVED_KEYS = ("hidden_size", "num_layers", "max_steps", "out", "resume", "preset", "data")


@dataclass
class SweepConfig:
    out_dir: str
    hidden: list[int]
    layers: list[int]
    tokens: list[int]
    preset: str = "demo"  # the trainer preset every run starts from (heads, vocab, context, optimiser)
    data: str | None = None  # as the trainer's --data; prepared once for the whole sweep
    train_config: str | None = None  # a TOML file given to every run
    overrides: dict[str, str] = field(default_factory=dict)  # --key=value given to every run
    gpus: list[int] = field(default_factory=list)  # empty: one run at a time, the environment's device

    def __post_init__(self) -> None:
        self.overrides = trainer_overrides(self.overrides)  # a sweep.json of an older release: old names, silently
        for name in ("hidden", "layers", "tokens"):
            values = getattr(self, name)
            if not values or any(not isinstance(v, int) or v <= 0 for v in values):
                raise ValueError(f"sweep: {name} must be a non-empty list of positive integers, got {values!r}")
            if len(set(values)) != len(values):
                raise ValueError(f"sweep: {name} lists a value twice: {values!r}")
        bad = sorted(set(self.overrides) & set(RESERVED_KEYS))
        if bad:
            raise ValueError(
                f"sweep: --set {bad[0]}=... is set by the sweep itself (reserved: "
                f"{', '.join(RESERVED_KEYS)}); use --hidden-size/--num-layers/--tokens/--preset/--data"
            )

    def runs(self) -> list[RunSpec]:
        return [RunSpec(h, n, t) for h in self.hidden for n in self.layers for t in self.tokens]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def load(cls, out_dir: str | Path) -> SweepConfig:
        path = Path(out_dir) / MANIFEST
        if not path.is_file():
            raise FileNotFoundError(
                f"{out_dir} is not a sweep directory (no {MANIFEST}); start one with "
                f"`tinystories sweep run --out {out_dir} ...`"
            )
        try:
            saved = json.loads(path.read_text())
            sweep = cls(**saved)
        except (OSError, ValueError, TypeError) as exc:  # torn, not JSON, or not this shape
            raise ValueError(
                f"{path}: not a readable sweep manifest ({exc}); move it aside and rerun `tinystories sweep run "
                f"--out {out_dir}` with the sweep's grid (--hidden-size, --num-layers, --tokens...) to rewrite it"
            ) from None
        # The folder given is the sweep, wherever it was created (a copied or moved sweep stays self-contained).
        sweep.out_dir = str(out_dir)
        return sweep


@dataclass(frozen=True)
class RunSpec:
    hidden: int
    layers: int
    tokens: int

    @property
    def name(self) -> str:  # exact, so two budgets never share a run directory
        return f"h{self.hidden}-l{self.layers}-t{exact_count(self.tokens)}"

    @property
    def shape(self) -> str:
        return f"h{self.hidden}-l{self.layers}"


def trainer_overrides(pairs: dict[str, str], warn: Callable[[str], None] | None = None) -> dict[str, str]:
    """``--set KEY=VALUE`` pairs as trainer fields: KEY kebab- or snake-case; an old name of a renamed field is
    read as the new one, with a ``warn`` (``--set`` on the command line; a saved sweep.json: silently)."""
    fields = {}
    for key, value in pairs.items():
        name = key.replace("-", "_")
        if name in RENAMED:
            if warn is not None:
                warn(deprecated(f"--set {key}", f"--set {RENAMED[name].replace('_', '-')}"))
            name = RENAMED[name]
        fields[name] = value
    return fields


def parse_count(text: str) -> int:
    """``"50M"`` -> 50_000_000; also ``2.5k``, ``1B``, ``1e6`` and plain integers."""
    text = text.strip()
    scale = {"k": 10**3, "m": 10**6, "b": 10**9, "g": 10**9}.get(text[-1:].lower(), 1)
    number = text[:-1] if scale > 1 else text
    try:
        value = float(number) * scale
    except ValueError:
        raise ValueError(f"not a count: {text!r} (examples: 50M, 2.5k, 1e6)") from None
    if value <= 0 or not value.is_integer():
        raise ValueError(f"not a positive whole count: {text!r}")
    return int(value)


def exact_count(n: int) -> str:
    """``50_000_000`` -> ``"50M"``, ``2_500_000`` -> ``"2500k"``, ``12288`` -> ``"12288"``: short and lossless."""
    for suffix, scale in (("B", 10**9), ("M", 10**6), ("k", 10**3)):
        if n % scale == 0:
            return f"{n // scale}{suffix}"
    return str(n)


def format_count(n: float) -> str:
    for suffix, scale in (("B", 10**9), ("M", 10**6), ("k", 10**3)):
        if n >= scale:
            return f"{n / scale:.3g}{suffix}"
    return f"{n:.3g}"


def train_config_for(sweep: SweepConfig, run: RunSpec, max_steps: int = 1) -> TrainConfig:
    """The trainer's validated :class:`~tinystories.train.TrainConfig` of one run (raises ConfigError)."""
    overrides = {
        **sweep.overrides,
        "preset": sweep.preset,
        "hidden_size": run.hidden,
        "num_layers": run.layers,
        "max_steps": max_steps,
        "out": str(run_dir(sweep, run)),
    }
    if sweep.data is not None:
        overrides["data"] = sweep.data
    return load_config(sweep.train_config, overrides)


@dataclass
class RunPlan:
    """What a run will do, resolved through the trainer's own config before anything runs."""

    run: RunSpec
    max_steps: int
    tokens_per_step: int
    seq_len: int
    model_config: GPTNeoConfig
    train_config: TrainConfig

    @property
    def tokens(self) -> int:
        return self.max_steps * self.tokens_per_step


def plan_runs(sweep: SweepConfig, vocab_size: int) -> list[RunPlan]:
    plans = []
    for run in sweep.runs():
        c = train_config_for(sweep, run)
        mc = c.gpt_neo_config(vocab_size)
        seq_len = c.seq_len or mc.max_position_embeddings
        tokens_per_step = c.batch_size * seq_len * c.grad_accum
        max_steps = math.ceil(run.tokens / tokens_per_step)
        plans.append(RunPlan(run, max_steps, tokens_per_step, seq_len, mc, train_config_for(sweep, run, max_steps)))
    return plans


def plan_warnings(plans: list[RunPlan]) -> list[str]:
    """What a user should know before the runs start: runs that end before their learning-rate warmup does."""
    return [
        f"{p.run.name}: {p.max_steps} steps is not more than warmup_steps={p.train_config.warmup_steps}, so its "
        f"learning rate never reaches its peak (lr={p.train_config.lr:g}); raise --tokens or lower it with "
        f"--set warmup-steps=N"
        for p in plans
        if p.train_config.warmup_steps >= p.max_steps
    ]


def run_dir(sweep: SweepConfig, run: RunSpec) -> Path:
    return Path(sweep.out_dir) / run.name


def prepare_data(sweep: SweepConfig) -> Path:
    """Token shards shared by every run, prepared once (the trainer would otherwise prepare per run)."""
    c = train_config_for(sweep, sweep.runs()[0])
    return resolve_data(c, Path(sweep.out_dir) / "shared", Dist()).resolve()


def data_vocab_size(data_dir: Path) -> int:
    return load_dataset_tokenizer(data_dir).n_vocab


def read_status(directory: Path) -> dict[str, Any]:
    """A run's ``sweep-status.json``, checked against the run folder: a damaged file reads as ``"damaged"`` and a
    run marked done whose final checkpoint is gone as ``"pending"`` (``sweep run`` trains it again), each with a
    ``"problem"`` naming the file; :func:`write_status` drops that key again."""
    path = directory / STATUS_FILE
    fresh: dict[str, Any] = {"status": "pending", "wall_s": 0.0, "attempts": 0}
    if not path.is_file():
        return fresh
    try:
        status = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        return {**fresh, "status": "damaged", "problem": f"{path}: not JSON ({exc})"}
    if not isinstance(status, dict) or not isinstance(status.get("status"), str):
        return {**fresh, "status": "damaged", "problem": f"{path}: not a JSON object with a 'status'"}
    if status["status"] == "done":
        saved = list_checkpoints(directory)
        final = status.get("max_steps")
        if not saved or (isinstance(final, int) and checkpoint_step(saved[-1]) < final):
            status["status"] = "pending"
            status["problem"] = (
                f"{directory}: marked done, but its final checkpoint (step {final}) is missing; "
                "`sweep run` trains it again"
            )
    return status


def read_metrics(directory: Path) -> tuple[list[dict[str, Any]], str | None]:
    """A run's ``metrics.jsonl`` records and, when the file is damaged, the reader's messages naming file and
    line (the other records are kept), so that one damaged run is marked rather than breaking a whole view."""
    problems: list[str] = []
    try:
        records = list(read_jsonl(directory / "metrics.jsonl", on_damaged=problems.append))
    except OSError as exc:
        return [], str(exc)
    return records, "; ".join(problems) or None


def write_status(directory: Path, status: dict[str, Any]) -> None:
    atomic_write_json(directory / STATUS_FILE, {k: v for k, v in status.items() if k != "problem"}, indent=2)


def checkpoint_step(path: Path) -> int:
    return int(path.stem.split("_")[1])
