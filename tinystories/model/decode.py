"""The engine's step on a CPU: :class:`~tinystories.model.gpt_neo.GPTNeo` over the new tokens of every running row
at once (one per decoding row, a whole prompt for a row that joins), against the engine's per-slot cache, in a
dozen calls per layer instead of about forty, and one forward pass per step.

It computes what ``GPTNeo.forward`` computes for those tokens (tests compare the two), with the model's own
parameters, and differs only in how:

- the q, k and v projections are one matmul, over the three weights stacked (rebuilt when a weight changes);
- the tokens of all rows are one flat batch (no padding): prompts and decoding rows share the matmuls;
- attention and the tanh GELU are the native core's (``csrc/decode_step.cpp``): each token attends to its own
  row's cached keys in one pass, where PyTorch runs thousands of tiny matmuls (its fp32 sums are reordered for
  vectorising, so the logits differ from the plain path's by rounding, as two BLAS libraries' do);
- the output layer runs only for the tokens whose next token is chosen, into one buffer reused every step.

It runs whenever :meth:`DecodeStep.usable` says so (fp32 on the CPU, no autocast, no hooks: the insight tools'
hooks need the plain modules); otherwise the engine decodes through ``GPTNeo.forward``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tinystories import _core
from tinystories.model.blocks import Block
from tinystories.model.gpt_neo import GPTNeo


class DecodeStep:
    def __init__(self, model: GPTNeo) -> None:
        self.model = model
        self.blocks: list[Block] = list(model.blocks)  # type: ignore[arg-type]  # ModuleList items type as Module
        self.layers = [  # per block the modules the step reads (their parameters are read at every call)
            (b.ln_1, b.attn.out_proj, b.ln_2, b.mlp.c_fc, b.mlp.c_proj, b.attn.window or 0) for b in self.blocks
        ]
        # every module's hook dicts (registering a hook adds to them): any non-empty one means a hook to honour
        self._hooks = [d for m in model.modules() for d in (m._forward_hooks, m._forward_pre_hooks)]
        self._qkv: list[Tensor] = []
        self._qkv_from: list[tuple[int, int]] = []  # (id, version) of every q/k/v weight the stacks were built from
        self._logits = torch.empty(0)

    def usable(self) -> bool:
        """True when this step computes the model's function: its parameters fp32 on the CPU, no autocast, and
        no hook on any of its modules (hooks see the plain path's modules run, which this step skips)."""
        weight = self.model.wte.weight
        return (
            weight.device.type == "cpu"
            and weight.dtype == torch.float32
            and not torch.is_autocast_enabled("cpu")
            and not any(self._hooks)
            and not (nn.modules.module._global_forward_hooks or nn.modules.module._global_forward_pre_hooks)
        )

    @torch.no_grad()
    def __call__(
        self, ids: Tensor, slots: Tensor, positions: Tensor, keys: list[Tensor], values: list[Tensor], wanted: Tensor
    ) -> Tensor:
        """The logits (len(wanted), vocab) after the tokens ``ids[wanted]``.

        ids, slots, positions (tokens,): new tokens, each of the row in cache slot ``slots[i]`` at ``positions[i]``
        (one token per row at a decode step; every token of a prompt, from position 0, when it is prefilled).
        keys, values: per layer (slots, heads, length, head_dim) fp32, where the tokens' keys and values are written.
        The logits are a view of a buffer that the next call overwrites.
        """
        model, n = self.model, ids.shape[0]
        C = model.config.hidden_size
        x = F.embedding(ids, model.wte.weight) + F.embedding(positions, model.wpe.weight)
        slots_np, positions_np = slots.numpy(), positions.numpy()
        for layer, qkv_weight, k, v in zip(self.layers, self._stacked_qkv(), keys, values):
            ln_1, out, ln_2, fc, proj, window = layer
            h = F.layer_norm(x, (C,), ln_1.weight, ln_1.bias, ln_1.eps)
            qkv = torch.mm(h, qkv_weight)
            y = torch.empty(n, C)
            _core.decode_attention(qkv.numpy(), k.numpy(), v.numpy(), slots_np, positions_np, window, y.numpy())
            x = x + F.linear(y, out.weight, out.bias)
            h = F.layer_norm(x, (C,), ln_2.weight, ln_2.bias, ln_2.eps)
            h = F.linear(h, fc.weight, fc.bias)
            _core.gelu_tanh(h.numpy())
            x = x + F.linear(h, proj.weight, proj.bias)
        if wanted.shape[0] != n:
            x = x[wanted]
        x = F.layer_norm(x, (C,), model.ln_f.weight, model.ln_f.bias, model.ln_f.eps)
        head = model.wte.weight  # (padded vocab, C): the padding columns are sliced off
        rows = x.shape[0]
        if self._logits.shape[0] < rows:
            self._logits = torch.empty(max(rows, 2 * self._logits.shape[0]), head.shape[0])
        return torch.mm(x, head.t(), out=self._logits[:rows])[:, : model.config.vocab_size]

    def _stacked_qkv(self) -> list[Tensor]:
        """Per layer the (C, 3C) matrix ``[W_q; W_k; W_v]^T``, rebuilt when any of those weights changed."""
        weights = [w for b in self.blocks for w in (b.attn.q_proj.weight, b.attn.k_proj.weight, b.attn.v_proj.weight)]
        state = [(id(w), w._version) for w in weights]
        if state != self._qkv_from:
            self._qkv = [torch.cat(weights[i : i + 3]).t().contiguous() for i in range(0, len(weights), 3)]
            self._qkv_from = state
        return self._qkv
