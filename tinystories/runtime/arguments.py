"""The command-line vocabulary every ``tinystories`` command is built from (written down in ``docs/cli.md``).

:class:`ArgumentParser` (a short usage error with "did you mean", old spellings that still work for one release),
:func:`one_line_errors` (every command's errors as one line and an exit status), and the options that several
commands share, each defined here once with one default and one help text. A command that needs another default
passes it with a ``note`` that says so; the note is appended to the shared help (``HELP: NOTE``), and the shared
part is kept on the action (:func:`shared_of`) for ``tests/test_cli.py``, which checks that an option means the
same in every command.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import functools
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

# What the helpers add options to: a parser, or one of its (mutually exclusive) groups.
Container = argparse._ActionsContainer


def deprecated(old: str, new: str) -> str:
    """The one wording of an old spelling's warning (options, TOML keys, ``sweep --set``): kept for one release."""
    return f"{old} is deprecated, use {new} (the old name goes in the next release)"


class ArgumentParser(argparse.ArgumentParser):
    """argparse with a short error: ``usage: PROG [options]``, the error, and where the full help is. The stock
    one prints the whole usage first, which for ``tinystories-train`` (every config field) is 30 lines. A
    mistyped option gets the closest real one ("did you mean --vocab-size?"), and :meth:`deprecate` keeps an
    old spelling working for one more release."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.deprecated: dict[str, str] = {}  # old spelling -> the option (or positional METAVAR) replacing it

    def deprecate(self, old: str, new: str) -> None:
        """Accept ``old`` (an option string) in place of ``new`` -- another option, or the METAVAR of a positional
        (``--checkpoint X`` then reads as ``X``) -- with one warning line on stderr. When ``old`` is still an
        option of this parser (hidden, for an old meaning kept one more release), it only warns."""
        self.deprecated[old] = new

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"usage: {self.prog} [options] (see {self.prog} --help)\n{self.prog}: error: {message}\n")

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        # subparsers are parsed by their own parse_known_args, each renaming its own old spellings
        return super().parse_known_args(self._renamed(sys.argv[1:] if args is None else list(args)), namespace)

    def parse_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> argparse.Namespace:
        namespace, extras = self.parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}{self._did_you_mean(extras, namespace)}")
        return namespace

    def _renamed(self, args: list[str]) -> list[str]:
        out: list[str] = []
        for i, arg in enumerate(args):
            if arg == "--":  # what follows is positional, whatever it looks like
                return out + args[i:]
            flag, eq, value = arg.partition("=")
            new = self.deprecated.get(flag) if flag.startswith("-") else None
            if new is None:
                out.append(arg)
                continue
            shown = new if new.startswith("-") else f"a positional {new}"
            print(f"{self.prog}: warning: {deprecated(flag, shown)}", file=sys.stderr)
            if flag in self._option_string_actions:  # kept with its old meaning
                out.append(arg)
            elif new.startswith("-"):
                out.append(new + eq + value)
            elif eq:  # a positional now: the flag goes, its value stays
                out.append(value)
        return out

    def _did_you_mean(self, extras: list[str], namespace: argparse.Namespace) -> str:
        options = self._visible_options(namespace)
        for arg in extras:
            if arg.startswith("-"):
                close = difflib.get_close_matches(arg.partition("=")[0], options, n=1)
                if close:
                    return f"; did you mean {close[0]}?"
        return ""

    def _visible_options(self, namespace: argparse.Namespace) -> list[str]:
        """The options of this parser and of the subcommands chosen on this command line, as --help lists them."""
        options = []
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                chosen = action.choices.get(getattr(namespace, action.dest, None) or "")
                if isinstance(chosen, ArgumentParser):
                    options += chosen._visible_options(namespace)
            elif action.help is not argparse.SUPPRESS:
                options += [o for o in action.option_strings if o.startswith("--")]
        return options


# What exits 2: the user can fix it and run the same command again (a PermissionError: an unreadable input or a
# folder that cannot be written). Other OSErrors and RuntimeErrors (WorkFailed among them) exit 1.
BAD_INPUT = (ValueError, FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError, PermissionError)


def one_line_errors(prog: str) -> Callable[[Callable[[argparse.Namespace], int]], Callable[[argparse.Namespace], int]]:
    """What every command's ``run_cli`` is wrapped in: an error is one line on stderr, ``PROG: error: MESSAGE``
    (PROG with the subcommand, ``args.action``), never a traceback. Exit status 2 for bad input (a bad value, a
    missing, unreadable or occupied file), 1 when the work itself failed
    (:class:`~tinystories.runtime.errors.WorkFailed`, a failed request or write), 130 on Ctrl-C."""

    def wrap(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
        @functools.wraps(run)
        def guarded(args: argparse.Namespace) -> int:
            action = getattr(args, "action", None)
            name = f"{prog} {action}" if action else prog
            try:
                return run(args)
            except BAD_INPUT as exc:
                return _failed(name, exc, 2)
            except (OSError, RuntimeError) as exc:  # WorkFailed, a failed download, write or request
                return _failed(name, exc, 1)
            except KeyboardInterrupt:
                print(f"{name}: interrupted", file=sys.stderr)
                return 130

        return guarded

    return wrap


def _failed(prog: str, exc: BaseException, status: int) -> int:
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:  # "[Errno 2] ..." from the OS
        message = f"{exc.filename}: {exc.strerror}"
    else:  # a message of several lines (a list of files...) becomes one: "a: b; c"
        message = ""
        for line in filter(None, (line.strip() for line in str(exc).splitlines())):
            message += ("" if not message else " " if message.endswith(":") else "; ") + line
        message = message or type(exc).__name__
    print(f"{prog}: error: {message}", file=sys.stderr)
    return status


def wide_output_when_piped() -> None:
    """Tables and messages written to a pipe or file are not cut or wrapped at rich's 80-column default
    (rich reads ``COLUMNS``; a terminal, or a ``COLUMNS`` the user set, keeps its width)."""
    if not os.environ.get("COLUMNS", "").isdigit() and not sys.stdout.isatty():
        os.environ["COLUMNS"] = "1000"


def dataclass_options(cls: type, args: argparse.Namespace) -> dict[str, Any]:
    """The command-line options named like fields of the dataclass ``cls``: what a command passes on to its
    configuration (options the user did not give are absent when their default is ``argparse.SUPPRESS``)."""
    fields = {f.name for f in dataclasses.fields(cls)}
    return {name: value for name, value in vars(args).items() if name in fields}


# ------------------------------------------------------------------------------------------------ shared options
@dataclasses.dataclass(frozen=True)
class Shared:
    """What an option means in every command: its help without the command's note, and its default."""

    help: str
    default: Any


def shared_of(action: argparse.Action) -> Shared | None:
    """The shared meaning of an option added by one of the helpers below (None for a command's own option)."""
    return getattr(action, "shared", None)


_USUAL = object()


def _add(
    container: Container, *names: str, help: str, note: str | None = None, usual: Any = _USUAL, **kwargs: Any
) -> argparse.Action:
    """Add a shared option; ``usual`` is its one default where a command may pass another (its note says so)."""
    action = container.add_argument(*names, help=help if note is None else f"{help}: {note}", **kwargs)
    action.shared = Shared(help, action.default if usual is _USUAL else usual)  # type: ignore[attr-defined]
    return action


def add_checkpoint_arguments(parser: Container, *, nargs: str | None = None, note: str | None = None) -> None:
    """The checkpoint(s) a command reads: positional CHECKPOINT (``nargs`` "*" or "+" for several)."""
    _add(
        parser,
        "checkpoints" if nargs else "checkpoint",
        nargs=nargs,
        type=Path,
        metavar="CHECKPOINT",
        help="a checkpoint .pt file, or a run folder (its newest checkpoint)",
        note=note,
    )


def add_out_argument(parser: Container, what: str, *, required: bool = False, default: str | None = None) -> None:
    """What a command writes: ``--out``, saying what it is (a file, or a folder and what goes in it)."""
    _add(
        parser,
        "--out",
        type=Path,
        metavar="PATH",
        required=required,
        default=None if default is None else Path(default),
        usual=None,
        help="where to write",
        note=what,
    )


def add_device_arguments(parser: Container) -> None:
    """Where a model runs, resolved as the trainer resolves it (``tinystories.runtime.device``)."""
    _add(parser, "--device", default="auto", help="auto, cpu, cuda, cuda:N or mps; auto: cuda when available, else cpu")
    _add(
        parser,
        "--dtype",
        default="auto",
        choices=["auto", "fp32", "fp16", "bf16"],
        help="autocast dtype; auto: as the trainer chooses for the device (bf16 on sm_80+, fp16 on sm_7x, fp32 on CPU)",
    )


def add_temperature_argument(parser: Container, *, default: float = 1.0, note: str | None = None) -> None:
    _add(
        parser,
        "--temperature",
        type=float,
        metavar="T",
        default=default,
        usual=1.0,
        help="sampling temperature (0: the most likely token)",
        note=note,
    )


def add_seed_argument(parser: Container) -> None:
    _add(parser, "--seed", type=int, default=0, metavar="N", help="random seed: the same seed gives the same stories")


def add_sampling_arguments(parser: Container, *, temperature: float = 1.0, note: str | None = None) -> None:
    """How a model's completions are sampled (``note`` says why a command's temperature differs)."""
    add_temperature_argument(parser, default=temperature, note=note)
    _add(parser, "--top-k", type=int, default=None, metavar="K", help="sample from the K most likely tokens only")
    _add(
        parser,
        "--top-p",
        type=float,
        default=None,
        metavar="P",
        help="sample from the most likely tokens holding P of the mass",
    )
    _add(parser, "--greedy", action="store_true", help="always take the most likely token (temperature 0)")
    add_seed_argument(parser)


def add_max_new_tokens_argument(parser: Container, *, default: int = 200, note: str | None = None) -> None:
    _add(
        parser,
        "--max-new-tokens",
        type=int,
        metavar="N",
        default=default,
        usual=200,
        help="new tokens per completion at most",
        note=note,
    )


def add_num_samples_argument(parser: Container, *, default: int = 1, note: str | None = None) -> None:
    _add(
        parser,
        "--num-samples",
        type=int,
        default=default,
        usual=1,
        metavar="N",
        help="completions per prompt",
        note=note,
    )


def add_num_stories_argument(parser: Container, *, default: int | None = None, note: str | None = None) -> None:
    _add(
        parser, "--num-stories", type=int, default=default, usual=None, metavar="N", help="how many stories", note=note
    )


def add_stories_argument(parser: Container, *, required: bool = False, note: str | None = None) -> None:
    """A story file read as input, in any format ``tinystories data prepare`` reads; repeatable."""
    _add(
        parser,
        "--stories",
        type=Path,
        action="append",
        required=required,
        metavar="FILE",
        help="a story file as `tinystories data prepare` reads it (.txt with <|endoftext|> separators, .jsonl, "
        ".json, .tar.gz, .parquet; optionally .zst); repeatable",
        note=note,
    )


def add_data_argument(parser: Container, *, note: str | None = None) -> None:
    _add(parser, "--data", metavar="DIR", help="a prepared dataset folder (tinystories data prepare)", note=note)


def add_split_argument(parser: Container) -> None:
    _add(parser, "--split", default="val", help="the split of --data to read")


def add_tokenizer_argument(parser: Container, *, required: bool = False, note: str | None = None) -> None:
    _add(
        parser,
        "--tokenizer",
        required=required,
        default=None if required else "gpt2",
        usual="gpt2",
        help="gpt2, gpt-neo, a tokenizer .json, or a folder with vocab.json+merges.txt",
        note=note,
    )


def add_vocab_size_argument(parser: Container, *, required: bool = False, note: str | None = None) -> None:
    _add(parser, "--vocab-size", type=int, required=required, metavar="N", help="the vocabulary size", note=note)


def add_threads_argument(parser: Container) -> None:
    _add(parser, "--threads", type=int, default=None, metavar="N", help="tokenizer threads (default: all cores)")


def add_no_progress_argument(parser: Container) -> None:
    _add(parser, "--no-progress", action="store_true", help="no progress bar")


def add_instruct_argument(parser: Container, *, note: str) -> None:
    _add(parser, "--instruct", action="store_true", help="TinyStories-Instruct (docs/synthesis.md)", note=note)


def add_show_argument(parser: Container, *, default: int, note: str) -> None:
    _add(
        parser, "--show", type=int, default=default, usual=None, metavar="N", help="how many results to show", note=note
    )


def add_judge_model_argument(parser: Container, *, required: bool = False, note: str | None = None) -> None:
    _add(parser, "--judge-model", required=required, metavar="MODEL", help="the judge LLM (e.g. gpt-4o)", note=note)


def add_base_url_argument(parser: Container) -> None:
    _add(
        parser,
        "--base-url",
        metavar="URL",
        help="any OpenAI-compatible endpoint, e.g. http://localhost:8000/v1 (default: OpenAI)",
    )


def add_api_key_env_argument(
    parser: Container, *, default: str | None = "OPENAI_API_KEY", note: str | None = None
) -> None:
    _add(
        parser,
        "--api-key-env",
        default=default,
        usual="OPENAI_API_KEY",
        metavar="VAR",
        help="the environment variable holding the API key",
        note=note,
    )


def add_llm_client_arguments(
    parser: Container, *, cost_note: str, concurrency: int = 64, concurrency_note: str | None = None
) -> None:
    """The options of the OpenAI-compatible client (``tinystories.llm``), for every command that talks to an LLM;
    ``tinystories.llm.client.client_config_from_args`` reads them."""
    add_base_url_argument(parser)
    add_api_key_env_argument(parser)
    _add(
        parser,
        "--concurrency",
        type=int,
        metavar="N",
        default=concurrency,
        usual=64,
        help="requests in flight",
        note=concurrency_note,
    )
    _add(parser, "--workers", type=int, default=1, help="client processes (scale with cores)")
    _add(parser, "--timeout-s", type=float, default=120.0, help="seconds to wait for an answer")
    _add(parser, "--connect-timeout-s", type=float, default=10.0, help="seconds to wait for a connection")
    _add(
        parser,
        "--max-consecutive-failures",
        type=int,
        default=10,
        metavar="K",
        help="stop when the first K attempts all fail, or K requests in a row fail (0: never)",
    )
    _add(parser, "--max-attempts", type=int, default=6, help="tries per request before it is recorded as failed")
    _add(
        parser,
        "--backoff-s",
        dest="backoff_initial_s",
        type=float,
        default=1.0,
        help="first retry delay (doubles each retry)",
    )
    _add(parser, "--backoff-max-s", type=float, default=60.0, help="longest retry delay")
    _add(parser, "--max-cost-usd", type=float, help="stop cleanly before spending more than this", note=cost_note)
    _add(parser, "--prices", type=Path, help="JSON/TOML price overrides (USD per 1M tokens)")
