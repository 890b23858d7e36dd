"""Look inside a trained model: what its MLP neurons respond to and how its attention heads attend.

Eldan & Li (2023, section 5) found that TinyStories models are interpretable: many MLP neurons fire on
one clear concept (the protagonist's name, action verbs...), and attention heads split into ones that
attend by distance and ones that attend to content (the main character, the object of the story).
This module measures both on validation stories of any checkpoint.

It has two layers. The analysis works on plain tensors -- MLP activations ``(T, n_neurons)`` and
attention probabilities ``(H, T, T)`` -- so it is testable on planted patterns without a trained model.
A thin layer on top gets those tensors out of a :class:`tinystories.model.GPTNeo` (a forward hook on
``blocks[i].mlp.act``; ``output_attentions=True``) and renders a self-contained HTML report, PNG heat maps
and a terminal summary. CLI: ``tinystories inspect neurons|heads``.

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

import argparse
import base64
import html
import io
import itertools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from tinystories.atomic import atomic_write_bytes, atomic_write_text

if TYPE_CHECKING:
    from tinystories.model import GPTNeo


# ============================================================================================
# Neurons: running top-k over a stream of stories (plain tensors)
# ============================================================================================
@dataclass
class NeuronExample:
    """One top activation of a neuron: where it happened and the neuron's activation around it."""

    activation: float
    story: int  # index of the story in the analysed stream
    position: int  # token index inside the story
    context_start: int  # token index of context_activations[0] (may be < 0 near the story start)
    context_activations: list[float]  # this neuron at positions context_start.., NaN outside the story


@dataclass
class NeuronProfile:
    neuron: int
    peak: float
    examples: list[NeuronExample]  # highest activation first


class NeuronTopK:
    """Running top-k activations of every neuron of one layer over a stream of stories.

    ``add(story, activations)`` takes one story's ``(T, n_neurons)`` activations. Each story contributes
    at most ``per_story`` examples per neuron (default 1: the top examples then come from different
    stories, which tells more about a neuron than one story's repeats). Memory is
    ``O(n_neurons * k * context)``, independent of the number of stories.
    """

    def __init__(self, n_neurons: int, k: int = 10, context: int = 12, per_story: int = 1) -> None:
        for name, value in (("n_neurons", n_neurons), ("k", k), ("per_story", per_story)):
            if value <= 0:
                raise ValueError(f"{name} must be positive, got {value}")
        if context < 0:
            raise ValueError(f"context must be >= 0, got {context}")
        self.n_neurons, self.k, self.context, self.per_story = n_neurons, k, context, per_story
        width = 2 * context + 1
        self.values = torch.empty(n_neurons, 0)
        self.stories = torch.empty(n_neurons, 0, dtype=torch.long)
        self.positions = torch.empty(n_neurons, 0, dtype=torch.long)
        self.windows = torch.empty(n_neurons, 0, width)

    def add(self, story: int, activations: Tensor) -> None:
        if activations.ndim != 2 or activations.shape[1] != self.n_neurons:
            raise ValueError(f"activations must be (T, {self.n_neurons}), got {tuple(activations.shape)}")
        acts = activations.detach().float().cpu()
        T = acts.shape[0]
        if T == 0:
            return
        values, positions = acts.topk(min(self.per_story, T), dim=0)  # (m, n)
        values, positions = values.T, positions.T  # (n, m)
        c = self.context
        padded = F.pad(acts.T, (c, c), value=float("nan"))  # (n, T + 2c): NaN outside the story
        offsets = positions[..., None] + torch.arange(2 * c + 1)  # index into padded == position - c + o
        n, m = positions.shape
        windows = padded.gather(1, offsets.reshape(n, -1)).reshape(n, m, 2 * c + 1)

        all_values = torch.cat([self.values, values], dim=1)
        keep = all_values.topk(min(self.k, all_values.shape[1]), dim=1).indices
        self.values = all_values.gather(1, keep)
        self.stories = torch.cat([self.stories, torch.full_like(positions, story)], dim=1).gather(1, keep)
        self.positions = torch.cat([self.positions, positions], dim=1).gather(1, keep)
        all_windows = torch.cat([self.windows, windows], dim=1)
        self.windows = all_windows.gather(1, keep[..., None].expand(-1, -1, all_windows.shape[2]))

    def profiles(self) -> list[NeuronProfile]:
        """Every neuron with its top examples, ranked by peak activation (highest first)."""
        if self.values.shape[1] == 0:
            raise ValueError("no activations were added")
        order = self.values[:, 0].argsort(descending=True, stable=True)
        result = []
        for neuron in order.tolist():
            examples = [
                NeuronExample(activation=float(self.values[neuron, e]), story=int(self.stories[neuron, e]),
                              position=int(self.positions[neuron, e]),
                              context_start=int(self.positions[neuron, e]) - self.context,
                              context_activations=self.windows[neuron, e].tolist())
                for e in range(self.values.shape[1])
            ]
            result.append(NeuronProfile(neuron=neuron, peak=examples[0].activation, examples=examples))
        return result


def top_token_share(profile: NeuronProfile, stories: Sequence[Sequence[int]]) -> tuple[int, float]:
    """The token id most common among a neuron's top examples and the share of examples it takes."""
    ids = [stories[e.story][e.position] for e in profile.examples]
    best = max(set(ids), key=ids.count)
    return best, ids.count(best) / len(ids)


# ============================================================================================
# Attention heads: statistics and classification (plain tensors)
# ============================================================================================
@dataclass(frozen=True)
class HeadRule:
    """Thresholds of the head classification (see the module docstring for the rule)."""

    local_share: float = 0.5
    first_token_share: float = 0.5
    diffuse_entropy: float = 0.6
    positional_fit: float = 0.6


METRICS = ("mean_distance", "entropy", "normalized_entropy", "local_share", "first_token_share", "positional_fit")


def attention_statistics(attention: Tensor, window: int = 4, attention_window: int | None = None
                         ) -> dict[str, Tensor]:
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
        raise ValueError(f"a story of {T} tokens has no query farther than window={window} from its start; "
                         f"use longer stories or a smaller window")
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
        "mean_distance": mean_distance, "entropy": entropy, "normalized_entropy": normalized_entropy,
        "local_share": local_share, "first_token_share": first_token_share, "positional_fit": positional_fit,
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
        return "local", (f"{stats.local_share:.0%} of attention within {w} tokens (>= {rule.local_share:.0%}), "
                         f"mean distance {stats.mean_distance:.1f}")
    if stats.first_token_share >= rule.first_token_share:
        return "first-token", f"{stats.first_token_share:.0%} of attention on the first token; {far}"
    if stats.normalized_entropy >= rule.diffuse_entropy:
        return "diffuse", f"normalized entropy {stats.normalized_entropy:.2f} >= {rule.diffuse_entropy}; {far}"
    if stats.positional_fit >= rule.positional_fit:
        return "local", (f"{far}, but a fixed offset profile explains {stats.positional_fit:.0%} of it "
                         f"(>= {rule.positional_fit:.0%}): distance-based")
    return "semantic", (f"{far}; focused (normalized entropy {stats.normalized_entropy:.2f}) and content-selected "
                        f"(an offset profile explains only {stats.positional_fit:.0%})")


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
                stats = HeadStats(layer=layer, head=h, queries=int(n), window=self.window,
                                  **{name: float(sums[name][h]) / n for name in METRICS})
                stats.kind, stats.reason = classify_head(stats, self.rule)
                result.append(stats)
        return result


# ============================================================================================
# Getting activations and attention out of a GPTNeo
# ============================================================================================
def _as_batch(model: GPTNeo, ids: Sequence[int]) -> Tensor:
    device = next(model.parameters()).device
    return torch.as_tensor(list(ids), dtype=torch.long, device=device)[None]


@torch.no_grad()
def mlp_activations(model: GPTNeo, ids: Sequence[int], layer: int) -> Tensor:
    """``(T, intermediate_size)`` outputs of ``blocks[layer].mlp.act`` (after gelu_new) for one story."""
    if not -len(model.blocks) <= layer < len(model.blocks):
        raise ValueError(f"layer {layer} does not exist: the model has {len(model.blocks)} layers")
    captured: list[Tensor] = []
    handle = model.blocks[layer].mlp.act.register_forward_hook(lambda _m, _i, out: captured.append(out))
    try:
        model(_as_batch(model, ids))
    finally:
        handle.remove()
    return captured[0][0].float().cpu()


@torch.no_grad()
def attention_maps(model: GPTNeo, ids: Sequence[int]) -> list[Tensor]:
    """Per layer, the ``(H, T, T)`` attention probabilities of one story."""
    out = model(_as_batch(model, ids), output_attentions=True)
    return [a[0].float().cpu() for a in out.attentions]


def analyse_neurons(model: GPTNeo, stories: Iterable[Sequence[int]], layer: int | None = None, *, k: int = 10,
                    context: int = 12, per_story: int = 1, progress: Callable[[], None] | None = None
                    ) -> list[NeuronProfile]:
    """Top-k activating tokens of every MLP neuron of ``layer`` (default: the one before last)."""
    layer = default_layer(model) if layer is None else layer
    top = NeuronTopK(model.config.intermediate_size, k=k, context=context, per_story=per_story)
    for index, ids in enumerate(stories):
        top.add(index, mlp_activations(model, ids, layer))
        if progress:
            progress()
    return top.profiles()


def analyse_heads(model: GPTNeo, stories: Iterable[Sequence[int]], *, window: int = 4, rule: HeadRule = HeadRule(),
                  progress: Callable[[], None] | None = None) -> list[HeadStats]:
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


def default_layer(model: GPTNeo) -> int:
    return max(len(model.blocks) - 2, 0)


# ============================================================================================
# Stories in: text files (any format tinystories.corpus reads) or a prepared dataset's split
# ============================================================================================
def stories_from_text(paths: Sequence[str | Path], tokenizer, limit: int, max_tokens: int) -> list[list[int]]:
    """Token ids of the first ``limit`` stories of ``paths``, each cut to ``max_tokens`` (the context)."""
    from tinystories.corpus import iter_stories

    texts = list(itertools.islice(iter_stories(list(paths)), limit))
    if not texts:
        raise ValueError(f"{', '.join(map(str, paths))}: no stories")
    return [tokenizer.encode_ordinary(text)[:max_tokens] for text in texts]


def stories_from_dataset(data_dir: str | Path, tokenizer, limit: int, max_tokens: int, split: str = "val"
                         ) -> list[list[int]]:
    """The first ``limit`` rows of a prepared dataset's split in story mode (a story longer than the
    context continues in the next row), checked against the checkpoint's tokenizer."""
    from tinystories.data import IGNORE_INDEX, TokenLoader

    loader = TokenLoader(data_dir, split=split, batch_size=1, seq_len=max_tokens, mode="stories", shuffle=False,
                         loop=False, threads=1, expected_fingerprint=tokenizer.fingerprint)
    stories = []
    for x, y in itertools.islice(loader, limit):
        stories.append(x[0, : int((y[0] != IGNORE_INDEX).sum())].tolist())
    if not stories:
        raise ValueError(f"{data_dir}: the {split!r} split is empty")
    return stories


# ============================================================================================
# Reports: HTML, PNG heat maps, terminal
# ============================================================================================
_CSS = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}
h2{border-top:1px solid #ccc;padding-top:.8em}
.ex{font-family:ui-monospace,monospace;font-size:13px;white-space:pre-wrap;margin:.3em 0;line-height:1.6}
.ex .v{display:inline-block;width:5em;color:#666}
.tok{border-radius:2px}.peak{outline:1px solid #900}
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ddd;padding:2px 6px;text-align:right}
td.l,th.l{text-align:left}img{max-width:100%}
"""


def _page(title: str, body: str) -> str:
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>{body}</body></html>\n")


def _token_span(text: str, activation: float, scale: float, peak: bool) -> str:
    alpha = 0.0 if math.isnan(activation) or scale <= 0 else max(0.0, min(1.0, activation / scale))
    cls = "tok peak" if peak else "tok"
    title = "" if math.isnan(activation) else f" title='{activation:.3f}'"
    return (f"<span class='{cls}' style='background:rgba(255,0,0,{alpha:.3f})'{title}>"
            f"{html.escape(text)}</span>")


def neuron_report_html(profiles: Sequence[NeuronProfile], stories: Sequence[Sequence[int]],
                       token_text: Callable[[int], str], *, title: str, meta: dict[str, object] | None = None) -> str:
    """Self-contained HTML: one section per neuron, each top example's context with red intensity =
    activation (scaled to the neuron's peak), the activating token outlined."""
    parts = []
    if meta:
        rows = "".join(f"<tr><th class='l'>{html.escape(str(k))}</th><td class='l'>{html.escape(str(v))}</td></tr>"
                       for k, v in meta.items())
        parts.append(f"<table>{rows}</table>")
    for rank, prof in enumerate(profiles, 1):
        token, share = top_token_share(prof, stories)
        parts.append(f"<h2 id='n{prof.neuron}'>#{rank} neuron {prof.neuron}: peak {prof.peak:.3f}</h2>"
                     f"<p>most common top token {html.escape(repr(token_text(token)))} "
                     f"in {share:.0%} of {len(prof.examples)} examples</p>")
        for ex in prof.examples:
            story = stories[ex.story]
            spans = []
            for offset, act in enumerate(ex.context_activations):
                pos = ex.context_start + offset
                if 0 <= pos < len(story):
                    spans.append(_token_span(token_text(story[pos]), act, prof.peak, pos == ex.position))
            parts.append(f"<div class='ex'><span class='v'>{ex.activation:.3f}</span>"
                         f"story {ex.story}, token {ex.position}: {''.join(spans)}</div>")
    return _page(title, "\n".join(parts))


def head_table_html(heads: Sequence[HeadStats]) -> str:
    head = "".join(f"<th>{h}</th>" for h in ("layer", "head", "kind", "local share", "mean dist.", "entropy",
                                               "norm. entropy", "first token", "positional fit"))
    rows = "".join(
        f"<tr><td>{h.layer}</td><td>{h.head}</td><td class='l' title='{html.escape(h.reason)}'>{h.kind}</td>"
        f"<td>{h.local_share:.2f}</td><td>{h.mean_distance:.1f}</td><td>{h.entropy:.2f}</td>"
        f"<td>{h.normalized_entropy:.2f}</td><td>{h.first_token_share:.2f}</td><td>{h.positional_fit:.2f}</td></tr>"
        for h in heads)
    return f"<table><tr>{head}</tr>{rows}</table>"


def heatmap_png(attention: Tensor, labels: Sequence[str], title: str) -> bytes:
    """PNG bytes of one head's ``(T, T)`` attention (queries down, keys across)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    T = attention.shape[-1]
    size = max(4.0, min(14.0, 0.18 * T))
    fig, ax = plt.subplots(figsize=(size + 1.0, size))
    try:
        # scaled to the map's own maximum: a spread-out head would be invisible on a 0..1 scale
        image = ax.imshow(attention.float().numpy(), cmap="Reds", vmin=0.0, vmax=float(attention.max()) or 1.0)
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="attention")
        ax.set_title(title)
        ax.set_xlabel("key")
        ax.set_ylabel("query")
        if T <= 80:  # token labels stay readable up to about this many
            ax.set_xticks(range(T), labels, rotation=90, fontsize=6)
            ax.set_yticks(range(T), labels, fontsize=6)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
        return buf.getvalue()
    finally:
        plt.close(fig)


def heads_report_html(heads: Sequence[HeadStats], heatmaps: Sequence[tuple[str, bytes]], *, title: str,
                      meta: dict[str, object] | None = None) -> str:
    parts = []
    if meta:
        parts.append("<p>" + "; ".join(f"{html.escape(str(k))}: {html.escape(str(v))}" for k, v in meta.items())
                     + "</p>")
    parts.append(f"<p>Classification rule: see <code>tinystories.interpret</code>; hover a kind for the numbers "
                 f"behind it.</p>{head_table_html(heads)}")
    parts += [f"<h2>{html.escape('Reasons')}</h2><ul>"]
    parts += [f"<li>L{h.layer}H{h.head} <b>{h.kind}</b>: {html.escape(h.reason)}</li>" for h in heads]
    parts.append("</ul>")
    for name, png in heatmaps:
        data = base64.b64encode(png).decode("ascii")
        parts.append(f"<h2>{html.escape(name)}</h2><img alt='{html.escape(name)}' src='data:image/png;base64,{data}'>")
    return _page(title, "\n".join(parts))


# ============================================================================================
# CLI: tinystories inspect neurons|heads
# ============================================================================================
def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name, help_text in (("neurons", "top-activating tokens of each MLP neuron of a layer"),
                            ("heads", "attention distance, entropy and local/semantic class of every head")):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("checkpoint", help="checkpoint file or run directory (anything load_checkpoint accepts)")
        source = p.add_mutually_exclusive_group(required=True)
        source.add_argument("--stories", action="append", help="a validation story file (.txt with "
                            "<|endoftext|> separators, .jsonl, optionally .zst); repeatable")
        source.add_argument("--data", help="a prepared dataset directory: its validation split is used")
        p.add_argument("--split", default="val", help="with --data: the split (default val)")
        p.add_argument("--num-stories", type=int, default=200, help="how many stories to run (default 200)")
        p.add_argument("--out", default=None, help="output directory (default: inspect-<action> next to "
                                                   "the checkpoint)")
        p.add_argument("--device", default="cpu")
    n = sub.choices["neurons"]
    n.add_argument("--layer", type=int, default=None, help="layer index (default: the one before last)")
    n.add_argument("--top-k", type=int, default=10, help="examples per neuron")
    n.add_argument("--context", type=int, default=12, help="tokens of context on each side")
    n.add_argument("--show", type=int, default=64, help="neurons in the report, ranked by peak activation")
    n.add_argument("--neurons", default=None, help="comma-separated neuron ids to report instead of the top ones")
    h = sub.choices["heads"]
    h.add_argument("--window", type=int, default=4, help="the k of 'share of attention within k tokens'")
    h.add_argument("--heatmap-story", type=int, default=0, help="index of the story drawn in the heat maps")
    h.add_argument("--heatmap-tokens", type=int, default=64, help="draw the story's first N tokens (labels stay "
                                                                  "readable up to about 80)")
    h.add_argument("--heatmap-heads", default="auto",
                   help="heads to draw as L.H pairs, e.g. '0.3,1.5'; 'auto' draws the most local and the most "
                        "semantic head of each layer")


def _load(args: argparse.Namespace):
    from tinystories.model import load_checkpoint

    if args.num_stories <= 0:
        raise ValueError(f"--num-stories must be positive, got {args.num_stories}")
    model, tokenizer, _ = load_checkpoint(args.checkpoint, args.device)
    context = model.config.max_position_embeddings
    if args.data:
        stories = stories_from_dataset(args.data, tokenizer, args.num_stories, context, args.split)
    else:
        stories = stories_from_text(args.stories, tokenizer, args.num_stories, context)
    return model, tokenizer, stories


def _progress(total: int, description: str):
    from rich.progress import Progress

    progress = Progress(transient=True)
    task = progress.add_task(description, total=total)
    return progress, lambda: progress.advance(task)


def _out_dir(args: argparse.Namespace) -> Path:
    if args.out:
        return Path(args.out)
    ckpt = Path(args.checkpoint)
    return (ckpt if ckpt.is_dir() else ckpt.parent) / f"inspect-{args.action}"


def run_cli(args: argparse.Namespace) -> int:
    from rich.console import Console

    console = Console()
    try:
        return _run(args, console)
    except (FileNotFoundError, ValueError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        return 2


def _run(args: argparse.Namespace, console) -> int:
    from rich.table import Table

    model, tokenizer, stories = _load(args)
    out = _out_dir(args)
    token_text = lambda t: tokenizer.decode([t])  # noqa: E731
    source = f"{args.data} ({args.split})" if args.data else ", ".join(args.stories)
    meta = {"checkpoint": args.checkpoint, "stories": f"{len(stories)} from {source}"}

    if args.action == "neurons":
        layer = default_layer(model) if args.layer is None else args.layer
        progress, tick = _progress(len(stories), f"layer {layer} neurons")
        with progress:
            profiles = analyse_neurons(model, stories, layer, k=args.top_k, context=args.context, progress=tick)
        if args.neurons:
            wanted = [int(x) for x in args.neurons.split(",")]
            by_id = {p.neuron: p for p in profiles}
            missing = [n for n in wanted if n not in by_id]
            if missing:
                raise ValueError(f"--neurons {missing} out of range 0..{len(profiles) - 1}")
            shown = [by_id[n] for n in wanted]
        else:
            shown = profiles[:args.show]
        meta.update(layer=layer, neurons=len(profiles), k=args.top_k)
        report = out / f"neurons-layer{layer}.html"
        atomic_write_text(report, neuron_report_html(shown, stories, token_text,
                                               title=f"Neurons of layer {layer}", meta=meta))
        table = Table(title=f"layer {layer}: top neurons by peak activation")
        for col in ("rank", "neuron", "peak", "top token", "share", "example"):
            table.add_column(col)
        for rank, prof in enumerate(shown[:20], 1):
            token, share = top_token_share(prof, stories)
            ex = prof.examples[0]
            story = stories[ex.story]
            snippet = tokenizer.decode(story[max(0, ex.position - 6):ex.position + 1])
            table.add_row(str(rank), str(prof.neuron), f"{prof.peak:.3f}", repr(token_text(token)), f"{share:.0%}",
                          repr(snippet))
        console.print(table)
        console.print(f"report: {report}")
        return 0

    progress, tick = _progress(len(stories), "attention heads")
    with progress:
        heads = analyse_heads(model, stories, window=args.window, progress=tick)
    if not 0 <= args.heatmap_story < len(stories):
        raise ValueError(f"--heatmap-story {args.heatmap_story} out of range: {len(stories)} stories were read")
    story = stories[args.heatmap_story][:args.heatmap_tokens]
    maps = attention_maps(model, story)
    labels = [token_text(t) for t in story]
    chosen = _chosen_heads(args.heatmap_heads, heads)
    pngs = []
    for layer, head in chosen:
        if not (0 <= layer < len(maps) and 0 <= head < maps[layer].shape[0]):
            raise ValueError(f"--heatmap-heads: head {layer}.{head} does not exist ({len(maps)} layers x "
                             f"{maps[0].shape[0]} heads)")
        name = f"L{layer}H{head}"
        kind = next(h.kind for h in heads if (h.layer, h.head) == (layer, head))
        png = heatmap_png(maps[layer][head], labels, f"layer {layer} head {head} ({kind}), story {args.heatmap_story}")
        atomic_write_bytes(out / f"heatmap-{name}.png", png)
        pngs.append((f"{name} ({kind}) on story {args.heatmap_story}", png))
    report = out / "heads.html"
    meta.update(window=args.window)
    atomic_write_text(report, heads_report_html(heads, pngs, title="Attention heads", meta=meta))

    table = Table(title=f"attention heads (share within {args.window} tokens, over {len(stories)} stories)")
    for col in ("head", "kind", "local", "distance", "norm. entropy", "first tok", "pos. fit"):
        table.add_column(col)
    for h in heads:
        table.add_row(f"L{h.layer}H{h.head}", h.kind, f"{h.local_share:.2f}", f"{h.mean_distance:.1f}",
                      f"{h.normalized_entropy:.2f}", f"{h.first_token_share:.2f}", f"{h.positional_fit:.2f}")
    console.print(table)
    counts = {kind: sum(h.kind == kind for h in heads) for kind in ("local", "semantic", "first-token", "diffuse")}
    console.print(", ".join(f"{n} {kind}" for kind, n in counts.items()) + f"; report: {report}")
    return 0


def _chosen_heads(spec: str, heads: Sequence[HeadStats]) -> list[tuple[int, int]]:
    if spec != "auto":
        try:
            return [(int(a), int(b)) for a, b in (pair.split(".") for pair in spec.split(","))]
        except ValueError:
            raise ValueError(f"--heatmap-heads: expected L.H pairs like '0.3,1.5', got {spec!r}") from None
    chosen = []
    for layer in sorted({h.layer for h in heads}):
        in_layer = [h for h in heads if h.layer == layer]
        chosen.append(max(in_layer, key=lambda h: h.local_share))
        semantic = [h for h in in_layer if h.kind == "semantic"]
        if semantic:
            chosen.append(min(semantic, key=lambda h: h.positional_fit))
    return [(h.layer, h.head) for h in chosen]

