"""The model card (``README.md``) of an exported model, as Hub repositories carry one.

YAML front matter the Hub reads (``library_name``, ``pipeline_tag``, ``license``, ``tags``), then what the model
is, what it was trained on and how far (steps, tokens seen, the last validation loss the run logged), how to load
it, and the command that made the export.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tinystories.jsonl import read_jsonl
from tinystories.model.config import GPTNeoConfig

DEFAULT_LICENSE = "cdla-sharing-1.0"  # the TinyStories data's licence (roneneldan/TinyStories)


@dataclass(frozen=True)
class TrainingFacts:
    """What a checkpoint says about how its model came to be (None: not recorded)."""

    step: int | None = None
    tokens: int | None = None
    data: str | None = None
    val_loss: float | None = None
    val_step: int | None = None
    train_config: dict[str, Any] | None = None


def training_facts(payload: dict[str, Any]) -> TrainingFacts:
    """The facts of a checkpoint payload (:func:`read_checkpoint`) and of its run's ``metrics.jsonl``."""
    checkpoint = Path(str(payload.get("path", "")))
    step = payload.get("step")
    if step is None and (match := re.fullmatch(r"step_(\d+)\.pt", checkpoint.name)):
        step = int(match.group(1))
    train_config = payload.get("train_config") or {}
    val_loss = val_step = None
    run_dir = checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent
    metrics = run_dir / "metrics.jsonl"
    if metrics.is_file():
        for record in read_jsonl(metrics):
            at = record.get("step")
            if "val_loss" in record and isinstance(at, int) and (step is None or at <= step):
                if val_step is None or at >= val_step:
                    val_loss, val_step = float(record["val_loss"]), at
    return TrainingFacts(
        step=step,
        tokens=(payload.get("counters") or {}).get("tokens"),
        data=train_config.get("data"),
        val_loss=val_loss,
        val_step=val_step,
        train_config=train_config or None,
    )


def model_card(
    name: str,
    config: GPTNeoConfig,
    num_parameters: int,
    facts: TrainingFacts,
    command: list[str],
    *,
    license: str = DEFAULT_LICENSE,
) -> str:
    """The README.md of an export named ``name``; ``command`` is the argv that made it."""
    front = "\n".join(
        [
            "---",
            "library_name: transformers",
            "pipeline_tag: text-generation",
            f"license: {license}",
            "language:",
            "- en",
            "tags:",
            "- tinystories",
            "- gpt_neo",
            "---",
        ]
    )
    layers = ", ".join(config.attention_layers)
    val = (
        f"{facts.val_loss:.4f} nats/token (at step {facts.val_step:,}, as the run logged it)"
        if facts.val_loss is not None and facts.val_step is not None
        else "not recorded"
    )
    rows = [
        (
            "architecture",
            f"GPTNeoForCausalLM: {config.num_layers} layers ({layers}), hidden size {config.hidden_size}, "
            f"{config.num_heads} heads, local window {config.window_size}, context {config.max_position_embeddings}",
        ),
        ("parameters", f"{num_parameters:,}"),
        ("vocabulary", f"{config.vocab_size:,} tokens (byte-level BPE; `<|endoftext|>` ends every story)"),
        (
            "training data",
            f"`{facts.data}`" if facts.data else "the built-in demo corpus" if facts.train_config else "not recorded",
        ),
        ("training steps", f"{facts.step:,}" if facts.step is not None else "not recorded"),
        ("tokens seen", f"{facts.tokens:,}" if facts.tokens is not None else "not recorded"),
        ("validation loss", val),
    ]
    table = "\n".join(["| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)])
    made_by = shlex.join(["tinystories", *command])
    trained = json.dumps(facts.train_config, indent=1, default=str)
    config_block = (
        f"\n\nTraining configuration (`tinystories-train`):\n\n```json\n{trained}\n```" if facts.train_config else ""
    )
    use = (
        "from transformers import pipeline\n\n"
        f'generate = pipeline("text-generation", model="{name}")\n'
        'print(generate("Once upon a time", max_new_tokens=100, do_sample=False)[0]["generated_text"])'
    )
    intro = "A TinyStories-style language model (Eldan & Li, 2023), trained and exported with the tinystories toolkit."
    return (
        f"{front}\n\n# {name}\n\n{intro}\n\n{table}\n\n## Use\n\n```python\n{use}\n```\n\n"
        f"## How it was made\n\n```bash\n{made_by}\n```{config_block}\n"
    )
