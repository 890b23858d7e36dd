"""One command-line vocabulary (docs/cli.md), checked on every parser: each ``tinystories`` command and subcommand
and ``tinystories-train``. Options are kebab-case and have help; an option spelled the same in two commands means
the same there (dest, help and default, unless the command's help says why its default differs); every old spelling
still works with its one warning line; a missing input is one error line and exit status 2; and the "Reference"
section of docs/cli.md is what the parsers say: ``python tests/test_cli.py --write`` rewrites it.
"""

from __future__ import annotations

import argparse
import functools
import re
import sys
from pathlib import Path

import pytest

from tinystories.cli import COMMANDS, build_parser, main
from tinystories.runtime.arguments import ArgumentParser, shared_of
from tinystories.train import cli as train_cli

DOC = Path(__file__).resolve().parent.parent / "docs" / "cli.md"
REFERENCE = "## Reference\n"
TRAINER = ("tinystories train", "tinystories-train")


def trainer_pending(prog: str) -> None:
    """The trainer's parser came with the trainer-config branch: nothing is pending any more."""


def checked(prog: str) -> bool:
    """Whether the checks of ``prog`` run here (every parser, once :func:`trainer_pending` skips nothing)."""
    try:
        trainer_pending(prog)
    except pytest.skip.Exception:
        return False
    return True


# ------------------------------------------------------------------------------------------------ the walk
@functools.cache
def parsers() -> dict[str, tuple[ArgumentParser, str]]:
    """prog -> (parser, what it does) of every command, subcommand and tinystories-train, in the order of --help."""
    found: dict[str, tuple[ArgumentParser, str]] = {}

    def walk(parser: ArgumentParser, about: str) -> None:
        found[parser.prog] = (parser, about)
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                helps = {a.dest: a.help or "" for a in action._choices_actions}
                for name, sub in action.choices.items():
                    walk(sub, helps.get(name, ""))

    for name in COMMANDS:
        walk(build_parser(name)[0], COMMANDS[name][2])
    trainer = ArgumentParser(prog="tinystories-train", description=COMMANDS["train"][2])
    train_cli.add_cli_arguments(trainer)
    walk(trainer, COMMANDS["train"][2])
    return found


def is_command(parser: ArgumentParser) -> bool:
    """A parser that runs something itself (not one that only chooses a subcommand)."""
    return not any(isinstance(a, argparse._SubParsersAction) and a.required for a in parser._actions)


def options(parser: ArgumentParser) -> list[argparse.Action]:
    """The parser's own arguments, without --help and the subcommand choice."""
    return [a for a in parser._actions if not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction))]


PROGS = list(parsers())
COMMAND_PROGS = [prog for prog, (parser, _) in parsers().items() if is_command(parser)]


# ------------------------------------------------------------------------------------------------ spelling, help
KEBAB = re.compile(r"-h|--[a-z0-9]+(-[a-z0-9]+)*")


@pytest.mark.parametrize("prog", PROGS)
def test_options_are_kebab_case(prog):
    trainer_pending(prog)
    parser, _ = parsers()[prog]
    for action in options(parser):
        for option in action.option_strings:
            # the trainer also takes snake_case, as nanoGPT users type it: beside the kebab-case spelling
            snake_alias = prog in TRAINER and option.replace("_", "-") in action.option_strings
            assert KEBAB.fullmatch(option) or option in parser.deprecated or snake_alias, f"{prog} {option}"


@pytest.mark.parametrize("prog", PROGS)
def test_every_option_has_help(prog):
    trainer_pending(prog)
    parser, _ = parsers()[prog]
    for action in options(parser):
        name = "/".join(action.option_strings) or action.dest
        if action.help is argparse.SUPPRESS:  # only an old spelling kept one more release may hide
            assert all(o in parser.deprecated for o in action.option_strings), f"{prog} {name} is hidden"
        else:
            assert action.help and action.help.strip(), f"{prog} {name} has no help"


def test_an_option_means_the_same_in_every_command():
    """Same dest, same help (a command's note after the shared help aside), same default unless the help
    says why it differs ('default ... here', 'required here'). The trainer's options are TrainConfig's fields:
    the same dest, but their help is the field's docstring with its default, and their argparse default is
    SUPPRESS (an option not given is absent, so a --resume changes only what was typed): dest only."""
    seen: dict[str, list[tuple[str, argparse.Action]]] = {}
    for prog, (parser, _) in parsers().items():
        if checked(prog):
            for action in options(parser):
                for option in action.option_strings:
                    if option not in parser.deprecated and option != "-h":
                        seen.setdefault(option, []).append((prog, action))
    problems = []
    for option, uses in seen.items():
        if len(uses) < 2:
            continue
        (first_prog, first), *rest = uses
        for prog, action in rest:
            if action.dest != first.dest:
                problems.append(f"{option}: dest {action.dest!r} in {prog}, {first.dest!r} in {first_prog}")
        uses = [(prog, action) for prog, action in uses if prog not in TRAINER]
        if len(uses) < 2:
            continue
        first = uses[0][1]
        shared = {(shared_of(a).help if shared_of(a) else a.help) for _, a in uses}
        if len(shared) > 1:
            problems.append(f"{option}: different help in {', '.join(p for p, _ in uses)}: {sorted(shared)}")
        usual = shared_of(first).default if shared_of(first) else first.default
        for prog, action in uses:
            says_why = " here" in (action.help or "") and ("default" in action.help or "required" in action.help)
            if action.default != usual and not says_why:
                problems.append(f"{prog} {option}: default {action.default!r} (usually {usual!r}) and no word why")
    assert not problems, "\n".join(problems)


# ------------------------------------------------------------------------------------------------ old spellings
# (command line, old spelling, new spelling or None where the old option keeps its old meaning one more release)
DEPRECATED: list[tuple[list[str], list[str], list[str] | None]] = [
    (["tokenizer", "restrict", "c.txt", "--out", "o.json"], ["--top-k", "300"], ["--vocab-size", "300"]),
    (["data", "prepare", "c.txt", "--out", "d", "--tokenizer", "gpt2"], ["--top-k", "300"], ["--vocab-size", "300"]),
    (["data", "stats", "d"], ["--top", "5"], ["--top-tokens", "5"]),
    (["sample", "--seed", "1"], ["--checkpoint", "c.pt"], ["c.pt"]),
    (["sample", "c.pt"], ["--max-tokens", "5"], ["--max-new-tokens", "5"]),
    (["export", "--out", "o"], ["--checkpoint", "c.pt"], ["c.pt"]),
    (["synth", "--out", "s.jsonl"], ["--n", "5"], ["--num-stories", "5"]),
    (["synth", "--out", "s.jsonl"], ["--max-tokens", "5"], ["--max-new-tokens", "5"]),
    (["synth", "stats", "s.jsonl"], ["--png", "p.png"], ["--out", "p.png"]),
    (["eval", "grade", "c.pt", "--judge-model", "m"], ["--samples", "3"], ["--num-samples", "3"]),
    (["eval", "novelty", "c.pt", "--stories", "s.txt"], ["--n", "3"], ["--num-stories", "3"]),
    (["eval", "novelty", "c.pt", "--stories", "s.txt"], ["--jsonl", "n.jsonl"], None),
    (["eval", "probes", "c.pt"], ["--html", "p.html"], None),
    (["eval", "probes", "c.pt"], ["--jsonl", "p.jsonl"], None),
    (["eval", "loss", "c.pt"], ["--text", "v.txt"], ["--stories", "v.txt"]),
    (["eval", "loss", "c.pt", "--stories", "v.txt"], ["--json", "l.json"], None),
    (["inspect", "neurons", "c.pt", "--stories", "v.txt"], ["--top-k", "3"], ["--examples", "3"]),
    (["inspect", "neurons", "c.pt", "--stories", "v.txt"], ["--context", "3"], ["--snippet-tokens", "3"]),
    (["inspect", "heads", "c.pt", "--stories", "v.txt"], ["--window", "3"], ["--local-tokens", "3"]),
    (["sweep", "run", "--out", "s"], ["--hidden", "32,64"], ["--hidden-size", "32,64"]),
    (["sweep", "run", "--out", "s"], ["--layers", "1,2"], ["--num-layers", "1,2"]),
    (["sweep", "estimate", "--out", "s"], ["--hidden", "32,64"], ["--hidden-size", "32,64"]),
    (["sweep", "estimate", "--out", "s"], ["--layers", "1,2"], ["--num-layers", "1,2"]),
    (["sweep", "grade", "s"], ["--samples", "3"], ["--num-samples", "3"]),
    (["train", "--print-config"], ["--out_dir", "r"], ["--out", "r"]),
    (["train", "--print-config"], ["--out-dir", "r"], ["--out", "r"]),
    (["train", "--print-config"], ["--vocab_top_k", "300"], ["--vocab-size", "300"]),
    (["train", "--print-config"], ["--vocab-top-k", "300"], ["--vocab-size", "300"]),
    (["train", "--print-config"], ["--sample_tokens", "5"], ["--sample-max-new-tokens", "5"]),
    (["train", "--print-config"], ["--sample-tokens", "5"], ["--sample-max-new-tokens", "5"]),
    (["train", "--print-config"], ["--demo_stories", "50"], ["--demo-num-stories", "50"]),
    (["train", "--print-config"], ["--demo-stories", "50"], ["--demo-num-stories", "50"]),
]


def _prog(argv: list[str]) -> str:
    words = [argv[0]] + [w for w in argv[1:2] if parsers().get(f"tinystories {argv[0]} {w}")]
    return "tinystories " + " ".join(words)


def _parse(argv: list[str]) -> argparse.Namespace:
    parser, _ = build_parser(argv[0])
    return parser.parse_args(argv[1:])


def test_every_old_spelling_is_checked_below():
    registered = {  # (tinystories-train: the parser of `tinystories train`)
        (prog, old)
        for prog, (parser, _) in parsers().items()
        if prog != "tinystories-train"
        for old in parser.deprecated
    }
    assert registered == {(_prog(argv), old[0]) for argv, old, _ in DEPRECATED}


@pytest.mark.parametrize("argv,old,new", DEPRECATED, ids=[f"{_prog(a)} {o[0]}" for a, o, _ in DEPRECATED])
def test_an_old_spelling_works_with_one_warning_line(capsys, argv, old, new):
    prog = _prog(argv)
    replacement = parsers()[prog][0].deprecated[old[0]]
    shown = replacement if replacement.startswith("-") else f"a positional {replacement}"
    warning = f"{prog}: warning: {old[0]} is deprecated, use {shown} (the old name goes in the next release)"
    spellings = [old] + ([[f"{old[0]}={old[1]}"]] if old[1:] else [])  # --top-k 300 and --top-k=300
    for spelling in spellings:
        with_old = _parse(argv + spelling)
        assert capsys.readouterr().err.splitlines() == [warning]
        if new is None:  # kept with its old meaning
            assert getattr(with_old, old[0].lstrip("-")) == Path(old[1])
        else:
            assert with_old == _parse(argv + new)
            assert capsys.readouterr().err == ""


def test_a_mistyped_option_gets_the_closest_one(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["data", "stats", "d", "--top-tokns", "3"])
    err = capsys.readouterr().err.splitlines()
    assert exc.value.code == 2 and len(err) == 2 and err[0].startswith("usage: ")
    assert err[1].endswith("unrecognized arguments: --top-tokns 3; did you mean --top-tokens?"), err
    with pytest.raises(SystemExit):
        main(["sample", "c.pt", "--max-new-tokns=3"])
    assert capsys.readouterr().err.splitlines()[1].endswith("did you mean --max-new-tokens?")
    with pytest.raises(SystemExit):
        main(["sample", "c.pt", "--zzz"])  # nothing close: the plain error
    assert capsys.readouterr().err.splitlines()[1].endswith("unrecognized arguments: --zzz")


# ------------------------------------------------------------------------------------------------ errors
# A command run on an input that does not exist ("{m}" is a folder that does not exist): one line, exit status 2.
MISSING_INPUT: dict[str, list[str]] = {
    "tinystories tokenizer train": ["tokenizer", "train", "{m}/a.txt", "--vocab-size", "300", "--out", "t.json"],
    "tinystories tokenizer restrict": ["tokenizer", "restrict", "--tokenizer", "{m}/t.json", "--vocab-size", "300"]
    + ["c.txt", "--out", "t.json"],
    "tinystories tokenizer encode": ["tokenizer", "encode", "--tokenizer", "{m}/t.json", "--text", "x"],
    "tinystories tokenizer export-hf": ["tokenizer", "export-hf", "--tokenizer", "{m}/t.json", "--out", "h"],
    "tinystories data prepare": ["data", "prepare", "{m}/a.txt", "--tokenizer", "{m}/t.json", "--out", "d"],
    "tinystories data stats": ["data", "stats", "{m}/d"],
    "tinystories data verify": ["data", "verify", "{m}/d"],
    "tinystories train": ["train", "{m}/run.toml"],
    "tinystories sample": ["sample", "{m}/c.pt"],
    "tinystories export": ["export", "{m}/c.pt", "--out", "hf"],
    "tinystories synth stats": ["synth", "stats", "{m}/s.jsonl"],
    "tinystories eval grade": ["eval", "grade", "{m}/c.pt", "--judge-model", "m"],
    "tinystories eval report": ["eval", "report", "{m}/grades.jsonl"],
    "tinystories eval probes": ["eval", "probes", "{m}/c.pt"],
    "tinystories eval novelty": ["eval", "novelty", "{m}/c.pt", "--stories", "{m}/s.txt"],
    "tinystories eval loss": ["eval", "loss", "{m}/c.pt", "--stories", "{m}/v.txt"],
    "tinystories inspect neurons": ["inspect", "neurons", "{m}/c.pt", "--stories", "{m}/v.txt"],
    "tinystories inspect heads": ["inspect", "heads", "{m}/c.pt", "--stories", "{m}/v.txt"],
    "tinystories sweep run": ["sweep", "run", "--out", "{m}/s"],
    "tinystories sweep estimate": ["sweep", "estimate", "--out", "{m}/s"],
    "tinystories sweep status": ["sweep", "status", "{m}/s"],
    "tinystories sweep analyze": ["sweep", "analyze", "{m}/s"],
    "tinystories sweep grade": ["sweep", "grade", "{m}/s"],
    "tinystories serve": ["serve", "{m}/c.pt"],
}
# Commands that read no input of the user's: what they would be given is written, or fetched.
NO_INPUT = {"tinystories data download": "fetches from the Hub", "tinystories synth": "writes a corpus"}


def test_every_command_is_run_on_a_missing_input():
    assert set(COMMAND_PROGS) - {"tinystories-train"} == set(MISSING_INPUT) | set(NO_INPUT)
    assert not set(MISSING_INPUT) & set(NO_INPUT)


@pytest.mark.parametrize("prog", list(MISSING_INPUT))
def test_a_missing_input_is_one_line_and_exit_status_2(tmp_path, monkeypatch, capsys, prog):
    trainer_pending(prog)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OPENAI_API_KEY", "unused")  # the judge's key is checked after the inputs
    missing = tmp_path / "missing"
    argv = [a.replace("{m}", str(missing)) for a in MISSING_INPUT[prog]]
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert re.fullmatch(rf"{re.escape(prog)}: error: .*{re.escape(str(missing))}.*\n", err), err


# ------------------------------------------------------------------------------------------------ reference
def _default(action: argparse.Action) -> str:
    if not action.option_strings:  # a positional
        return ""
    if action.required:
        return "required"
    value = action.default
    if value is None or value is False or value == [] or value is argparse.SUPPRESS:
        return ""
    return f"`{' '.join(map(str, value)) if isinstance(value, list) else value}`"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def section(prog: str) -> str:
    """The reference of one command: what it does, its usage line and a table of its options."""
    parser, about = parsers()[prog]
    formatter = argparse.HelpFormatter(prog, width=100_000)  # one usage line, whatever the terminal
    formatter.add_usage(parser.usage, parser._actions, parser._mutually_exclusive_groups, prefix="")
    lines = [f"### `{prog}`", "", about, "", "```text", formatter.format_help().strip(), "```", ""]
    lines += ["| option | default | help |", "|---|---|---|"]
    for action in options(parser):
        if action.help is argparse.SUPPRESS:
            continue
        invocation = formatter._format_action_invocation(action)
        help_text = formatter._expand_help(action)
        lines.append(f"| `{_cell(invocation)}` | {_cell(_default(action))} | {_cell(help_text)} |")
    return "\n".join(lines) + "\n"


def reference() -> str:
    intro = "<!-- The reference is generated from the parsers: `python tests/test_cli.py --write` rewrites it. -->"
    sections = []
    for prog in COMMAND_PROGS:
        if prog == "tinystories-train":
            continue  # the same parser as `tinystories train`
        if checked(prog):
            sections.append(section(prog))
        else:
            sections.append(
                "### `tinystories-train` (`tinystories train`)\n\n"
                "<!-- Generated once the trainer-config branch is merged (tests/test_cli.py: trainer_pending). -->\n"
            )
    return REFERENCE + "\n" + intro + "\n\n" + "\n".join(sections)


def test_the_reference_in_docs_is_what_the_parsers_say():
    text = DOC.read_text(encoding="utf-8")
    assert REFERENCE in text
    written = text[text.index(REFERENCE) :]
    assert written == reference(), "docs/cli.md is out of date: run `python tests/test_cli.py --write`"


if __name__ == "__main__":  # python tests/test_cli.py --write: rewrite the reference section of docs/cli.md
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python tests/test_cli.py --write")
    text = DOC.read_text(encoding="utf-8")
    DOC.write_text(text[: text.index(REFERENCE)] + reference(), encoding="utf-8")
    print(f"wrote the reference of {DOC}")
