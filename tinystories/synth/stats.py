"""``tinystories synth stats``: counts, lengths, vocabulary coverage, diversity and features of a synthesis output."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from tinystories.atomic import atomic_save_png
from tinystories.jsonl import read_jsonl
from tinystories.plots import pyplot
from tinystories.synth.job import side_path
from tinystories.vocabulary import FEATURES, WORDS_BY_PART_OF_SPEECH, letter_words, word_forms


def corpus_stats(path: str | Path) -> dict:
    """Counts, lengths, vocabulary coverage, distinct-n and feature frequencies of a synthesis output."""
    if not Path(path).is_file():  # read_jsonl reads a missing log as empty
        raise FileNotFoundError(f"{path}: no such file")
    records = list(read_jsonl(path))
    if not records:
        raise ValueError(f"{path}: no records")
    texts = [r["story"] for r in records]
    tokens = [letter_words(t) for t in texts]
    lengths = [len(t) for t in tokens]
    seen = set().union(*map(set, tokens))
    coverage = {
        pos: sum(bool(word_forms(w, pos) & seen) for w in words) / len(words)
        for pos, words in WORDS_BY_PART_OF_SPEECH.items()
    }
    distinct = {}
    for n in (1, 2, 3):
        grams = Counter(tuple(t[i : i + n]) for t in tokens for i in range(len(t) - n + 1))
        distinct[f"distinct-{n}"] = len(grams) / max(1, sum(grams.values()))
    features = Counter(f for r in records for f in r.get("features", []))
    flags = Counter(f.split(":")[0] for r in records for f in r.get("flags", []))
    return {
        "records": len(records),
        "valid": sum(bool(r.get("valid", True)) for r in records),
        "failed": len({f["id"] for f in read_jsonl(side_path(Path(path), ".failed"))} - {r["id"] for r in records}),
        "words_mean": sum(lengths) / len(lengths),
        "words_min": min(lengths),
        "words_max": max(lengths),
        "lengths": lengths,
        "coverage": coverage,
        "distinct": distinct,
        "features": {f: features[f] / len(records) for f in FEATURES},
        "flags": dict(flags),
        "splits": dict(Counter(r["split"] for r in records if "split" in r)),
        "cost_usd": sum(r.get("cost_usd", 0.0) for r in records),
    }


def plot_stats(stats: dict, png: str | Path) -> None:
    plt = pyplot()

    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    axes[0, 0].hist(stats["lengths"], bins=40, color="#4c72b0")
    axes[0, 0].set(title="story length", xlabel="words", ylabel="stories")
    axes[0, 1].bar(list(stats["features"]), list(stats["features"].values()), color="#55a868")
    axes[0, 1].set(title="feature frequency", ylabel="fraction of stories")
    axes[0, 1].tick_params(axis="x", rotation=30)
    axes[1, 0].bar(list(stats["coverage"]), list(stats["coverage"].values()), color="#c44e52")
    axes[1, 0].set(title="coverage of the child vocabulary", ylabel="fraction of words used", ylim=(0, 1))
    axes[1, 1].bar(list(stats["distinct"]), list(stats["distinct"].values()), color="#8172b2")
    axes[1, 1].set(title="diversity (distinct n-grams / n-grams)", ylim=(0, 1))
    fig.suptitle(f"{stats['records']} stories, {stats['valid']} valid")
    fig.tight_layout()
    atomic_save_png(fig, png, dpi=100)
    plt.close(fig)


def print_stats(stats: dict, path: str | Path) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"synthesis stats: {path}")
    table.add_column("measure")
    table.add_column("value", justify="right")
    rows = [
        ("records", stats["records"]),
        ("valid (no flags)", stats["valid"]),
        ("failed, no story yet (see .failed)", stats["failed"]),
        (
            "words per story (mean / min / max)",
            f"{stats['words_mean']:.1f} / {stats['words_min']} / {stats['words_max']}",
        ),
        *((f"vocabulary coverage: {pos}s", f"{v:.1%}") for pos, v in stats["coverage"].items()),
        *((name, f"{v:.3f}") for name, v in stats["distinct"].items()),
        *((f"feature: {f}", f"{v:.1%}") for f, v in stats["features"].items()),
        *((f"flag: {f}", n) for f, n in sorted(stats["flags"].items())),
        *((f"split: {s}", n) for s, n in sorted(stats["splits"].items())),
        ("cost (USD)", f"{stats['cost_usd']:.4f}"),
    ]
    for name, value in rows:
        table.add_row(name, str(value))
    Console().print(table)
