"""The shared progress module: durations written for people, and bars that draw nothing when disabled."""

from __future__ import annotations

import pytest

from tinystories.progress import Progress, format_duration


@pytest.mark.parametrize(
    "seconds, text",
    [
        (0.04, "0.0 s"),
        (0.4, "0.4 s"),
        (9.9, "9.9 s"),
        (42, "42 s"),
        (59.4, "59 s"),
        (59.6, "1 min 00 s"),  # rounding carries into the next unit
        (200, "3 min 20 s"),
        (3599.4, "59 min 59 s"),
        (3599.6, "1 h 00 min"),
        (5 * 3600 + 7 * 60 + 20, "5 h 07 min"),  # hours drop the seconds
        (66_000, "18 h 20 min"),
        (86_399, "1 d 00 h"),
        (460_284, "5 d 08 h"),  # what the trainer once printed as "ETA 460284s"
    ],
)
def test_durations_read_in_at_most_two_units(seconds, text):
    assert format_duration(seconds) == text


def test_a_disabled_bar_draws_nothing_and_its_subtask_can_still_be_advanced(capsys):
    with Progress("train", 10, enabled=False) as bar:
        with bar.subtask("validation", 2) as advance:
            advance()
        bar.update(completed=1, status="loss 1.0", remaining="ETA 3 min 20 s")
    assert capsys.readouterr().out == ""


def test_a_subtask_bar_is_removed_after_its_block():
    with Progress("train", 10, transient=True) as bar:
        with bar.subtask("validation", 2) as advance:
            advance()
            assert [t.description for t in bar._bar.tasks] == ["train", "validation"]
        assert [t.description for t in bar._bar.tasks] == ["train"]
