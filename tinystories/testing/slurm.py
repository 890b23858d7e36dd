"""A real single-node SLURM cluster for tests: a private ``munged`` and ``slurmctld`` + ``slurmd`` (Debian's
``munge`` and ``slurm-wlm`` packages) started from a minimal ``slurm.conf`` in a scratch folder.

Everything is private to the folder (munge key and socket, ports, state, spool), so it neither needs nor
touches ``/etc/slurm`` or a system munged. Client commands find it through ``SLURM_CONF``, which
:func:`slurm_cluster` sets for as long as the cluster runs. The daemons run as the current user, so jobs
run as that user too (CI runs as root; as another user ``slurmd`` cannot start jobs for others, which a test
does not need).
"""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

PROGRAMS = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol")


def missing_programs() -> list[str]:
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    return [p for p in PROGRAMS if shutil.which(p, path=search) is None]


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _node_line() -> str:
    """``NodeName=<host> CPUs=.. RealMemory=..`` as ``slurmd -C`` sees this machine (its first line)."""
    out = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, check=True).stdout
    return out.splitlines()[0]


@contextmanager
def slurm_cluster(root: Path, timeout_s: float = 60.0) -> Iterator[dict[str, str]]:
    """Start munged, slurmctld and slurmd under ``root``; yields the environment clients need."""
    os.environ["PATH"] = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    root.mkdir(parents=True, exist_ok=True)
    for name in ("state", "spool", "log", "munge"):
        (root / name).mkdir(exist_ok=True)
    os.chmod(root / "munge", 0o700)
    key, sock = root / "munge" / "munge.key", root / "munge" / "munge.sock"
    subprocess.run(["mungekey", "--create", "--force", f"--keyfile={key}"], check=True, capture_output=True)
    ctld_port, slurmd_port = _free_ports(2)
    user = getpass.getuser()
    conf = root / "slurm.conf"
    conf.write_text(f"""\
ClusterName=tinystories-test
SlurmctldHost={socket.gethostname()}
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser={user}
SlurmdUser={user}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={sock}
StateSaveLocation={root / "state"}
SlurmdSpoolDir={root / "spool"}
SlurmctldPidFile={root / "slurmctld.pid"}
SlurmdPidFile={root / "slurmd.pid"}
SlurmctldLogFile={root / "log" / "slurmctld.log"}
SlurmdLogFile={root / "log" / "slurmd.log"}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/none
SchedulerParameters=sched_interval=1
MessageTimeout=30
{_node_line()} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
""")
    env = {"SLURM_CONF": str(conf)}
    os.environ.update(env)
    procs: list[subprocess.Popen] = []
    try:
        procs.append(
            subprocess.Popen(
                [
                    "munged",
                    "--foreground",
                    "--force",
                    f"--key-file={key}",
                    f"--socket={sock}",
                    f"--pid-file={root / 'munge' / 'munged.pid'}",
                    f"--log-file={root / 'log' / 'munged.log'}",
                    f"--seed-file={root / 'munge' / 'munged.seed'}",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        _wait_for(lambda: sock.exists(), timeout_s, "munged socket", root)
        for daemon in (["slurmctld", "-D", "-i"], ["slurmd", "-D"]):
            procs.append(subprocess.Popen(daemon, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        _wait_for(lambda: _node_idle(), timeout_s, "an idle slurm node", root)
        yield env
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in reversed(procs):
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        os.environ.pop("SLURM_CONF", None)


def _node_idle() -> bool:
    out = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True)
    return out.returncode == 0 and out.stdout.strip() in ("idle", "mix", "alloc")


def _wait_for(ready, timeout_s: float, what: str, root: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while not ready():
        if time.monotonic() > deadline:
            logs = "\n".join(f"--- {p.name}\n{p.read_text()[-1500:]}" for p in sorted((root / "log").glob("*.log")))
            raise RuntimeError(f"test SLURM cluster: no {what} after {timeout_s:.0f}s\n{logs}")
        time.sleep(0.2)
