"""The data a run trains on: a prepared shard directory, text files prepared into the run directory, or (with
no ``--data``) the offline demo corpus of template stories.
"""

from __future__ import annotations

from pathlib import Path

from tinystories.atomic import atomic_directory
from tinystories.corpus import EOT
from tinystories.data import prepare
from tinystories.runtime.device import Dist, barrier
from tinystories.runtime.errors import ConfigError
from tinystories.story_templates import generate_stories
from tinystories.tokenizer import Tokenizer
from tinystories.train.config import TrainConfig

DEMO_NOTICE = (
    "DEMO DATA: template-generated stories from tinystories.story_templates, NOT TinyStories. "
    "Train on real data with --data (see README, Training)."
)


def prepare_demo_data(cache_dir: Path, n_stories: int, seed: int, progress: bool) -> Path:
    """Shards of the built-in demo corpus (template stories + a 2048-token BPE trained on them), cached."""
    data_dir = cache_dir / f"demo-data-{n_stories}-{seed}"
    if (data_dir / "index.json").is_file():
        return data_dir
    print(f"[demo] generating {n_stories} template stories and a 2048-token BPE in {data_dir}", flush=True)
    stories = generate_stories(n_stories, seed=seed)
    with atomic_directory(data_dir) as build:  # a half-built dataset is never picked up
        text_path = build / "demo_stories.txt"
        text_path.write_text("".join(f"{story}\n{EOT}\n" for story in stories), encoding="utf-8")
        prepare([text_path], build, Tokenizer.train(stories, vocab_size=2048), val_fraction=0.05, progress=progress)
        text_path.unlink()
        (build / "DEMO_DATA.txt").write_text(DEMO_NOTICE + "\n")
    return data_dir


def resolve_data(config: TrainConfig, run_dir: Path, dist: Dist) -> Path:
    """The shard directory to train on, preparing it (on rank 0) when needed."""
    if config.data is None:
        cache = run_dir.parent
        if dist.main:
            prepare_demo_data(cache, config.demo_num_stories, config.seed, progress=False)
        barrier(dist)
        return cache / f"demo-data-{config.demo_num_stories}-{config.seed}"
    paths = [Path(p) for p in config.data.split(",")]
    if len(paths) == 1 and paths[0].is_dir():
        if not (paths[0] / "index.json").is_file():
            raise ConfigError(
                f"data={config.data}: directory has no index.json (prepare it with "
                f"`tinystories data prepare`, or pass .txt/.jsonl files)"
            )
        return paths[0]
    for p in paths:
        if not p.is_file():
            raise ConfigError(f"data={config.data}: {p} does not exist")
    out = run_dir / "data"
    if dist.main and not (out / "index.json").is_file():
        print(f"preparing shards of {', '.join(map(str, paths))} in {out} (tokenizer {config.tokenizer})", flush=True)
        prepare(paths, out, config.tokenizer, top_k=config.vocab_size, instruct=config.preset.endswith("-instruct"))
    barrier(dist)
    return out
