"""``tinystories inspect neurons|heads``: the analyses on validation stories of a checkpoint, with reports."""

from __future__ import annotations

import argparse
import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from tinystories.atomic import atomic_write_bytes, atomic_write_text
from tinystories.corpus import iter_stories
from tinystories.data import IGNORE_INDEX, TokenLoader
from tinystories.interpret.heads import HeadStats, analyse_heads, attention_maps
from tinystories.interpret.neurons import analyse_neurons, default_layer, top_token_share
from tinystories.interpret.report import heads_report_html, heatmap_png, neuron_report_html, token_texts
from tinystories.model.checkpoint import load_checkpoint
from tinystories.model.gpt_neo import GPTNeo
from tinystories.progress import Progress
from tinystories.runtime.arguments import (
    ArgumentParser,
    add_checkpoint_arguments,
    add_data_argument,
    add_device_arguments,
    add_no_progress_argument,
    add_num_stories_argument,
    add_out_argument,
    add_show_argument,
    add_split_argument,
    add_stories_argument,
    one_line_errors,
)
from tinystories.runtime.device import autocast_context, resolve_device, resolve_execution
from tinystories.tokenizer import Tokenizer

if TYPE_CHECKING:
    import torch
    from rich.console import Console


def add_cli_arguments(parser: ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name, help_text in (
        ("neurons", "top-activating tokens of each MLP neuron of a layer"),
        ("heads", "attention distance, entropy and local/semantic class of every head"),
    ):
        p = sub.add_parser(name, help=help_text)
        add_checkpoint_arguments(p)
        source = p.add_mutually_exclusive_group(required=True)
        add_stories_argument(source, note="validation stories (a .txt without separators is split at blank lines)")
        add_data_argument(source, note="its --split is read")
        add_split_argument(p)
        add_num_stories_argument(p, default=200, note="default 200 here (stories run through the model)")
        add_out_argument(p, f"the report folder (default: inspect-{name} next to the checkpoint)")
        add_device_arguments(p)
        add_no_progress_argument(p)
    n = sub.choices["neurons"]
    n.add_argument("--layer", type=int, default=None, help="layer index (default: the one before last)")
    n.add_argument(
        "--examples", type=int, default=10, metavar="N", help="top-activating examples per neuron (one per story)"
    )
    n.deprecate("--top-k", "--examples")
    n.add_argument(
        "--snippet-tokens", type=int, default=12, metavar="N", help="tokens shown on each side of an example"
    )
    n.deprecate("--context", "--snippet-tokens")
    add_show_argument(n, default=64, note="default 64 here (neurons in the report, by peak activation)")
    n.add_argument("--neurons", default=None, help="comma-separated neuron ids to report instead of the top ones")
    h = sub.choices["heads"]
    h.add_argument(
        "--local-tokens",
        type=int,
        default=4,
        metavar="K",
        help="the k of 'share of attention within k tokens' (local heads)",
    )
    h.deprecate("--window", "--local-tokens")
    h.add_argument("--heatmap-story", type=int, default=0, help="index of the story drawn in the heat maps")
    h.add_argument(
        "--heatmap-tokens",
        type=int,
        default=64,
        help="draw the story's first N tokens (labels stay readable up to about 80)",
    )
    h.add_argument(
        "--heatmap-heads",
        default="auto",
        help="heads to draw as L.H pairs, e.g. '0.3,1.5'; 'auto' draws the most local and the most "
        "semantic head of each layer",
    )


def _load(args: argparse.Namespace, device: torch.device) -> tuple[GPTNeo, Tokenizer, list[list[int]]]:
    if args.num_stories <= 0:
        raise ValueError(f"--num-stories must be positive, got {args.num_stories}")
    model, tokenizer, _ = load_checkpoint(args.checkpoint, device)
    context = model.config.max_position_embeddings
    if args.data:
        stories = stories_from_dataset(args.data, tokenizer, args.num_stories, context, args.split)
    else:
        stories = stories_from_text(args.stories, tokenizer, args.num_stories, context)
    return model, tokenizer, stories


def _out_dir(args: argparse.Namespace) -> Path:
    if args.out:
        return args.out
    ckpt = args.checkpoint
    return (ckpt if ckpt.is_dir() else ckpt.parent) / f"inspect-{args.action}"


@one_line_errors("tinystories inspect")
def run_cli(args: argparse.Namespace) -> int:
    from rich.console import Console

    device = resolve_device(args.device, 0)
    execution = resolve_execution(device, dtype=args.dtype, impl="torch", compile=False)
    with autocast_context(device, execution.dtype):
        return _run(args, Console(), device)


def _run(args: argparse.Namespace, console: Console, device: torch.device) -> int:
    from rich.table import Table

    model, tokenizer, stories = _load(args, device)
    out = _out_dir(args)
    token_text = lambda t: tokenizer.decode([t])  # noqa: E731
    source = f"{args.data} ({args.split})" if args.data else ", ".join(map(str, args.stories))
    meta: dict[str, object] = {"checkpoint": str(args.checkpoint), "stories": f"{len(stories)} from {source}"}
    progress = not args.no_progress

    if args.action == "neurons":
        layer = default_layer(model) if args.layer is None else args.layer
        with Progress(f"layer {layer} neurons", len(stories), transient=True, enabled=progress) as bar:
            profiles = analyse_neurons(
                model, stories, layer, k=args.examples, context=args.snippet_tokens, progress=bar.advance
            )
        if args.neurons:
            wanted = [int(x) for x in args.neurons.split(",")]
            by_id = {p.neuron: p for p in profiles}
            missing = [n for n in wanted if n not in by_id]
            if missing:
                raise ValueError(f"--neurons {missing} out of range 0..{len(profiles) - 1}")
            shown = [by_id[n] for n in wanted]
        else:
            shown = profiles[: args.show]
        meta.update(layer=layer, neurons=len(profiles), k=args.examples)
        report = out / f"neurons-layer{layer}.html"
        atomic_write_text(
            report,
            neuron_report_html(
                shown, stories, lambda ids: token_texts(tokenizer, ids), title=f"Neurons of layer {layer}", meta=meta
            ),
        )
        table = Table(title=f"layer {layer}: top neurons by peak activation")
        for col in ("rank", "neuron", "peak", "top token", "share", "example"):
            table.add_column(col)
        for rank, prof in enumerate(shown[:20], 1):
            token, share = top_token_share(prof, stories)
            ex = prof.examples[0]
            story = stories[ex.story]
            snippet = tokenizer.decode(story[max(0, ex.position - 6) : ex.position + 1])
            table.add_row(
                str(rank), str(prof.neuron), f"{prof.peak:.3f}", repr(token_text(token)), f"{share:.0%}", repr(snippet)
            )
        console.print(table)
        console.print(f"report: {report}")
        return 0

    with Progress("attention heads", len(stories), transient=True, enabled=progress) as bar:
        heads = analyse_heads(model, stories, window=args.local_tokens, progress=bar.advance)
    if not 0 <= args.heatmap_story < len(stories):
        raise ValueError(f"--heatmap-story {args.heatmap_story} out of range: {len(stories)} stories were read")
    story = stories[args.heatmap_story][: args.heatmap_tokens]
    maps = attention_maps(model, story)
    labels = token_texts(tokenizer, story)
    chosen = _chosen_heads(args.heatmap_heads, heads)
    pngs = []
    for layer, head in chosen:
        if not (0 <= layer < len(maps) and 0 <= head < maps[layer].shape[0]):
            raise ValueError(
                f"--heatmap-heads: head {layer}.{head} does not exist ({len(maps)} layers x {maps[0].shape[0]} heads)"
            )
        name = f"L{layer}H{head}"
        kind = next(h.kind for h in heads if (h.layer, h.head) == (layer, head))
        png = heatmap_png(maps[layer][head], labels, f"layer {layer} head {head} ({kind}), story {args.heatmap_story}")
        atomic_write_bytes(out / f"heatmap-{name}.png", png)
        pngs.append((f"{name} ({kind}) on story {args.heatmap_story}", png))
    report = out / "heads.html"
    meta.update(window=args.local_tokens)
    atomic_write_text(report, heads_report_html(heads, pngs, title="Attention heads", meta=meta))

    table = Table(title=f"attention heads (share within {args.local_tokens} tokens, over {len(stories)} stories)")
    for col in ("head", "kind", "local", "distance", "norm. entropy", "first tok", "pos. fit"):
        table.add_column(col)
    for h in heads:
        table.add_row(
            f"L{h.layer}H{h.head}",
            h.kind,
            f"{h.local_share:.2f}",
            f"{h.mean_distance:.1f}",
            f"{h.normalized_entropy:.2f}",
            f"{h.first_token_share:.2f}",
            f"{h.positional_fit:.2f}",
        )
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


def stories_from_text(
    paths: Sequence[str | Path], tokenizer: Tokenizer, limit: int, max_tokens: int
) -> list[list[int]]:
    """Token ids of the first ``limit`` stories of ``paths``, each cut to ``max_tokens`` (the context)."""
    texts: list[str] = []
    for path in paths:
        texts += itertools.islice(iter_stories(path), limit - len(texts))  # the reader splits a file without EOT
        if len(texts) >= limit:
            break
    if not texts:
        raise ValueError(f"{', '.join(map(str, paths))}: no stories")
    return [tokenizer.encode_ordinary(text)[:max_tokens] for text in texts]


def stories_from_dataset(
    data_dir: str | Path, tokenizer: Tokenizer, limit: int, max_tokens: int, split: str = "val"
) -> list[list[int]]:
    """The first ``limit`` rows of a prepared dataset's split in story mode (a story longer than the
    context continues in the next row), checked against the checkpoint's tokenizer."""
    loader = TokenLoader(
        data_dir,
        split=split,
        batch_size=1,
        seq_len=max_tokens,
        mode="stories",
        shuffle=False,
        loop=False,
        threads=1,
        expected_fingerprint=tokenizer.fingerprint,
    )
    stories = []
    for x, y in itertools.islice(loader, limit):
        stories.append(x[0, : int((y[0] != IGNORE_INDEX).sum())].tolist())
    if not stories:
        raise ValueError(f"{data_dir}: the {split!r} split is empty")
    return stories
