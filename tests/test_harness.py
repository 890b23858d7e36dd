"""The test suite's own guarantees (``conftest``): a test that leaves a process running fails, naming it, and the
process is killed, also one whose parent died (pytest is its descendants' subreaper)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from _processes import alive

TESTS = Path(__file__).parent

LEAKY = """
import subprocess
from pathlib import Path

def test_leaves_two_processes(tmp_path):
    child = subprocess.Popen(["sleep", "600"])  # never waited for
    orphan = subprocess.run(["sh", "-c", "sleep 600 >/dev/null 2>&1 & echo $!"], capture_output=True, text=True)
    Path({pids!r}).write_text(f"{{child.pid}} {{orphan.stdout.strip()}}")  # the orphan's parent has ended
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the process tree from /proc")
def test_a_test_that_leaves_a_process_fails_and_the_process_is_killed(tmp_path):
    pids = tmp_path / "pids"
    (tmp_path / "test_leaky.py").write_text(LEAKY.format(pids=str(pids)))
    env = {**os.environ, "PYTHONPATH": str(TESTS), "TINYSTORIES_TEST_LEFTOVER_GRACE_S": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "conftest", "--noconftest"]
        + ["--rootdir", str(tmp_path), str(tmp_path / "test_leaky.py")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    child, orphan = (int(pid) for pid in pids.read_text().split())
    try:
        assert done.returncode == 1, done.stdout + done.stderr
        assert "the test left 2 process(es) running (now killed)" in done.stdout and "sleep 600" in done.stdout
        assert not alive(child) and not alive(orphan)
    finally:
        for pid in (child, orphan):
            if alive(pid):
                os.kill(pid, 9)
