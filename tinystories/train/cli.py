"""``tinystories-train`` (also ``tinystories train`` and ``python -m tinystories.train``).

    tinystories-train                                  # the offline demo (see README "Training")
    tinystories-train --preset=33M --data=data/ts --out=runs/33m
    tinystories-train my.toml --lr=3e-4 --dtype=bf16   # preset + TOML + flags, in that order
    tinystories-train my.toml --print-config           # the resolved config as TOML; nothing is trained
    torchrun --nproc_per_node=8 -m tinystories.train --preset=33M --data=data/ts
    tinystories-train --out=runs/33m --resume          # continue the newest checkpoint, bit-exactly
    tinystories-train --out=runs/33m --resume --max-steps=40000   # extend it (README: resume and extend)

Every :class:`~tinystories.train.TrainConfig` field is an option, added by pydantic-settings'
``CliSettingsSource`` (docs/training.md says why that library): ``--max-steps=2000``, ``--max-steps 2000`` and
nanoGPT's ``--max_steps=2000``; a switch alone is true (``--resume``) or takes a value (``--resume=false``).
The TOML file is positional, anywhere among the options. Unset options are absent, so the source gives only
the keys the user typed, which is what a ``--resume`` changes.

Exit status: 0 done, 1 failed (the message says why; checkpoints are kept), 2 bad configuration, 128 + N
after signal N (SIGINT 130, SIGTERM 143, SIGUSR1 138) once the checkpoint is written.
"""

from __future__ import annotations

import argparse
import functools
import signal
import sys
from typing import Any, Literal, get_args, get_origin

from pydantic_settings import CliSettingsSource

from tinystories.data import ShardError
from tinystories.runtime.arguments import ArgumentParser, wide_output_when_piped
from tinystories.runtime.errors import ConfigError
from tinystories.train.config import (
    PRESET_TRAINING,
    TrainConfig,
    config_toml,
    field_kind,
    load_config,
)
from tinystories.train.fields import NONE_MEANS, RENAMED, none_word
from tinystories.train.lock import RunLocked
from tinystories.train.loop import TrainingAborted, train
from tinystories.train.signals import Interrupted


class _Option(argparse.Action):
    """Stores a config value as text (pydantic reads it). A switch given alone is true, and a TOML file after it
    (``--resume run.toml``) is the positional config file."""

    def __init__(self, *args: Any, switch: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.switch = switch

    def __call__(
        self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any, option_string: Any = None
    ) -> None:
        if self.switch and str(values).endswith(".toml"):
            _set_config_file(parser, namespace, values)
            values = "true"
        setattr(namespace, self.dest, values)


def _set_config_file(parser: argparse.ArgumentParser, namespace: argparse.Namespace, path: str) -> None:
    if getattr(namespace, "config", None) is not None:
        parser.error(f"one TOML file at most: {namespace.config} and {path}")
    namespace.config = path


class _ConfigFile(argparse.Action):
    """The positional TOML file (it may also follow a switch: see :class:`_Option`); a second one is an error."""

    def __call__(
        self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any, option_string: Any = None
    ) -> None:
        _set_config_file(parser, namespace, values)


def _shown(value: Any) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def option_help(name: str) -> str:
    """The field's docstring and its default (None in words; the presets' own training defaults)."""
    info = TrainConfig.model_fields[name]
    default = f"{none_word(name)}, {NONE_MEANS[name]}" if info.default is None else _shown(info.default)
    presets = "".join(
        f"; preset {preset}: {_shown(table[name])}"
        for preset, table in PRESET_TRAINING.items()
        if table.get(name, info.default) != info.default
    )
    return f"{' '.join((info.description or '').split())} (default: {default}{presets})".replace("%", "%%")


def _metavar(name: str) -> str:
    annotation = TrainConfig.model_fields[name].annotation
    return "{" + ",".join(get_args(annotation)) + "}" if get_origin(annotation) is Literal else field_kind(annotation)


def _add_option(parser: ArgumentParser, *names: str, **kwargs: Any) -> argparse.Action:
    """CliSettingsSource's add_argument: the kebab-case option it names and, beside it, nanoGPT's snake_case
    (``--max_steps``); our help; switches that work alone; the old names of renamed fields, deprecated."""
    name = kwargs["dest"]
    switch = field_kind(TrainConfig.model_fields[name].annotation) == "BOOL"
    kwargs.update(help=option_help(name), action=_Option, switch=switch, metavar=_metavar(name))
    if switch:
        kwargs.update(nargs="?", const="true")
    action = parser.add_argument(*names, *([f"--{name}"] if "_" in name else []), **kwargs)
    for old in (old for old, new in RENAMED.items() if new == name):
        parser.deprecate(f"--{old}", names[0])
        parser.deprecate(f"--{old.replace('_', '-')}", names[0])
    return action


def add_cli_arguments(parser: ArgumentParser) -> None:
    parser.allow_abbrev = False  # a mistyped key must be an error, not a silent prefix match
    parser.usage = "%(prog)s [CONFIG.toml] [--print-config] [--FIELD=VALUE ...]"  # not 45 fields
    parser.description = (parser.description or "") + (
        " Every option is a config field: --key=value or --key value (also --key_name=value); a TOML file of"
        " fields (kebab- or snake-case) may come anywhere, the options win (docs/training.md)."
    )
    parser.add_argument(
        "config",
        nargs="?",
        action=_ConfigFile,
        default=argparse.SUPPRESS,
        metavar="CONFIG.toml",
        help="a TOML file of config fields",
    )
    parser.add_argument(
        "--print-config",
        action="store_true",
        help="print the resolved config as TOML and exit without training (tinystories-train FILE reads it back)",
    )
    _settings_source(parser)
    parser.set_defaults(command=parser.prog)  # run_cli says which command failed


def _settings_source(parser: ArgumentParser) -> CliSettingsSource[ArgumentParser]:
    """pydantic-settings' command line for TrainConfig on ``parser``: it adds one option per field."""
    return CliSettingsSource(
        TrainConfig,  # type: ignore[arg-type]  # a BaseModel: BaseSettings would also read environment variables
        root_parser=parser,
        cli_kebab_case=True,
        add_argument_method=_add_option,
    )


@functools.cache
def _reader() -> CliSettingsSource[ArgumentParser]:
    """A source that reads parsed options back: only the given ones (the others are SUPPRESSed, so absent).
    Reading depends on the fields alone, so one source serves every parser; keeping it out of the namespace
    keeps two parses of the same command line equal."""
    return _settings_source(ArgumentParser(prog="tinystories-train"))


def given_options(args: argparse.Namespace) -> dict[str, Any]:
    """The config fields given on the command line, as text (load_config checks them)."""
    return _reader()(parsed_args=args)()


def run_cli(args: argparse.Namespace) -> int:
    prog = args.command  # tinystories-train or tinystories train
    try:
        config = load_config(getattr(args, "config", None), given_options(args))
        if args.print_config:
            print(config_toml(config), end="")
            return 0
        train(config)
    except ConfigError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except (TrainingAborted, RunLocked, ShardError, OSError) as exc:  # the work failed (docs/cli.md: exit 1)
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 1
    except Interrupted as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return exc.exit_status
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; nothing was saved since the last checkpoint", file=sys.stderr)
        return 128 + signal.SIGINT
    return 0


def main(argv: list[str] | None = None) -> int:
    wide_output_when_piped()
    parser = ArgumentParser(prog="tinystories-train", description="Train a GPT-Neo (TinyStories).")
    add_cli_arguments(parser)
    return run_cli(parser.parse_args(argv))
