"""The trainer talks from the first step: in plain mode (a subprocess, as in logs and CI) a line at step 1 with an
ETA marked "(warm-up)", one line projecting the run's wall time, and a line at the start and at the result of every
validation pass, the closing one included; the step clock behind tokens/s and the ETA."""

from __future__ import annotations

import re
import subprocess

import pytest
from _train_fixtures import TINY, start_train

from tinystories.train import metrics

STEP_LINE = re.compile(r"^step (\d+)/(\d+) \| loss [\d.]+ \| lr [\d.e+-]+ \| [\d,]+ tok/s \| MFU n/a \| ETA (.+)$")
PROJECTED = re.compile(r"^projected: (.+) ≈ (.+) at [\d,]+ tokens/s on cpu$")


def next_line(proc: subprocess.Popen, wanted: re.Pattern | str, seen: list[str]) -> str:
    """The trainer's next line that matches ``wanted`` (a pattern, or a prefix), read as it is printed."""
    for line in proc.stdout:
        seen.append(line)
        line = line.rstrip("\n")
        if re.match(wanted, line) if isinstance(wanted, re.Pattern) else line.startswith(wanted):
            return line
    raise AssertionError(f"the trainer ended before printing {wanted!r}:\n{''.join(seen)[-3000:]}")


def expect_validation(proc: subprocess.Popen, step: int, seen: list[str]) -> None:
    assert next_line(proc, f"step {step}: validation", seen) == f"step {step}: validation loss over 2 batches..."
    assert re.match(rf"step {step}: val loss [\d.]+ \| ppl [\d.]+ \(.+ s\)$", next_line(proc, f"step {step}:", seen))


def test_plain_mode_shows_step_one_the_projection_and_every_validation_pass(dataset, tmp_path):
    run = tmp_path / "run"
    common = [f"--data={dataset}", *TINY, "--log-every=100", "--eval-every=3", f"--out={run}"]
    proc, seen = start_train([*common, "--max-steps=6", "--ckpt-every=6"]), []
    first = STEP_LINE.match(next_line(proc, STEP_LINE, seen))
    assert first.group(1, 2) == ("1", "6") and first[3].endswith(" (warm-up)")  # step 1, though log_every is 100
    assert PROJECTED.match(next_line(proc, "projected:", seen))[1] == "6 steps"
    expect_validation(proc, 3, seen)
    last = STEP_LINE.match(next_line(proc, STEP_LINE, seen))
    assert last.group(1, 2) == ("6", "6") and "warm-up" not in last[3]
    expect_validation(proc, 6, seen)  # the closing pass
    seen.extend(proc.stdout)
    assert proc.wait(timeout=600) == 0, "".join(seen)[-3000:]
    assert not any(line.startswith("step 2/") for line in seen)  # then only every log_every steps (and the last)

    # A resumed process talks from its own first step and projects the steps still to go.
    proc, seen = start_train([*common, "--resume", "--max-steps=12", "--ckpt-every=12"]), []
    assert STEP_LINE.match(next_line(proc, STEP_LINE, seen)).group(1, 2) == ("7", "12")
    assert PROJECTED.match(next_line(proc, "projected:", seen))[1] == "steps 6 to 12"
    seen.extend(proc.stdout)
    assert proc.wait(timeout=600) == 0, "".join(seen)[-3000:]


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now


def test_the_step_clock_leaves_out_the_warm_up_and_the_pauses(monkeypatch):
    fake = FakeTime()
    monkeypatch.setattr(metrics, "time", fake)
    clock = metrics.StepClock()
    fake.now += 10.0  # the first step pays the one-off work
    clock.tick()
    assert clock.seconds_per_step() == 10.0 and clock.eta(6) == "1 min 00 s (warm-up)" and not clock.settled
    fake.now += 100.0  # an evaluation
    clock.restart()
    for seconds in (2.0, 4.0):
        assert not clock.just_settled
        fake.now += seconds
        clock.tick()
    assert clock.just_settled and clock.seconds_per_step() == 3.0 and clock.eta(1200) == "1 h 00 min"
    assert clock.projection(3, 10_000, 3 * 1234, "cpu") == (
        "projected: 10,000 steps ≈ 8 h 20 min at 1,234 tokens/s on cpu"
    )
    assert clock.take_window() == pytest.approx(16.0 / 3)  # the record's window: every step, no pause
    fake.now += 5.0
    clock.tick()
    assert not clock.just_settled and clock.settled and clock.take_window() == 5.0
