"""GPT-Neo's self-attention and the KV cache that the sampler fills.

q/k/v projections without bias, an output projection with bias and -- unlike most GPTs -- NO 1/sqrt(head_dim)
scaling of the scores. ``global`` layers are causal; ``local`` layers are causal within a sliding window (query i
sees keys i-window+1..i). The plain path runs PyTorch's fused attention, or the explicit fp32 softmax when the
probabilities are asked for or padding needs them; the fused path runs :func:`tinystories.kernels.attention`.
"""

from __future__ import annotations

from types import ModuleType

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tinystories.model.config import GPTNeoConfig


class KVCache:
    """Keys and values of the tokens seen so far, per layer, plus each key's position and validity.

    Positions and validity make the masks of batched, left-padded prompts exact: a row attends to its
    own real tokens by their own positions, so batching never changes a row's result.
    """

    def __init__(self, num_layers: int) -> None:
        self.keys: list[Tensor | None] = [None] * num_layers
        self.values: list[Tensor | None] = [None] * num_layers
        self.positions: Tensor | None = None  # (B, S) int64
        self.valid: Tensor | None = None  # (B, S) bool
        self.uniform = True  # every row has the same positions and no padding

    @property
    def seq_len(self) -> int:
        return 0 if self.positions is None else self.positions.shape[1]

    def next_positions(self) -> Tensor | None:
        """(B, 1) the position right after each row's last cached token."""
        return None if self.positions is None else self.positions[:, -1:] + 1

    def append_positions(self, positions: Tensor, valid: Tensor, uniform: bool) -> tuple[Tensor, Tensor]:
        self.uniform = self.uniform and uniform
        if self.positions is not None and self.valid is not None:  # set together
            positions = torch.cat([self.positions.expand(positions.shape[0], -1), positions], dim=1)
            valid = torch.cat([self.valid.expand(valid.shape[0], -1), valid], dim=1)
        self.positions, self.valid = positions, valid
        return positions, valid

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        cached_k, cached_v = self.keys[layer], self.values[layer]
        if cached_k is not None and cached_v is not None:  # set together
            k = torch.cat([cached_k, k], dim=2)
            v = torch.cat([cached_v, v], dim=2)
        self.keys[layer], self.values[layer] = k, v
        return k, v


class SelfAttention(nn.Module):
    def __init__(self, config: GPTNeoConfig, attention_type: str) -> None:
        super().__init__()
        self.num_heads, self.head_dim = config.num_heads, config.head_dim
        self.window = config.window_size if attention_type == "local" else None
        self.q_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
        self.k_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
        self.v_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
        self.out_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=True)
        self.attn_dropout = nn.Dropout(config.dropout)
        self.resid_dropout = nn.Dropout(config.dropout)

    def _heads(self, x: Tensor) -> Tensor:  # (B, T, C) -> (B, H, T, D)
        B, T, _ = x.shape
        return x.view(B, T, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(
        self,
        x: Tensor,
        mask: Tensor | None,
        kv_cache: KVCache | None,
        layer: int,
        fused: ModuleType | None,
        explicit: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """``explicit``: compute the probabilities in plain PyTorch (returned; needed with padding)."""
        q, k, v = self._heads(self.q_proj(x)), self._heads(self.k_proj(x)), self._heads(self.v_proj(x))
        if fused is not None and fused.attention is not None:
            y = fused.attention(q, k, v, causal=True, window=self.window, scale=1.0)
            probs = None
        else:
            assert mask is not None, "the model builds the masks whenever attention takes the plain path"
            if kv_cache is not None:
                k, v = kv_cache.update(layer, k, v)
            if explicit:
                # fp32 scores (no 1/sqrt(d) scaling in GPT-Neo); masked entries get the most negative float,
                # like HF, so a row with no visible key (a padding query) stays finite.
                scores = torch.matmul(q.float(), k.float().transpose(-1, -2))
                scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
                probs = F.softmax(scores, dim=-1).to(v.dtype)
                y = torch.matmul(self.attn_dropout(probs), v)
            else:
                # The same function through PyTorch's fused attention (flash / memory-efficient kernels,
                # fp32 accumulation of the scores), never materialising the (T, S) matrix. Every query
                # sees at least itself here (no padding), so no row is fully masked.
                causal = self.window is None and q.shape[2] == k.shape[2]
                y = F.scaled_dot_product_attention(
                    q,
                    k,
                    v,
                    attn_mask=None if causal else mask,
                    is_causal=causal,
                    dropout_p=self.attn_dropout.p if self.training else 0.0,
                    scale=1.0,
                )
                probs = None
        B, _, T, _ = y.shape
        y = y.transpose(1, 2).reshape(B, T, self.num_heads * self.head_dim)
        return self.resid_dropout(self.out_proj(y)), probs
