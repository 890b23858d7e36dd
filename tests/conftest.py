"""Every test's fixtures: the shared data and the checkpoint builder (``_fixtures``, shared with ``benchmarks/``),
the evaluation tests' tiny checkpoints (``_evaluate_fixtures``) and the trainer tests' dataset (``_train_fixtures``),
all loaded as plugins; Triton's CPU interpreter when there is no GPU; and the check that no test leaves a process
running."""

import contextlib
import ctypes
import os
import sys
import time

import pytest
import torch
from _processes import kill_tree, live_children

# Triton reads TRITON_INTERPRET when first imported: set it before the plugins and test modules import anything.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

pytest_plugins = ["_fixtures", "_evaluate_fixtures", "_train_fixtures"]


@pytest.fixture(autouse=True)
def _columns_unchanged():
    """CLIs called in-process widen ``COLUMNS`` for piped output; keep that out of later tests and pytest's own."""
    before = os.environ.get("COLUMNS")
    yield
    if before is None:
        os.environ.pop("COLUMNS", None)
    else:
        os.environ["COLUMNS"] = before


# -- no test leaves a process behind, whatever its outcome ------------------------------------------------------
# pytest is its descendants' subreaper (Linux): a process whose parent died (a trainer whose job was killed...) is
# re-parented to pytest instead of init, so the check after each test finds it too.
PR_SET_CHILD_SUBREAPER = 36  # <linux/prctl.h>
SESSION_HELPERS = (b"multiprocessing.resource_tracker", b"multiprocessing.forkserver", b"_inductor/compile_worker")
# how long a process a test stopped may take to end (saving, exiting) on a loaded machine
LEFTOVER_GRACE_S = float(os.environ.get("TINYSTORIES_TEST_LEFTOVER_GRACE_S", "120"))


def pytest_configure(config):
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1)


@pytest.fixture(autouse=True)
def _no_process_left_behind():
    if not sys.platform.startswith("linux"):
        yield
        return
    before = set(live_children(SESSION_HELPERS))
    yield
    deadline = time.monotonic() + LEFTOVER_GRACE_S
    while (
        left := {p: c for p, c in live_children(SESSION_HELPERS).items() if p not in before}
    ) and time.monotonic() < deadline:
        time.sleep(0.2)  # processes the test stopped may still be finishing
    for pid in left:
        kill_tree(pid)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
    if left:
        pytest.fail(f"the test left {len(left)} process(es) running (now killed): {left}", pytrace=False)
