"""GPT-Neo, exactly as Hugging Face ``GPTNeoForCausalLM`` computes it: the model, read top to bottom here, with its
layers in :mod:`tinystories.model.attention` (self-attention, the KV cache) and :mod:`tinystories.model.blocks`.

The architecture of the TinyStories models (Eldan & Li 2023):

- learned token and position embeddings, the output head tied to the token embedding;
- pre-LayerNorm blocks (eps 1e-5): ``x = x + attn(ln_1(x)); x = x + mlp(ln_2(x))``;
- attention layers alternate ``global`` (causal) and ``local`` (causal, sliding window of 256: query i
  sees keys i-255..i), q/k/v projections without bias, output projection with bias, and — unlike most
  GPTs — NO 1/sqrt(head_dim) scaling of the scores, which are computed in fp32;
- a ``gelu_new`` (tanh-approximated GELU) MLP of width 4 x hidden.

Three implementations of the same function, chosen with ``impl``: ``"torch"`` (plain PyTorch, runs
everywhere, the reference, the only one that returns attention probabilities), ``"fused"`` (the Triton
kernels of :mod:`tinystories.kernels`, CUDA only) and ``"hybrid"`` (only the Triton kernels without
``tl.dot`` -- LayerNorm and the cross-entropy part of linear-CE -- with cuBLAS matmuls and PyTorch SDPA: for
GPUs below sm_80, where Triton's ``tl.dot`` runs without tensor cores). A fused or hybrid model that cannot
use its kernels for a call (no CUDA, no Triton, a KV cache, a hook on ``blocks[i].mlp.act``...) runs the
plain path and logs why.

The token embedding is padded to a multiple of 64 rows for faster matmuls; the padding rows are zero,
never looked up, and sliced off the logits, so results equal the unpadded model's.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from types import ModuleType
from typing import NamedTuple, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tinystories.model.attention import KVCache
from tinystories.model.blocks import Block
from tinystories.model.config import GPTNeoConfig

log = logging.getLogger(__name__)

IMPLS = ("torch", "fused", "hybrid")


class GPTNeoOutput(NamedTuple):
    logits: Tensor | None  # (B, T, vocab_size), fp32 logits of the real vocabulary
    loss: Tensor | None  # mean next-token cross-entropy over targets != -100
    attentions: tuple[Tensor, ...] | None  # per layer (B, H, T, S) probabilities, plain path only
    hidden_states: tuple[Tensor, ...] | None  # as HF: the input of every block, then ln_f's output


class KernelsWithoutDot:
    """The hybrid path's kernels: LayerNorm and linear-CE (cuBLAS matmuls around a Triton cross-entropy); no
    attention or MLP kernel (their tl.dot lacks tensor cores below sm_80), so those run cuBLAS / SDPA."""

    attention = fused_mlp = None

    def __init__(self, kernels: ModuleType) -> None:
        self.layer_norm, self.linear_cross_entropy = kernels.layer_norm, kernels.linear_cross_entropy


class GPTNeo(nn.Module):
    def __init__(self, config: GPTNeoConfig, impl: str = "torch") -> None:
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.padded_vocab_size, config.hidden_size)
        self.wpe = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config, t) for t in config.attention_layers)
        self.ln_f = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self._fallbacks_logged: set[str] = set()
        self._kernels_status: tuple[ModuleType | None, str, bool] | None = None
        self.impl = impl
        self.apply(self._init_weights)

    # -- setup ---------------------------------------------------------------------------------------
    @property
    def impl(self) -> str:
        return self._impl

    @impl.setter
    def impl(self, value: str) -> None:
        if value not in IMPLS:
            raise ValueError(f"impl must be one of {IMPLS}, got {value!r}")
        self._impl = value

    def _init_weights(self, module: nn.Module) -> None:
        # As HF GPTNeoPreTrainedModel: N(0, 0.02) weights, zero biases, unit LayerNorms.
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        if module is self.wte:  # padding rows: never looked up, sliced off the logits
            with torch.no_grad():
                module.weight[self.config.vocab_size :].zero_()

    def num_parameters(self, non_embedding: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())
        n -= self.wte.weight.numel() - self.config.vocab_size * self.config.hidden_size  # padding rows
        if non_embedding:
            n -= self.config.vocab_size * self.config.hidden_size + self.wpe.weight.numel()
        return n

    # -- implementation choice -------------------------------------------------------------------------
    def _fallback(self, reason: str) -> None:
        if reason not in self._fallbacks_logged:
            self._fallbacks_logged.add(reason)
            log.warning("impl=%r falls back to the plain PyTorch path: %s", self._impl, reason)

    def _fused_kernels(
        self,
        idx: Tensor,
        kv_cache: KVCache | None,
        output_attentions: bool,
        attention_mask: Tensor | None,
        position_ids: Tensor | None,
    ) -> ModuleType | KernelsWithoutDot | None:
        """The kernels this call can use (all for "fused", those without tl.dot for "hybrid"), else None
        (after logging why, once)."""
        if self._impl == "torch":
            return None
        if self._kernels_status is None:
            try:
                from tinystories import kernels as kernel_module
                from tinystories.kernels import kernels_available
                from tinystories.kernels._triton import interpreter_active

                ok, reason = kernels_available()
                # Triton's CPU interpreter (TRITON_INTERPRET=1, for tests) runs the kernels on CPU tensors.
                self._kernels_status = (kernel_module if ok else None, reason, interpreter_active())
            except ImportError as exc:
                self._kernels_status = (None, f"tinystories.kernels is not usable ({exc})", False)
        kernels, reason, on_cpu = self._kernels_status
        reasons = [
            (kernels is None, reason),
            (not idx.is_cuda and not on_cpu, f"the model is on {idx.device.type}, the kernels need CUDA"),
            (kv_cache is not None, "KV-cache decoding runs on the plain path"),
            (output_attentions, "attention probabilities are only returned by the plain path"),
            (
                attention_mask is not None or position_ids is not None,
                "padding masks / custom positions run on the plain path",
            ),
            (
                any(b.mlp.act._forward_hooks or b.mlp.act._forward_pre_hooks for b in cast("list[Block]", self.blocks)),
                "a hook on blocks[i].mlp.act needs the plain MLP",
            ),
        ]
        for applies, why in reasons:
            if applies:
                self._fallback(why)
                return None
        assert kernels is not None  # the first reason returned otherwise
        return KernelsWithoutDot(kernels) if self._impl == "hybrid" else kernels

    # -- forward ---------------------------------------------------------------------------------------
    def forward(
        self,
        idx: Tensor,
        targets: Tensor | None = None,
        *,
        kv_cache: KVCache | None = None,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
        return_logits: bool = True,
        logits_at: Tensor | None = None,
    ) -> GPTNeoOutput:
        """Logits of the next token at every position, and the loss when ``targets`` is given.

        idx: (B, T) token ids. targets: (B, T) next-token ids, -100 where ignored.
        kv_cache: a :class:`KVCache`, filled in place; idx then holds only the new tokens.
        attention_mask: (B, T) 1 for real tokens, 0 for padding (left padding for batched prompts).
        position_ids: (B, T) positions; by default the running count of real tokens of each row.
        return_logits=False lets the fused path compute the loss without materialising logits.
        logits_at: (B,) one position per row: logits (B, 1, V) of that position only (a prefill's last tokens).
        """
        B, T = idx.shape
        fused = self._fused_kernels(idx, kv_cache, output_attentions, attention_mask, position_ids)
        # Rows share one mask unless padding or custom positions (now or earlier in the cache) differ.
        uniform = attention_mask is None and position_ids is None and (kv_cache is None or kv_cache.uniform)
        past = kv_cache.seq_len if kv_cache is not None else 0

        valid = (
            attention_mask.bool()
            if attention_mask is not None
            else torch.ones(B, T, dtype=torch.bool, device=idx.device)
        )
        if position_ids is None and attention_mask is None and not past:
            if T > self.config.max_position_embeddings:
                raise ValueError(
                    f"sequence of {T} tokens exceeds max_position_embeddings={self.config.max_position_embeddings}"
                )
            position_ids = torch.arange(T, device=idx.device).unsqueeze(0).expand(B, T)
        else:
            if position_ids is None:
                # Padding does not advance the position: row b's first real token is at position 0.
                position_ids = (valid.long().cumsum(dim=1) - 1).clamp(min=0)
                next_positions = kv_cache.next_positions() if kv_cache is not None else None
                if next_positions is not None:  # a cache that holds tokens already
                    position_ids = position_ids + next_positions
            if int(position_ids.max()) >= self.config.max_position_embeddings:
                raise ValueError(
                    f"sequence reaches position {int(position_ids.max())} but the model has "
                    f"max_position_embeddings={self.config.max_position_embeddings}"
                )

        x = self.drop(self.wte(idx) + self.wpe(position_ids))
        masks = None
        explicit = output_attentions or attention_mask is not None
        if fused is None or fused.attention is None:
            query_pos, key_pos, key_valid = position_ids, position_ids, valid
            if kv_cache is not None:
                key_pos, key_valid = kv_cache.append_positions(position_ids, valid, uniform)
            if uniform:
                query_pos, key_pos, key_valid = query_pos[:1], key_pos[:1], key_valid[:1]
            masks = {t: self._mask(query_pos, key_pos, key_valid, t) for t in set(self.config.attention_layers)}

        attentions, hidden_states = [], []
        for i, block in enumerate(cast("list[Block]", self.blocks)):  # ModuleList items type as Module
            if output_hidden_states:
                hidden_states.append(x)
            x, probs = block(x, masks[block.attention_type] if masks else None, kv_cache, i, fused, explicit)
            if output_attentions:
                attentions.append(probs)
        x = self.ln_f(x) if fused is None else fused.layer_norm(x, self.ln_f.weight, self.ln_f.bias, self.ln_f.eps)
        if output_hidden_states:
            hidden_states.append(x)

        V = self.config.vocab_size
        if logits_at is not None:
            x = x[torch.arange(B, device=x.device), logits_at][:, None]
        logits = loss = None
        if fused is not None and targets is not None and not return_logits:
            loss = fused.linear_cross_entropy(x.reshape(B * T, -1), self.wte.weight[:V], targets.reshape(-1))
        else:
            # The matmul runs on the padded (multiple-of-64) embedding; the padding columns are sliced off.
            logits = F.linear(x, self.wte.weight)[..., :V].float()
            if targets is not None:
                loss = F.cross_entropy(logits.reshape(B * T, V), targets.reshape(-1), ignore_index=-100)
        return GPTNeoOutput(
            logits if return_logits else None,
            loss,
            tuple(attentions) if output_attentions else None,
            tuple(hidden_states) if output_hidden_states else None,
        )

    def _mask(self, query_pos: Tensor, key_pos: Tensor, key_valid: Tensor, attention_type: str) -> Tensor:
        """(B, 1, T, S) True where query t may attend to key s: causal, within the window for local layers."""
        distance = query_pos[:, :, None] - key_pos[:, None, :]
        allowed = (distance >= 0) & key_valid[:, None, :]
        if attention_type == "local":
            allowed &= distance < self.config.window_size
        return allowed[:, None]

    # -- generation ------------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(
        self,
        idx: Tensor,
        max_new_tokens: int,
        *,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        eos_token: int | None = None,
        attention_mask: Tensor | None = None,
        use_cache: bool = True,
        generator: torch.Generator | None = None,
        choose: Callable[[Tensor], Tensor] | None = None,
    ) -> Tensor:
        """Continue each row of ``idx`` (B, T) by up to ``max_new_tokens`` tokens; returns (B, T + n).

        temperature=0 is greedy. ``choose`` replaces the sampler: last-position logits (B, V) -> next tokens
        (B,) (per-row settings and generators, streaming: :func:`tinystories.model.generate.generate_rows`).
        Rows that emit ``eos_token`` are finished: they keep emitting it while the others continue, and
        generation stops once every row is finished. Left-padded prompts pass ``attention_mask``; each row
        then gets its own positions, so batching does not change it.
        """
        if max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
        B, T = idx.shape
        mask = attention_mask if attention_mask is not None else torch.ones_like(idx)
        mask = mask.to(device=idx.device, dtype=torch.long)
        longest = int(mask.sum(dim=1).max()) + max_new_tokens
        if longest > self.config.max_position_embeddings:
            raise ValueError(
                f"prompt + max_new_tokens = {longest} tokens exceeds the context of "
                f"{self.config.max_position_embeddings} tokens"
            )
        cache = KVCache(self.config.num_layers) if use_cache else None
        finished = torch.zeros(B, dtype=torch.bool, device=idx.device)
        out, step_input = idx, idx
        for _ in range(max_new_tokens):
            if cache is not None:
                logits = self(step_input, kv_cache=cache, attention_mask=mask[:, -step_input.shape[1] :]).logits
            else:
                logits = self(out, attention_mask=mask).logits
            next_token = (
                choose(logits[:, -1, :])
                if choose is not None
                else sample_next_token(
                    logits[:, -1, :], temperature=temperature, top_k=top_k, top_p=top_p, generator=generator
                )
            )
            if eos_token is not None:
                next_token = torch.where(finished, torch.full_like(next_token, eos_token), next_token)
                finished |= next_token == eos_token
            out = torch.cat([out, next_token[:, None]], dim=1)
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            step_input = next_token[:, None]
            if eos_token is not None and bool(finished.all()):
                break
        return out


def sample_next_token(
    logits: Tensor,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """One token id per row of ``logits`` (B, V): greedy at temperature 0, else top-k/top-p sampling.

    Any positive temperature and top_p work, however small: the scores are shifted so the best token scores 0
    before the division (in float64), so a temperature near 0 leaves only the best token(s) instead of
    overflowing, and top-p always keeps the most likely token. Both limits therefore behave as greedy.
    """
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if temperature == 0:
        if logits.device.type == "cpu" and logits.dtype in (torch.float32, torch.float64):
            # NumPy's argmax is ~10x faster than torch's on CPU (first maximum, NaN as the maximum, like torch),
            # and 3x faster row by row than over a 2-D view with padded rows (the engine's logits buffer)
            scores = logits.detach().numpy()
            if scores.ndim == 2 and not scores.flags.c_contiguous:
                return torch.tensor([row.argmax() for row in scores], dtype=torch.long)
            return torch.from_numpy(scores.argmax(axis=-1))
        return logits.argmax(dim=-1)
    logits = logits.double()
    logits = (logits - logits.max(dim=-1, keepdim=True).values) / temperature
    if top_k is not None:
        if top_k <= 0:
            raise ValueError(f"top_k must be positive, got {top_k}")
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None:
        if not 0 < top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cumulative = F.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
        # Drop a token when the tokens ranked above it already reach top_p (the top token always stays).
        drop_sorted = cumulative - F.softmax(sorted_logits, dim=-1) >= top_p
        drop_sorted[:, 0] = False
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    # Inverse-CDF sampling, one uniform draw per row: ~10x cheaper than torch.multinomial over a 50K vocabulary
    # (which draws one exponential per token), and it is what a story's sampling cost is made of when served.
    cdf = F.softmax(logits, dim=-1).cumsum(dim=-1, dtype=torch.float64)
    u = torch.rand(cdf.shape[0], 1, generator=generator, device=cdf.device, dtype=torch.float64) * cdf[:, -1:]
    return torch.searchsorted(cdf, u, right=True).clamp_(max=cdf.shape[-1] - 1).squeeze(-1)


def model_summary(model: GPTNeo) -> str:
    c = model.config
    return (
        f"GPT-Neo {model.num_parameters() / 1e6:.2f}M params ({model.num_parameters(True) / 1e6:.2f}M "
        f"non-embedding): {c.num_layers} layers x {c.hidden_size} hidden, {c.num_heads} heads, "
        f"vocab {c.vocab_size} (padded {c.padded_vocab_size}), context {c.max_position_embeddings}"
    )
