"""``tinystories-train`` (also ``tinystories train`` and ``python -m tinystories.train``).

    tinystories-train                                  # the offline demo (see README "Training")
    tinystories-train --preset=33M --data=data/ts --out_dir=runs/33m
    tinystories-train my.toml --lr=3e-4 --dtype=bf16   # preset + TOML + overrides, in that order
    torchrun --nproc_per_node=8 -m tinystories.train --preset=33M --data=data/ts
    tinystories-train --out_dir=runs/33m --resume      # continue the newest checkpoint, bit-exactly
    tinystories-train --out_dir=runs/33m --resume --max_steps=40000   # extend it (README: resume and extend)

Exit status: 0 done, 1 failed (the message says why; checkpoints are kept), 2 bad configuration, 128 + N
after signal N (SIGINT 130, SIGTERM 143, SIGUSR1 138) once the checkpoint is written.
"""

from __future__ import annotations

import argparse
import dataclasses
import signal
import sys

from tinystories.data import ShardError
from tinystories.runtime.arguments import ArgumentParser, dataclass_options, wide_output_when_piped
from tinystories.runtime.errors import ConfigError
from tinystories.train.config import TrainConfig, field_types, load_config
from tinystories.train.lock import RunLocked
from tinystories.train.loop import TrainingAborted, train
from tinystories.train.signals import Interrupted


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    parser.allow_abbrev = False  # a mistyped key must be an error, not a silent prefix match
    parser.description = (parser.description or "") + " Every TrainConfig field is a --key=value flag."
    parser.add_argument("config", nargs="?", help="optional TOML file of config values")
    for f in dataclasses.fields(TrainConfig):
        kind, _ = field_types()[f.name]
        names = [f"--{f.name}"] + ([f"--{f.name.replace('_', '-')}"] if "_" in f.name else [])
        extra = dict(nargs="?", const="true") if kind is bool else {}
        parser.add_argument(
            *names,
            dest=f.name,
            default=argparse.SUPPRESS,
            metavar=kind.__name__.upper(),
            help=f"(default: {f.default!r})",
            **extra,
        )


def run_cli(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config, dataclass_options(TrainConfig, args))
        train(config)
    except ConfigError as exc:
        print(f"tinystories-train: error: {exc}", file=sys.stderr)
        return 2
    except (TrainingAborted, RunLocked, ShardError, OSError) as exc:
        print(f"tinystories-train: {exc}", file=sys.stderr)
        return 1
    except Interrupted as exc:
        print(f"tinystories-train: {exc}", file=sys.stderr)
        return exc.exit_status
    except KeyboardInterrupt:
        print("tinystories-train: interrupted; nothing was saved since the last checkpoint", file=sys.stderr)
        return 128 + signal.SIGINT
    return 0


def main(argv: list[str] | None = None) -> int:
    wide_output_when_piped()
    parser = ArgumentParser(prog="tinystories-train", description="Train a GPT-Neo (TinyStories).")
    add_cli_arguments(parser)
    return run_cli(parser.parse_args(argv))
