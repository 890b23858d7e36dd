"""The command-line vocabulary every ``tinystories`` command is built from (written down in ``docs/cli.md``)."""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import os
import sys
from typing import Any, NoReturn


class ArgumentParser(argparse.ArgumentParser):
    """argparse with a short error: ``usage: PROG [options]``, the error, and where the full help is. The stock
    one prints the whole usage first, which for ``tinystories-train`` (every config field) is 30 lines."""

    def error(self, message: str) -> NoReturn:
        message += self._suggestion(message)
        self.exit(2, f"usage: {self.prog} [options] (see {self.prog} --help)\n{self.prog}: error: {message}\n")

    def _suggestion(self, message: str) -> str:
        """`` (did you mean --max-steps?)`` for the first unrecognized option close to one shown in --help."""
        prefix = "unrecognized arguments: "
        if not message.startswith(prefix):
            return ""
        shown = [s for a in self._actions if a.help != argparse.SUPPRESS for s in a.option_strings]
        for token in message.removeprefix(prefix).split():
            close = difflib.get_close_matches(token.split("=", 1)[0].replace("_", "-"), shown, n=1)
            if token.startswith("--") and close:
                return f" (did you mean {close[0]}?)"
        return ""


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
