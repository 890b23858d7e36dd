"""Model: GPT-Neo as the TinyStories paper trained it, and everything that uses one model.

``config`` (``GPTNeoConfig``, the paper's sizes as ``PRESETS``, ``flops_per_token``), ``gpt_neo`` (the
model, readable top to bottom, plain PyTorch or the fused Triton kernels), ``attention`` (its self-attention and
the KV cache), ``blocks`` (its pre-LayerNorm blocks and MLP), ``engine`` (the one generation engine: continuous
batching over a per-slot KV cache), ``decode`` (the engine's native CPU step), ``generate`` (a row's token
choice, and texts from prompts through the engine), ``checkpoint`` (the run's ``.pt`` files and
``load_checkpoint``), ``hf`` (Hugging Face ``GPTNeoForCausalLM`` import/export) and ``cli`` (``tinystories
sample|export``).
"""

from tinystories.model.attention import KVCache
from tinystories.model.checkpoint import load_checkpoint
from tinystories.model.config import PRESETS, GPTNeoConfig, config_from_preset, flops_per_token, mean_keys_attended
from tinystories.model.generate import generate_texts
from tinystories.model.gpt_neo import IMPLS, GPTNeo, GPTNeoOutput, model_summary, sample_next_token

__all__ = [
    "IMPLS",
    "PRESETS",
    "GPTNeo",
    "GPTNeoConfig",
    "GPTNeoOutput",
    "KVCache",
    "config_from_preset",
    "flops_per_token",
    "generate_texts",
    "load_checkpoint",
    "mean_keys_attended",
    "model_summary",
    "sample_next_token",
]
