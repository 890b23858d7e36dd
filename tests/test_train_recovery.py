"""The trainer around the training step: one trainer per run directory, signals, resume with a changed config,
extending a run, damaged checkpoints, full disks, empty validation data, failing evaluations and absurd values.
Signals, locks and disk limits use real trainer subprocesses; the rest runs the CLI in-process for speed."""

from __future__ import annotations

import json
import re
import resource
import signal
import socket
import subprocess
import sys

import pytest
import torch
from _train_fixtures import TINY, make_dataset, run_train, start_train

from tinystories.model.checkpoint import checkpoint_path, list_checkpoints, read_checkpoint
from tinystories.train import ConfigError, load_config, main


def wait_for_line(proc: subprocess.Popen, prefix: str) -> list[str]:
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith(prefix):
            return lines
    raise AssertionError(f"the trainer ended before printing {prefix!r}:\n{''.join(lines)[-3000:]}")


def metrics(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


# -- one trainer per run directory (issue 14.1) ---------------------------------------------------------------
def test_a_second_trainer_on_a_run_directory_stops_at_once_naming_the_holder(dataset, tmp_path, capsys):
    run = tmp_path / "run"
    first = start_train(
        [
            f"--data={dataset}",
            *TINY,
            "--max-steps=100000",
            "--ckpt-every=2",
            "--log-every=1",
            "--eval-every=100000",
            f"--out={run}",
        ]
    )
    try:
        wait_for_line(first, "step 4/")
        first.send_signal(signal.SIGSTOP)  # frozen while holding the lock, so the run cannot end meanwhile
        second = run_train([f"--data={dataset}", *TINY, "--max-steps=10", f"--out={run}", "--resume"])
        assert second.returncode == 1
        assert f"in use by another trainer (PID {first.pid} on host {socket.gethostname()}" in second.stderr
        assert "Traceback" not in second.stderr
    finally:
        first.kill()  # SIGKILL: the kernel drops the lock with the process
        first.wait(timeout=60)
    step = read_checkpoint(list_checkpoints(run)[-1])["step"]
    assert main([f"--out={run}", "--resume", f"--max-steps={step + 1}"]) == 0  # no stale lock is left
    assert f"resumed {checkpoint_path(run, step)} at step {step}" in capsys.readouterr().out


# -- SIGINT and SIGTERM (issue 17.5) ----------------------------------------------------------------------------
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_stop_signal_writes_a_checkpoint_and_exits_with_128_plus_signum(dataset, tmp_path, signum):
    run = tmp_path / "run"
    proc = start_train(
        [
            f"--data={dataset}",
            *TINY,
            "--max-steps=100000",
            "--ckpt-every=100000",
            "--log-every=1",
            "--eval-every=100000",
            f"--out={run}",
        ]
    )
    wait_for_line(proc, "step 3/")
    proc.send_signal(signum)
    proc.send_signal(signum)  # one Ctrl-C reaches a trainer twice when a parent (sweep, torchrun) forwards it
    output = proc.communicate(timeout=600)[0]
    assert proc.returncode == 128 + signum, output[-3000:]
    assert "Traceback" not in output and "KeyboardInterrupt" not in output
    saved = list_checkpoints(run)
    assert len(saved) == 1  # written at the step boundary although no checkpoint was due
    step = read_checkpoint(saved[0])["step"]
    assert step >= 3
    assert f"stopped by {signal.Signals(signum).name} at step {step}" in output
    assert f"Resume with: tinystories-train --out={run} --resume" in output


def test_a_second_ctrl_c_a_second_later_stops_at_once(monkeypatch):
    import os
    import types

    from tinystories.train import signals

    now = [100.0]  # the handler's clock, moved by hand: a loaded machine may take any time between two lines
    monkeypatch.setattr(signals, "time", types.SimpleNamespace(monotonic=lambda: now[0]))
    with signals.StopSignals() as stop:
        os.kill(os.getpid(), signal.SIGINT)  # (a signal to this process is handled before os.kill returns here)
        now[0] += 0.9
        os.kill(os.getpid(), signal.SIGINT)  # a copy of the same Ctrl-C: still waiting for the checkpoint
        assert stop.signum == signal.SIGINT
        now[0] += 0.2
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored


# -- resume restores the run's config; changes are listed, refused or recorded (issues 17.1, 14.4) -------------
def test_resume_restores_the_run_config_applies_given_flags_and_keeps_the_schedule(dataset, tmp_path, capsys):
    run = tmp_path / "run"
    first = [
        f"--data={dataset}",
        *TINY,
        "--max-steps=4",
        "--ckpt-every=2",
        "--eval-every=100",
        "--log-every=1",
        f"--out={run}",
    ]
    assert main(first) == 0
    capsys.readouterr()

    # Only the run directory and the changed keys: the model, data and optimizer come from config.json.
    assert main([f"--out={run}", "--resume", "--max-steps=8", "--weight-decay=0.05", "--log-every=2"]) == 0
    out = capsys.readouterr().out
    assert f"resumed {checkpoint_path(run, 4)} at step 4" in out
    assert "max_steps 4 -> 8: the learning-rate schedule is kept (cosine to min_lr by step 4" in out
    assert "changed: weight_decay: 0.1 -> 0.05" in out and "changed: log_every: 1 -> 2" in out
    ckpt = read_checkpoint(checkpoint_path(run, 8))
    assert ckpt["model_config"]["hidden_size"] == 32 and ckpt["train_config"]["lr_decay_steps"] == 4
    assert ckpt["optimizer"]["param_groups"][0]["weight_decay"] == 0.05  # applied, not the saved optimizer's
    extended = [r for r in metrics(run) if "lr" in r and r["step"] > 4]
    assert [r["step"] for r in extended] == [6, 8] and all(r["lr"] == pytest.approx(3e-4) for r in extended)
    history = json.loads((run / "config.json").read_text())["history"]
    assert [h["event"] for h in history] == ["start", "resume"] and history[1]["step"] == 4
    assert any(line.startswith("weight_decay: 0.1 -> 0.05") for line in history[1]["changes"])

    # Stretching the cosine over a longer run is explicit: --lr_decay_steps.
    assert main([f"--out={run}", "--resume", "--max-steps=10", "--lr-decay-steps=10"]) == 0
    assert "changed: lr_decay_steps: 4 -> 10" in capsys.readouterr().out
    assert [r for r in metrics(run) if "lr" in r][-1]["lr"] > 3e-4

    # Keys that fix the model's shape or the batches are refused, all differences listed, nothing written.
    before = (run / "config.json").read_text()
    assert main([f"--out={run}", "--resume", "--max-steps=12", "--batch-size=8", "--num-layers=3"]) == 2
    err = capsys.readouterr().err
    assert "--resume cannot change num_layers, batch_size" in err
    assert "num_layers: run has 2, requested 3; batch_size: run has 4, requested 8" in err
    assert (run / "config.json").read_text() == before and len(list_checkpoints(run)) == 3


def test_resume_before_the_first_checkpoint_starts_fresh(dataset, tmp_path, capsys):
    run = tmp_path / "run"
    assert (
        main(
            [
                f"--data={dataset}",
                *TINY,
                "--max-steps=2",
                "--ckpt-every=2",
                "--eval-every=100",
                f"--out={run}",
                "--resume",
            ]
        )
        == 0
    )
    assert f"--resume: {run} has no checkpoint yet; starting the run from step 0" in capsys.readouterr().out
    assert read_checkpoint(list_checkpoints(run)[-1])["step"] == 2


# -- damaged checkpoints, stale temp files, full disks (issue 14.5) ---------------------------------------------
def test_resume_falls_back_from_a_truncated_checkpoint_and_removes_stale_temp_files(dataset, tmp_path, capsys):
    run = tmp_path / "run"
    assert (
        main([f"--data={dataset}", *TINY, "--max-steps=4", "--ckpt-every=2", "--eval-every=100", f"--out={run}"]) == 0
    )
    newest = checkpoint_path(run, 4)
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # a torn copy
    stale = [run / "checkpoints" / ".step_00000006.pt.0123456789ab.tmp", run / ".config.json.ba9876543210.tmp"]
    for path in stale:
        path.write_bytes(b"x" * 1000)
    capsys.readouterr()
    assert main([f"--out={run}", "--resume", "--max-steps=6"]) == 0
    out, err = capsys.readouterr()
    assert "removed 2 temp file(s)" in out and not any(p.exists() for p in stale)
    assert f"{newest}: not a readable tinystories checkpoint" in err and "falling back" in err
    assert f"resumed {checkpoint_path(run, 2)} at step 2" in out
    assert newest.with_name(newest.name + ".damaged").is_file()  # set aside, not deleted
    assert [read_checkpoint(p)["step"] for p in list_checkpoints(run)] == [2, 4, 6]


def test_resume_sets_aside_a_checkpoint_whose_weights_were_overwritten(dataset, tmp_path, capsys):
    """Issue 22.2: 100 weight values overwritten inside the file (torch.load reads it without a word)."""
    run = tmp_path / "run"
    args = [f"--data={dataset}", *TINY, "--ckpt-every=2", "--eval-every=100", f"--out={run}"]
    assert main([*args, "--max-steps=4"]) == 0
    newest = checkpoint_path(run, 4)
    weights = read_checkpoint(newest)["model"]
    name = max(weights, key=lambda k: weights[k].numel())
    raw = bytearray(newest.read_bytes())
    at = raw.find(weights[name].numpy().tobytes()[:400])
    assert at > 0 and weights[name].numel() >= 100
    raw[at : at + 400] = torch.full((100,), float("nan")).numpy().tobytes()
    newest.write_bytes(bytes(raw))
    assert torch.load(newest, weights_only=True)["model"][name].isnan().sum() == 100  # torch reads it as it is
    with pytest.raises(ValueError, match=r"step_00000004\.pt: damaged checkpoint \(its tensors do not match"):
        read_checkpoint(newest)
    capsys.readouterr()
    assert main([f"--out={run}", "--resume", "--max-steps=6"]) == 0
    out, err = capsys.readouterr()
    assert f"{newest}: damaged checkpoint" in err and "falling back" in err
    assert f"resumed {checkpoint_path(run, 2)} at step 2" in out and "non-finite" not in out
    assert newest.with_name(newest.name + ".damaged").is_file()
    assert [read_checkpoint(p)["step"] for p in list_checkpoints(run)] == [2, 4, 6]


def test_a_full_disk_during_a_checkpoint_stops_with_the_space_needed_and_keeps_the_older_ones(dataset, tmp_path):
    run = tmp_path / "run"
    assert (
        main([f"--data={dataset}", *TINY, "--max-steps=2", "--ckpt-every=2", "--eval-every=100", f"--out={run}"]) == 0
    )

    def small_files() -> (
        None
    ):  # the child may write no file over 64 kB: a checkpoint is bigger (Python ignores SIGXFSZ)
        resource.setrlimit(resource.RLIMIT_FSIZE, (64_000, 64_000))

    result = run_train([f"--out={run}", "--resume", "--max-steps=4"], preexec_fn=small_files)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert f"could not write checkpoint {checkpoint_path(run, 4)} (File too large): it needs" in result.stderr
    assert "the older checkpoints are kept" in result.stderr and "then resume with:" in result.stderr
    assert [read_checkpoint(p)["step"] for p in list_checkpoints(run)] == [2]
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.endswith(".tmp")]


def test_a_disk_full_for_some_metrics_records_leaves_a_readable_log(dataset, tmp_path, monkeypatch, capsys):
    """Issue 22.1: each failed write (half a line in, then ENOSPC) is cut back, so the log stays whole."""
    import errno
    import os

    from tinystories.jsonl import read_jsonl

    real_write, pending = os.write, []
    full = tuple(f'{{"step":{step},'.encode() for step in (3, 4, 5))

    def write(fd: int, data) -> int:
        if pending:  # the rest of a line after the disk filled
            pending.clear()
            raise OSError(errno.ENOSPC, "No space left on device")
        if bytes(data[:16]).startswith(full):
            pending.append(fd)
            return real_write(fd, bytes(data[: len(data) // 2]))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", write)
    run = tmp_path / "run"
    args = [f"--data={dataset}", *TINY, "--max-steps=8", "--ckpt-every=8", "--eval-every=100", "--log-every=1"]
    assert main([*args, f"--out={run}"]) == 0
    assert capsys.readouterr().err.count("could not write metrics") == 1
    damaged: list[str] = []
    logged = [r["step"] for r in read_jsonl(run / "metrics.jsonl", on_damaged=damaged.append) if "loss" in r]
    assert damaged == [] and logged == [1, 2, 6, 7, 8]
    assert [r["step"] for r in metrics(run) if "loss" in r] == logged  # every line of the file is a whole record


# -- evaluation never ends a run (issue 14.2) --------------------------------------------------------------------
def test_without_validation_data_the_run_trains_without_evaluation_and_says_so(tmp_path, capsys):
    data = make_dataset(tmp_path, val_fraction=0.0)
    run = tmp_path / "run"
    assert (
        main(
            [
                f"--data={data}",
                *TINY,
                "--max-steps=4",
                "--ckpt-every=4",
                "--eval-every=2",
                "--log-every=1",
                f"--out={run}",
            ]
        )
        == 0
    )
    assert "training without validation loss" in capsys.readouterr().out
    records = metrics(run)
    assert [r["step"] for r in records if "sample" in r] == [2, 4] and not any("val_loss" in r for r in records)
    assert read_checkpoint(list_checkpoints(run)[-1])["step"] == 4


def test_a_failing_evaluation_or_metrics_write_is_logged_and_training_goes_on(dataset, tmp_path, monkeypatch, capsys):
    from tinystories.jsonl import JsonlLog
    from tinystories.train import loop

    run = tmp_path / "run"
    seen = []

    def failing_evaluate(*args, **kwargs):
        seen.append([read_checkpoint(p)["step"] for p in list_checkpoints(run)])
        raise RuntimeError("boom")

    def failing_append(self, record):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(loop, "validation_loss", failing_evaluate)
    monkeypatch.setattr(JsonlLog, "append", failing_append)
    assert (
        main(
            [
                f"--data={dataset}",
                *TINY,
                "--max-steps=4",
                "--ckpt-every=2",
                "--eval-every=2",
                "--log-every=1",
                f"--out={run}",
            ]
        )
        == 0
    )
    out, err = capsys.readouterr()
    assert out.count("evaluation failed (RuntimeError: boom); training goes on") == 2
    assert err.count("could not write metrics") == 1  # reported once, not at every step
    assert seen == [[2], [2, 4]]  # each checkpoint was on disk before its evaluation started


# -- absurd values are refused before anything is allocated (issues 14.3, 17.7) --------------------------------
@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"lr": "nan"}, "lr=nan must be a finite number"),
        ({"lr": "inf"}, "lr=inf must be a finite number"),
        ({"min_lr": "nan"}, "min_lr=nan must be a finite number"),
        ({"weight_decay": "nan"}, "weight_decay=nan must be a finite number"),
        ({"device": "tpu"}, "device='tpu' must be auto, cpu, cuda, cuda:N or mps"),
        ({"tokenizer": "missing"}, "tokenizer='missing' is neither a known name"),
        ({"loader_threads": "1000000"}, "loader_threads=1000000 is more threads than"),
        ({"cpu_threads": "1000000"}, "cpu_threads=1000000 is more threads than"),
        ({"lr_decay_steps": "0"}, "lr_decay_steps=0 must be positive"),
        ({"lr": "1e308"}, "lr=1e308 must be <= 1"),  # finite, but AdamW overflows float32 with it (issue 22.11)
        ({"lr": "0.5", "weight_decay": "3"}, r"lr=0.5 x weight_decay=3.0 must be <= 1: AdamW's decay step"),
    ],
)
def test_non_finite_and_absurd_values_are_refused_with_one_line(overrides, message):
    with pytest.raises(ConfigError, match=message) as caught:
        load_config(None, overrides)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--batch-size=1e12"], r"batch_size=1000000000000 x seq_len=\d+: training needs about [\d.e+]+ GB"),
        (["--hidden-size=100000000", "--num-layers=100"], r"hidden_size=100000000, num_layers=100 \([\d,]+ param"),
    ],
)
def test_a_configuration_beyond_the_devices_memory_is_refused_before_the_run_folder_exists(
    tmp_path, capsys, args, message
):
    """Issue 22.11: finite but absurd sizes are refused in one line (exit 2), not a bad_alloc after setup."""
    run = tmp_path / "run"
    assert main([*args, "--device=cpu", f"--out={run}"]) == 2
    err = capsys.readouterr().err
    assert re.search(message, err) and "available on cpu" in err and len(err.strip().splitlines()) == 1, err
    assert not run.exists()


def test_the_memory_estimate_counts_the_models_parameters_and_is_the_refusals_threshold():
    from tinystories.model.config import GPTNeoConfig
    from tinystories.model.gpt_neo import GPTNeo
    from tinystories.train.fields import TrainConfig
    from tinystories.train.memory import check_memory, parameter_count, training_memory

    mc = GPTNeoConfig(vocab_size=1000, hidden_size=48, num_layers=3, num_heads=4, max_position_embeddings=64)
    assert parameter_count(mc) == sum(p.numel() for p in GPTNeo(mc).parameters())  # from the shape alone
    c = TrainConfig(hidden_size=48, num_layers=3, num_heads=4, context=64, vocab_size=1000, batch_size=8)
    need = training_memory(c.gpt_neo_config(1000), 8, 64, "fp32")
    assert need.states_bytes == 16 * parameter_count(c.gpt_neo_config(1000))
    assert need.activation_bytes > training_memory(c.gpt_neo_config(1000), 4, 64, "fp32").activation_bytes
    assert training_memory(c.gpt_neo_config(1000), 8, 64, "bf16").activation_bytes < need.activation_bytes
    check_memory(c, torch.device("cpu"), "fp32", available=need.total_bytes)  # exactly enough: accepted
    with pytest.raises(ConfigError, match=r"batch_size=8 x seq_len=64: training needs about .* available on cpu"):
        check_memory(c, torch.device("cpu"), "fp32", available=need.total_bytes - 1)


def test_data_without_a_preset_is_refused_with_the_preset_list(dataset, tmp_path, capsys):
    with pytest.raises(
        ConfigError, match=r"--data needs a model size: --preset=SIZE with SIZE one of 1M, 3M, 8M, 28M, 33M"
    ):
        load_config(None, {"data": str(dataset)})
    assert load_config(None, {"data": str(dataset), "preset": "1M"}).preset == "1M"
    assert load_config(None, {"data": str(dataset), "hidden_size": "32", "num_layers": "2"}).hidden_size == 32
    assert main([f"--data={dataset}", f"--out={tmp_path / 'run'}"]) == 2
    assert "--data needs a model size" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # nothing allocated or created


def test_token_loader_refuses_an_absurd_thread_count_instead_of_aborting(dataset):
    code = (
        "from tinystories.data import TokenLoader\n"
        f"TokenLoader({str(dataset)!r}, batch_size=2, seq_len=8, threads=200000)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "threads must be in [1, 1024]" in result.stderr
    assert "terminate called" not in result.stderr
