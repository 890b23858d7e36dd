"""Attention heads: how far and how focused each head attends, and whether it is local or semantic.

Eldan & Li (2023, section 5) found that the attention heads of TinyStories models split into ones that
attend by distance and ones that attend to content (the main character, the object of the story). The
statistics work on plain ``(H, T, T)`` attention probabilities (testable on planted patterns);
:func:`analyse_heads` gets them out of a :class:`~tinystories.model.GPTNeo` (``output_attentions=True``).

How a head is classified (all shares are averages over the queries that *could* look farther than
``window`` tokens back, i.e. positions ``i > window``, so that early tokens do not count as "local" only
because nothing is far yet):

- ``local_share``: attention mass on keys at most ``window`` tokens back (``i - j <= window``);
- ``first_token_share``: mass on the story's first token (an "attention sink");
- ``normalized_entropy``: row entropy divided by ``log(#visible keys)``: 0 = one key, 1 = uniform;
- ``positional_fit``: how much of each row a fixed offset profile explains. The head's profile
  ``f(d)`` is its mean attention at offset ``d = i - j``; each row is predicted as ``f`` renormalised over
  the row's visible keys, and the fit is ``1 - total variation distance`` between row and prediction
  (1 = attends purely by relative position, near 0 = where it looks depends on the tokens).

Rule, first match wins (thresholds in :class:`HeadRule`):

1. ``local`` if ``local_share >= 0.5``: most attention within ``window`` tokens;
2. ``first-token`` if ``first_token_share >= 0.5``: parks its attention on the first token;
3. ``diffuse`` if ``normalized_entropy >= 0.6``: spreads attention over the whole context;
4. ``local`` if ``positional_fit >= 0.6``: far but at fixed offsets, still distance-based;
5. ``semantic`` otherwise: far, focused, and not explained by position -- content-selected tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from tinystories.interpret.neurons import as_batch
from tinystories.model.gpt_neo import GPTNeo


@dataclass(frozen=True)
class HeadRule:
    """Thresholds of the head classification (see the module docstring for the rule)."""

    local_share: float = 0.5
    first_token_share: float = 0.5
    diffuse_entropy: float = 0.6
    positional_fit: float = 0.6


METRICS = ("mean_distance", "entropy", "normalized_entropy", "local_share", "first_token_share", "positional_fit")


def attention_statistics(attention: Tensor, window: int = 4, attention_window: int | None = None) -> dict[str, Tensor]:
    """Per-head statistics of one story's causal attention probabilities ``(H, T, T)``.

    ``attention_window``: the layer's sliding window (a GPT-Neo ``local`` layer: query i sees keys
    i-W+1..i), so that the normalised entropy divides by the number of keys the head can actually see.
    Returns a dict of ``(H,)`` tensors (the keys of :data:`METRICS`, averaged over the queries
    ``i > window``) and ``"queries"``: how many queries were averaged (for weighting across stories).
    """
    if attention.ndim != 3 or attention.shape[1] != attention.shape[2]:
        raise ValueError(f"attention must be (H, T, T), got {tuple(attention.shape)}")
    if window < 0:
        raise ValueError(f"window must be >= 0, got {window}")
    p = attention.detach().double().cpu()
    H, T, _ = p.shape
    if T <= window + 1:
        raise ValueError(
            f"a story of {T} tokens has no query farther than window={window} from its start; "
            f"use longer stories or a smaller window"
        )
    i = torch.arange(T)[:, None]
    j = torch.arange(T)[None, :]
    distance = (i - j).clamp(min=0)  # (T, T)
    visible = (j <= i) & ((i - j) < (attention_window or T))
    p = p * visible  # ignore anything a causal head cannot see
    q = slice(window + 1, T)  # the queries that count
    rows = p[:, q]  # (H, Q, T)
    n_queries = rows.shape[1]

    mean_distance = (rows * distance[q]).sum(-1)
    plogp = torch.where(rows > 0, rows * rows.clamp_min(1e-300).log(), torch.zeros_like(rows))
    entropy = -plogp.sum(-1)
    normalized_entropy = entropy / torch.log(visible[q].sum(-1).double().clamp_min(2))
    local_share = (rows * (distance[q] <= window)).sum(-1)
    first_token_share = rows[..., 0]

    # The head's offset profile f(d): mean attention at offset d over the counted queries that see d.
    d_index = distance[q].expand(H, -1, -1).reshape(H, -1)
    d_visible = visible[q].expand(H, -1, -1).reshape(H, -1)
    profile = torch.zeros(H, T, dtype=p.dtype).scatter_add_(1, d_index, (rows.reshape(H, -1) * d_visible))
    counts = T - torch.arange(T).clamp(min=window + 1)  # counted queries i >= d
    profile = profile / counts.clamp_min(1)
    predicted = profile[:, distance[q]] * visible[q]  # (H, Q, T)
    predicted = predicted / predicted.sum(-1, keepdim=True).clamp_min(1e-300)
    positional_fit = torch.minimum(rows, predicted).sum(-1)  # 1 - total variation distance

    stats = {
        "mean_distance": mean_distance,
        "entropy": entropy,
        "normalized_entropy": normalized_entropy,
        "local_share": local_share,
        "first_token_share": first_token_share,
        "positional_fit": positional_fit,
    }
    result = {name: value.mean(-1) for name, value in stats.items()}
    result["queries"] = torch.full((H,), float(n_queries), dtype=p.dtype)
    return result


@dataclass
class HeadStats:
    layer: int
    head: int
    mean_distance: float
    entropy: float
    normalized_entropy: float
    local_share: float
    first_token_share: float
    positional_fit: float
    queries: int
    window: int
    kind: str = ""
    reason: str = ""


def classify_head(stats: HeadStats, rule: HeadRule = HeadRule()) -> tuple[str, str]:
    """``(kind, reason)`` for one head: local, first-token, diffuse or semantic, with the numbers."""
    w = stats.window
    far = f"{1 - stats.local_share:.0%} of attention beyond {w} tokens, mean distance {stats.mean_distance:.1f}"
    if stats.local_share >= rule.local_share:
        return "local", (
            f"{stats.local_share:.0%} of attention within {w} tokens (>= {rule.local_share:.0%}), "
            f"mean distance {stats.mean_distance:.1f}"
        )
    if stats.first_token_share >= rule.first_token_share:
        return "first-token", f"{stats.first_token_share:.0%} of attention on the first token; {far}"
    if stats.normalized_entropy >= rule.diffuse_entropy:
        return "diffuse", f"normalized entropy {stats.normalized_entropy:.2f} >= {rule.diffuse_entropy}; {far}"
    if stats.positional_fit >= rule.positional_fit:
        return "local", (
            f"{far}, but a fixed offset profile explains {stats.positional_fit:.0%} of it "
            f"(>= {rule.positional_fit:.0%}): distance-based"
        )
    return "semantic", (
        f"{far}; focused (normalized entropy {stats.normalized_entropy:.2f}) and content-selected "
        f"(an offset profile explains only {stats.positional_fit:.0%})"
    )


class HeadStatsAccumulator:
    """Query-weighted averages of :func:`attention_statistics` over stories, per (layer, head)."""

    def __init__(self, window: int = 4, rule: HeadRule = HeadRule()) -> None:
        self.window, self.rule = window, rule
        self._sums: dict[int, dict[str, Tensor]] = {}

    def add(self, layer: int, attention: Tensor, attention_window: int | None = None) -> None:
        stats = attention_statistics(attention, self.window, attention_window)
        weight = stats["queries"]
        sums = self._sums.setdefault(layer, {})
        for name in METRICS:
            sums[name] = sums.get(name, 0) + stats[name] * weight
        sums["queries"] = sums.get("queries", 0) + weight

    def heads(self) -> list[HeadStats]:
        if not self._sums:
            raise ValueError("no attention was added")
        result = []
        for layer in sorted(self._sums):
            sums = self._sums[layer]
            for h in range(sums["queries"].shape[0]):
                n = float(sums["queries"][h])
                # keyword arguments: mypy cannot tell that the METRICS are HeadStats' float fields
                metrics: dict[str, Any] = {name: float(sums[name][h]) / n for name in METRICS}
                stats = HeadStats(layer=layer, head=h, queries=int(n), window=self.window, **metrics)
                stats.kind, stats.reason = classify_head(stats, self.rule)
                result.append(stats)
        return result


@torch.no_grad()
def attention_maps(model: GPTNeo, ids: Sequence[int]) -> list[Tensor]:
    """Per layer, the ``(H, T, T)`` attention probabilities of one story."""
    out = model(as_batch(model, ids), output_attentions=True)
    return [a[0].float().cpu() for a in out.attentions]


def analyse_heads(
    model: GPTNeo,
    stories: Iterable[Sequence[int]],
    *,
    window: int = 4,
    rule: HeadRule = HeadRule(),
    progress: Callable[[], None] | None = None,
) -> list[HeadStats]:
    """Statistics and class of every attention head, averaged over the stories."""
    acc = HeadStatsAccumulator(window, rule)
    for ids in stories:
        if len(ids) > window + 1:
            for layer, attention in enumerate(attention_maps(model, ids)):
                acc.add(layer, attention, attention_window(model, layer))
        if progress:
            progress()
    return acc.heads()


def attention_window(model: GPTNeo, layer: int) -> int | None:
    """The sliding window of a ``local`` layer, None for a ``global`` one."""
    return model.config.window_size if model.config.attention_layers[layer] == "local" else None
