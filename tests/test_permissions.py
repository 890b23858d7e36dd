"""Files and folders written by prepare, train, export and eval get the permissions a plain ``open()`` and
``mkdir`` give under the user's umask, so a dataset or a run shared on a cluster is readable by colleagues."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

UMASK = 0o002  # a group-shared cluster's usual umask: files 664, folders 775


def run_cli(*args: str) -> None:
    """``tinystories ARGS`` in a fresh process under UMASK."""
    code = (
        "import os, sys; os.umask(int(sys.argv[1], 8)); from tinystories.cli import main; sys.exit(main(sys.argv[2:]))"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", code, oct(UMASK), *args], capture_output=True, text=True, env=env, timeout=600
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]


def modes(root: Path) -> dict[str, int]:
    """Relative path -> permission bits of ``root`` and everything below it."""
    found = {".": stat.S_IMODE(root.stat().st_mode)}
    for path in root.rglob("*"):
        found[str(path.relative_to(root))] = stat.S_IMODE(path.stat().st_mode)
    return found


def assert_umask_modes(root: Path, expect: set[str]) -> None:
    found = modes(root)
    assert expect <= set(found), f"missing under {root}: {sorted(expect - set(found))}"
    wrong = {
        name: oct(mode) for name, mode in found.items() if mode != (0o777 if (root / name).is_dir() else 0o666) & ~UMASK
    }
    assert not wrong, f"not 664 / 775 under umask {oct(UMASK)}: {wrong}"


def test_prepare_train_export_and_eval_write_with_the_umasks_permissions(tmp_path):
    from tinystories.story_templates import generate_stories

    corpus = tmp_path / "stories.txt"
    corpus.write_text("".join(f"{s}\n<|endoftext|>\n" for s in generate_stories(300, seed=2)), encoding="utf-8")
    run_cli("tokenizer", "train", str(corpus), "--vocab-size", "300", "--out", str(tmp_path / "tok" / "tok.json"))
    assert_umask_modes(tmp_path / "tok", {"tok.json"})

    data = tmp_path / "data"
    run_cli(
        "data",
        "prepare",
        str(corpus),
        "--tokenizer",
        str(tmp_path / "tok" / "tok.json"),
        "--out",
        str(data),
        "--val-fraction",
        "0.1",
        "--no-progress",
    )
    assert_umask_modes(data, {"index.json", "tokenizer.json", "train-00000.tok.zst", "val-00000.tok.zst"})

    run = tmp_path / "run"
    run_cli(
        "train",
        f"--data={data}",
        f"--out={run}",
        "--hidden-size=32",
        "--num-layers=2",
        "--num-heads=2",
        "--context=64",
        "--seq-len=32",
        "--batch-size=4",
        "--max-steps=4",
        "--eval-every=4",
        "--ckpt-every=4",
        "--eval-batches=1",
        "--sample-max-new-tokens=4",
        "--display=plain",
        "--tensorboard=false",
    )
    assert_umask_modes(run, {"config.json", "metrics.jsonl", "checkpoints", "checkpoints/step_00000004.pt"})

    run_cli("export", str(run), "--out", str(tmp_path / "hf"))
    assert_umask_modes(tmp_path / "hf", {"config.json", "model.safetensors", "tokenizer.json"})

    report = tmp_path / "eval"
    run_cli(
        "eval",
        "probes",
        str(run),
        "--suites",
        "factual",
        "--max-new-tokens",
        "4",
        "--out",
        str(report),
    )
    assert_umask_modes(report, {"probes.html", "probes.jsonl"})
