"""The ``tinystories`` command: one entry point, one subcommand per pipeline stage.

Each subcommand is served by a ``cli`` module that exposes ``add_cli_arguments(parser)`` and
``run_cli(args) -> int`` (``tinystories.model.cli`` serves two commands, so its functions carry the
command's name: ``add_sample_arguments`` / ``run_sample``). Modules are imported only when their
subcommand runs, so ``tinystories tokenizer ...`` never pays for torch or openai. The options come from the
shared vocabulary of :mod:`tinystories.runtime.arguments` (``docs/cli.md``), and every ``run_cli`` is wrapped
in its ``one_line_errors``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable

from tinystories.runtime.arguments import ArgumentParser, wide_output_when_piped

# command -> (module, function-name suffix or None, help)
COMMANDS: dict[str, tuple[str, str | None, str]] = {
    "tokenizer": ("tinystories.tokenizer.cli", None, "train, restrict, export or run a byte-level BPE tokenizer"),
    "data": ("tinystories.data.cli", None, "prepare, inspect and verify zstd token shards"),
    "train": ("tinystories.train.cli", None, "train a GPT-Neo model (same as tinystories-train)"),
    "sample": ("tinystories.model.cli", "sample", "generate stories from a checkpoint"),
    "export": ("tinystories.model.cli", "export", "export a checkpoint to a Hugging Face GPTNeoForCausalLM directory"),
    "synth": ("tinystories.synth.cli", None, "synthesize stories with any OpenAI-compatible LLM"),
    "eval": ("tinystories.evaluate.cli", None, "grade, probe and measure checkpoints"),
    "inspect": ("tinystories.interpret.cli", None, "neuron and attention-head analysis"),
    "sweep": ("tinystories.sweep.cli", None, "size x compute sweeps and the compute-optimal fit"),
    "serve": ("tinystories.serve.cli", None, "serve checkpoints over an OpenAI-compatible API with a playground page"),
}


def build_parser(name: str) -> tuple[ArgumentParser, Callable[[argparse.Namespace], int]]:
    """The parser of command ``name`` and the function that runs it (``tests/test_cli.py`` walks them all)."""
    module_name, command, help_text = COMMANDS[name]
    module = importlib.import_module(module_name)
    add, run = (
        (module.add_cli_arguments, module.run_cli)
        if command is None
        else (getattr(module, f"add_{command}_arguments"), getattr(module, f"run_{command}"))
    )
    parser = ArgumentParser(prog=f"tinystories {name}", description=help_text)
    add(parser)
    return parser, run


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    wide_output_when_piped()
    if argv and argv[0] in COMMANDS:
        parser, run = build_parser(argv[0])
        return int(run(parser.parse_args(argv[1:])) or 0)

    parser = ArgumentParser(
        prog="tinystories", description="TinyStories toolkit: synthesize, tokenize, train, grade, inspect."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, _, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text)
    parser.parse_args(argv)
    parser.print_help()
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
