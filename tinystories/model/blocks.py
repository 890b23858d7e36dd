"""GPT-Neo's pre-LayerNorm block: ``x = x + attn(ln_1(x)); x = x + mlp(ln_2(x))``, with a ``gelu_new`` MLP of
width 4 x hidden. On the fused path one LayerNorm kernel adds the attention's residual and normalises for the MLP.
"""

from __future__ import annotations

import math
from types import ModuleType

import torch
from torch import Tensor, nn

from tinystories.model.attention import KVCache, SelfAttention
from tinystories.model.config import GPTNeoConfig


class NewGELU(nn.Module):
    """``gelu_new``: GELU with the tanh approximation (GPT-2/GPT-Neo). A module so it can be hooked."""

    def forward(self, x: Tensor) -> Tensor:
        return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


class MLP(nn.Module):
    def __init__(self, config: GPTNeoConfig) -> None:
        super().__init__()
        assert config.intermediate_size is not None  # GPTNeoConfig.__post_init__ fills it in (4 x hidden)
        self.c_fc = nn.Linear(config.hidden_size, config.intermediate_size)
        self.act = NewGELU()
        self.c_proj = nn.Linear(config.intermediate_size, config.hidden_size)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: Tensor, fused: ModuleType | None) -> Tensor:
        if fused is not None and fused.fused_mlp is not None:
            y = fused.fused_mlp(x, self.c_fc.weight, self.c_fc.bias, self.c_proj.weight, self.c_proj.bias)
        else:
            y = self.c_proj(self.act(self.c_fc(x)))
        return self.dropout(y)


class Block(nn.Module):
    def __init__(self, config: GPTNeoConfig, attention_type: str) -> None:
        super().__init__()
        self.attention_type = attention_type
        self.ln_1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attn = SelfAttention(config, attention_type)
        self.ln_2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = MLP(config)

    def forward(
        self,
        x: Tensor,
        mask: Tensor | None,
        kv_cache: KVCache | None,
        layer: int,
        fused: ModuleType | None,
        explicit: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        if fused is None:
            a, probs = self.attn(self.ln_1(x), mask, kv_cache, layer, None, explicit)
            x = x + a
            return x + self.mlp(self.ln_2(x), None), probs
        a, _ = self.attn(fused.layer_norm(x, self.ln_1.weight, self.ln_1.bias, self.ln_1.eps), mask, None, layer, fused)
        # One kernel adds the residual and normalises: returns (ln_2(x + a), x + a).
        normed, x = fused.layer_norm(a, self.ln_2.weight, self.ln_2.bias, self.ln_2.eps, residual=x)
        return x + self.mlp(normed, fused), None
