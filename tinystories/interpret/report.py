"""The inspection reports: self-contained HTML pages (neurons in context, the head table) and PNG heat maps."""

from __future__ import annotations

import base64
import codecs
import html
import io
import math
from collections.abc import Callable, Sequence

from torch import Tensor

from tinystories.interpret.heads import HeadStats
from tinystories.interpret.neurons import NeuronProfile, top_token_share
from tinystories.plots import pyplot
from tinystories.tokenizer import Tokenizer

_CSS = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}
h2{border-top:1px solid #ccc;padding-top:.8em}
.ex{font-family:ui-monospace,monospace;font-size:13px;white-space:pre-wrap;margin:.3em 0;line-height:1.6}
.ex .v{display:inline-block;width:5em;color:#666}
.tok{border-radius:2px}.peak{outline:1px solid #900}
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ddd;padding:2px 6px;text-align:right}
td.l,th.l{text-align:left}img{max-width:100%}
"""


def token_texts(tokenizer: Tokenizer, ids: Sequence[int]) -> list[str]:
    """The text of each token of ``ids``, decoded at character boundaries: a character whose UTF-8 bytes span
    several tokens is shown whole on the token that completes it (the others show nothing), instead of one
    U+FFFD per token as decoding tokens one by one gives."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    texts = [decoder.decode(tokenizer.token_bytes(t)) for t in ids]
    if texts:
        texts[-1] += decoder.decode(b"", final=True)  # a character cut off at the end: U+FFFD, as decode gives
    return texts


def _page(title: str, body: str) -> str:
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>{body}</body></html>\n"
    )


def _token_span(text: str, activation: float, scale: float, peak: bool) -> str:
    alpha = 0.0 if math.isnan(activation) or scale <= 0 else max(0.0, min(1.0, activation / scale))
    cls = "tok peak" if peak else "tok"
    title = "" if math.isnan(activation) else f" title='{activation:.3f}'"
    return f"<span class='{cls}' style='background:rgba(255,0,0,{alpha:.3f})'{title}>{html.escape(text)}</span>"


def neuron_report_html(
    profiles: Sequence[NeuronProfile],
    stories: Sequence[Sequence[int]],
    texts_of: Callable[[Sequence[int]], list[str]],
    *,
    title: str,
    meta: dict[str, object] | None = None,
) -> str:
    """Self-contained HTML: one section per neuron, each top example's context with red intensity =
    activation (scaled to the neuron's peak), the activating token outlined. ``texts_of(story)`` is the text
    of each token of a story (:func:`token_texts`: whole story, so characters spanning tokens decode)."""
    story_texts: dict[int, list[str]] = {}
    parts = []
    if meta:
        rows = "".join(
            f"<tr><th class='l'>{html.escape(str(k))}</th><td class='l'>{html.escape(str(v))}</td></tr>"
            for k, v in meta.items()
        )
        parts.append(f"<table>{rows}</table>")
    for rank, prof in enumerate(profiles, 1):
        token, share = top_token_share(prof, stories)
        parts.append(
            f"<h2 id='n{prof.neuron}'>#{rank} neuron {prof.neuron}: peak {prof.peak:.3f}</h2>"
            f"<p>most common top token {html.escape(repr(''.join(texts_of([token]))))} "
            f"in {share:.0%} of {len(prof.examples)} examples</p>"
        )
        for ex in prof.examples:
            story = stories[ex.story]
            if ex.story not in story_texts:
                story_texts[ex.story] = texts_of(story)
            spans = []
            for offset, act in enumerate(ex.context_activations):
                pos = ex.context_start + offset
                if 0 <= pos < len(story):
                    spans.append(_token_span(story_texts[ex.story][pos], act, prof.peak, pos == ex.position))
            parts.append(
                f"<div class='ex'><span class='v'>{ex.activation:.3f}</span>"
                f"story {ex.story}, token {ex.position}: {''.join(spans)}</div>"
            )
    return _page(title, "\n".join(parts))


def head_table_html(heads: Sequence[HeadStats]) -> str:
    head = "".join(
        f"<th>{h}</th>"
        for h in (
            "layer",
            "head",
            "kind",
            "local share",
            "mean dist.",
            "entropy",
            "norm. entropy",
            "first token",
            "positional fit",
        )
    )
    rows = "".join(
        f"<tr><td>{h.layer}</td><td>{h.head}</td><td class='l' title='{html.escape(h.reason)}'>{h.kind}</td>"
        f"<td>{h.local_share:.2f}</td><td>{h.mean_distance:.1f}</td><td>{h.entropy:.2f}</td>"
        f"<td>{h.normalized_entropy:.2f}</td><td>{h.first_token_share:.2f}</td><td>{h.positional_fit:.2f}</td></tr>"
        for h in heads
    )
    return f"<table><tr>{head}</tr>{rows}</table>"


def heatmap_png(attention: Tensor, labels: Sequence[str], title: str) -> bytes:
    """PNG bytes of one head's ``(T, T)`` attention (queries down, keys across)."""
    plt = pyplot()
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


def heads_report_html(
    heads: Sequence[HeadStats],
    heatmaps: Sequence[tuple[str, bytes]],
    *,
    title: str,
    meta: dict[str, object] | None = None,
) -> str:
    parts = []
    if meta:
        parts.append(
            "<p>" + "; ".join(f"{html.escape(str(k))}: {html.escape(str(v))}" for k, v in meta.items()) + "</p>"
        )
    parts.append(
        f"<p>Classification rule: see <code>tinystories.interpret.heads</code>; hover a kind for the numbers "
        f"behind it.</p>{head_table_html(heads)}"
    )
    parts += [f"<h2>{html.escape('Reasons')}</h2><ul>"]
    parts += [f"<li>L{h.layer}H{h.head} <b>{h.kind}</b>: {html.escape(h.reason)}</li>" for h in heads]
    parts.append("</ul>")
    for name, png in heatmaps:
        data = base64.b64encode(png).decode("ascii")
        parts.append(f"<h2>{html.escape(name)}</h2><img alt='{html.escape(name)}' src='data:image/png;base64,{data}'>")
    return _page(title, "\n".join(parts))
