"""The ``tinystories`` command: one entry point, one subcommand per concept.

Each subcommand lives in the module that implements the concept and exposes two functions,
``add_cli_arguments(parser)`` and ``run_cli(args) -> int``. Modules are imported only when their
subcommand runs, so ``tinystories tokenizer ...`` never pays for torch or openai.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    "tokenizer": ("tinystories.tokenizer", "train, restrict, export or run a byte-level BPE tokenizer"),
    "data": ("tinystories.data", "prepare, inspect and verify zstd token shards"),
    "train": ("tinystories.train", "train a GPT-Neo model (same as tinystories-train)"),
    "sample": ("tinystories.sample", "generate stories from a checkpoint"),
    "export": ("tinystories.hf", "export a checkpoint to a Hugging Face GPTNeoForCausalLM directory"),
    "synth": ("tinystories.synth", "synthesize stories with any OpenAI-compatible LLM"),
    "eval": ("tinystories.evaluate", "grade, probe and measure checkpoints"),
    "inspect": ("tinystories.interpret", "neuron and attention-head analysis"),
    "sweep": ("tinystories.sweep", "size x compute sweeps and the compute-optimal fit"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in COMMANDS:
        name = argv[0]
        module_name, help_text = COMMANDS[name]
        module = importlib.import_module(module_name)
        parser = argparse.ArgumentParser(prog=f"tinystories {name}", description=help_text)
        module.add_cli_arguments(parser)
        args = parser.parse_args(argv[1:])
        return int(module.run_cli(args) or 0)

    parser = argparse.ArgumentParser(
        prog="tinystories", description="TinyStories toolkit: synthesize, tokenize, train, grade, inspect."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text)
    parser.parse_args(argv)
    parser.print_help()
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
