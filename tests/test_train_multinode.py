"""Multi-node training: two torchrun launchers ("nodes") meeting through the c10d rendezvous on loopback train
exactly what one process trains on the same global batch, resume exactly from their checkpoint, and a resume
with another number of processes is refused in one line."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tinystories.model.checkpoint import list_checkpoints, read_checkpoint

TINY = [
    "--hidden-size=32",
    "--num-layers=2",
    "--num-heads=2",
    "--context=64",
    "--window-size=16",
    "--seq-len=32",
    "--display=plain",
    "--tensorboard=false",
    "--eval-batches=2",
    "--warmup-steps=3",
    "--lr=3e-3",
    "--sample-max-new-tokens=8",
    "--max-steps=6",
    "--ckpt-every=3",
    "--eval-every=3",
    "--log-every=1",
    "--cpu-threads=1",
    "--keep-last=10",
]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def two_nodes(args: list[str]) -> list[subprocess.CompletedProcess]:
    """The same torchrun command on two "nodes" (launchers), one process each, c10d rendezvous on loopback."""
    endpoint = f"127.0.0.1:{free_port()}"
    launchers = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nnodes=2",
                "--nproc_per_node=1",
                "--rdzv-backend=c10d",
                f"--rdzv-endpoint={endpoint}",
                "--rdzv-id=test",
                f"--rdzv-conf=is_host={int(node == 0)}",
                "--local-addr=127.0.0.1",
                "-m",
                "tinystories.train",
                *args,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=ENV,
        )
        for node in range(2)
    ]
    results = []
    for proc in launchers:
        out, err = proc.communicate(timeout=600)
        results.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    return results


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return read_checkpoint(list_checkpoints(run_dir)[-1])["model"]


@pytest.mark.slow
def test_two_node_torchrun_equals_one_process_and_resumes_exactly(tiny_shards, tmp_path):
    common = [f"--data={tiny_shards}", *TINY]
    single = subprocess.run(
        [sys.executable, "-m", "tinystories.train", *common, "--batch-size=8", f"--out={tmp_path / 'one'}"],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=600,
    )
    assert single.returncode == 0, single.stderr
    nodes = two_nodes([*common, "--batch-size=4", f"--out={tmp_path / 'two'}"])
    assert all(r.returncode == 0 for r in nodes), "\n".join(r.stderr[-3000:] for r in nodes)
    assert "x2" in nodes[0].stdout + nodes[1].stdout  # one run of two processes, rank 0 prints
    a, b = weights(tmp_path / "one"), weights(tmp_path / "two")
    for name in a:
        torch.testing.assert_close(b[name], a[name], atol=2e-5, rtol=0, msg=name)

    # Both ranks resume from rank 0's checkpoint at step 3 and end bit-identical to the uninterrupted run.
    final = weights(tmp_path / "two")
    list_checkpoints(tmp_path / "two")[-1].unlink()
    resumed = two_nodes([*common, "--batch-size=4", f"--out={tmp_path / 'two'}", "--resume"])
    assert all(r.returncode == 0 for r in resumed), "\n".join(r.stderr[-3000:] for r in resumed)
    assert "at step 3" in resumed[0].stdout + resumed[1].stdout
    again = weights(tmp_path / "two")
    assert all(torch.equal(final[k], again[k]) for k in final)

    # Another world size reads other windows per rank: refused, one line, no traceback.
    alone = subprocess.run(
        [
            sys.executable,
            "-m",
            "tinystories.train",
            *common,
            "--batch-size=4",
            "--resume",
            f"--out={tmp_path / 'two'}",
        ],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=600,
    )
    assert alone.returncode == 2 and "Traceback" not in alone.stderr
    assert "was trained by 2 process(es) (nnodes x nproc_per_node), this launch has 1" in alone.stderr
