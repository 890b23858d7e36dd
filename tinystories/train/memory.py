"""What a training configuration needs in memory, and what the device has: checked before a run allocates
anything or creates its folder, so an absurd size (``--batch-size=1e12``, ``--hidden-size=1e8``) is a one-line
refusal, not a ``std::bad_alloc`` or an out-of-memory error minutes later.

The estimate (:func:`training_memory`) is a lower bound: it counts only what every execution path must hold,
so a refusal is always right; the peak is higher (attention scores and logits on the plain path, allocator
slack, the loader's buffers, CUDA's context), and a configuration near the limit can still run out of memory.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from tinystories.model.config import GPTNeoConfig
from tinystories.runtime.errors import ConfigError
from tinystories.train.fields import TrainConfig

GPT2_VOCAB = 50257  # the largest vocabulary of the tokenizers the trainer names (gpt2 / gpt-neo)
DEMO_VOCAB = 2048  # the demo corpus's own tokenizer (train.inputs)
ACTIVATION_VALUES = 15  # per token and layer, in units of hidden_size (see training_memory)


@dataclass(frozen=True)
class MemoryEstimate:
    parameters: int
    states_bytes: int  # weights, gradients, AdamW's two moments
    activation_bytes: int  # what the backward pass keeps of one micro-batch, logits included

    @property
    def total_bytes(self) -> int:
        return self.states_bytes + self.activation_bytes


def parameter_count(mc: GPTNeoConfig) -> int:
    """GPT-Neo's parameters, counted from the shape (no allocation): embeddings (the head is tied), per block
    q/k/v (no bias), the output projection, the MLP and two LayerNorms, and the final LayerNorm."""
    h, inner = mc.hidden_size, mc.intermediate_size or 4 * mc.hidden_size
    block = 3 * h * h + (h * h + h) + (2 * h * inner + inner + h) + 4 * h
    return (mc.padded_vocab_size + mc.max_position_embeddings) * h + mc.num_layers * block + 2 * h


def training_memory(mc: GPTNeoConfig, batch_size: int, seq_len: int, dtype: str) -> MemoryEstimate:
    """A lower bound of the bytes one process needs to train ``mc`` on micro-batches of ``batch_size`` x
    ``seq_len`` tokens:

    * weights, gradients and AdamW's two moments: four fp32 copies, 16 bytes per parameter;
    * activations the backward pass needs, per token and layer: the inputs of its matmuls and of the GELU
      (LayerNorm outputs, q, k, v, the attention output, the residual, the MLP's 4h hidden before and after
      the GELU: :data:`ACTIVATION_VALUES` x hidden_size values), 2 bytes each under bf16/fp16 autocast, 4 in
      fp32. Attention scores and logits are left out: the fused paths never materialise them.
    """
    n = parameter_count(mc)
    value_bytes = 4 if dtype == "fp32" else 2
    activations = batch_size * seq_len * mc.num_layers * ACTIVATION_VALUES * mc.hidden_size * value_bytes
    return MemoryEstimate(parameters=n, states_bytes=16 * n, activation_bytes=activations)


def available_memory(device: torch.device) -> int | None:
    """Bytes the device can still give: free CUDA memory, or the RAM Linux reports available (MemAvailable,
    else free pages); None where unknown (MPS, other systems)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type != "cpu":
        return None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def vocabulary_bound(c: TrainConfig) -> int:
    """The vocabulary the run will have, without loading a tokenizer: --vocab-size, a prepared folder's
    index, the demo's, else GPT-2's (the largest the trainer names)."""
    if c.vocab_size:
        return c.vocab_size
    if c.data is None:
        return DEMO_VOCAB
    index = Path(c.data) / "index.json"
    try:
        return int(json.loads(index.read_text())["n_vocab"])
    except (OSError, ValueError, KeyError, TypeError):
        return GPT2_VOCAB


def check_memory(c: TrainConfig, device: torch.device, dtype: str, available: int | None = None) -> None:
    """Raise ConfigError, naming the fields and values, when the configuration cannot fit the device.
    ``available`` defaults to :func:`available_memory`. A run starting from Hugging Face weights has their
    shape, known only once they are read: not checked here."""
    if c.init_from_hf:
        return
    mc = c.gpt_neo_config(vocabulary_bound(c))
    seq_len = c.seq_len or mc.max_position_embeddings
    need = training_memory(mc, c.batch_size, seq_len, dtype)
    have = available_memory(device) if available is None else available
    if have is None or need.total_bytes <= have:
        return
    if need.activation_bytes >= need.states_bytes:
        culprit = f"batch_size={c.batch_size} x seq_len={seq_len}"
        advice = "lower batch_size (grad_accum keeps the tokens per step)"
    else:
        culprit = f"hidden_size={mc.hidden_size}, num_layers={mc.num_layers} ({need.parameters:,} parameters)"
        advice = "choose a smaller model"
    raise ConfigError(
        f"{culprit}: training needs about {_gb(need.total_bytes)} (weights, gradients and AdamW states "
        f"{_gb(need.states_bytes)}, activations {_gb(need.activation_bytes)}), more than the {_gb(have)} "
        f"available on {device}; {advice}"
    )


def _gb(n: int) -> str:
    return f"{n / 1e9:,.1f} GB" if n < 1e15 else f"{n / 1e9:.3g} GB"
