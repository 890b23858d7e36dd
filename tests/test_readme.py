"""Every command in README.md works as typed: a new user's walk through the README, kept true by CI.

Each shell block of README.md is cut into commands (continuation lines joined, ``# comments`` dropped, ``&&``
chains split, the README's ``[--optional flags]`` left out) and walked in README order, each command getting
exactly one treatment, chosen by pattern:

* SKIP: another program's command (pip, pytest, apt-get, export...): not run, for the reason given.
* HELP_ONLY: our command, but it needs a GPU, the network, an API key, a cluster, or runs for ever:
  ``COMMAND --help`` must work (the command exists and parses), for the reason given.
* KNOWN_BROKEN: runs, and is expected to fail until the named issue is fixed; the test fails when it passes,
  so the entry is removed then.
* everything else RUNS, for real, through the installed ``tinystories`` / ``tinystories-train`` entry points
  (called in one process of the walk's own: one torch import for the whole walk), in one temporary folder
  that holds the inputs the README takes for granted (``write_inputs``; ``data download`` fetches stand-ins
from a fake Hub on loopback, ``published_files``). Sizes become tiny only through documented flags and environment
  variables (``tiny()``: trainer ``--key=value`` flags, smaller ``--num-stories``/``--vocab-size``/sweep grids;
  ``TINYSTORIES_CACHE`` holds a 512-token BPE in GPT-2's file format, so ``--tokenizer gpt2`` works offline;
  ``TINYSTORIES_OFFLINE=1`` forbids downloads). Paths that stand for the reader's own models
  (``runs/28M``, ``~/models/gpt2-xl``) are links to the tiny ones trained earlier in the walk (``ALIASES``).

A command of a program no rule knows ("unknown"), or a runnable command that fails (exit code or a traceback),
fails the test with its block, README line, the command as run and the end of its output: a new README command
is never skipped silently. Leading ``NAME=value`` words set that command's environment. The commands the
walk does not run are listed by ``pytest -rA tests/test_readme.py -k listing``.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shlex
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from glob import glob
from importlib.metadata import entry_points
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"

# (pattern on the command as written, reason): not our program; not run.
SKIP: list[tuple[str, str]] = [
    (r"^(python3? -m )?pip3? install\b", "installs packages (network); the walk uses the installed checkout"),
    (r"^(python3? -m )?pytest\b.*\btests\b", "the test suite itself (CI runs it)"),
    (r"^(python3? -m )?pytest\b.*\bbenchmarks\b", "a benchmark (minutes of timing; run by hand)"),
    (r"^python3? benchmarks/gpu_report\.py\b", "the GPU benchmark report: needs a CUDA GPU"),
    (r"^python3? benchmarks/", "a benchmark (minutes of timing; run by hand)"),
    (r"^(sudo )?apt(-get)? ", "system packages (root, network)"),
    (r"^export OPENAI_API_KEY=", "an API key placeholder"),
    (r"^(sbatch|srun|salloc|squeue|scancel|ssh)\b", "a cluster command"),
    (r"^(curl|wget|http|huggingface-cli|hf) ", "talks to a server or downloads (network)"),
    (r"^(nvidia-smi|tensorboard|docker)\b", "a GPU tool, viewer or container (not this package)"),
    (r"^lm_eval\b", "lm-evaluation-harness against a running server (tests/test_serve_lm_eval.py runs it both ways)"),
    (r"^(git|cd|ls|cat|head|tail|mkdir|zstd|kill|pkill|sleep|watch)\b", "a shell utility"),
]

# (pattern, reason): our command, checked with --help only.
HELP_ONLY: list[tuple[str, str]] = [
    (r"^tinystories eval grade\b", "needs an API key (the judge LLM)"),
    (r"^tinystories eval report\b", "reads eval/grades.jsonl, which `eval grade` writes (API key)"),
    (r"^tinystories sweep grade\b", "needs an API key (runs `eval grade`)"),
    (r"^tinystories synth\b.*--base-url\b", "needs a local LLM server (Ollama, vLLM)"),
    (r"^tinystories synth (?!stats\b)(?!.*--backend template)", "needs an API key (an LLM writes the stories)"),
    (r"^tinystories serve\b", "a long-running server"),
    (r"--executor slurm\b", "needs a SLURM cluster"),
    (r"^torchrun\b.*--nnodes", "multi-node DDP (a cluster)"),
    (r"^torchrun\b", "DDP: one process per GPU"),
    (r"(^| )\.\.\.( |$)", "elided arguments (`...`)"),
    (r"^CUDA_VISIBLE_DEVICES=\d", "runs on the GPUs it names"),
    (r"--device[= ]cuda\b", "needs a CUDA GPU"),
]

# (pattern, why it fails today): run, expected to fail; the test fails when one passes (remove it then).
KNOWN_BROKEN: list[tuple[str, str]] = []

# README placeholders for the reader's own models -> tiny artifacts made earlier in the walk.
ALIASES = {
    "runs/28M": "runs/33m",
    "runs/1M": "runs/33m",
    "home/models/gpt2-xl": "hf/33m",
    "path/to/TinyStories-33M": "hf/33m",
}

# The trainer at toy size: every TrainConfig field is a documented --key=value flag.
TRAIN_TINY = [
    "--hidden-size=32",
    "--num-layers=2",
    "--context=64",
    "--seq-len=32",
    "--batch-size=2",
    "--max-steps=2",
    "--eval-every=2",
    "--eval-batches=1",
    "--ckpt-every=2",
    "--sample-max-new-tokens=8",
    "--log-every=1",
    "--demo-num-stories=100",
    "--tensorboard=false",
    "--vocab-size=300",
]
SWEEP_TINY = [
    "--set",
    "context=64",
    "--set",
    "seq-len=32",
    "--set",
    "batch-size=2",
    "--set",
    "eval-every=4",
    "--set",
    "eval-batches=1",
    "--set",
    "sample-max-new-tokens=8",
    "--set",
    "tensorboard=false",
]


@dataclass
class Command:
    block: int  # 1-based index of the shell block
    line: int  # README line of the command
    text: str  # as written (continuations joined, comment and [optional] groups dropped)
    argv: list[str]
    batch_script: bool = False  # a line of an sbatch script (#!... and #SBATCH): it runs inside a SLURM job

    def where(self) -> str:
        return f"README.md block {self.block}, line {self.line}: {self.text}"


def shell_blocks(markdown: str) -> list[tuple[int, str]]:
    """(first line number, text) of every ```bash / ```sh / ```shell / ```console block."""
    blocks, current, start = [], None, 0
    for number, line in enumerate(markdown.splitlines(), 1):
        fence = re.match(r"^\s*```(\w*)", line)
        if fence and current is None:
            if fence.group(1) in ("bash", "sh", "shell", "console", "zsh"):
                current, start = [], number + 1
            else:
                current, start = False, 0  # another language: skip to its end
        elif fence:
            if current:
                blocks.append((start, "\n".join(current)))
            current = None
        elif current is not None and current is not False:
            current.append(line)
    return blocks


def _drop_optional(tokens: list[str]) -> list[str]:
    """Leave out the README's ``[--flag VALUE | --other]`` groups (documentation, not shell)."""
    out, depth = [], 0
    for token in tokens:
        if depth == 0 and token.startswith("[") and not token.startswith("[["):
            depth = 1
        if depth == 0:
            out.append(token)
        elif token.endswith("]"):
            depth = 0
    return out


def readme_commands(markdown: str) -> list[Command]:
    commands = []
    for block, (start, text) in enumerate(shell_blocks(markdown), 1):
        lines = text.splitlines()
        batch_script = text.startswith("#!") and "\n#SBATCH" in text
        i = 0
        while i < len(lines):
            first = i
            joined = lines[i]
            while joined.rstrip().endswith("\\") and i + 1 < len(lines):
                i += 1
                joined = joined.rstrip()[:-1] + " " + lines[i].strip()
            i += 1
            lexer = shlex.shlex(joined.removeprefix("$ "), posix=True, punctuation_chars=";&|")
            lexer.whitespace_split = True
            lexer.commenters = "#"
            tokens = _drop_optional(list(lexer))
            part: list[str] = []
            for token in tokens + ["&&"]:
                if token in ("&&", ";", "|", "||"):
                    if part:
                        text_ = shlex.join(part)
                        commands.append(Command(block, start + first, text_, part, batch_script))
                    part = []
                else:
                    part.append(token)
    return commands


def _match(rules: list[tuple[str, str]], command: Command) -> str | None:
    """The reason of the first rule matching the command (with or without its leading NAME=value words)."""
    bare = shlex.join(command.argv[len(assignments(command.argv)) :])
    return next(
        (reason for pattern, reason in rules if re.search(pattern, command.text) or re.search(pattern, bare)), None
    )


# ------------------------------------------------------------------------------------------------ running
def _entry_point(name: str) -> Callable[[list[str]], int]:
    found = [ep for ep in entry_points(group="console_scripts") if ep.name == name]
    assert found, f"console script {name!r} is not installed (pip install -e .)"
    return found[0].load()


_ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=")


def assignments(argv: list[str]) -> dict[str, str]:
    """The ``NAME=value`` words before a command (its environment)."""
    env = {}
    for token in argv:
        if not _ASSIGNMENT.match(token):
            break
        name, _, value = token.partition("=")
        env[name] = value
    return env


def program(argv: list[str]) -> tuple[Callable[[list[str]], int], list[str]] | None:
    """The entry point and arguments a command runs, or None when it is not one of ours."""
    argv = argv[len(assignments(argv)) :]
    if not argv:
        return None
    if argv[0] == "tinystories":
        return _entry_point("tinystories"), argv[1:]
    if argv[0] == "tinystories-train":
        return _entry_point("tinystories-train"), argv[1:]
    if argv[:3] in (["python", "-m", "tinystories.train"], ["python3", "-m", "tinystories.train"]):
        return _entry_point("tinystories-train"), argv[3:]
    if argv[:3] in (["python", "-m", "tinystories"], ["python3", "-m", "tinystories"]):
        return _entry_point("tinystories"), argv[3:]
    if argv[0] == "torchrun" and "-m" in argv:
        module = argv[argv.index("-m") + 1]
        return program(["python", "-m", module] + argv[argv.index("-m") + 2 :])
    return None


def invoke(main: Callable[[list[str]], int], args: list[str]) -> tuple[int, str]:
    """Run an entry point in this process: (exit code, stdout + stderr)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            code = main(args) or 0
        except SystemExit as exc:
            if isinstance(exc.code, str):
                print(exc.code, file=out)
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except Exception:  # noqa: BLE001 - a traceback is the failure being looked for
            traceback.print_exc(file=out)
            code = 1
    return code, out.getvalue()


def help_argv(argv: list[str]) -> list[str]:
    """``PROGRAM [COMMAND [ACTION]] --help`` of a command (its leading lower-case words)."""
    argv = argv[len(assignments(argv)) :]
    if argv[0] == "torchrun":
        return ["tinystories-train", "--help"]
    words = [argv[0]]
    for token in argv[1:3]:
        if not re.fullmatch(r"[a-z][a-z-]*", token):
            break
        words.append(token)
    return words + ["--help"]


def _set_value(argv: list[str], flag: str, value: Callable[[str], str]) -> list[str]:
    out = list(argv)
    for i, token in enumerate(out):
        if token == flag and i + 1 < len(out):
            out[i + 1] = value(out[i + 1])
        elif token.startswith(flag + "="):
            out[i] = f"{flag}={value(token.split('=', 1)[1])}"
    return out


def _without(argv: list[str], flag: str) -> list[str]:
    out, skip = [], False
    for token in argv:
        if skip:
            skip = False
        elif token == flag:
            skip = True
        elif not token.startswith(flag + "="):
            out.append(token)
    return out


def tiny(argv: list[str]) -> list[str]:
    """The same command at toy size, through documented flags only."""
    argv = argv[len(assignments(argv)) :]
    text = " ".join(argv)
    trainer = argv[0] == "tinystories-train" or argv[:2] == ["tinystories", "train"] or "tinystories.train" in argv
    if trainer and "--resume" in text:  # a resumed run keeps its own (already tiny) configuration
        return _set_value(argv, "--max-steps", lambda v: "4")
    if trainer:
        return _set_value(argv, "--vocab-size", lambda v: "300") + TRAIN_TINY
    if argv[:3] == ["tinystories", "tokenizer", "train"]:
        return _set_value(argv, "--vocab-size", lambda v: "300")
    if argv[:3] == ["tinystories", "tokenizer", "restrict"]:
        return _set_value(argv, "--vocab-size", lambda v: "300")
    if argv[:3] == ["tinystories", "data", "prepare"]:
        return _set_value(argv, "--vocab-size", lambda v: "300")
    if argv[:2] == ["tinystories", "synth"]:
        return _set_value(argv, "--num-stories", lambda v: "12")
    if argv[:3] == ["tinystories", "eval", "novelty"]:
        return _set_value(argv, "--num-stories", lambda v: "3") + ["--max-new-tokens", "16"]
    if argv[:3] == ["tinystories", "eval", "probes"]:
        return argv + ["--max-new-tokens", "4"]
    if argv[:2] == ["tinystories", "sweep"] and argv[2] in ("run", "estimate"):
        argv = _without(argv, "--gpus")  # runs go one at a time on the current device (README, Sweeps)
        if "--hidden-size" not in argv:  # `sweep run --out DIR` again: the saved grid
            return argv
        argv = _set_value(argv, "--hidden-size", lambda v: "16,32")
        argv = _set_value(argv, "--num-layers", lambda v: "1")
        argv = _set_value(argv, "--tokens", lambda v: "512")  # one budget: analyze uses every val point
        return argv + SWEEP_TINY + (["--probe-steps", "2"] if argv[2] == "estimate" else [])
    return argv


def _expand(argv: list[str], home: Path) -> list[str]:
    """What the shell does to the README's words: ``~`` and globs."""
    out = []
    for token in argv:
        if token.startswith("~/"):
            token = str(home / token[2:])
        matches = sorted(glob(token)) if any(c in token for c in "*?") else []
        out += matches or [token]
    return out


# ------------------------------------------------------------------------------------------------ inputs
def _write_gpt2_stand_in(cache: Path, stories: list[str]) -> None:
    """A 512-token BPE in GPT-2's file format (vocab.json + merges.txt) where the cache keeps GPT-2's."""
    from tinystories.tokenizer import Tokenizer
    from tinystories.tokenizer.files import token_to_str

    tok = Tokenizer.train(stories, vocab_size=512)
    vocab = {token_to_str(b): i for i, b in enumerate(tok.vocab)} | tok.special_tokens
    folder = cache / "gpt2"
    folder.mkdir(parents=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text(
        "#version: 0.2\n"
        + "".join(f"{token_to_str(tok.vocab[a])} {token_to_str(tok.vocab[b])}\n" for a, b, _ in tok.merges)
    )


def write_inputs(root: Path) -> None:
    """The files the README takes for granted, made of template stories (offline)."""
    import zstandard

    from tinystories.corpus import EOT
    from tinystories.story_templates import generate_stories

    def txt(path: str, seed: int, n: int = 300) -> None:  # enough for a validation split at 1%
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text("".join(f"{s}\n{EOT}\n" for s in generate_stories(n, seed=seed)))

    for seed, path in enumerate(
        [
            "TinyStories-train.txt",
            "TinyStoriesV2-GPT4-train.txt",
            "train.txt",
            "valid.txt",
            "data/train.txt",
            "HELD_OUT.txt",
        ],
        1,
    ):
        txt(path, seed)
    jsonl = "".join(json.dumps({"text": s}) + "\n" for s in generate_stories(40, seed=9))
    (root / "more.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(jsonl.encode()))
    _write_gpt2_stand_in(root / "cache", generate_stories(300, seed=10))
    (root / "home").mkdir()


def published_files() -> dict[str, bytes]:
    """Stand-ins for the files of the Hub's TinyStories repository, each in its own format (template stories),
    which the README's ``tinystories data download`` fetches from a FakeHub on loopback (``HF_ENDPOINT``)."""
    import tarfile

    from tinystories.corpus import EOT, instruct_text
    from tinystories.data.download import DATASETS
    from tinystories.story_templates import generate_stories

    def txt(stories) -> bytes:
        return "".join(f"{s}\n{EOT}\n" for s in stories).encode()

    files = {
        name: txt(generate_stories(300, seed=seed)) for seed, name in enumerate(DATASETS["v1"] + DATASETS["v2"], 20)
    }
    records = [
        {
            "story": s,
            "instruction": {
                "prompt:": "Write a short story (3-5 paragraphs)...",
                "words": ["run", "dog", "happy"],
                "features": ["Dialogue"],
            },
            "summary": "A dog runs and plays.",
            "source": "GPT-4",
        }
        for s in generate_stories(300, seed=30)
    ]
    train, valid = DATASETS["instruct"]
    files[train], files[valid] = txt(map(instruct_text, records[:250])), txt(map(instruct_text, records[250:]))
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w:gz") as tar:
        for m, start in enumerate(range(0, len(records), 150)):
            data = json.dumps(records[start : start + 150]).encode()
            info = tarfile.TarInfo(f"data{m:02d}.json")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    files[DATASETS["all-data"][0]] = archive.getvalue()
    import pyarrow as pa  # the dev extra's
    import pyarrow.parquet as pq

    for seed, name in enumerate(DATASETS["parquet"], 40):
        buffer = pa.BufferOutputStream()
        pq.write_table(pa.table({"text": generate_stories(20, seed=seed)}), buffer)
        files[name] = buffer.getvalue().to_pybytes()
    return files


def _link_aliases(root: Path) -> None:
    for alias, target in ALIASES.items():
        link, real = root / alias, root / target
        if not link.exists() and real.exists():
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(real.resolve(), target_is_directory=True)


# ------------------------------------------------------------------------------------------------ tests
def test_readme_commands_are_found():
    commands = readme_commands(README.read_text())
    assert len(commands) > 20
    assert any(c.argv[0] == "tinystories-train" for c in commands)
    assert all("#" not in c.text and "\\" not in c.text for c in commands)


def test_quick_start_installs_cpu_torch_before_the_package():
    """Issue 17.2: on a CPU box `pip install .` must not pull the 3 GB CUDA build: torch from the CPU index first."""
    quick_start = readme_commands(README.read_text().split("## Quick start", 1)[1].split("\n## ", 1)[0])
    installs = [c.text for c in quick_start if c.argv[:2] == ["pip", "install"]]
    cpu_torch = [
        i
        for i, text in enumerate(installs)
        if text.startswith("pip install torch") and "download.pytorch.org/whl/cpu" in text
    ]
    package = [i for i, text in enumerate(installs) if re.search(r"pip install (-e )?['\"]?\.", text)]
    assert cpu_torch and package and cpu_torch[0] < package[0], installs
    section = README.read_text().split("## Quick start", 1)[1].split("\n## ", 1)[0]
    assert "pytorch.org/get-started" in section  # where the CUDA build comes from on a GPU machine


def classify(command: Command) -> tuple[str, str]:
    """("skip" | "help" | "broken" | "run" | "unknown", reason) of a README command."""
    if command.batch_script:
        return "skip", "a line of an sbatch script: it runs inside a SLURM job (sbatch FILE)"
    if reason := _match(SKIP, command):
        return "skip", reason
    if program(command.argv) is None:
        return "unknown", (
            f"no rule for program {command.argv[0]!r}: add a SKIP pattern with the reason it cannot run here"
        )
    if reason := _match(HELP_ONLY, command):
        return "help", reason
    if reason := _match(KNOWN_BROKEN, command):
        return "broken", reason
    return "run", ""


def test_commands_being_added_to_the_readme_are_classified():
    """Commands other sections add (cluster, server, downloads) get their rule; an unknown program fails."""
    markdown = """```bash
CUDA_VISIBLE_DEVICES=0 tinystories-train --preset=33M
FOO=1 tinystories data stats data/ts | head -3
curl http://localhost:8000/v1/completions -d '{"prompt": "x"}'
tinystories serve runs/33m --port 8000
sbatch sweep.sbatch && srun --nodes=2 tinystories-train
torchrun --nnodes=2 --nproc_per_node=8 -m tinystories.train --preset=33M
tinystories sweep run --out runs/s --executor slurm --hidden-size 64
tinystories data download --out data/
tinystories eval grade runs/28M --judge-model gpt-4o
tinystories synth --num-stories 10 --out s.jsonl --backend template
mystery-tool --x
```"""
    kinds = [
        (classify(c)[0], help_argv(c.argv) if classify(c)[0] == "help" else None) for c in readme_commands(markdown)
    ]
    assert kinds == [
        ("help", ["tinystories-train", "--help"]),
        ("run", None),
        ("skip", None),
        ("skip", None),
        ("help", ["tinystories", "serve", "--help"]),
        ("skip", None),
        ("skip", None),
        ("help", ["tinystories-train", "--help"]),
        ("help", ["tinystories", "sweep", "run", "--help"]),
        ("run", None),
        ("help", ["tinystories", "eval", "grade", "--help"]),
        ("run", None),
        ("unknown", None),
    ]
    assert assignments(["FOO=1", "tinystories", "X=2"]) == {"FOO": "1"}
    assert tiny(["tinystories-train", "--out=r", "--resume", "--max-steps=30000"])[-1] == "--max-steps=4"


def test_listing_of_commands_the_walk_does_not_run():
    """What the closing note lists: every README command not run, and why (printed with -rA)."""
    for command in readme_commands(README.read_text()):
        kind, reason = classify(command)
        if kind in ("skip", "help", "unknown"):
            print(f"{command.where()}\n    {kind}: {reason}")


def walk(root: Path) -> dict:
    """Walk the README in ``root`` (the current folder, with the walk's environment): failures, timings."""
    from tinystories.testing import FakeHub

    failures, ran, timings = [], 0, []
    write_inputs(root)
    hub = FakeHub(published_files()).__enter__()  # ends with the walk's process
    os.environ.update(HF_ENDPOINT=hub.url, HF_HOME=str(root / "hf"))
    code, output = invoke(
        _entry_point("tinystories"),  # what the README's API-key synth commands would make
        ["synth", "--num-stories", "12", "--out", "stories.jsonl", "--backend", "template"],
    )
    assert code == 0, output
    for command in readme_commands(README.read_text()):
        kind, reason = classify(command)
        if kind == "skip":
            continue
        if kind == "unknown":
            failures.append(f"{command.where()}\n    {reason}")
            continue
        if kind == "help":
            help_main, help_args = program(help_argv(command.argv))
            code, output = invoke(help_main, help_args)
            if code != 0 or "usage:" not in output:
                failures.append(
                    f"{command.where()}\n    `{shlex.join(help_argv(command.argv))}` ({reason}) "
                    f"exited {code}:\n{output[-2000:]}"
                )
            continue
        _link_aliases(root)
        argv = _expand(tiny(command.argv), root / "home")
        main, args = program(argv)
        start, before = time.perf_counter(), dict(os.environ)
        os.environ.update(assignments(command.argv))
        code, output = invoke(main, args)
        os.environ.clear()
        os.environ.update(before)
        timings.append((time.perf_counter() - start, command.text))
        ran += 1
        ok = code == 0 and "Traceback (most recent call last)" not in output
        if kind == "broken" and ok:
            failures.append(f"{command.where()}\n    works now ({reason}): remove it from KNOWN_BROKEN")
        elif kind == "run" and not ok:
            failures.append(
                f"{command.where()}\n    ran as: {shlex.join(argv)}\n    exit code {code}; "
                f"output (last 3000 characters):\n{output[-3000:]}"
            )
    return {"failures": failures, "ran": ran, "timings": timings}


def test_every_readme_command_works(tmp_path):
    """The walk, in a fresh process of its own (one torch import; no state shared with other tests)."""
    root = tmp_path / "walk"
    root.mkdir()
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "COLUMNS", "HTTP_PROXY", "HTTPS_PROXY")
    }
    env.update(
        TINYSTORIES_CACHE=str(root / "cache"), TINYSTORIES_OFFLINE="1", HOME=str(root / "home"), CUDA_VISIBLE_DEVICES=""
    )
    proc = subprocess.run(
        [sys.executable, __file__, str(root)], cwd=root, env=env, capture_output=True, text=True, timeout=850
    )
    result_path = root / "walk-result.json"
    assert result_path.is_file(), (
        f"the walk stopped (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    )
    result = json.loads(result_path.read_text())
    print(
        "slowest README commands:", *(f"{t:6.1f}s  {text}" for t, text in sorted(result["timings"])[::-1][:6]), sep="\n"
    )
    failures = result["failures"]
    assert not failures, f"{len(failures)} README command(s) failed ({result['ran']} run):\n\n" + "\n\n".join(failures)
    assert result["ran"] >= 15


def test_readme_speed_figures_are_those_of_committed_result_files():
    """Issue 17.11: the tokenizer, shard-size, serving and synthesis figures of the README are in the result files it
    cites."""
    readme = README.read_text()
    root = README.parent

    def cited(section: str, prefix: str) -> str:
        paths = re.findall(rf"benchmarks/results/{prefix}[\w.-]+\.txt", section)
        assert paths, f"the README's {prefix} figures cite no committed result file"
        assert (root / paths[0]).is_file(), paths[0]
        return (root / paths[0]).read_text()

    tokenizer = readme.split("## Tokenizer", 1)[1].split("\n## ", 1)[0]
    ratio = re.search(r"([\d.]+)×\s+tiktoken's throughput on one thread", tokenizer)
    assert ratio, "the tokenizer speed claim is not in the expected form"
    rows = [line.split() for line in cited(tokenizer, "bench_tokenizer").splitlines()]
    assert any(r[:2] == ["1", "tiktoken"] and f"{ratio.group(1)}x" in r for r in rows), ratio.group(0)

    data = readme.split("## Data", 1)[1].split("\n## ", 1)[0]
    smaller = re.search(r"([\d.]+)x smaller than a uint16", data)
    assert smaller and f"{smaller.group(1)}x smaller" in cited(data, "bench_prepare"), "the shard size claim"

    serve = readme.split("## Serve and play", 1)[1].split("\n## ", 1)[0]
    result = cited(serve, "bench_serve")
    rows = [line.split() for line in result.splitlines()]
    table = [line for line in serve.splitlines() if line.startswith("| `")]
    assert len(table) >= 2
    for line in table:  # "| `demo` ... | 462 vs 501 tok/s, 0.92x | ...": serve vs transformers, and their ratio
        preset = line.split("`")[1]
        for ours, peer, ratio in re.findall(r"([\d,]+) vs ([\d,]+)(?: tok/s)?, ([\d.]+)x", line):
            figures = [peer.replace(",", ""), ours.replace(",", ""), f"{ratio}x"]  # the file's column order
            assert any(r[:1] == [preset] and r[2:5] == figures for r in rows), f"{figures} in {line!r}"

    synth = readme.split("## Synthesis", 1)[1].split("\n## ", 1)[0]
    result = cited(synth, "bench_synth")
    table = [line for line in synth.splitlines() if line.startswith("| ") and "req/s" in line]
    assert len(table) >= 3
    for line in table:
        for number in re.findall(r"(\d+(?:\.\d+)?)(?:\s*req/s|×| ms| →)", line):
            assert re.search(rf"(?<![\d.]){re.escape(number)}(?![\d.])", result), f"{number} in {line!r}"


if __name__ == "__main__":  # the walk's own process (test_every_readme_command_works)
    folder = Path(sys.argv[1])
    outcome = walk(folder)
    (folder / "walk-result.json").write_text(json.dumps(outcome))
